"""Twilio Media Streams (``<Stream url=...>``), one codec object a connection.

Inbound, Twilio sends JSON text frames: ``connected``, ``start`` (the call, its tracks, the
audio format), ``media`` (20 ms of base64 μ-law 8 kHz a frame, per track), ``dtmf``,
``mark``, ``stop``. The call's tracks (inbound, outbound) are the channels of one
segmented stream, in the order ``start`` lists them. A track's place in time comes from
the ``timestamp`` of its frames: a gap is filled with μ-law silence, audio a frame repeats
is dropped, so that result times stay true to the call; the tracks are interleaved as far
as all of them reach, and one that lags more than ``max_skew_seconds`` behind another is
filled with silence up to that bound.

Outbound, Twilio ignores what comes back, so nothing is sent on the socket: the stream's
events go to the ``CallSink`` the composition root gives (the call's subscribers and its
callback), as the segmented route's JSON objects with the call's ids and the track's name.
A frame the codec refuses becomes an ``Invalid`` input (an ``error`` event for the
subscribers, the call goes on) and is counted through ``on_rejected``.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from streamer.codecs.v1_json import event_to_dict
from streamer.errors import ClientError, InvalidFormat, InvalidJson, InvalidMessage, NotStarted
from streamer.events import Done, Event, Ready, SegmentResult
from streamer.protocol.inputs import Audio, Finish, Input, Invalid, Reply
from streamer.protocol.messages import KeepaliveRequest, parse_start

log = logging.getLogger(__name__)

RATE = 8000
"""Media Streams audio: μ-law, 8 kHz, mono per track."""
ENCODING = "audio/x-mulaw"
SILENCE = b"\xff"
"""μ-law zero."""
TRACKS = ("inbound", "outbound")


class CallSink(Protocol):
    """Where a call's results go (the composition root's hub and callbacks)."""

    def opened(self, call: CallInfo) -> None: ...
    def publish(self, call: CallInfo, body: Mapping[str, Any], *, final: bool) -> None: ...
    def closed(self, call: CallInfo) -> None: ...


@dataclass(frozen=True, slots=True)
class CallInfo:
    """What ``start`` said about the stream."""

    stream_sid: str
    call_sid: str
    tracks: tuple[str, ...]
    custom_parameters: Mapping[str, str] = field(default_factory=dict)
    account_sid: str | None = None


def _ignore(reason: str) -> None:
    pass


@dataclass(slots=True)
class _Track:
    placed: int = 0
    """Samples on the track's timeline so far (sent or pending)."""
    pending: bytearray = field(default_factory=bytearray)
    """Placed samples not yet interleaved into the stream."""


class Rejected(Exception):
    """A frame the codec refuses, with the reason it is counted under."""

    def __init__(self, error: ClientError, reason: str) -> None:
        super().__init__(error.message)
        self.error = error
        self.reason = reason


