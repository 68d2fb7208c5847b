"""Runs a load: N streams (started over a ramp), each checked and measured; and the search
for the largest N that meets a latency objective.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import os
import platform
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, TextIO

from streamer.bench.analysis import Check, StreamStats, analyse, distribution
from streamer.bench.expected import ExpectedResults
from streamer.bench.sender import StreamAudio, StreamRecord, run_stream
from streamer.client import load_audio

# -- what to run ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """One load: where, how many streams, what each sends and how fast."""

    url: str
    """WebSocket URL of a route (``.../api/v1/simple`` or ``.../api/v1/segmented``)."""
    files: tuple[Path, ...]
    streams: int
    ramp: float = 0.0
    """Seconds over which the streams start, evenly spaced."""
    min_audio_seconds: float = 0.0
    """Each file is repeated until a stream's audio lasts at least this long."""
    speed: float = 1.0
    """Multiple of real time (0: as fast as possible)."""
    chunk_seconds: float = 0.1
    interim: bool = False
    word_times: bool = False
    """Ask for each final's word times."""
    results_timeout: float = 60.0
    turn_detection: dict[str, Any] | None = None
    """The v1 ``turn_detection`` option each stream's ``start`` carries (the segmented
    route's turn events, and the end-of-turn model's CPU in the server's); None: off."""

    @property
    def segmented(self) -> bool:
        return self.url.rstrip("/").endswith("segmented")


# -- CPU of the server ---------------------------------------------------------------------

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds of the process and its reaped children) from /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    # Fields after the name: state ppid ... utime(12) stime(13) cutime(14) cstime(15).
    ticks = sum(int(v) for v in fields[11:15])
    return int(fields[1]), ticks / _TICKS


def _process_table() -> tuple[dict[int, int], dict[int, float]]:
    """Every process's parent and CPU seconds, from /proc."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            found = _stat(int(entry.name))
            if found is not None:
                parents[int(entry.name)], cpu[int(entry.name)] = found
    return parents, cpu


class CpuMeter:
    """CPU seconds used by a process and all its descendants (worker processes included)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def seconds(self) -> float | None:
        parts = self.by_process()
        return None if parts is None else sum(parts.values())

    def by_process(self) -> dict[int, float] | None:
        """CPU seconds of the process itself, and of each of its children with all that
        child's descendants (keyed by the child's pid): with ``--workers``, one entry per
        front-end process beside the supervisor's own."""
        if _stat(self.pid) is None:
            return None
        parents, cpu = _process_table()
        children: dict[int, list[int]] = {}
        for child, parent in parents.items():
            children.setdefault(parent, []).append(child)

        def subtree(pid: int) -> float:
            total, todo, seen = 0.0, [pid], {pid}
            while todo:
                here = todo.pop()
                total += cpu.get(here, 0.0)
                for child in children.get(here, ()):
                    if child not in seen:
                        seen.add(child)
                        todo.append(child)
            return total

        parts = {self.pid: cpu.get(self.pid, 0.0)}
        for child in children.get(self.pid, ()):
            parts[child] = subtree(child)
        return parts


def fleet_streams(url: str, timeout: float = 1.0) -> dict[int, int] | None:
    """Live streams of each front-end process (by pid) from the server's health report,
    when it runs several; None for a single process or when the report cannot be read."""
    parts = urllib.parse.urlsplit(url)
    scheme = "https" if parts.scheme in ("wss", "https") else "http"
    health = f"{scheme}://{parts.netloc}/api/v1/health"
    try:
        with urllib.request.urlopen(health, timeout=timeout) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as error:  # 503 while full or draining: still a report
        try:
            body = json.loads(error.read() or b"{}")
        except ValueError:
            return None
    except (OSError, ValueError):
        return None
    rows = body.get("processes") if isinstance(body, dict) else None
    if not isinstance(rows, list):
        return None
    return {int(r["pid"]): int(r["streams"]) for r in rows if r.get("pid")}


ESTIMATE_EVERY: Final = 5
"""Samples (seconds) between readings of the server's own capacity estimate: a scrape of
``/metrics`` costs the server some CPU, which the run's figures would count."""


def server_metric(url: str, name: str, timeout: float = 2.0) -> float | None:
    """One unlabelled sample of the server's ``/metrics`` (all its processes together), or
    None when it cannot be read or is not there."""
    return server_metrics(url, (name,), timeout).get(name)


