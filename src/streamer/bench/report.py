"""The bench's outputs: a JSON document, a summary table and a PNG chart."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from streamer.bench.floor import Floor, describe_against
from streamer.bench.runner import RunResult, SearchResult


def run_document(result: RunResult, *, per_stream: bool = False) -> dict[str, Any]:
    """A run as JSON-able data."""
    spec = result.spec
    doc: dict[str, Any] = {
        "spec": {
            "url": spec.url,
            "files": [p.name for p in spec.files],
            "streams": spec.streams,
            "ramp": spec.ramp,
            "min_audio_seconds": spec.min_audio_seconds,
            "speed": spec.speed,
            "chunk_seconds": spec.chunk_seconds,
            "interim": spec.interim,
        },
        "summary": result.summary,
        "timeline": result.timeline,
    }
    if per_stream:
        doc["streams"] = [
            {
                "index": s.index,
                "audio": s.audio,
                "status": s.status,
                "ttfr": s.ttfr,
                "rtf": s.rtf,
                "finals": len(s.final_delays),
                "final_delay_max": max(s.final_delays, default=None),
                "lost": s.check.lost,
                "duplicated": s.check.duplicated,
                "unexpected": s.check.unexpected,
                "errors": dict(s.errors),
                "problem": s.problem,
            }
            for s in result.streams
        ]
    return doc


def search_document(found: SearchResult, floor: Floor | None = None) -> dict[str, Any]:
    """A search as JSON-able data; with the floor, the best count's share of its capacity."""
    best = next((r for n, r, ok in found.trials if ok and n == found.best), None)
    against = None if best is None else best.summary.get("against_floor")
    return {
        "objective": {"p95_final_delay_seconds": round(found.objective.p95_seconds, 6)},
        "best_streams": found.best,
        "best_share_of_floor_capacity": (
            None if floor is None or against is None else against["share_of_floor_capacity"]
        ),
        "baseline": None if found.baseline is None else run_document(found.baseline),
        "trials": [
            {"streams": n, "meets_objective": ok, **run_document(result)}
            for n, result, ok in found.trials
        ],
    }


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")


def _ms(value: Any) -> str:
    return "-" if value is None else f"{float(value) * 1000:.0f}"