class MediaStreamCodec:
    """One Media Streams connection: decode Twilio's frames, hand the stream's events to
    the call's sink."""

    def __init__(
        self,
        sink: CallSink,
        *,
        on_rejected: Callable[[str], None] = _ignore,
        max_skew_seconds: float = 1.0,
        max_gap_seconds: float = 60.0,
        interim_results: bool = True,
    ) -> None:
        self.sink = sink
        self.on_rejected = on_rejected
        self.max_skew = round(max_skew_seconds * RATE)
        self.max_gap = round(max_gap_seconds * RATE)
        self.interim_results = interim_results
        self.call: CallInfo | None = None
        self.started = False
        """A ``start`` opened the stream (a refused one did not)."""
        self._tracks: dict[str, _Track] = {}
        self._logged: set[str] = set()
        self._closed = False

    # Inbound.

    def decode_text(self, text: str) -> Input:
        try:
            return self._decode(text)
        except Rejected as rejected:
            self._reject(rejected.reason, rejected.error)
            return Invalid(rejected.error)

    def decode_bytes(self, data: bytes) -> Input:
        error = InvalidMessage("Media Streams frames are JSON text; a binary frame is not one")
        self._reject("binary_frame", error)
        return Invalid(error)

    def _reject(self, reason: str, error: ClientError) -> None:
        self.on_rejected(reason)
        if reason not in self._logged:  # once a connection per reason: a call sends 50 a second
            self._logged.add(reason)
            sid = self.call.stream_sid if self.call else None
            log.warning("twilio stream %s: frame refused (%s): %s", sid, reason, error.message)

    def _decode(self, text: str) -> Input:
        try:
            body = json.loads(text)
        except ValueError as error:
            raise Rejected(
                InvalidJson(f"a frame is not valid JSON: {error}"), "invalid_json"
            ) from None
        if not isinstance(body, dict):
            raise Rejected(InvalidJson("a frame must be a JSON object"), "invalid_json")
        kind = body.get("event")
        if kind == "media":
            return self._media(_object(body, "media"))
        if kind == "connected":
            return KeepaliveRequest(request="keepalive")
        if kind == "start":
            return self._start(_object(body, "start"), body.get("streamSid"))
        if kind == "dtmf":
            dtmf = _object(body, "dtmf")
            return self._note(
                {"type": "dtmf", "digit": dtmf.get("digit"), "track": dtmf.get("track")}
            )
        if kind == "mark":
            return self._note({"type": "mark", "name": _object(body, "mark").get("name")})
        if kind == "stop":
            return self._stop()
        raise Rejected(InvalidMessage(f"unknown Media Streams event {kind!r}"), "unknown_event")

    def _note(self, body: dict[str, Any]) -> Input:
        """A call event that is no audio: live to the subscribers."""
        if self.call is None:
            raise Rejected(NotStarted(f"got {body['type']!r} before 'start'"), "before_start")
        return Reply(body)

    def _start(self, start: Mapping[str, Any], stream_sid: Any) -> Input:
        if self.call is not None:
            raise Rejected(InvalidMessage("a second 'start' on one stream"), "second_start")
        sid = start.get("streamSid", stream_sid)
        call_sid = start.get("callSid")
        if not isinstance(sid, str) or not sid or not isinstance(call_sid, str) or not call_sid:
            raise Rejected(InvalidMessage("'start' needs streamSid and callSid"), "invalid_start")
        tracks = start.get("tracks", ["inbound"])
        if (
            not isinstance(tracks, list)
            or not tracks
            or any(t not in TRACKS for t in tracks)
            or len(set(tracks)) != len(tracks)
        ):
            raise Rejected(
                InvalidMessage(f"tracks must be some of {list(TRACKS)}, got {tracks!r}"),
                "invalid_start",
            )
        params = start.get("customParameters") or {}
        if not isinstance(params, dict):
            raise Rejected(InvalidMessage("customParameters must be an object"), "invalid_start")
        account = start.get("accountSid")
        self.call = CallInfo(
            sid,
            call_sid,
            tuple(tracks),
            {str(k): str(v) for k, v in params.items()},
            account if isinstance(account, str) else None,
        )
        self.sink.opened(self.call)
        fmt = start.get("mediaFormat") or {}
        if not isinstance(fmt, dict) or (
            fmt.get("encoding"),
            fmt.get("sampleRate"),
            fmt.get("channels", 1),
        ) != (ENCODING, RATE, 1):
            raise Rejected(
                InvalidFormat(
                    f"mediaFormat must be {ENCODING} at {RATE} Hz, one channel, got {fmt!r}"
                ),
                "unsupported_format",
            )
        self._tracks = {name: _Track() for name in tracks}
        self.started = True
        return parse_start(
            {
                "format": {
                    "channels": len(tracks),
                    "sample_rate": RATE,
                    "bit_depth": 8,
                    "encoding": "mulaw",
                },
                "interim_results": self.interim_results,
            }
        )

    def _media(self, media: Mapping[str, Any]) -> Input:
        if not self.started:
            raise Rejected(NotStarted("got 'media' before a valid 'start'"), "before_start")
        name = media.get("track", "inbound")
        track = self._tracks.get(name)
        if track is None:
            raise Rejected(
                InvalidMessage(f"track {name!r} is not one of {list(self._tracks)}"),
                "unknown_track",
            )
        payload = media.get("payload")
        if not isinstance(payload, str):
            raise Rejected(InvalidMessage("media.payload must be a base64 string"), "bad_payload")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise Rejected(
                InvalidMessage("media.payload is not valid base64"), "bad_payload"
            ) from None
        try:
            at = round(float(media.get("timestamp", track.placed * 1000 / RATE)) * RATE / 1000)
        except (TypeError, ValueError):
            raise Rejected(
                InvalidMessage(f"media.timestamp {media.get('timestamp')!r} is not a number"),
                "bad_timestamp",
            ) from None
        gap = at - track.placed
        if gap > self.max_gap:
            raise Rejected(
                InvalidMessage(
                    f"media.timestamp jumps {gap / RATE:.1f} s past the track's audio "
                    f"(at most {self.max_gap / RATE:g} s is filled)"
                ),
                "bad_timestamp",
            )
        if gap > 0:
            track.pending += SILENCE * gap  # a gap in the call: silence keeps times true
        elif gap < 0:
            data = data[-gap:]  # audio this track already has (a repeat, or filled silence)
        track.pending += data
        track.placed += max(gap, 0) + len(data)
        return Audio(self._interleave(flush=False))

    def _interleave(self, *, flush: bool) -> bytes:
        tracks = list(self._tracks.values())
        if len(tracks) == 1:
            data = bytes(tracks[0].pending)
            tracks[0].pending.clear()
            return data
        lead = max(t.placed for t in tracks)
        floor = lead if flush else lead - self.max_skew
        for track in tracks:
            if track.placed < floor:  # a track that fell behind (or stopped): silence
                track.pending += SILENCE * (floor - track.placed)
                track.placed = floor
        n = min(len(t.pending) for t in tracks)
        if n == 0:
            return b""
        out = bytearray(n * len(tracks))
        for i, track in enumerate(tracks):
            out[i :: len(tracks)] = track.pending[:n]
            del track.pending[:n]
        return bytes(out)

    def _stop(self) -> Input:
        if not self.started:
            return Finish()
        return Finish(self._interleave(flush=True))

    # Outbound.

    def encode(self, event: Event | Mapping[str, Any]) -> list[str]:
        """Nothing for Twilio; the event goes to the call's sink."""
        call = self.call
        if call is None or self._closed:
            return []
        if isinstance(event, Mapping):
            self.sink.publish(call, self._with_call(dict(event)), final=False)
            return []
        if isinstance(event, Ready):
            return []
        body = self._with_call(event_to_dict(event))
        channel = getattr(event, "channel", None)
        if isinstance(channel, int) and 0 <= channel < len(call.tracks):
            body["track"] = call.tracks[channel]
        final = isinstance(event, SegmentResult) and event.final
        self.sink.publish(call, body, final=final or isinstance(event, Done))
        if isinstance(event, Done):
            self.close()
        return []

    def _with_call(self, body: dict[str, Any]) -> dict[str, Any]:
        assert self.call is not None
        return {**body, "call_sid": self.call.call_sid, "stream_sid": self.call.stream_sid}

    def close(self) -> None:
        """The connection is over (after ``done``, or without one): tell the sink once."""
        if self.call is not None and not self._closed:
            self._closed = True
            self.sink.closed(self.call)


def _object(body: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = body.get(key)
    if not isinstance(value, dict):
        raise Rejected(
            InvalidMessage(f"a {body.get('event')!r} frame needs a {key!r} object"), "invalid_frame"
        )
    return value
