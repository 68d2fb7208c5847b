"""Connection-level limits on a real server: raw sockets that never finish a request, a
request head sent a byte at a time, the connection cap, oversized and over-fragmented
WebSocket messages (server memory read from ``/proc``), and peers stopped with SIGSTOP on
both transports. Every timeout is set small here; nothing waits for a production default.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import HOST, ServerProcess, start_server
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

pytestmark = pytest.mark.e2e

_WS_HEAD = (
    "GET /api/v1/simple HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n\r\n"
)
START = json.dumps(
    {
        "request": "start",
        "format": {"channels": 1, "sample_rate": 16000, "bit_depth": 16},
    }
)


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """``streamer serve`` with the test model and ``[server]`` settings of the test's own."""
    started: list[ServerProcess] = []

    def _launch(**server: object) -> ServerProcess:
        env = {f"STREAMER_SERVER__{k.upper()}": json.dumps(v) for k, v in server.items()}
        running = start_server(tmp_path / f"server{len(started)}", env=env, grpc=True)
        started.append(running)
        return running

    yield _launch
    for running in started:
        running.stop()


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout} s")
        time.sleep(0.05)


def _read_all(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection (or ``timeout``)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def _closed_sockets(sockets: list[socket.socket], timeout: float) -> list[bytes]:
    """Wait for the server to close every socket; what each one received."""
    received = [b""] * len(sockets)
    open_ = set(range(len(sockets)))
    for sock in sockets:
        sock.setblocking(False)
    deadline = time.monotonic() + timeout
    while open_ and time.monotonic() < deadline:
        for i in list(open_):
            try:
                chunk = sockets[i].recv(65536)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                chunk = b""
            if chunk:
                received[i] += chunk
            else:
                open_.discard(i)
        time.sleep(0.02)
    assert not open_, f"{len(open_)} of {len(sockets)} sockets still open after {timeout} s"
    return received


def _speech_pcm(seconds: float) -> bytes:
    t = np.arange(int(16000 * seconds)) / 16000
    return (np.sin(2 * np.pi * 220 * t) * 8000).astype("<i2").tobytes()


async def _one_stream(url: str, seconds: float = 1.0) -> list[dict[str, object]]:
    async with connect(url, compression=None) as ws:
        await ws.send(START)
        pcm = _speech_pcm(seconds)
        for i in range(0, len(pcm), 3200):
            await ws.send(pcm[i : i + 3200])
        await ws.send(json.dumps({"request": "stop", "disconnect": True}))
        return [json.loads(m) async for m in ws]


def _covered(events: list[dict[str, object]]) -> float:
    finals = [e for e in events if e["type"] == "segment" and e.get("is_final", True)]
    return sum(float(str(e["end_time"])) - float(str(e["start_time"])) for e in finals)


# Handshakes.


def test_idle_and_byte_drip_sockets_are_closed_after_the_handshake_timeout(
    launch: Callable[..., ServerProcess],
) -> None:
    server = launch(handshake_timeout_seconds=1.0)
    fds_before = server.fds()
    idle = [socket.create_connection((HOST, server.port)) for _ in range(200)]
    drip = [socket.create_connection((HOST, server.port)) for _ in range(50)]
    half = [socket.create_connection((HOST, server.port)) for _ in range(50)]
    for sock in half:  # a request head that stops half way
        sock.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n")
    stop = threading.Event()

    def dribble() -> None:  # slowloris: a byte of a never-ending header every 50 ms
        while not stop.is_set():
            for sock in drip:
                try:
                    sock.send(b"x")
                except OSError:
                    pass
            time.sleep(0.05)

    for sock in drip:
        sock.sendall(b"GET / HTTP/1.1\r\nX-Long: ")
    dripper = threading.Thread(target=dribble, daemon=True)
    dripper.start()
    began = time.monotonic()
    try:
        received = _closed_sockets(idle + drip + half, timeout=15)
    finally:
        stop.set()
        dripper.join()
    # All were closed, with a 408, although the drip sockets never stopped sending.
    assert time.monotonic() - began < 15
    assert all(r.startswith(b"HTTP/1.1 408") for r in received), set(received)
    for sock in idle + drip + half:
        sock.close()
    _wait(lambda: server.fds() <= fds_before + 5, 10, "the server did not free its sockets")
    # A client that does finish its request in time is served, and streams work.
    assert httpx.get(f"http://{HOST}:{server.port}/api/v1/health", timeout=5).status_code == 200
    assert abs(_covered(asyncio.run(_one_stream(server.ws()))) - 1.0) < 0.01


def test_a_kept_alive_connection_gets_the_same_deadline_for_its_next_request(
    launch: Callable[..., ServerProcess],
) -> None:
    server = launch(handshake_timeout_seconds=1.0)
    with socket.create_connection((HOST, server.port)) as sock:
        sock.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(5)
        first = b""
        while b"\r\n\r\n" not in first:
            first += sock.recv(65536)
        head, _, body = first.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        while len(body) < length:
            body += sock.recv(65536)
        sock.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n")  # and no more
        began = time.monotonic()
        rest = _read_all(sock, timeout=10)
        assert rest.startswith(b"HTTP/1.1 408"), rest
        assert time.monotonic() - began < 5


def test_idle_sockets_on_the_grpc_port_are_closed_after_the_handshake_timeout(
    launch: Callable[..., ServerProcess],
) -> None:
    server = launch(handshake_timeout_seconds=1.0)
    idle = [socket.create_connection((HOST, server.grpc_port)) for _ in range(100)]
    preface = [socket.create_connection((HOST, server.grpc_port)) for _ in range(20)]
    for sock in preface:  # half of the HTTP/2 connection preface
        sock.sendall(b"PRI * HTTP/2.0\r\n")
    _closed_sockets(idle + preface, timeout=15)
    for sock in idle + preface:
        sock.close()


# The connection cap.


def test_connections_past_the_cap_are_refused_while_streams_go_on(
    launch: Callable[..., ServerProcess],
) -> None:
    server = launch(max_connections=20, handshake_timeout_seconds=30.0)

    async def scenario() -> None:
        async with connect(server.ws(), compression=None) as ws:
            await ws.send(START)
            pcm = _speech_pcm(2.0)
            await ws.send(pcm[: len(pcm) // 2])
            # Fill the server up with idle sockets: 19 more are let in, the rest refused.
            held = [socket.create_connection((HOST, server.port)) for _ in range(40)]
            refused = _closed_sockets(held[19:], timeout=10)
            assert all(r.startswith(b"HTTP/1.1 503") for r in refused)
            with pytest.raises(Exception) as caught:
                async with connect(server.ws(), compression=None, open_timeout=5):
                    pass
            assert "503" in str(caught.value)
            # The stream that was already open carries on to the end.
            await ws.send(pcm[len(pcm) // 2 :])
            await ws.send(json.dumps({"request": "stop", "disconnect": True}))
            events = [json.loads(m) async for m in ws]
            assert abs(_covered(events) - 2.0) < 0.01
            assert events[-1]["type"] == "done"
            for sock in held:
                sock.close()

    asyncio.run(scenario())
    # Once the idle sockets are gone, new connections are served again.
    _wait(
        lambda: httpx.get(f"http://{HOST}:{server.port}/api/v1/health").status_code == 200,
        10,
        "the server did not take new connections again",
    )


def test_connections_past_the_cap_on_the_grpc_port_are_closed(
    launch: Callable[..., ServerProcess],
) -> None:
    server = launch(max_connections=10, handshake_timeout_seconds=60.0)
    held = [socket.create_connection((HOST, server.grpc_port)) for _ in range(10)]
    time.sleep(0.5)  # the ten are accepted before the rest arrive
    extra = [socket.create_connection((HOST, server.grpc_port)) for _ in range(10)]
    _closed_sockets(extra, timeout=10)  # long before the handshake timeout
    try:
        for sock in held:  # the first ten are still served: a preface gets an answer
            sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            sock.settimeout(30)
            assert sock.recv(65536) != b""  # the server's HTTP/2 settings, not end of file
    finally:
        for sock in held + extra:
            sock.close()


# Message sizes and fragments.


def _frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """A client frame (masked, with a zero key so the payload stays as it is)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


def _upgraded(port: int) -> socket.socket:
    sock = socket.create_connection((HOST, port))
    sock.sendall(_WS_HEAD.format(host=HOST).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def _close_code(data: bytes) -> tuple[int, str]:
    """The code and reason of the server's close frame, the first frame it sent here."""
    assert data[:1] == b"\x88", data[:20]
    n = data[1] & 0x7F
    return int.from_bytes(data[2:4], "big"), data[4 : 2 + n].decode()


@pytest.mark.parametrize(
    ("kind", "size", "code"),
    [
        ("text", 65536, None),
        ("text", 65537, 1009),
        ("binary", 4096, None),
        ("binary", 4097, 1009),
    ],
)
async def test_text_and_binary_messages_are_capped_separately(
    launch: Callable[..., ServerProcess], kind: str, size: int, code: int | None
) -> None:
    server = launch(max_text_bytes=65536, max_message_bytes=4096)
    async with connect(server.ws(), compression=None, max_size=None) as ws:
        await ws.send(START)
        assert json.loads(await ws.recv())["type"] == "ready"
        if kind == "text":
            empty = json.dumps({"request": "keepalive", "pad": ""})
            text = json.dumps({"request": "keepalive", "pad": "x" * (size - len(empty))})
            assert len(text) == size
            await ws.send(text)
        else:
            await ws.send(b"\0" * size)
        if code is None:
            await ws.send(json.dumps({"request": "stop", "disconnect": True}))
        # A refused message is answered with the close: the client writes nothing more, as a
        # client still writing when the server closes may see its reset (1006) first.
        try:
            async for _ in ws:
                pass
        except ConnectionClosed:
            pass
        if code is None:
            assert ws.close_code != 1009
        else:
            assert ws.close_code == code
            assert "bytes" in (ws.close_reason or "")  # which limit it was


def test_a_fragment_flood_is_refused_without_costing_memory(
    launch: Callable[..., ServerProcess],
) -> None:
    """Three connections each send one binary message as a million 1-byte frames."""
    server = launch()
    count = 1_000_000
    flood = (
        _frame(2, b"\0", fin=False)
        + _frame(0, b"\0", fin=False) * (count - 2)
        + _frame(0, b"\0", fin=True)
    )
    sockets = [_upgraded(server.port) for _ in range(3)]
    baseline = server.rss_kib()
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, server.rss_kib())
            time.sleep(0.005)

    def send(sock: socket.socket) -> None:
        try:
            sock.sendall(flood)
        except OSError:  # the server closed the connection part way through
            pass

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    senders = [threading.Thread(target=send, args=(s,), daemon=True) for s in sockets]
    for thread in senders:
        thread.start()
    try:
        replies = [_read_all(sock, timeout=30) for sock in sockets]
    finally:
        done.set()
        sampler.join()
    for thread in senders:
        thread.join(30)
    for sock in sockets:
        sock.close()
    for reply in replies:
        code, reason = _close_code(reply)
        assert code == 1009
        assert "fragments" in reason
    growth_mib = (peak - baseline) / 1024
    assert growth_mib < 20, f"the server grew by {growth_mib:.1f} MiB"  # it was 123 MiB


async def test_a_fragmented_message_within_the_limits_is_assembled(
    launch: Callable[..., ServerProcess],
) -> None:
    server = launch()
    pcm = _speech_pcm(2.0)
    pieces = [pcm[i : i + 64] for i in range(0, len(pcm), 64)]  # 1000 frames
    async with connect(server.ws(), compression=None) as ws:
        await ws.send(START)
        await ws.send(pieces)  # one message, one frame per piece
        await ws.send(json.dumps({"request": "stop", "disconnect": True}))
        events = [json.loads(m) async for m in ws]
    assert abs(_covered(events) - 2.0) < 0.01
    assert events[-1]["type"] == "done"


# Peers that stop answering.

_WS_PEER = """
import asyncio, json, sys
from websockets.asyncio.client import connect
async def main():
    async with connect(sys.argv[1], compression=None, ping_interval=None) as ws:
        await ws.send(sys.argv[2])
        print(json.loads(await ws.recv())["type"], flush=True)
        await asyncio.sleep(3600)
asyncio.run(main())
"""

_GRPC_PEER = """
import asyncio, sys
import grpc
from streamer.protocol.proto import streamer_v1_pb2 as pb
from streamer.protocol.proto import streamer_v1_pb2_grpc as pb_grpc
async def main():
    async with grpc.aio.insecure_channel(sys.argv[1]) as channel:
        call = pb_grpc.StreamerStub(channel).Simple()
        config = pb.StreamConfig(
            format=pb.AudioFormat(channels=1, sample_rate=16000, bit_depth=16)
        )
        await call.write(pb.StreamRequest(config=config))
        event = await call.read()
        print(event.WhichOneof("event"), flush=True)
        await asyncio.sleep(3600)
asyncio.run(main())
"""


def _stopped_peer(server: ServerProcess, script: str, *args: str) -> subprocess.Popen[str]:
    peer = subprocess.Popen(
        [sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True
    )
    assert peer.stdout is not None
    assert peer.stdout.readline().strip() == "ready"
    _wait(lambda: server.gauge("streamer_streams_active") == 1, 10, "no live stream")
    peer.send_signal(signal.SIGSTOP)
    return peer


@pytest.mark.parametrize("transport", ["websocket", "grpc"])
def test_a_peer_stopped_with_sigstop_is_dropped_by_keepalive(
    launch: Callable[..., ServerProcess], transport: str
) -> None:
    server = launch(
        ws_ping_interval_seconds=0.5,
        ws_ping_timeout_seconds=1.0,
        grpc_keepalive_seconds=0.5,
        grpc_keepalive_timeout_seconds=1.0,
    )
    if transport == "websocket":
        peer = _stopped_peer(server, _WS_PEER, server.ws(), START)
    else:
        peer = _stopped_peer(server, _GRPC_PEER, f"{HOST}:{server.grpc_port}")
    try:
        _wait(
            lambda: server.gauge("streamer_streams_active") == 0,
            15,
            "the stopped peer's stream was not freed",
        )
        assert server.gauge("streamer_connections_active") == 0
    finally:
        peer.kill()
        peer.wait()
        assert peer.stdout is not None
        peer.stdout.close()
