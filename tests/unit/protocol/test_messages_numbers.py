"""Every number of ``start`` is finite and in its documented range, or refused naming it."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.errors import ClientError, InvalidFormat, InvalidMessage
from streamer.protocol.messages import StartRequest, parse_client_message

FORMAT = {"channels": 1, "sample_rate": 16000, "bit_depth": 16}
FLOAT_FIELDS = {
    "interim_interval": (0.0, 3600.0),
    "vad.threshold": (0.0, 1.0),
    "vad.max_segment_s": (0.0, 3600.0),
}
INT_FIELDS = {
    "vad.min_speech_ms": (0, 600_000),
    "vad.min_silence_ms": (0, 600_000),
    "vad.speech_pad_ms": (0, 600_000),
    "format.channels": (1, 32),
    "format.sample_rate": (1, 192_000),
    "format.bit_depth": (1, 64),
}


def start_with(field: str, value: Any) -> str:
    start: dict[str, Any] = {"request": "start", "format": dict(FORMAT)}
    section, _, name = field.rpartition(".")
    (start.setdefault(section, {}) if section else start)[name] = value
    return json.dumps(start)


@settings(deadline=None)  # a busy test machine is no reason to fail
@given(
    field=st.sampled_from(sorted(FLOAT_FIELDS)),
    value=st.floats(allow_nan=True, allow_infinity=True),
)
def test_a_float_option_is_taken_only_when_finite_and_in_range(field: str, value: float) -> None:
    low, high = FLOAT_FIELDS[field]
    text = start_with(field, value)  # json.dumps writes NaN and Infinity as JavaScript does
    valid = math.isfinite(value) and (low <= value if field == "vad.threshold" else low < value)
    if valid and value <= high:
        assert isinstance(parse_client_message(text), StartRequest)
        return
    with pytest.raises(InvalidMessage, match=field.replace(".", r"\.")):
        parse_client_message(text)


@settings(deadline=None)  # a busy test machine is no reason to fail
@given(field=st.sampled_from(sorted(INT_FIELDS)), value=st.integers(-(2**70), 2**70))
def test_an_integer_option_is_taken_only_in_range(field: str, value: int) -> None:
    low, high = INT_FIELDS[field]
    text = start_with(field, value)
    if low <= value <= high:
        try:
            parse_client_message(text)
        except InvalidFormat as error:  # the finer format rules (bit depths, rates) remain
            assert field.startswith("format.")
            assert field.removeprefix("format.") in error.message
        return
    expected: type[ClientError] = InvalidFormat if field.startswith("format.") else InvalidMessage
    with pytest.raises(expected, match=field.replace(".", r"\.")):
        parse_client_message(text)


@pytest.mark.parametrize("literal", ["1e999999", "-1e999999", "NaN", "Infinity"])
def test_literals_that_overflow_are_refused(literal: str) -> None:
    text = start_with("vad.threshold", "@").replace('"@"', literal)
    with pytest.raises(InvalidMessage, match=r"vad\.threshold.*finite"):
        parse_client_message(text)
