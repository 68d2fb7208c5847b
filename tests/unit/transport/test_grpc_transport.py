"""The gRPC transport in process: the app's lifespan serves it on a free port, real calls.

Each documented status is checked with a good stream after it on the same channel.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from streamer.app import create_app, drain
from streamer.client import load_audio
from streamer.codecs.v1_proto import event_to_dict
from streamer.config import ServerSettings, Settings
from streamer.protocol.messages import TurnEventModel
from streamer.protocol.proto import streamer_v1_pb2 as pb
from streamer.protocol.proto import streamer_v1_pb2_grpc as pb_grpc
from streamer.services import Services
from streamer.transport.grpc import ERROR_CODE_KEY, SERVICE_NAME

AUDIO = Path(__file__).resolve().parents[2] / "fixtures" / "audio"
RATE = 16000
FORMAT = pb.AudioFormat(channels=1, sample_rate=RATE, bit_depth=16)
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@dataclass
class Running:
    services: Services
    channel: grpc.aio.Channel
    stub: pb_grpc.StreamerStub


@contextlib.asynccontextmanager
async def running(
    server: dict[str, Any] | None = None, **sections: dict[str, Any]
) -> AsyncIterator[Running]:
    """The app's lifespan (services and the gRPC server on a free port) and a channel to it."""
    settings = Settings.model_validate(
        {
            "server": {"host": "127.0.0.1", "grpc_port": 0, **(server or {})},
            "inference": {"workers": 2},
            **sections,
        }
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        target = f"127.0.0.1:{app.state.grpc_port}"
        async with grpc.aio.insecure_channel(target) as channel:
            yield Running(app.state.services, channel, pb_grpc.StreamerStub(channel))


@dataclass
class Outcome:
    events: list[dict[str, Any]]
    code: grpc.StatusCode
    details: str
    error_code: str | None

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]


async def outcome(call: Any) -> Outcome:
    events: list[dict[str, Any]] = []
    with contextlib.suppress(grpc.aio.AioRpcError):
        while (message := await call.read()) is not grpc.aio.EOF:
            event = event_to_dict(message)
            assert event is not None
            events.append(event)
    trailing = dict(await call.trailing_metadata() or ())
    return Outcome(events, await call.code(), await call.details(), trailing.get(ERROR_CODE_KEY))