def server_metrics(url: str, names: Sequence[str], timeout: float = 2.0) -> dict[str, float]:
    """Unlabelled samples of the server's ``/metrics`` from one scrape, by name: those it
    has (none when it cannot be read)."""
    parts = urllib.parse.urlsplit(url)
    scheme = "https" if parts.scheme in ("wss", "https") else "http"
    try:
        with urllib.request.urlopen(
            f"{scheme}://{parts.netloc}/metrics", timeout=timeout
        ) as response:
            text = response.read().decode(errors="replace")
    except (OSError, ValueError):
        return {}
    wanted, found = set(names), {}
    for line in text.splitlines():
        sample, _, value = line.partition(" ")
        if sample in wanted:
            try:
                found[sample] = float(value)
            except ValueError:
                continue
    return found


def estimated_capacity(url: str, timeout: float = 2.0, *, turns: bool = False) -> float | None:
    """The server's ``streamer_estimated_stream_capacity`` (the streams it reckons it can
    still take, all its processes together) from ``/metrics``, or None; ``turns``: its
    ``streamer_estimated_turn_stream_capacity``, for streams that detect turns."""
    kind = "turn_stream" if turns else "stream"
    return server_metric(url, f"streamer_estimated_{kind}_capacity", timeout)


TURN_CPU: Final = "streamer_turn_engine_cpu_seconds_total"
"""The server's end-of-turn engine CPU, which a run with turn detection reports a share of."""
THREAD_CPU: Final = {
    "vad_engine": "streamer_vad_engine_cpu_seconds_total",
    "event_loop": "streamer_event_loop_cpu_seconds_total",
}
"""The server's front-end threads whose CPU a run reports, set against the floor's parts:
the VAD engine's (the model's calls and the engine's bookkeeping) against the floor's VAD,
the event loop's (receiving, decoding, segmenting, sending) against its ingest."""


def server_estimate(timeline: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The server's own capacity estimate over the plateau (at least 90% of the most
    live streams live): the streams live plus those it reckoned it could still take."""
    peak = max((p["live"] for p in timeline), default=0)
    read = [p for p in timeline if p.get("estimated_spare") is not None]
    plateau = [p for p in read if peak and p["live"] >= 0.9 * peak]
    if not plateau:
        return {"readings": len(read), "plateau_readings": 0, "plateau_capacity": None}
    live = sum(p["live"] for p in plateau) / len(plateau)
    spare = sum(p["estimated_spare"] for p in plateau) / len(plateau)
    return {
        "readings": len(read),
        "plateau_readings": len(plateau),
        "plateau_live_mean": round(live, 1),
        "plateau_spare_mean": round(spare, 1),
        "plateau_capacity": round(live + spare, 1),
    }


def per_process(
    timeline: Sequence[dict[str, Any]],
    cpu_0: dict[int, float],
    cpu_1: dict[int, float],
    wall: float,
    root: int,
) -> list[dict[str, Any]]:
    """Each server process's CPU and streams over a run, and at its plateau.

    The plateau is the seconds when at least 90% of the most live streams were live: the
    knee of a run that falls behind is there. ``role``: ``front-end`` for a process with a
    row in the server's fleet table, ``server`` for ``root`` otherwise (the supervisor, or
    a single-process server), ``helper`` for any other child.
    """
    peak = max((p["live"] for p in timeline), default=0)
    plateau = [p for p in timeline if peak and p["live"] >= 0.9 * peak]
    seen: dict[int, dict[str, list[float]]] = {}
    for point in timeline:
        for row in point.get("processes", ()):
            figures = seen.setdefault(int(row["pid"]), {"cores": [], "streams": []})
            figures["cores"].append(float(row["cores"]))
            if row.get("streams") is not None:
                figures["streams"].append(float(row["streams"]))
    at_plateau: dict[int, dict[str, list[float]]] = {}
    for point in plateau:
        for row in point.get("processes", ()):
            figures = at_plateau.setdefault(int(row["pid"]), {"cores": [], "streams": []})
            figures["cores"].append(float(row["cores"]))
            if row.get("streams") is not None:
                figures["streams"].append(float(row["streams"]))

    def mean(values: Sequence[float]) -> float | None:
        return round(sum(values) / len(values), 3) if values else None

    out = []
    for pid in sorted(set(cpu_1) | set(seen)):
        figures = seen.get(pid, {"cores": [], "streams": []})
        knee = at_plateau.get(pid, {"cores": [], "streams": []})
        used = cpu_1.get(pid, 0.0) - cpu_0.get(pid, 0.0)
        out.append(
            {
                "pid": pid,
                "role": "front-end"
                if figures["streams"]
                else "server"
                if pid == root
                else "helper",
                "cpu_seconds": round(used, 3),
                "cores_mean": round(used / wall, 3) if wall else None,
                "cores_max_1s": round(max(figures["cores"]), 3) if figures["cores"] else None,
                "streams_max": int(max(figures["streams"])) if figures["streams"] else None,
                "plateau_cores_mean": mean(knee["cores"]),
                "plateau_streams_mean": mean(knee["streams"]),
            }
        )
    return out


def machine_busy_seconds() -> float | None:
    """CPU seconds all processes of the machine have used (from /proc/stat), or None."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    ticks = [int(v) for v in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    # guest time is already counted in user time
    return (sum(ticks[:8]) - idle) / _TICKS


