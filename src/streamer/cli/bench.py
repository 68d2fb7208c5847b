"""``streamer bench``: the load generator.

Runs N concurrent streams of real speech against a server (one it starts itself with
``--spawn-server``, or one already running), checks every stream's results against what
its audio must produce, and reports latency percentiles, throughput and the server's CPU
as a table, JSON and a PNG chart. ``--search`` finds the largest stream count whose p95
final delay meets an objective. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from websockets.exceptions import WebSocketException

from streamer.bench.expected import ExpectedResults, decode_channels
from streamer.bench.floor import FLOOR_STREAMS, Floor, against_floor, measure_floor
from streamer.bench.report import (
    CHARTS_HINT,
    charts_available,
    plot_run,
    plot_search,
    run_document,
    search_document,
    search_table,
    table,
    write_json,
)
from streamer.bench.runner import (
    LoadSpec,
    Progress,
    RunResult,
    machine,
    prepare_audio,
    run_load,
    search,
    stderr_progress,
)
from streamer.segmentation.vad import DEFAULT_MAX_BATCH, VAD_SAMPLE_RATE
from streamer.spawn import spawn_server

ROUTES = ("simple", "segmented")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {error}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _env_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``streamer bench``."""
    if __doc__:
        parser.description = __doc__.split("\n\n")[1].replace("\n", " ").replace("``", "")
    target = parser.add_argument_group("server")
    where = target.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="server to load: ws://HOST:PORT (the route is added)")
    where.add_argument(
        "--spawn-server",
        action="store_true",
        help="start a fresh server for the run (for each run of a search), then stop it",
    )
    target.add_argument(
        "--route", choices=ROUTES, default="segmented", help="route to load (default segmented)"
    )
    target.add_argument(
        "--server-pid", type=int, help="process id of the server, to measure its CPU use"
    )
    target.add_argument("--server-config", type=Path, help="TOML settings for --spawn-server")
    target.add_argument(
        "--server-env",
        type=_env_pair,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment for --spawn-server, e.g. STREAMER_MODEL__DELAY=0.05 (repeatable)",
    )

    load = parser.add_argument_group("load")
    load.add_argument(
        "-f", "--file", type=Path, action="append", required=True, help="speech file (repeatable)"
    )
    load.add_argument("-n", "--streams", type=_positive_int, default=10, help="concurrent streams")
    load.add_argument(
        "--ramp", type=_non_negative, default=0.0, help="seconds over which streams start"
    )
    load.add_argument(
        "--duration",
        type=_non_negative,
        default=0.0,
        help="least audio seconds per stream (files are repeated whole to reach it)",
    )
    load.add_argument(
        "--speed", type=_non_negative, default=1.0, help="times real time (0: as fast as possible)"
    )
    load.add_argument("--chunk-ms", type=float, default=100.0, help="audio per message, ms")
    load.add_argument("--interim", action="store_true", help="ask for interim results")
    load.add_argument("--word-times", action="store_true", help="ask for each final's word times")
    load.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for done after the audio"
    )
    load.add_argument(
        "--turn-detection",
        type=_json_object,
        nargs="?",
        const={},
        metavar="JSON",
        help="detect turns on each stream (segmented route): the start's turn_detection, "
        "e.g. '{\"eot_threshold\": 0.7}' (default: the server's thresholds)",
    )

    find = parser.add_argument_group("search")
    find.add_argument(
        "--search", action="store_true", help="find the most streams meeting the objective"
    )
    objective = find.add_mutually_exclusive_group()
    objective.add_argument(
        "--added-ms",
        type=float,
        default=250.0,
        help="objective: p95 final delay at most a lone stream's median plus this (default)",
    )
    objective.add_argument("--p95-ms", type=float, help="objective: absolute p95 final delay")
    find.add_argument("--max-streams", type=_positive_int, default=1000)
    find.add_argument(
        "--resolution", type=_positive_int, default=10, help="stop when the range is this small"
    )

    base = parser.add_argument_group("floor")
    base.add_argument(
        "--no-floor",
        action="store_true",
        help="skip measuring this machine's floor before the load (figures stay absolute)",
    )
    base.add_argument(
        "--floor-batch",
        type=_positive_int,
        default=DEFAULT_MAX_BATCH,
        help=f"rows per VAD call for the floor (default {DEFAULT_MAX_BATCH}, the engine's)",
    )
    base.add_argument(
        "--floor-streams",
        type=_positive_int,
        default=FLOOR_STREAMS,
        help="connections sending at real time while the floor's ingest is measured "
        f"(default {FLOOR_STREAMS}: a message costs less the more arrive together)",
    )

    out = parser.add_argument_group("output")
    out.add_argument("--json", type=Path, help="write the figures here")
    out.add_argument("--png", type=Path, help="write a chart here")
    out.add_argument("--per-stream", action="store_true", help="include each stream in the JSON")
    out.add_argument("--quiet", action="store_true", help="no progress on stderr")