def table(result: RunResult, floor: Floor | None = None) -> str:
    """A plain-text summary of a run (with the floor, its figures against it)."""
    s = result.summary
    streams, results = s["streams"], s["results"]
    lines = [
        f"route {s['route']}"
        + (" with turn detection" if s.get("turn_detection") is not None else "")
        + f": {streams['requested']} streams, "
        f"{streams['ok']} ok, {streams['refused']} refused, {streams['failed']} failed; "
        f"{s['wall_seconds']:.1f} s wall, {s['audio_seconds']:.0f} s of audio "
        f"({s['throughput_x_real_time']}x real time), {s['finals_per_second']} finals/s",
        f"results: {results['received']} finals of {results['expected']} expected; "
        f"lost {results['lost']}, duplicated {results['duplicated']}, "
        f"unexpected {results['unexpected']}, out of order {results['out_of_order']}, "
        f"wrong {results['wrong_count']}" + (f"; errors {s['errors']}" if s["errors"] else ""),
        "",
        f"{'ms':<22}{'count':>8}{'p50':>8}{'p95':>8}{'p99':>8}{'max':>8}",
    ]
    rows = [
        ("final delay", s["final_delay"]),
        ("time to first result", s["ttfr"]),
        ("interim interval", s["interim_interval"]),
        ("refusal", s["refusal"]),
    ]
    for name, d in rows:
        if d["count"]:
            lines.append(
                f"{name:<22}{d['count']:>8}{_ms(d['p50']):>8}{_ms(d['p95']):>8}"
                f"{_ms(d['p99']):>8}{_ms(d['max']):>8}"
            )
    rtf = s["rtf"]
    if rtf["count"]:
        lines.append(
            f"{'real-time factor':<22}{rtf['count']:>8}{rtf['p50']:>8.3f}{rtf['p95']:>8.3f}"
        )
    cpu = s.get("server_cpu")
    if cpu:
        per_stream = cpu.get("ms_per_stream_audio_second")
        lines.append(
            f"server cpu: {cpu['cores_mean']:.2f} cores mean, {cpu['cores_max_1s']} max (1 s)"
            + (f"; {per_stream} ms per stream per audio-second" if per_stream else "")
        )
        if cpu.get("turn_engine_cpu_seconds") is not None:
            share = cpu["turn_engine_share"]
            lines.append(
                f"turn engine cpu: {cpu['turn_engine_cpu_seconds']} s"
                + ("" if share is None else f" = {share:.1%} of the server's")
                + f", {cpu['turn_engine_ms_per_stream_audio_second']} ms per stream-second"
            )
        threads = cpu.get("threads") or {}
        if threads:
            lines.append(
                "server cpu by thread: "
                + "; ".join(
                    f"{part.replace('_', ' ')} {t['ms_per_stream_audio_second']} ms per "
                    f"stream-second" + ("" if t["share"] is None else f" ({t['share']:.0%})")
                    for part, t in threads.items()
                )
            )
    for row in s.get("server_processes") or ():
        if len(s["server_processes"]) < 2:
            break
        role = row["role"]
        plateau = ""
        if row["plateau_cores_mean"] is not None:
            plateau = f"; at the plateau {row['plateau_cores_mean']:.2f} cores"
            if row["plateau_streams_mean"] is not None:
                plateau += f", {row['plateau_streams_mean']:.0f} streams"
        lines.append(
            f"  pid {row['pid']} ({role}): {row['cores_mean']:.2f} cores mean, "
            f"{row['cores_max_1s']} max (1 s)"
            + ("" if row["streams_max"] is None else f", {row['streams_max']} streams max")
            + plateau
        )
    estimate = s.get("server_estimate") or {}
    if estimate.get("plateau_capacity") is not None:
        lines.append(
            "server's own estimate"
            + (" for streams with turns" if s.get("turn_detection") is not None else "")
            + f" at the plateau: {estimate['plateau_live_mean']:.0f} live "
            f"+ {estimate['plateau_spare_mean']:.0f} it could still take = "
            f"{estimate['plateau_capacity']:.0f} streams"
        )
    client = s.get("client_cpu")
    if client:
        lines.append(
            f"bench client cpu: {client['cores_mean']:.2f} cores mean; "
            f"its loop lag p99 {_ms(client['loop_lag']['p99'])} ms"
        )
    box = s.get("machine_cpu")
    if box:
        lines.append(
            f"machine: {box['cores_busy_mean']:.2f} of {box['cpus']} cores busy, "
            f"{box['other_cores_mean']:.2f} by other processes"
        )
    if floor is not None:
        lines.append(floor.describe())
    if s.get("against_floor"):
        lines.append(describe_against(s["against_floor"]))
    for problem in s["problems"][:5]:
        lines.append(f"problem: {problem}")
    return "\n".join(lines)


def search_table(found: SearchResult, floor: Floor | None = None) -> str:
    """A plain-text summary of a search: each trial, with its ratios to the floor if any."""
    lines = [] if floor is None else [floor.describe()]
    if found.baseline is not None:
        d = found.baseline.summary["final_delay"]
        lines.append(
            f"lone streams: median final delay {_ms(d['p50'])} ms, p95 {_ms(d['p95'])} ms "
            f"({d['count']} finals)"
        )
    lines.append(
        f"objective: p95 final delay <= {found.objective.p95_seconds * 1000:.0f} ms, clean"
    )
    lines.append(
        f"{'streams':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'rtf':>7}{'cpu':>7}{'other':>7}"
        f"{'x floor':>9}{'share':>7}{'est.':>7}  result"
    )
    for n, result, ok in found.trials:
        s = result.summary
        d = s["final_delay"]
        cpu = s.get("server_cpu", {}).get("cores_mean")
        other = s.get("machine_cpu", {}).get("other_cores_mean")
        rtf = s["rtf"]["p50"]
        against = s.get("against_floor") or {}
        ratio, share = against.get("server_cost_ratio"), against.get("share_of_floor_capacity")
        estimate = (s.get("server_estimate") or {}).get("plateau_capacity")
        lines.append(
            f"{n:>8}{_ms(d['p50']):>9}{_ms(d['p95']):>9}{_ms(d['p99']):>9}"
            f"{'-' if rtf is None else f'{rtf:.3f}':>7}"
            f"{'-' if cpu is None else f'{cpu:.2f}':>7}"
            f"{'-' if other is None else f'{other:.2f}':>7}"
            f"{'-' if ratio is None else f'{ratio:.2f}':>9}"
            f"{'-' if share is None else f'{share:.0%}':>7}"
            f"{'-' if estimate is None else f'{estimate:.0f}':>7}  "
            f"{'meets' if ok else 'misses'}{'' if result.clean else ' (not clean)'}"
        )
    lines.append(f"largest count meeting the objective: {found.best}")
    return "\n".join(lines)


