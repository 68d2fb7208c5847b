"""Connection behaviour, on the in-process harness: the real machine, driver, outbox and
services, with no socket. The shells are tested on real sockets elsewhere."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamer.client import load_audio
from streamer.codecs import v1_json, v1_proto
from streamer.config import Settings
from streamer.errors import ErrorCode
from streamer.events import Event, SegmentResult
from streamer.inference.model import TestModel
from streamer.pipeline import Route
from streamer.protocol.actions import Close
from streamer.protocol.connection import GRPC
from streamer.protocol.inputs import EndOfInput
from streamer.protocol.proto import streamer_v1_pb2 as pb
from streamer.services import Services
from streamer.testing import Outcome, Pause, run_connection, running_services

RATE = 16000
FORMAT = {"channels": 1, "sample_rate": RATE, "bit_depth": 16, "is_float": False}
START = json.dumps({"request": "start", "format": FORMAT})
STOP = json.dumps({"request": "stop"})
STOP_CLOSE = json.dumps({"request": "stop", "disconnect": True})


def noise(seconds: float, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return rng.normal(0, 3000, round(seconds * RATE)).astype("<i2").tobytes()


def chunks(data: bytes, size: int = 3200) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def stream(seconds: float = 2.5, stop: str = STOP) -> list[str | bytes]:
    return [START, *chunks(noise(seconds)), stop]


def events(outcome: Outcome[Any]) -> list[dict[str, Any]]:
    return [json.loads(text) for text in outcome.sent]


def types(outcome: Outcome[Any]) -> list[str]:
    return [e["type"] for e in events(outcome)]


def settings(stream: dict[str, Any] | None = None, **server: Any) -> Settings:
    return Settings.model_validate(
        {
            "server": {"grpc_enabled": False, **server},
            "stream": stream or {},
            "inference": {"workers": 2},
        }
    )


@pytest.fixture
async def services() -> Any:
    async with running_services(settings(), TestModel.speedy()) as running:
        yield running


def assert_good(received: list[dict[str, Any]], seconds: float = 2.5) -> None:
    """One stream: ready, contiguous segments that cover the audio, done."""
    assert received[0]["type"] == "ready" and received[-1]["type"] == "done"
    segments = [e for e in received if e["type"] == "segment"]
    assert sum(s["count"] for s in segments) == round(seconds * RATE)
    assert received[-1]["audio_seconds"] == seconds


async def test_a_stream_gets_ready_segments_and_done_then_a_normal_close(
    services: Services,
) -> None:
    outcome = await run_connection(services, Route.SIMPLE, stream(stop=STOP_CLOSE))
    assert_good(events(outcome))
    assert outcome.close == Close()
    assert services.admission.live_streams == 0 and not services.connections


async def test_several_streams_on_one_connection(services: Services) -> None:
    outcome = await run_connection(services, Route.SIMPLE, stream() + stream(1.5, STOP_CLOSE))
    received = events(outcome)
    cut = types(outcome).index("done") + 1
    assert_good(received[:cut])
    assert_good(received[cut:], 1.5)
    assert received[0]["session_id"] != received[cut]["session_id"]


BAD: dict[str, tuple[str | bytes, str]] = {
    "invalid_json": ('{"request": "start", ', "invalid_json"),
    "unknown_field": (
        json.dumps({"request": "start", "format": FORMAT, "x": 1}),
        "invalid_message",
    ),
    "audio_before_start": (b"\x00\x01" * 80, "not_started"),
    "finalize_before_start": (json.dumps({"request": "finalize"}), "not_started"),
    "no_channels": (
        json.dumps({"request": "start", "format": {**FORMAT, "channels": 0}}),
        "invalid_format",
    ),
    "not_an_object": ("[]", "invalid_message"),
}


@pytest.mark.parametrize("case", list(BAD))
async def test_bad_input_is_an_error_event_and_the_connection_goes_on(
    services: Services, case: str
) -> None:
    message, code = BAD[case]
    outcome = await run_connection(services, Route.SIMPLE, [message, *stream(stop=STOP_CLOSE)])
    received = events(outcome)
    assert received[0]["type"] == "error" and received[0]["code"] == code
    assert_good(received[1:])
    assert outcome.close == Close()


async def test_a_second_start_is_refused_and_the_stream_goes_on(services: Services) -> None:
    audio = chunks(noise(2.5))
    inbound = [START, *audio[:5], START, *audio[5:], STOP_CLOSE]
    received = events(await run_connection(services, Route.SIMPLE, inbound))
    errors = [e for e in received if e["type"] == "error"]
    assert [e["code"] for e in errors] == ["already_started"]
    assert_good([e for e in received if e["type"] != "error"])


async def test_a_peer_that_goes_away_frees_its_stream(services: Services) -> None:
    outcome = await run_connection(services, Route.SIMPLE, [START, *chunks(noise(5.0))])
    assert outcome.close == Close(send=False)
    assert types(outcome)[0] == "ready" and "done" not in types(outcome)
    assert services.admission.live_streams == 0 and services.streams.scheduler.queued == 0


async def test_draining_closes_an_idle_connection_going_away(services: Services) -> None:
    services.draining.set()
    outcome = await run_connection(services, Route.SIMPLE, stream())
    assert outcome.close.code is ErrorCode.SHUTTING_DOWN
    assert outcome.sent == []


async def test_an_open_stream_gets_its_finals_when_the_drain_expires(services: Services) -> None:
    def inbound() -> Iterator[str | bytes | Pause]:
        yield START
        yield from chunks(noise(2.5))
        services.draining.set()
        services.drain_expired.set()
        yield Pause(5.0)  # the client keeps the connection open, saying nothing

    outcome = await run_connection(services, Route.SIMPLE, inbound())
    assert_good(events(outcome))
    assert outcome.close.code is ErrorCode.SHUTTING_DOWN and not outcome.close.tell


async def test_a_client_that_does_not_read_is_a_slow_consumer() -> None:
    slow = settings({"chunk_seconds": 0.1}, max_pending_events=10)
    async with running_services(slow, TestModel.speedy()) as services:
        blocked = asyncio.Event()

        async def never(item: Any) -> None:
            await blocked.wait()

        inbound = [START, *chunks(noise(8.0)), Pause(2.0)]  # ten results a second of audio
        outcome = await run_connection(services, Route.SIMPLE, inbound, write=never)
        assert outcome.close.code is ErrorCode.SLOW_CONSUMER
        assert services.admission.live_streams == 0
        ended = services.metrics.streams_ended.labels("simple", "slow_consumer")._value.get()
        assert ended == 1


async def test_a_stream_whose_events_cannot_be_written_ends_with_internal_error(
    services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    """A server fault in a stream's own tasks never leaves the stream silent."""

    def encode(event: Event) -> str:
        if isinstance(event, SegmentResult):
            raise RuntimeError("cannot encode")
        from streamer.codecs.v1_json import encode_event

        return encode_event(event)

    with caplog.at_level(logging.ERROR):
        outcome = await run_connection(
            services, Route.SIMPLE, [START, *chunks(noise(2.5)), Pause(5.0)], encode=encode
        )
    received = events(outcome)
    assert [e["type"] for e in received] == ["ready", "error"]
    assert received[1]["code"] == "internal_error"
    assert outcome.close.code is ErrorCode.INTERNAL_ERROR
    assert services.admission.live_streams == 0 and services.streams.scheduler.queued == 0
    assert any(received[0]["session_id"] in r.getMessage() for r in caplog.records)


