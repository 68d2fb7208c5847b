#!/bin/sh
# Regenerate the Python stubs of the gRPC protocol from its .proto (`make proto`).
# Usage: scripts/gen-proto.sh [OUTPUT_ROOT]  (default: src, where the committed stubs live)
# The include root is src, so the stubs import each other as streamer.protocol.proto.*;
# tests/unit/protocol/test_proto_stubs.py fails when the committed stubs are stale.
set -eu
cd "$(dirname "$0")/.."
out="${1:-src}"
mkdir -p "$out"
"${PYTHON:-python3}" -m grpc_tools.protoc -I src \
    --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
    src/streamer/protocol/proto/streamer_v1.proto