def _own_cpu() -> float:
    times = os.times()
    return times.user + times.system


# -- one run -------------------------------------------------------------------------------

Progress = Callable[[str], None]


@dataclass
class RunResult:
    """A run's summary (JSON-able), per-stream figures and a timeline."""

    spec: LoadSpec
    summary: dict[str, Any]
    streams: list[StreamStats]
    timeline: list[dict[str, Any]] = field(default_factory=list)
    records: list[StreamRecord] = field(default_factory=list)
    """What each stream sent and received (its events, the results' text included)."""

    @property
    def final_delay_p95(self) -> float | None:
        value = self.summary["final_delay"]["p95"]
        return None if value is None else float(value)

    @property
    def clean(self) -> bool:
        """Every stream finished, with exactly the results its audio must produce."""
        s = self.summary
        return (
            s["streams"]["failed"] == 0
            and s["streams"]["refused"] == 0
            and s["results"]["clean"]
            and not s["errors"]
        )


def prepare_audio(files: Sequence[Path], min_seconds: float) -> list[StreamAudio]:
    """Each file, repeated until it lasts ``min_seconds`` (whole repeats)."""
    prepared = []
    for path in files:
        loaded = load_audio(path)
        repeats = max(1, math.ceil(min_seconds / loaded.duration)) if loaded.duration else 1
        key = path.name if repeats == 1 else f"{path.name}x{repeats}"
        prepared.append(
            StreamAudio(
                data=loaded.data * repeats,
                format=dict(loaded.format),
                frames=loaded.frames * repeats,
                key=key,
            )
        )
    return prepared