CHARTS_HINT = "charts need matplotlib: pip install 'streamer[bench]'"
"""What to do when the ``bench`` extra is missing."""


class ChartsUnavailable(RuntimeError):
    """matplotlib (the ``bench`` extra) is not installed."""


def charts_available() -> bool:
    """Whether charts can be drawn (the ``bench`` extra is installed)."""
    try:
        return importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):  # a module entry that is not a real module
        return False


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ChartsUnavailable(CHARTS_HINT) from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_run(result: RunResult, path: Path, floor: Floor | None = None) -> None:
    """Final-delay distribution and timeline, load and CPU over time."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    delays = sorted(d * 1000 for s in result.streams for d in s.final_delays)
    ax = axes[0][0]
    if delays:
        ax.plot(delays, [(i + 1) / len(delays) for i in range(len(delays))])
        for q, style in ((0.5, ":"), (0.95, "--"), (0.99, "-.")):
            ax.axvline(delays[max(int(q * len(delays)) - 1, 0)], linestyle=style, color="grey")
    ax.set(title="final delay (CDF)", xlabel="ms", ylabel="fraction")
    ax = axes[0][1]
    times = [t for s in result.streams for t in s.final_times]
    points = [d * 1000 for s in result.streams for d in s.final_delays]
    ax.scatter(times, points, s=2, alpha=0.4)
    ax.set(title="final delay over the run", xlabel="s since start", ylabel="ms")
    ax = axes[1][0]
    t = [p["t"] for p in result.timeline]
    ax.plot(t, [p["live"] for p in result.timeline], label="live streams")
    ax.set(title="live streams", xlabel="s since start", ylabel="streams")
    ax = axes[1][1]
    if any("server_cores" in p for p in result.timeline):
        ax.plot(t, [p.get("server_cores", 0.0) for p in result.timeline], label="server")
    ax.plot(t, [p["client_cores"] for p in result.timeline], label="bench client")
    ax.set(title="CPU", xlabel="s since start", ylabel="cores")
    ax.legend()
    s = result.summary
    title = (
        f"{s['route']} route, {s['streams']['requested']} streams: p95 final delay "
        f"{_ms(s['final_delay']['p95'])} ms, lost {s['results']['lost']}, "
        f"duplicated {s['results']['duplicated']}"
    )
    against = s.get("against_floor")
    if floor is not None and against and against["server_cost_ratio"] is not None:
        title += (
            f"\nserver CPU {against['server_cost_ratio']:.2f} x the floor "
            f"({floor.ms_per_stream_second:.2f} ms per stream-second); "
            f"{against['share_of_floor_capacity']:.0%} of the floor's capacity"
        )
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_search(found: SearchResult, path: Path, floor: Floor | None = None) -> None:
    """Final-delay percentiles and server CPU against the stream count."""
    plt = _pyplot()
    trials = sorted(found.trials, key=lambda t: t[0])
    n = [t[0] for t in trials]
    fig, ax = plt.subplots(figsize=(9, 5))
    for key, style in (("p50", "o-"), ("p95", "s-"), ("p99", "^-")):
        values = [r.summary["final_delay"][key] for _, r, _ in trials]
        ax.plot(n, [v * 1000 if v is not None else float("nan") for v in values], style, label=key)
    ax.axhline(found.objective.p95_seconds * 1000, color="red", linestyle="--", label="objective")
    ax.set(xlabel="concurrent streams", ylabel="final delay, ms (log scale)")
    ax.set_yscale("log")
    title = f"largest count meeting the objective: {found.best}"
    if floor is not None:
        capacity = [
            r.summary["against_floor"]["floor_capacity_streams"]
            for _, r, _ in trials
            if r.summary.get("against_floor")
        ]
        if capacity:
            mean = sum(capacity) / len(capacity)
            ax.axvline(mean, color="grey", linestyle=":", label="floor's capacity")
            share = search_document(found, floor)["best_share_of_floor_capacity"]
            if share is not None:
                title += f" ({share:.0%} of the floor's capacity)"
    ax.legend(loc="upper left")
    cpu = [r.summary.get("server_cpu", {}).get("cores_mean") for _, r, _ in trials]
    if any(c is not None for c in cpu):
        ax2 = ax.twinx()
        ax2.plot(n, [c if c is not None else float("nan") for c in cpu], "k:", label="server cpu")
        ax2.set_ylabel("server cores")
        ax2.legend(loc="lower right")
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
