#!/usr/bin/env bash
# The load figures quoted in docs/benchmarks.md. Run from the repository root with the
# project's virtual environment on PATH; every step starts (and stops) its own server.
#
#   benchmarks/load.sh [output folder] [step...]
#       steps: capacity search interim batching admission ratios overload
#
# Each step writes NAME.json and NAME.png to the output folder (default benchmarks/results).
# `streamer bench` exits 1 when a run's results are not clean (a refused stream counts), so
# the script carries on after a failing step and reports the statuses at the end.
set -uo pipefail

OUT=${1:-benchmarks/results}
shift || true
STEPS=${*:-capacity search interim batching admission ratios overload}
JFK=(-f tests/fixtures/audio/jfk.wav)
# Twice the capacity the overload step offers (about twice the search's result).
OVERLOAD_STREAMS=${OVERLOAD_STREAMS:-1200}
SPEECH=(-f tests/fixtures/audio/jfk.wav -f tests/fixtures/audio/harvard_16k.wav)
mkdir -p "$OUT"
status=()

run() {
    local name=$1
    shift
    echo "== $name: streamer bench $*" >&2
    streamer bench --spawn-server "$@" --json "$OUT/$name.json" --png "$OUT/$name.png"
    status+=("$name=$?")
}

for step in $STEPS; do
    case $step in
    capacity)
        # Segmented route, speedy model: 300 streams of real speech in real time, started
        # over 20 s, each 30 s or more (the files are repeated whole).
        run segmented-300 --route segmented "${SPEECH[@]}" -n 300 --ramp 20 --duration 30
        ;;
    search)
        # The largest count whose p95 final delay is at most a lone stream's median + 250 ms.
        run segmented-search --route segmented "${SPEECH[@]}" -n 200 --ramp 20 --duration 30 \
            --search --added-ms 250 --max-streams 600 --resolution 20
        ;;
    interim)
        # Interim results every 0.5 s of speech: their cadence under load.
        run segmented-interim --route segmented "${SPEECH[@]}" -n 100 --ramp 10 --duration 30 \
            --interim
        ;;
    batching)
        # A batch-friendly model (50 ms a call + 2 ms an item, batches of up to 64) on one
        # worker, 64 streams sent as fast as possible: one at a time, then dynamic batches.
        for batch in 1 64; do
            run "batching-$batch" --route simple -f tests/fixtures/audio/jfk.wav -n 64 \
                --speed 0 --chunk-ms 250 --timeout 300 \
                --server-env STREAMER_MODEL__DELAY=0.05 \
                --server-env STREAMER_MODEL__BATCH_ITEM_COST=0.002 \
                --server-env STREAMER_MODEL__BATCH_SIZE=64 \
                --server-env STREAMER_INFERENCE__WORKERS=1 \
                --server-env STREAMER_INFERENCE__MAX_BATCH=$batch \
                --server-env STREAMER_INFERENCE__MAX_WAIT_MS=5
        done
        ;;
    admission)
        # A limit of 150 streams: 150 streams, then the same 150 with 75 more arriving
        # (at the same pace) once the server is full.
        run admission-150 --route segmented "${SPEECH[@]}" -n 150 --ramp 10 --duration 30 \
            --server-env STREAMER_SERVER__MAX_STREAMS=150
        run admission-225 --route segmented "${SPEECH[@]}" -n 225 --ramp 15 --duration 30 \
            --server-env STREAMER_SERVER__MAX_STREAMS=150
        ;;
    ratios)
        # Pause-rich speech on a default server: CPU per stream-second as a ratio to the
        # floor measured in the same run, at 300 streams; then the largest count meeting
        # the objective, as a share of the floor's capacity, with each process's CPU and
        # streams at each trial's plateau (admission on the delays alone, so that only
        # latency limits: the capacity itself, which the estimate is held to).
        run ratio-300 --route segmented "${JFK[@]}" -n 300 --ramp 20 --duration 30
        run ratio-search --route segmented "${JFK[@]}" -n 300 --ramp 20 --duration 30 \
            --search --added-ms 250 --max-streams 1200 --resolution 25 \
            --server-env STREAMER_SERVER__ADMIT_WITHIN_ESTIMATE=false
        ;;
    overload)
        # Twice the capacity offered, arriving all at once and over 10 s, with the default
        # admission (within the capacity estimate) and on the delays alone.
        for ramp in 0 10; do
            run "overload-ramp$ramp" --route segmented "${JFK[@]}" -n "$OVERLOAD_STREAMS" \
                --ramp $ramp --duration 22
            run "overload-ramp$ramp-delays" --route segmented "${JFK[@]}" \
                -n "$OVERLOAD_STREAMS" --ramp $ramp --duration 22 \
                --server-env STREAMER_SERVER__ADMIT_WITHIN_ESTIMATE=false
        done
        ;;
    *)
        echo "unknown step: $step" >&2
        exit 2
        ;;
    esac
done
echo "exit statuses: ${status[*]}" >&2