def noise(seconds: float, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return rng.normal(0, 3000, round(seconds * RATE)).astype("<i2").tobytes()


def requests(
    config: pb.StreamConfig | None = None, audio: bytes = b"", chunk: int = 3200, stop: bool = True
) -> list[pb.StreamRequest]:
    out = [pb.StreamRequest(config=config or pb.StreamConfig(format=FORMAT))]
    out += [pb.StreamRequest(audio=audio[i : i + chunk]) for i in range(0, len(audio), chunk)]
    if stop:
        out.append(pb.StreamRequest(stop=pb.Stop()))
    return out


async def stream(
    stub: pb_grpc.StreamerStub, reqs: Iterable[pb.StreamRequest], route: str = "Simple", **kw: Any
) -> Outcome:
    return await outcome(getattr(stub, route)(iter(list(reqs)), **kw))


async def refused(
    stub: pb_grpc.StreamerStub, messages: Iterable[pb.StreamRequest], route: str = "Simple"
) -> Outcome:
    """Write ``messages`` (the last one is refused), then read to the end of the call.

    Nothing is being written when the call ends: grpc.aio turns the status of a call that
    ends during a write into INTERNAL (grpc/grpc#36066).
    """
    call = getattr(stub, route)()
    for message in messages:
        await call.write(message)
    result = await outcome(call)
    errors = [e for e in result.events if e["type"] == "error"]
    # Told in-band too, as on the WebSocket.
    assert [(e["code"], e["message"]) for e in errors] == [(result.error_code, result.details)]
    return result


def assert_good(result: Outcome, seconds: float = 2.5) -> None:
    assert result.code is grpc.StatusCode.OK, result
    kinds = result.types()
    assert kinds[0] == "ready" and kinds[-1] == "done", kinds
    assert result.events[-1]["audio_seconds"] == seconds
    counts = sum(e["count"] for e in result.events if e["type"] == "segment")
    assert counts == round(seconds * RATE)


# Streams.


async def test_a_simple_stream_gets_ready_segments_and_done() -> None:
    async with running() as server:
        result = await stream(server.stub, requests(audio=noise(2.5)))
    assert_good(result)
    assert result.types() == ["ready", "segment", "segment", "segment", "done"]
    assert result.events[0]["route"] == "simple"
    spans = [(e["start_time"], e["end_time"]) for e in result.events if e["type"] == "segment"]
    assert spans == [(0.0, 1.0), (1.0, 2.0), (2.0, 2.5)]


async def test_the_segmented_route_finds_speech() -> None:
    audio = load_audio(AUDIO / "big_dog_8k.wav")
    config = pb.StreamConfig(
        format=pb.AudioFormat(channels=1, sample_rate=audio.sample_rate, bit_depth=16)
    )
    async with running() as server:
        result = await stream(server.stub, requests(config, audio.data), route="Segmented")
    assert result.code is grpc.StatusCode.OK
    kinds = result.types()
    assert kinds[0] == "ready" and kinds[-1] == "done"
    assert {"active", "segment", "inactive"} <= set(kinds)
    assert kinds.index("active") < kinds.index("inactive")


async def test_the_segmented_route_detects_turns_when_the_config_asks() -> None:
    """A real gRPC call with turn detection: the turns of real speech, each opened with
    ``start`` and closed with ``end`` (its trigger), in the v1 JSON shape."""
    audio = load_audio(AUDIO / "jfk.wav")
    config = pb.StreamConfig(
        format=pb.AudioFormat(channels=1, sample_rate=audio.sample_rate, bit_depth=16),
        turn_detection=pb.TurnDetection(eager_eot_threshold=0.5, eot_threshold=0.8),
    )
    async with running() as server:
        result = await stream(server.stub, requests(config, audio.data), route="Segmented")
    assert result.code is grpc.StatusCode.OK
    turns = [e for e in result.events if e["type"] == "turn"]
    kinds = [e["event"] for e in turns]
    assert kinds[0] == "start" and kinds[-1] == "end", kinds
    assert kinds.count("start") == kinds.count("end")
    for turn in turns:
        TurnEventModel.model_validate(turn)
        assert ("trigger" in turn) is (turn["event"] == "end")
    assert result.types()[-1] == "done"


async def test_turn_detection_on_the_simple_route_is_refused() -> None:
    config = pb.StreamConfig(format=FORMAT, turn_detection=pb.TurnDetection())
    async with running() as server:
        result = await refused(server.stub, [pb.StreamRequest(config=config)])
    assert result.error_code == "invalid_message" and "turn_detection" in result.details


async def test_ending_the_requests_stops_the_stream() -> None:
    async with running() as server:
        result = await stream(server.stub, requests(audio=noise(2.5), stop=False))
    assert_good(result)


async def test_finalize_and_keepalive_keep_the_stream_going() -> None:
    reqs = requests(audio=noise(0.5), stop=False)
    reqs += [pb.StreamRequest(finalize=pb.Finalize()), pb.StreamRequest(keepalive=pb.Keepalive())]
    reqs += [pb.StreamRequest(audio=noise(0.5, seed=1)), pb.StreamRequest(stop=pb.Stop())]
    async with running() as server:
        result = await stream(server.stub, reqs)
    assert result.code is grpc.StatusCode.OK
    spans = [(e["start_time"], e["end_time"]) for e in result.events if e["type"] == "segment"]
    assert spans == [(0.0, 0.5), (0.5, 1.0)]


async def test_model_failures_stay_in_band() -> None:
    async with running(model={"failure_rate": 1.0}) as server:
        result = await stream(server.stub, requests(audio=noise(2.0)))
    assert result.code is grpc.StatusCode.OK
    assert result.types() == ["ready", "error", "error", "done"]
    assert {e["code"] for e in result.events if e["type"] == "error"} == {"model_error"}


def trace_of(ready: dict[str, Any]) -> str:
    """The trace id of a ``ready``'s traceparent (the stream's span is its own)."""
    return str(ready["trace_id"]).split("-")[1]


async def test_the_traceparent_comes_from_the_config_or_else_the_metadata() -> None:
    other = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    metadata = (("traceparent", TRACEPARENT),)
    async with running() as server:
        from_metadata = await stream(server.stub, requests(), metadata=metadata)
        own = pb.StreamConfig(format=FORMAT, trace_id=other)
        from_config = await stream(server.stub, requests(own), metadata=metadata)
    assert trace_of(from_metadata.events[0]) == TRACEPARENT.split("-")[1]
    assert trace_of(from_config.events[0]) == other.split("-")[1]


# Statuses, each followed by a good stream on the same channel.


@pytest.mark.parametrize(
    ("config", "error_code"),
    [
        (pb.StreamConfig(), "invalid_message"),
        (pb.StreamConfig(format=pb.AudioFormat(channels=0, sample_rate=RATE)), "invalid_format"),
    ],
)
async def test_an_invalid_config_is_invalid_argument(
    config: pb.StreamConfig, error_code: str
) -> None:
    async with running() as server:
        result = await refused(server.stub, [pb.StreamRequest(config=config)])
        good = await stream(server.stub, requests(audio=noise(2.5)))
    assert result.code is grpc.StatusCode.INVALID_ARGUMENT
    assert result.error_code == error_code
    assert result.types() == ["error"]
    assert_good(good)
    assert server.services.admission.live_streams == 0


async def test_a_request_with_nothing_set_is_invalid_argument() -> None:
    async with running() as server:
        result = await refused(server.stub, [pb.StreamRequest()])
        good = await stream(server.stub, requests(audio=noise(2.5)))
    assert result.code is grpc.StatusCode.INVALID_ARGUMENT
    assert result.error_code == "invalid_message"
    assert_good(good)


@pytest.mark.parametrize(
    ("first", "error_code"),
    [
        (pb.StreamRequest(audio=b"\0\0"), "not_started"),
        (pb.StreamRequest(stop=pb.Stop()), "not_started"),
        (pb.StreamRequest(finalize=pb.Finalize()), "not_started"),
    ],
)
async def test_audio_before_the_config_is_failed_precondition(
    first: pb.StreamRequest, error_code: str
) -> None:
    async with running() as server:
        result = await refused(server.stub, [first])
        good = await stream(server.stub, requests(audio=noise(2.5)))
    assert result.code is grpc.StatusCode.FAILED_PRECONDITION
    assert result.error_code == error_code
    assert "expected a 'start' request" in result.details
    assert_good(good)


async def test_a_second_config_is_failed_precondition_and_frees_the_stream() -> None:
    reqs = requests(audio=noise(0.5), stop=False) + requests(stop=False)
    async with running() as server:
        result = await refused(server.stub, reqs)
        assert server.services.admission.live_streams == 0
        good = await stream(server.stub, requests(audio=noise(2.5)))
    assert result.code is grpc.StatusCode.FAILED_PRECONDITION
    assert result.error_code == "already_started"
    assert result.types()[0] == "ready"
    assert_good(good)


async def test_over_capacity_is_resource_exhausted() -> None:
    async with running(server={"max_streams": 1}) as server:
        first = server.stub.Simple()
        await first.write(pb.StreamRequest(config=pb.StreamConfig(format=FORMAT)))
        assert event_to_dict(await first.read()) is not None  # ready: the one stream is open
        over = await refused(server.stub, requests(stop=False))
        await first.write(pb.StreamRequest(audio=noise(2.5)))
        await first.write(pb.StreamRequest(stop=pb.Stop()))
        await first.done_writing()
        finished = await outcome(first)
        good = await stream(server.stub, requests(audio=noise(2.5)))
    assert over.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert over.error_code == "overloaded"
    assert over.types() == ["error"]
    assert finished.code is grpc.StatusCode.OK and finished.types()[-1] == "done"
    assert_good(good)


async def test_a_message_too_big_is_resource_exhausted_and_frees_the_stream() -> None:
    async with running() as server:
        call = server.stub.Simple()
        await call.write(pb.StreamRequest(config=pb.StreamConfig(format=FORMAT)))
        with contextlib.suppress(grpc.aio.AioRpcError):
            await call.write(pb.StreamRequest(audio=bytes(2 << 20)))
        result = await outcome(call)
        async with asyncio.timeout(2):
            while server.services.admission.live_streams or server.services.connections:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        good = await stream(server.stub, requests(audio=noise(2.5)))
    assert result.code is grpc.StatusCode.RESOURCE_EXHAUSTED  # refused by gRPC itself
    assert_good(good)


async def health(channel: grpc.aio.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
    return int(reply.status)


async def test_draining_flushes_open_streams_then_ends_them_unavailable() -> None:
    async with running(server={"drain_seconds": 0.3}) as server:
        assert await health(server.channel, SERVICE_NAME) == health_pb2.HealthCheckResponse.SERVING
        open_call = server.stub.Simple()
        await open_call.write(pb.StreamRequest(config=pb.StreamConfig(format=FORMAT)))
        await open_call.write(pb.StreamRequest(audio=noise(2.5)))
        events = [event_to_dict(await open_call.read()) for _ in range(3)]  # ready, 2 segments
        draining = asyncio.create_task(drain(server.services, ServerSettings(drain_seconds=0.3)))
        await asyncio.sleep(0.05)
        late = await refused(server.stub, requests(stop=False))
        not_serving = await health(server.channel), await health(server.channel, SERVICE_NAME)
        drained = await outcome(open_call)
        await asyncio.wait_for(draining, 5)
        assert server.services.admission.live_streams == 0 and not server.services.connections
    assert [e["type"] for e in events if e] == ["ready", "segment", "segment"]
    # The open stream got its last final and done before the status.
    assert drained.types() == ["segment", "done"]
    assert drained.events[0]["end_time"] == 2.5
    assert drained.code is grpc.StatusCode.UNAVAILABLE
    assert drained.error_code == "shutting_down"
    assert late.code is grpc.StatusCode.UNAVAILABLE
    assert late.error_code == "shutting_down"
    assert not_serving == (health_pb2.HealthCheckResponse.NOT_SERVING,) * 2


async def test_a_cancelled_call_leaves_no_inference_running_or_queued() -> None:
    slow = {"delay": 0.3}
    async with running(model=slow, inference={"workers": 1}) as server:
        scheduler = server.services.streams.scheduler
        call = server.stub.Simple()
        await call.write(pb.StreamRequest(config=pb.StreamConfig(format=FORMAT)))
        ready = event_to_dict(await call.read())
        assert ready is not None
        stream_id = ready["session_id"]
        writing = asyncio.create_task(call.write(pb.StreamRequest(audio=noise(10.0))))
        async with asyncio.timeout(5):
            while scheduler.queued_for(stream_id) < 2:  # noqa: ASYNC110 (polling a count)
                await asyncio.sleep(0.01)
        call.cancel()
        # At once: well before the queued inferences (0.3 s each) could have run.
        async with asyncio.timeout(0.25):
            while scheduler.queued or server.services.admission.live_streams:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        async with asyncio.timeout(1):  # the one that had started finishes
            while scheduler.busy:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.4)  # and nothing of the stream comes back
        assert scheduler.queued == scheduler.busy == 0
        assert scheduler.queued_for(stream_id) == 0
        assert not server.services.connections
        assert server.services.admission.health()["queued_inferences"] == 0
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await writing
        good = await stream(server.stub, requests(audio=noise(1.0)))
    assert good.code is grpc.StatusCode.OK


# The server around the service.


async def test_health_and_reflection_are_served() -> None:
    async with running() as server:
        serving = health_pb2.HealthCheckResponse.SERVING
        assert await health(server.channel) == serving
        assert await health(server.channel, SERVICE_NAME) == serving
        stub = reflection_pb2_grpc.ServerReflectionStub(server.channel)
        ask = reflection_pb2.ServerReflectionRequest(list_services="")
        replies = [r async for r in stub.ServerReflectionInfo(iter([ask]))]
    names = {s.name for s in replies[0].list_services_response.service}
    assert names == {
        "streamer.v1.Streamer",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }


async def test_grpc_can_be_switched_off() -> None:
    settings = Settings.model_validate({"server": {"grpc_enabled": False}})
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        assert not hasattr(app.state, "grpc_port")