async def run_load(
    spec: LoadSpec,
    *,
    expected: ExpectedResults | None = None,
    server_pid: int | None = None,
    progress: Progress | None = None,
    progress_every: float = 2.0,
) -> RunResult:
    """Run ``spec.streams`` streams against a server and check and measure every one."""
    loop = asyncio.get_running_loop()
    expected = expected or ExpectedResults()
    audios = prepare_audio(spec.files, spec.min_audio_seconds)
    wanted = {}
    for audio in audios:
        wanted[audio.key] = await asyncio.to_thread(
            expected.get, audio.key, audio.data, audio.format, spec.segmented
        )
    records = [StreamRecord(i, audios[i % len(audios)]) for i in range(spec.streams)]
    meter = CpuMeter(server_pid) if server_pid is not None else None
    timeline: list[dict[str, Any]] = []
    lags: list[float] = []
    stop = asyncio.Event()

    async def sample() -> None:
        """Once a second: live streams, server and client CPU (and each server process's,
        with its streams); and the loop's own lag."""
        last_t, last_client = loop.time(), _own_cpu()
        last_parts = await asyncio.to_thread(meter.by_process) if meter is not None else None
        next_print = last_t + progress_every
        ticks = 0
        while not stop.is_set():
            tick = loop.time()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            now = loop.time()
            lags.append(max(0.0, now - tick - 1.0) if not stop.is_set() else 0.0)
            parts = await asyncio.to_thread(meter.by_process) if meter is not None else None
            rows = await asyncio.to_thread(fleet_streams, spec.url) if meter is not None else None
            ticks += 1
            spare = None
            if meter is not None and ticks % ESTIMATE_EVERY == 0:
                spare = await asyncio.to_thread(
                    functools.partial(
                        estimated_capacity, spec.url, turns=spec.turn_detection is not None
                    )
                )
            client = _own_cpu()
            dt = max(now - last_t, 1e-6)
            point: dict[str, Any] = {
                "t": round(now - origin, 3),
                "live": sum(1 for r in records if r.live),
                "client_cores": round((client - last_client) / dt, 4),
            }
            if parts is not None and last_parts is not None:
                point["server_cores"] = round(
                    (sum(parts.values()) - sum(last_parts.values())) / dt, 4
                )
                point["processes"] = [
                    {
                        "pid": pid,
                        "cores": round((used - last_parts.get(pid, 0.0)) / dt, 4),
                        "streams": None if rows is None else rows.get(pid),
                    }
                    for pid, used in parts.items()
                    if pid in last_parts  # a process started since: no interval yet
                ]
            if spare is not None:
                point["estimated_spare"] = spare
            timeline.append(point)
            last_t, last_parts, last_client = now, parts, client
            if progress is not None and now >= next_print:
                next_print = now + progress_every
                progress(_progress_line(records, point))

    if progress is not None:
        progress(
            f"starting {spec.streams} stream(s) over {spec.ramp:g} s on {spec.url}, "
            f"{records[0].audio.duration:.1f} s of audio each or more"
        )
    origin = loop.time()
    sampler = asyncio.create_task(sample(), name="bench-sampler")
    server_parts_0 = await asyncio.to_thread(meter.by_process) if meter is not None else None
    cpu_metrics = (TURN_CPU, *THREAD_CPU.values())
    metrics_0 = (
        await asyncio.to_thread(server_metrics, spec.url, cpu_metrics) if meter is not None else {}
    )
    client_cpu_0 = _own_cpu()
    machine_0 = machine_busy_seconds()
    tasks = []
    for i, record in enumerate(records):
        delay = origin + (i * spec.ramp / spec.streams) - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(
            asyncio.create_task(
                run_stream(
                    spec.url,
                    record,
                    chunk_seconds=spec.chunk_seconds,
                    speed=spec.speed,
                    interim=spec.interim,
                    word_times=spec.word_times,
                    results_timeout=spec.results_timeout,
                    turn_detection=spec.turn_detection,
                ),
                name=f"bench-stream-{i}",
            )
        )
    await asyncio.gather(*tasks)
    wall = loop.time() - origin
    server_parts_1 = await asyncio.to_thread(meter.by_process) if meter is not None else None
    metrics_1 = (
        await asyncio.to_thread(server_metrics, spec.url, cpu_metrics) if meter is not None else {}
    )
    client_cpu = _own_cpu() - client_cpu_0
    machine_1 = machine_busy_seconds()
    stop.set()
    await sampler
    stats = [analyse(r, wanted[r.audio.key], origin) for r in records]
    summary = summarise(spec, stats, wall)
    if server_parts_0 is not None and server_parts_1 is not None:
        server_cpu_0, server_cpu_1 = sum(server_parts_0.values()), sum(server_parts_1.values())
        cores = [p["server_cores"] for p in timeline if "server_cores" in p]
        summary["server_cpu"] = {
            "pid": server_pid,
            "cpu_seconds": round(server_cpu_1 - server_cpu_0, 3),
            "cores_mean": round((server_cpu_1 - server_cpu_0) / wall, 3),
            "cores_max_1s": round(max(cores), 3) if cores else None,
            # Server CPU per second of one stream's audio, over the whole run.
            "ms_per_stream_audio_second": (
                round((server_cpu_1 - server_cpu_0) * 1000 / summary["audio_seconds"], 3)
                if summary["audio_seconds"]
                else None
            ),
        }
        if TURN_CPU in metrics_0 and TURN_CPU in metrics_1:
            spent = metrics_1[TURN_CPU] - metrics_0[TURN_CPU]
            summary["server_cpu"].update(turn_engine_cpu(spent, summary))
        threads = {
            part: metrics_1[name] - metrics_0[name]
            for part, name in THREAD_CPU.items()
            if name in metrics_0 and name in metrics_1
        }
        if any(threads.values()):  # zeros: the server has no per-thread clocks
            summary["server_cpu"]["threads"] = thread_cpu(threads, summary)
        summary["server_estimate"] = server_estimate(timeline)
        summary["server_processes"] = per_process(
            timeline, server_parts_0, server_parts_1, wall, server_pid or 0
        )
    summary["client_cpu"] = {
        "cpu_seconds": round(client_cpu, 3),
        "cores_mean": round(client_cpu / wall, 3),
        "loop_lag": distribution(lags),
    }
    if machine_0 is not None and machine_1 is not None:
        # Everything else the machine ran meanwhile: other people's work competes too.
        busy = (machine_1 - machine_0) / wall
        own = client_cpu / wall + (summary.get("server_cpu") or {}).get("cores_mean", 0.0)
        summary["machine_cpu"] = {
            "cpus": os.cpu_count(),
            "cores_busy_mean": round(busy, 3),
            "other_cores_mean": round(max(busy - own, 0.0), 3),
        }
    return RunResult(spec, summary, stats, timeline, records)


