"""The committed gRPC stubs are what ``scripts/gen-proto.sh`` makes of the committed .proto."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PROTO = Path("streamer/protocol/proto")
STUBS = ("streamer_v1_pb2.py", "streamer_v1_pb2.pyi", "streamer_v1_pb2_grpc.py")


def test_the_committed_stubs_are_fresh(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools is a dev dependency")
    subprocess.run(
        ["sh", str(ROOT / "scripts" / "gen-proto.sh"), str(tmp_path)],
        check=True,
        env={**os.environ, "PYTHON": sys.executable},
    )
    for name in STUBS:
        fresh = (tmp_path / PROTO / name).read_bytes()
        committed = (ROOT / "src" / PROTO / name).read_bytes()
        assert committed == fresh, f"{name} is stale: run scripts/gen-proto.sh (make proto)"


def test_the_stubs_import_inside_the_package() -> None:
    from streamer.protocol.proto import streamer_v1_pb2, streamer_v1_pb2_grpc

    assert streamer_v1_pb2.DESCRIPTOR.package == "streamer.v1"
    assert (
        streamer_v1_pb2_grpc.StreamerStub.__module__
        == "streamer.protocol.proto.streamer_v1_pb2_grpc"
    )