async def test_grpc_calls_end_with_a_status_after_the_error_event(services: Services) -> None:
    config = pb.StreamRequest(config=pb.StreamConfig(format=pb.AudioFormat(**FORMAT)))
    early = pb.StreamRequest(audio=b"\0\0")
    outcome = await run_connection(
        services,
        Route.SIMPLE,
        [early, config],
        decode=v1_proto.decode_request,
        encode=v1_proto.event_to_proto,
        mode=GRPC,
        end=EndOfInput(),
    )
    [error] = [v1_proto.event_to_dict(e) for e in outcome.sent]
    assert error is not None and error["code"] == "not_started"
    assert outcome.close.code is ErrorCode.NOT_STARTED and outcome.close.tell
    good = await run_connection(
        services,
        Route.SIMPLE,
        [config, *(pb.StreamRequest(audio=c) for c in chunks(noise(2.5)))],
        decode=v1_proto.decode_request,
        encode=v1_proto.event_to_proto,
        mode=GRPC,
        end=EndOfInput(),
    )
    received = [v1_proto.event_to_dict(e) for e in good.sent]
    assert_good([e for e in received if e is not None])
    assert good.close == Close()


# Idle connections.


@pytest.fixture
async def impatient() -> Any:
    async with running_services(settings({"idle_seconds": 0.3}), TestModel.speedy()) as running:
        yield running


async def test_a_connection_that_never_starts_ends_idle(impatient: Services) -> None:
    loop = asyncio.get_running_loop()
    began = loop.time()
    outcome = await run_connection(impatient, Route.SIMPLE, [Pause(5.0)])
    assert 0.3 <= loop.time() - began < 2.0
    [error] = events(outcome)
    assert error["code"] == "idle_timeout" and "0.3 s" in error["message"]
    assert outcome.close.code is ErrorCode.IDLE_TIMEOUT


async def test_an_idle_stream_is_told_then_gets_its_finals_and_done(impatient: Services) -> None:
    outcome = await run_connection(
        impatient, Route.SIMPLE, [START, *chunks(noise(2.5)), Pause(5.0)]
    )
    received = events(outcome)
    [error] = [e for e in received if e["type"] == "error"]
    assert error["code"] == "idle_timeout"
    assert received.index(error) < types(outcome).index("done")  # told, then done
    assert_good([e for e in received if e["type"] != "error"])
    assert outcome.close.code is ErrorCode.IDLE_TIMEOUT
    assert impatient.admission.live_streams == 0