def turn_engine_cpu(seconds: float, summary: dict[str, Any]) -> dict[str, Any]:
    """The end-of-turn engine's CPU over a run, and its share of the server's."""
    server = float(summary["server_cpu"]["cpu_seconds"])
    audio = float(summary["audio_seconds"])
    return {
        "turn_engine_cpu_seconds": round(seconds, 3),
        "turn_engine_share": round(seconds / server, 4) if server > 0 else None,
        "turn_engine_ms_per_stream_audio_second": (
            round(seconds * 1000 / audio, 3) if audio else None
        ),
    }


def thread_cpu(seconds: dict[str, float], summary: dict[str, Any]) -> dict[str, Any]:
    """The front-end threads' CPU over a run, each with its share of the server's and its
    milliseconds per stream-second; ``rest``: the server's other CPU (the model's workers,
    the supervisor, the other threads)."""
    server = float(summary["server_cpu"]["cpu_seconds"])
    audio = float(summary["audio_seconds"])
    parts = {**seconds, "rest": max(0.0, server - sum(seconds.values()))}
    return {
        part: {
            "cpu_seconds": round(spent, 3),
            "share": round(spent / server, 4) if server > 0 else None,
            "ms_per_stream_audio_second": round(spent * 1000 / audio, 3) if audio else None,
        }
        for part, spent in parts.items()
    }


def _progress_line(records: Sequence[StreamRecord], point: dict[str, Any]) -> str:
    started = sum(1 for r in records if r.launched)
    finished = [r for r in records if r.finished is not None]
    finals = sum(
        1
        for r in records
        for e in r.events
        if e.get("type") == "segment" and e.get("is_final", True)
    )
    errors = sum(1 for r in records for e in r.events if e.get("type") == "error")
    line = (
        f"[{point['t']:7.1f}s] started {started}/{len(records)}  live {int(point['live'])}  "
        f"finished {len(finished)}  finals {finals}  errors {errors}"
    )
    if "server_cores" in point:
        line += f"  server cpu {point['server_cores']:.2f} cores"
        fronts = [r for r in point.get("processes", ()) if r["streams"] is not None]
        if fronts:
            line += " (" + ", ".join(f"{r['cores']:.2f}/{r['streams']}" for r in fronts) + ")"
    return line + f"  client cpu {point['client_cores']:.2f}"


def summarise(spec: LoadSpec, stats: Sequence[StreamStats], wall: float) -> dict[str, Any]:
    """The aggregate figures of a run."""
    status = Counter(s.status for s in stats)
    check = Check()
    errors: Counter[str] = Counter()
    for s in stats:
        check.add(s.check)
        errors.update(s.errors)
    errors.pop("overloaded", None)  # counted as refused streams
    ok = [s for s in stats if s.status == "ok"]
    audio_done = sum(s.audio_seconds for s in ok)
    finals = sum(len(s.final_delays) for s in stats)
    return {
        "route": "segmented" if spec.segmented else "simple",
        "turn_detection": spec.turn_detection,
        "streams": {
            "requested": spec.streams,
            "ok": status["ok"],
            "refused": status["refused"],
            "failed": status["failed"],
        },
        "results": {
            "expected": check.expected,
            "received": check.received,
            "lost": check.lost,
            "duplicated": check.duplicated,
            "unexpected": check.unexpected,
            "out_of_order": check.out_of_order,
            "wrong_count": check.wrong_count,
            "clean": check.clean,
        },
        "errors": dict(errors),
        "final_delay": distribution(d for s in stats for d in s.final_delays),
        "ttfr": distribution(s.ttfr for s in stats if s.ttfr is not None),
        "interim_interval": distribution(i for s in stats for i in s.interim_intervals),
        "rtf": distribution(s.rtf for s in stats if s.rtf is not None),
        "refusal": distribution(s.refusal_seconds for s in stats if s.refusal_seconds is not None),
        "wall_seconds": round(wall, 3),
        "audio_seconds": round(audio_done, 3),
        "throughput_x_real_time": round(audio_done / wall, 3) if wall else None,
        "finals_per_second": round(finals / wall, 3) if wall else None,
        "problems": [f"stream {s.index} ({s.audio}): {s.problem}" for s in stats if s.problem][:20],
    }


