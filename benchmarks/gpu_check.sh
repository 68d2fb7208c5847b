#!/usr/bin/env bash
# The recognizer on a GPU, checked in one go (about ten minutes on a machine with one
# NVIDIA GPU, its driver, and a package registry within reach). Run from anywhere:
#
#   benchmarks/gpu_check.sh [figures file]      default: benchmarks/results/gpu-check.json
#
# 1. installs the project with its gpu extra (CTranslate2 and CUDA 12's cuBLAS wheel) and
#    the test tools into a virtual environment (VENV, default .venv; created if missing;
#    SKIP_INSTALL=1 uses it as it is, for a second run);
# 2. checks the device: nvidia-smi, then what whisper.device = "cuda" resolves to;
# 3. runs the recognizer's end-to-end tests (they run on the GPU: `auto` takes it) and the
#    GPU ones, which skip only without a usable GPU;
# 4. runs benchmarks/bench_whisper.py on the GPU and on the CPU with the same recordings:
#    the real-time streams at final delay p95 <= 2 s, TTFS at 1 and 32 streams, GPU
#    utilisation and memory, WER.
#
# Everything measured goes to the one figures file (JSON); the commands' output to a log
# beside it. The exit status is 0 when the device check and the tests passed.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
FIGURES=${1:-benchmarks/results/gpu-check.json}
VENV=${VENV:-.venv}
WORK=$(mktemp -d -t gpu-check-XXXXXX)
LOG=${FIGURES%.json}.log
mkdir -p "$(dirname "$FIGURES")"
: >"$LOG"
say() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$LOG" >&2; }

# Stream counts for the real-time search (a count that misses the objective ends it):
# the objective is at least 200 streams on one GPU; the CPU is measured for comparison.
GPU_STREAMS=${GPU_STREAMS:-"1 200 300"}
CPU_STREAMS=${CPU_STREAMS:-"64 128"}
# A few front-end processes carry the CPU side of a few hundred streams; they share one
# model process on the GPU (inference.pool = "shared").
GPU_CONFIG=${GPU_CONFIG:-"batched:SERVER__WORKERS=4,INFERENCE__POOL=shared"}
RAMP=${RAMP:-5}

if [ "${SKIP_INSTALL:-0}" != 1 ]; then
    say "installing .[dev,gpu] into $VENV"
    test -x "$VENV/bin/python" || python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip >>"$LOG" 2>&1
    if ! "$VENV/bin/python" -m pip install -q -e ".[dev,gpu]" >>"$LOG" 2>&1; then
        say "the install failed (see $LOG)"
        exit 1
    fi
fi
PY="$VENV/bin/python"

say "checking the device"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
    >"$WORK/gpu.txt" 2>>"$LOG" || echo "nvidia-smi failed" >"$WORK/gpu.txt"
cat "$WORK/gpu.txt" | tee -a "$LOG" >&2
"$PY" - >"$WORK/device.json" 2>>"$LOG" <<'EOF'
import json

from streamer.inference.device import DeviceUnavailable, load_cuda_libraries, place, probe_gpus

found = probe_gpus()
try:
    placement = place("cuda")
    chosen, why = placement.name, placement.reason
except DeviceUnavailable as error:
    chosen, why = None, str(error)
print(json.dumps({
    "cuda_devices": found.devices,
    "usable": found.usable,
    "why_not": found.why_not,
    "libraries_loaded": list(load_cuda_libraries()),
    "cuda_resolves_to": chosen,
    "reason": why,
}))
EOF
cat "$WORK/device.json" | tee -a "$LOG" >&2
device_ok=$("$PY" -c "import json,sys; print(int(json.load(open(sys.argv[1]))['usable']))" \
    "$WORK/device.json" 2>/dev/null || echo 0)
if [ "$device_ok" != 1 ]; then
    say "no usable GPU: the GPU tests would skip and the benchmark measure nothing; stopping"
fi

tests_status=1
if [ "$device_ok" = 1 ]; then
    say "end-to-end tests of the recognizer, on the GPU"
    timeout 240 "$PY" -m pytest -q -rs -p no:cacheprovider \
        tests/unit/inference/test_device.py \
        tests/e2e/test_e2e_whisper_device.py \
        tests/e2e/test_e2e_whisper.py \
        --junitxml="$WORK/tests.xml" >>"$LOG" 2>&1
    tests_status=$?
    tail -n 5 "$LOG" >&2

    say "benchmark on the GPU: streams $GPU_STREAMS, TTFS at 1 and 32"
    # shellcheck disable=SC2086  # the stream counts are words
    timeout 330 "$PY" benchmarks/bench_whisper.py --device cuda --configs "$GPU_CONFIG" \
        --streams $GPU_STREAMS --objective-ms 2000 --ttfs 1 32 --no-lone --ramp "$RAMP" \
        --json "$WORK/bench-gpu.json" >>"$LOG" 2>&1 || say "the GPU benchmark stopped early"

    say "benchmark on the CPU, the same recordings: streams $CPU_STREAMS, TTFS at 1"
    # shellcheck disable=SC2086
    timeout 200 "$PY" benchmarks/bench_whisper.py --device cpu --configs batched \
        --streams $CPU_STREAMS --objective-ms 2000 --ttfs 1 --no-lone --ramp "$RAMP" \
        --json "$WORK/bench-cpu.json" >>"$LOG" 2>&1 || say "the CPU benchmark stopped early"
fi

say "writing $FIGURES"
"$PY" - "$WORK" "$FIGURES" "$tests_status" >>"$LOG" 2>&1 <<'EOF'
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

work, figures, status = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])


def load(name):
    path = work / name
    return json.loads(path.read_text()) if path.is_file() else None


tests = None
if (work / "tests.xml").is_file():
    suite = ET.parse(work / "tests.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    tests = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    tests["exit_status"] = status
    tests["skipped_because"] = sorted(
        {s.get("message", "") for s in suite.iter("skipped")}
    )


def summary(bench):
    if bench is None:
        return None
    out = {}
    for key, run in bench["runs"].items():
        out[key] = {
            "realtime_streams_at_p95_2s": run.get("realtime_streams"),
            "loads": [
                {k: one[k] for k in ("streams", "device", "final_delay_ms", "wer", "gpu",
                                     "clean", "server_cores_mean")}
                for one in run["loads"]
            ],
            "ttfs": run.get("ttfs"),
        }
    out["memory_per_stream_mib"] = bench.get("memory_per_stream_mib")
    return out


figures.write_text(json.dumps({
    "gpu": (work / "gpu.txt").read_text().strip(),
    "device": load("device.json"),
    "tests": tests,
    "gpu_bench": summary(load("bench-gpu.json")),
    "cpu_bench": summary(load("bench-cpu.json")),
    "raw": {"gpu": load("bench-gpu.json"), "cpu": load("bench-cpu.json")},
}, indent=2) + "\n")
EOF
rm -rf "$WORK"
say "done: figures in $FIGURES, log in $LOG"
[ "$device_ok" = 1 ] && [ "$tests_status" = 0 ]
