"""Reading a vendor API's upgrade query, shared by the Deepgram codecs (``/v1/listen`` and
Flux's ``/v2/listen``), the raw-audio ``format`` of a vendor stream's ``start``, and a
vendor's JSON text frame with a ``type`` (Deepgram, Flux, AssemblyAI).

No I/O. Each API words its refusal its own way, so the checks here take a ``refuse``
callable that turns (parameter, message) into the exception to raise.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from streamer.audio.formats import MAX_SAMPLE_RATE, AudioFormat, Encoding
from streamer.errors import InvalidJson, InvalidMessage

Refuse = Callable[[str, str], Exception]
"""Makes the error for a malformed parameter from its name and what is wrong with it."""

_BOOLEANS = {"true": True, "false": False}


class Query:
    """A query's items: the last value of each parameter, and all values of repeated ones."""

    def __init__(self, items: Sequence[tuple[str, str]], refuse: Refuse) -> None:
        self.last: dict[str, str] = {}
        self._repeated: dict[str, list[str]] = {}
        self.refuse = refuse
        for name, value in items:
            self.last[name] = value
            self._repeated.setdefault(name, []).append(value)

    def get(self, name: str) -> str | None:
        """The parameter's last value, or None where it is absent."""
        return self.last.get(name)

    def all(self, name: str) -> tuple[str, ...]:
        """Every value the parameter was given, in order."""
        return tuple(self._repeated.get(name, ()))

    def integer(self, name: str, low: int, high: int) -> int | None:
        """An integer from ``low`` to ``high``; None where absent."""
        raw = self.last.get(name)
        if raw is None:
            return None
        try:
            value = int(raw.strip())
        except ValueError:
            raise self.refuse(name, f"must be an integer, got {raw!r}") from None
        if not low <= value <= high:
            raise self.refuse(name, f"must be from {low} to {high}, got {value}")
        return value

    def number(self, name: str, low: float, high: float) -> float | None:
        """A number from ``low`` to ``high`` (NaN is out of range); None where absent."""
        raw = self.last.get(name)
        if raw is None:
            return None
        try:
            value = float(raw.strip())
        except ValueError:
            raise self.refuse(name, f"must be a number, got {raw!r}") from None
        if not low <= value <= high:  # NaN fails this too
            raise self.refuse(name, f"must be from {low:g} to {high:g}, got {raw.strip()}")
        return value

    def boolean(self, name: str, default: bool = False) -> bool:
        """``true`` or ``false`` (any case); ``default`` where absent."""
        raw = self.last.get(name)
        if raw is None:
            return default
        value = _BOOLEANS.get(raw.strip().lower())
        if value is None:
            raise self.refuse(name, f"must be true or false, got {raw!r}")
        return value

    def raw_audio(
        self,
        encodings: Mapping[str, tuple[Encoding, int]],
        refused: frozenset[str],
        required: str,
    ) -> tuple[str, int]:
        """The required ``encoding`` (one of ``encodings``) and ``sample_rate``.

        ``required`` is the message for a missing encoding; one in ``refused`` (compressed
        or containerised audio) is called unsupported, any other unknown.
        """
        encoding = self.last.get("encoding")
        if encoding is None:
            raise self.refuse("encoding", required)
        encoding = encoding.strip().lower()
        if encoding not in encodings:
            kind = "is not supported" if encoding in refused else "is unknown"
            raise self.refuse(
                "encoding", f"{encoding!r} {kind}; use one of {', '.join(encodings)} (raw audio)"
            )
        sample_rate = self.integer("sample_rate", 1, MAX_SAMPLE_RATE)
        if sample_rate is None:
            raise self.refuse("sample_rate", "is required with encoding")
        return encoding, sample_rate


def format_body(fmt: AudioFormat) -> dict[str, Any]:
    """``fmt`` as a ``start`` request's ``format`` field."""
    return {
        "channels": fmt.channels,
        "sample_rate": fmt.sample_rate,
        "bit_depth": fmt.bit_depth,
        "is_float": fmt.is_float,
        "encoding": fmt.encoding,
    }


def typed_message(text: str) -> dict[str, Any]:
    """A vendor's text frame as the JSON object it must be, whose ``type`` the codec reads:
    ``InvalidJson`` when it is not JSON, ``InvalidMessage`` when it is not an object."""
    try:
        body = json.loads(text)
    except ValueError as error:
        raise InvalidJson(f"message is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise InvalidMessage("message must be a JSON object with a 'type'")
    return body
