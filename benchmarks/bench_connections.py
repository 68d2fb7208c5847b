"""Server memory and sockets under connections that never finish: idle handshakes and
fragment floods.

Starts a server of its own, then:

1. opens ``--sockets`` TCP connections (default 1000) that never send a byte, and reports
   the server's RSS and open file descriptors with them open, after
   ``--handshake-timeout`` seconds have passed (the server should have closed them), and
   after the client has closed them too;
2. upgrades ``--floods`` WebSocket connections (default 3) and sends on each one binary
   message as a million 1-byte frames, sampling the server's RSS every 5 ms; reports the
   peak growth, how long it took, and the close code each connection got.

RSS is ``VmRSS`` from ``/proc/<pid>/status``.

    python benchmarks/bench_connections.py [--sockets 1000] [--floods 3] [--frames 1000000]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"
WS_HEAD = (
    b"GET /api/v1/simple HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def start_server(port: int, config: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "streamer.cli.main", "serve", "--no-grpc", "--workers", "1"),
            *("--host", HOST, "--port", str(port), "--config", str(config)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(400):
        try:
            urllib.request.urlopen(f"http://{HOST}:{port}/api/v1/health", timeout=1)
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("server did not start")


def frame(opcode: int, payload: bytes, fin: bool) -> bytes:
    return bytes([(0x80 if fin else 0) | opcode, 0x80 | len(payload)]) + b"\0\0\0\0" + payload


def idle_sockets(pid: int, port: int, count: int, timeout: float) -> None:
    base_rss, base_fds = rss_mib(pid), fds(pid)
    held = [socket.create_connection((HOST, port)) for _ in range(count)]
    time.sleep(1.0)
    print(
        f"{count} idle sockets open: RSS {rss_mib(pid):.1f} MiB "
        f"({rss_mib(pid) - base_rss:+.1f}), fds {fds(pid)} ({fds(pid) - base_fds:+d})"
    )
    time.sleep(timeout)  # plus the second above
    print(
        f"after the handshake timeout ({timeout:g} s): RSS {rss_mib(pid):.1f} MiB "
        f"({rss_mib(pid) - base_rss:+.1f}), fds {fds(pid)} ({fds(pid) - base_fds:+d})"
    )
    for sock in held:
        sock.close()
    time.sleep(1.0)
    print(
        f"after the client closed them: RSS {rss_mib(pid):.1f} MiB "
        f"({rss_mib(pid) - base_rss:+.1f}), fds {fds(pid)} ({fds(pid) - base_fds:+d})"
    )


def floods(pid: int, port: int, count: int, frames: int) -> None:
    data = frame(2, b"\0", False) + frame(0, b"\0", False) * (frames - 2) + frame(0, b"\0", True)
    sockets = []
    for _ in range(count):
        sock = socket.create_connection((HOST, port))
        sock.sendall(WS_HEAD)
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        sockets.append(sock)
    base = rss_mib(pid)
    peak = base
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_mib(pid))
            time.sleep(0.005)

    def send(sock: socket.socket) -> None:
        try:
            sock.sendall(data)
        except OSError:
            pass

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    began = time.perf_counter()
    senders = [threading.Thread(target=send, args=(s,), daemon=True) for s in sockets]
    for thread in senders:
        thread.start()
    codes = []
    for sock in sockets:
        sock.settimeout(120)
        reply = b""
        try:
            while chunk := sock.recv(65536):
                reply += chunk
                if reply[:1] == b"\x88" and len(reply) >= 4:
                    break
        except (ConnectionResetError, TimeoutError):
            pass
        codes.append(int.from_bytes(reply[2:4], "big") if reply[:1] == b"\x88" else None)
    for thread in senders:
        thread.join(120)
    elapsed = time.perf_counter() - began
    time.sleep(0.2)
    done.set()
    sampler.join()
    after = rss_mib(pid)
    for sock in sockets:
        sock.close()
    print(
        f"{count} floods of {frames} 1-byte frames: peak RSS {peak:.1f} MiB "
        f"({peak - base:+.1f}), {after - base:+.1f} after, {elapsed:.1f} s, close codes {codes}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--handshake-timeout", type=float, default=2.0)
    parser.add_argument("--floods", type=int, default=3)
    parser.add_argument("--frames", type=int, default=1_000_000)
    args = parser.parse_args()

    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "streamer.toml"
        config.write_text(
            f"[server]\nhandshake_timeout_seconds = {args.handshake_timeout}\n"
            f"max_connections = {args.sockets + 100}\n"
        )
        server = start_server(port, config)
        try:
            print(f"server at start: RSS {rss_mib(server.pid):.1f} MiB, fds {fds(server.pid)}")
            idle_sockets(server.pid, port, args.sockets, args.handshake_timeout)
            floods(server.pid, port, args.floods, args.frames)
        finally:
            server.terminate()
            server.wait(15)


if __name__ == "__main__":
    main()