# -- the search ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Objective:
    """What a run must meet: a p95 final delay, clean results, no refusals or failures."""

    p95_seconds: float

    def met(self, result: RunResult) -> bool:
        p95 = result.final_delay_p95
        return result.clean and p95 is not None and p95 <= self.p95_seconds


@dataclass
class SearchResult:
    objective: Objective
    baseline: RunResult | None
    trials: list[tuple[int, RunResult, bool]]

    @property
    def best(self) -> int:
        """The largest stream count that met the objective (0 if none did)."""
        return max((n for n, _, ok in self.trials if ok), default=0)


Trial = Callable[[LoadSpec, Progress | None], Awaitable[RunResult]]
"""Runs one load (on a server of its choosing) and returns its result."""


async def lone_baseline(spec: LoadSpec, trial: Trial) -> RunResult:
    """Each file streamed alone, one after the other: the latency with no load at all.

    The result pools the streams' figures (CPU figures are left out).
    """
    stats: list[StreamStats] = []
    wall = 0.0
    for i, path in enumerate(spec.files):
        alone = await trial(replace(spec, files=(path,), streams=1, ramp=0.0), None)
        for s in alone.streams:
            s.index = i
        stats.extend(alone.streams)
        wall += alone.summary["wall_seconds"]
    lone = replace(spec, streams=len(spec.files), ramp=0.0)
    return RunResult(lone, summarise(lone, stats, wall), stats)


async def search(
    spec: LoadSpec,
    *,
    added_seconds: float | None,
    p95_seconds: float | None,
    low: int,
    high: int,
    resolution: int,
    trial: Trial | None = None,
    progress: Progress | None = None,
    cool_down: float = 2.0,
) -> SearchResult:
    """The largest stream count in ``[low, high]`` whose run meets the objective.

    The objective is an absolute p95 final delay, or the median of lone streams' plus
    ``added_seconds`` (measured first). Grows the count by half while runs pass, then
    bisects down to ``resolution`` streams. ``trial`` runs each load (default: against
    ``spec.url``); the command gives each its own fresh server when it starts them.
    """
    if trial is None:
        expected = ExpectedResults()

        async def same_server(load: LoadSpec, say: Progress | None) -> RunResult:
            return await run_load(load, expected=expected, progress=say)

        trial = same_server
    say = progress or (lambda _: None)
    baseline = None
    if p95_seconds is None:
        say("baseline: each file alone, one stream at a time")
        baseline = await lone_baseline(spec, trial)
        median = baseline.summary["final_delay"]["p50"]
        if median is None:
            raise RuntimeError("the lone streams got no final result to measure")
        p95_seconds = float(median) + (added_seconds or 0.0)
        say(f"baseline median final delay {median:.3f} s; objective p95 <= {p95_seconds:.3f} s")
    objective = Objective(p95_seconds)
    trials: list[tuple[int, RunResult, bool]] = []
    passed, failed = 0, high + 1
    n = max(low, 1)
    while failed - passed > resolution:
        await asyncio.sleep(cool_down)  # let the machine settle between runs
        say(f"trial: {n} streams")
        result = await trial(replace(spec, streams=n), say)
        ok = objective.met(result)
        trials.append((n, result, ok))
        p95 = result.final_delay_p95
        say(
            f"trial: {n} streams -> p95 final delay "
            f"{'n/a' if p95 is None else f'{p95:.3f} s'}, clean {result.clean}: "
            f"{'meets' if ok else 'misses'} the objective"
        )
        if ok:
            passed = n
            n = min(high, math.ceil(n * 1.5)) if failed > high else (n + failed) // 2
        else:
            failed = n
            n = (passed + failed) // 2
        if n <= passed or n >= failed:
            break
    return SearchResult(objective, baseline, trials)


def machine() -> dict[str, Any]:
    """The machine the figures come from."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def stderr_progress(stream: TextIO | None = None) -> Progress:
    """Progress lines to ``stream`` (standard error, as it is when each line is written)."""

    def say(line: str) -> None:
        print(line, file=stream or sys.stderr, flush=True)

    return say