async def test_keepalives_and_audio_keep_a_connection_from_idling(impatient: Services) -> None:
    keepalive = json.dumps({"request": "keepalive"})
    inbound: list[Any] = []
    for _ in range(6):  # 1.2 s with no audio, but a keepalive every 0.2 s
        inbound += [Pause(0.2), keepalive]
    inbound += [START]
    for chunk in chunks(noise(2.5), 8000):  # 0.25 s of audio every 0.2 s: never idle
        inbound += [Pause(0.2), chunk]
    outcome = await run_connection(impatient, Route.SIMPLE, [*inbound, STOP_CLOSE])
    assert_good(events(outcome))
    assert outcome.close == Close()


# Clients that read slower than their results come.

SPEECH = load_audio(Path(__file__).resolve().parents[2] / "fixtures" / "audio" / "jfk.wav")


async def test_a_slow_reader_loses_interim_results_first_and_keeps_every_final() -> None:
    speech = SPEECH
    start = json.dumps(
        {
            "request": "start",
            "format": speech.format,
            "interim_results": True,
            "interim_interval": 0.1,
        }
    )
    paced: list[Any] = [start]
    for chunk in chunks(speech.data, speech.bytes_per_second // 10):
        paced += [chunk, Pause(0.004)]  # 25 times real time: interims keep coming
    paced.append(STOP_CLOSE)
    tight = settings(max_pending_events=10)

    async def slow(item: Any, written: list[Any]) -> None:
        await asyncio.sleep(0.03)  # a reader far slower than the events
        written.append(item)

    produced: list[Any] = []  # every event the slow reader's stream handed its outbox

    def encode(event: Event) -> Any:
        frame = v1_json.encode_event(event)
        produced.append(frame)
        return frame

    async with running_services(tight, TestModel.speedy()) as services:
        reference = await run_connection(services, Route.SEGMENTED, paced)
        written: list[Any] = []
        outcome = await run_connection(
            services,
            Route.SEGMENTED,
            paced,
            write=lambda item: slow(item, written),
            encode=encode,
        )
        dropped = services.metrics.interims_dropped.labels("segmented")._value.get()

    def finals(sent: list[Any]) -> list[Any]:
        return [e for e in map(json.loads, sent) if e["type"] == "segment" and e["is_final"]]

    assert outcome.close == Close()
    assert [json.loads(e)["type"] for e in written][-1] == "done"
    assert finals(written) == finals(produced) == finals(reference.sent) and finals(written)
    assert dropped > 0
    # What was not written was dropped and counted, and only interims were: the rest came
    # out in the order produced. (Which interims a stream produces depends on timing: one
    # superseded before the model ran it is withdrawn, not sent.)
    assert len(written) == len(produced) - dropped
    left = iter(produced)
    assert all(any(frame == other for other in left) for frame in written)
    missing = [json.loads(e) for e in produced if e not in written]
    assert all(e["type"] == "segment" and not e["is_final"] for e in missing)


async def test_a_peer_gone_while_its_feed_waits_frees_the_stream_at_once() -> None:
    """The driver waits on a busy stream (backpressure) with audio still unread; the
    transport says the peer is gone: the queued work is withdrawn without reading on."""
    async with running_services(settings(), TestModel.speedy(delay=0.5)) as services:
        loop = asyncio.get_running_loop()
        gone: asyncio.Future[None] = loop.create_future()
        inbound = [START, *chunks(noise(8.0), RATE * 2), Pause(30.0)]  # 8 inferences of 0.5 s

        async def lose_the_peer() -> None:
            async with asyncio.timeout(60):  # until the work is queued
                while not services.streams.scheduler.queued:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            gone.set_result(None)

        lost = asyncio.create_task(lose_the_peer())
        outcome = await run_connection(services, Route.SIMPLE, inbound, gone=gone)
        await lost
        assert outcome.close == Close(send=False)
        assert services.streams.scheduler.queued == 0 and services.admission.live_streams == 0
        # Freed at once: the queued work was withdrawn, not run (fewer than the eight
        # inferences the audio asked for ran), and the connection did not read on (its
        # 30 s pause would have been waited for).
        assert services.metrics.batch_size._sum.get() < 8
        ended = services.metrics.streams_ended.labels("simple", "disconnected")._value.get()
        assert ended == 1


@pytest.mark.parametrize("interruptible", [True, False], ids=["interrupted", "waited"])
async def test_a_notice_during_a_wait_loses_and_hurries_no_message(
    services: Services, interruptible: bool
) -> None:
    loop = asyncio.get_running_loop()
    audio = chunks(noise(2.5))
    paused: list[float] = []

    def inbound() -> Iterator[str | bytes | Pause]:
        yield START
        yield from audio[:10]
        loop.call_later(0.1, services.draining.set)  # while the driver waits on the pause
        paused.append(loop.time())
        yield Pause(0.4)
        paused.append(loop.time())  # taken when the pause is over
        yield from audio[10:]
        yield STOP_CLOSE

    outcome = await run_connection(services, Route.SIMPLE, inbound(), interruptible=interruptible)
    assert paused[1] - paused[0] >= 0.4
    received = events(outcome)
    assert [e["code"] for e in received if e["type"] == "error"] == []
    assert_good([e for e in received if e["type"] != "error"])
    assert outcome.close == Close()
