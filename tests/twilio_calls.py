"""Twilio Media Streams message sequences made from real recordings, as Twilio sends them.

A call is the ``connected`` and ``start`` messages, then one ``media`` message per track
every 20 ms (160 μ-law samples at 8 kHz, base64; ``chunk`` counts a track's messages and
``timestamp`` is its milliseconds since the stream began, both as strings, as is the
message-wide ``sequenceNumber``), a ``dtmf`` and a ``mark`` along the way, and ``stop``.
Each message comes with the second (on the call's clock) it is sent at.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

RATE = 8000
FRAME = 160
"""20 ms."""


def mulaw(path: Path, *, lead: float = 0.0, seconds: float | None = None) -> bytes:
    """A recording as μ-law 8 kHz mono, after ``lead`` seconds of silence, padded (or cut)
    to ``seconds``."""
    samples, rate = sf.read(path, dtype="float32", always_2d=True)
    mono = soxr.resample(samples.mean(axis=1), rate, RATE) if rate != RATE else samples[:, 0]
    mono = np.concatenate([np.zeros(round(lead * RATE), np.float32), mono])
    if seconds is not None:
        total = round(seconds * RATE)
        mono = np.concatenate([mono, np.zeros(max(0, total - len(mono)), np.float32)])[:total]
    out = io.BytesIO()
    sf.write(out, np.clip(mono, -1, 1), RATE, format="RAW", subtype="ULAW")
    return out.getvalue()


@dataclass
class Call:
    """One call's ids and what its stream carries."""

    call_sid: str = "CA00000000000000000000000000000001"
    stream_sid: str = "MZ00000000000000000000000000000001"
    account_sid: str = "AC00000000000000000000000000000001"
    custom_parameters: dict[str, str] = field(default_factory=dict)
    dtmf_at: float = 1.0
    mark_at: float = 2.0
    skip: tuple[float, float] | None = None
    """A span (seconds) of the inbound track whose messages are not sent: a gap that only
    the next message's timestamp reveals."""


def messages(call: Call, tracks: dict[str, bytes]) -> list[tuple[float, str]]:
    """The message sequence of ``call`` with ``tracks`` (``inbound``, ``outbound``: μ-law
    audio of equal length), each with its send time."""
    names = list(tracks)
    sequence = 0

    def message(at: float, body: dict[str, Any]) -> tuple[float, str]:
        nonlocal sequence
        if body["event"] != "connected":
            sequence += 1
            body = {"event": body["event"], "sequenceNumber": str(sequence), **body}
        return at, json.dumps(body)

    out = [
        message(0.0, {"event": "connected", "protocol": "Call", "version": "1.0.0"}),
        message(
            0.0,
            {
                "event": "start",
                "start": {
                    "accountSid": call.account_sid,
                    "streamSid": call.stream_sid,
                    "callSid": call.call_sid,
                    "tracks": names,
                    "customParameters": call.custom_parameters,
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                },
                "streamSid": call.stream_sid,
            },
        ),
    ]
    length = min(len(audio) for audio in tracks.values())
    chunks = dict.fromkeys(names, 0)
    notes = [
        (
            call.dtmf_at,
            {
                "event": "dtmf",
                "streamSid": call.stream_sid,
                "dtmf": {"track": "inbound_track", "digit": "5"},
            },
        ),
        (
            call.mark_at,
            {"event": "mark", "streamSid": call.stream_sid, "mark": {"name": "greeting"}},
        ),
    ]
    for offset in range(0, length, FRAME):
        at = offset / RATE
        while notes and notes[0][0] <= at:
            out.append(message(at, notes.pop(0)[1]))
        for name in names:
            if name == "inbound" and call.skip and call.skip[0] <= at < call.skip[1]:
                continue
            chunks[name] += 1
            payload = base64.b64encode(tracks[name][offset : offset + FRAME]).decode()
            media = {
                "track": name,
                "chunk": str(chunks[name]),
                "timestamp": str(offset * 1000 // RATE),
                "payload": payload,
            }
            out.append(
                message(at, {"event": "media", "streamSid": call.stream_sid, "media": media})
            )
    end = length / RATE
    stop = {"accountSid": call.account_sid, "callSid": call.call_sid}
    out.append(message(end, {"event": "stop", "streamSid": call.stream_sid, "stop": stop}))
    return out