def _spec(args: argparse.Namespace, url: str) -> LoadSpec:
    return LoadSpec(
        url=url,
        files=tuple(args.file),
        streams=args.streams,
        ramp=args.ramp,
        min_audio_seconds=args.duration,
        speed=args.speed,
        chunk_seconds=args.chunk_ms / 1000,
        interim=args.interim,
        word_times=args.word_times,
        results_timeout=args.timeout,
        turn_detection=args.turn_detection,
    )


async def _floor(args: argparse.Namespace, progress: Progress | None) -> Floor:
    """This machine's floor, measured with the first file's audio before any load."""
    audio = prepare_audio(args.file[:1], 0.0)[0]
    samples = decode_channels(audio.data, audio.format, VAD_SAMPLE_RATE)[0]
    step = max(1, round(args.chunk_ms / 1000 * audio.sample_rate)) * audio.frame_bytes
    chunks = [audio.data[i : i + step] for i in range(0, len(audio.data), step)]
    if progress is not None:
        progress("measuring this machine's floor (batched VAD, then WebSocket ingest)")
    floor = await measure_floor(
        samples,
        chunks,
        audio.format,
        message_seconds=args.chunk_ms / 1000,
        vad_batch=args.floor_batch,
        ingest_streams=args.floor_streams,
    )
    if progress is not None:
        progress(floor.describe())
    return floor


async def _bench(args: argparse.Namespace, url: str | None, server_pid: int | None) -> int:
    """One run, or a search; ``url`` None: a fresh server of our own for every run."""
    progress = None if args.quiet else stderr_progress()
    expected = ExpectedResults()

    if args.png and not charts_available():
        print(f"streamer bench: --png: {CHARTS_HINT}", file=sys.stderr)
        return 2  # before the run, not after it
    spec = _spec(args, url or f"ws://127.0.0.1/api/v1/{args.route}")
    if spec.turn_detection is not None and not spec.segmented:
        print("streamer bench: --turn-detection needs the segmented route", file=sys.stderr)
        return 2
    document: dict[str, Any] = {"machine": machine()}
    floor = None
    if not args.no_floor:
        try:
            floor = await _floor(args, progress)
        except (OSError, RuntimeError, TimeoutError, ValueError, WebSocketException) as error:
            # The load still runs: its figures are then absolute, as with --no-floor.
            print(
                f"streamer bench: the floor could not be measured ({error}); "
                "the figures are not compared with it",
                file=sys.stderr,
            )
    if floor is not None:
        document["floor"] = floor.document()

    async def trial(spec: LoadSpec, say: Progress | None) -> RunResult:
        if url is not None:
            result = await run_load(spec, expected=expected, server_pid=server_pid, progress=say)
        else:
            with spawn_server(args.server_config, dict(args.server_env)) as server:
                if say is not None:
                    say(f"server pid {server.pid} on port {server.port}")
                spec = replace(spec, url=server.url(args.route))
                result = await run_load(
                    spec, expected=expected, server_pid=server.pid, progress=say
                )
        if floor is not None:
            result.summary["against_floor"] = against_floor(floor, result.summary)
        return result

    if args.search:
        found = await search(
            spec,
            added_seconds=None if args.p95_ms is not None else args.added_ms / 1000,
            p95_seconds=None if args.p95_ms is None else args.p95_ms / 1000,
            low=args.streams,
            high=args.max_streams,
            resolution=args.resolution,
            trial=trial,
            progress=progress,
        )
        print(search_table(found, floor))
        document["search"] = search_document(found, floor)
        if args.png:
            plot_search(found, args.png, floor)
        status = 0 if found.best else 1
    else:
        result = await trial(spec, progress)
        print(table(result, floor))
        document["run"] = run_document(result, per_stream=args.per_stream)
        if args.png:
            plot_run(result, args.png, floor)
        status = 0 if result.clean else 1
    if args.json:
        write_json(args.json, document)
    return status


def _run_loop(coro: Any) -> int:
    try:
        import uvloop
    except ImportError:  # the standard loop works, with more client overhead
        result: int = asyncio.run(coro)
        return result
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return int(runner.run(coro))


def run(args: argparse.Namespace) -> int:
    """Run ``streamer bench``; returns the exit status (1 when results were not clean)."""
    url = None
    if not args.spawn_server:
        url = args.url.rstrip("/")
        if "/api/" not in url:
            url = f"{url}/api/v1/{args.route}"
    try:
        return _run_loop(_bench(args, url, args.server_pid))
    except KeyboardInterrupt:
        print("streamer bench: interrupted", file=sys.stderr)
        return 130
