"""Per-stream checks and measurements, and their aggregation.

Checks: each channel's final segments against what the audio must produce. On the simple
route they must tile the audio from 0 to its end (a gap is a lost result, an overlap a
duplicate); on the segmented route their spans must equal the offline segmentation's
exactly (a missing span is lost, a repeated one duplicated, any other unexpected).

Measurements, all from the client's clock:

- ``final_delay``: a final's arrival minus the moment the chunk holding its last sample
  was sent (for a segment that ends with the audio, minus when ``stop`` was sent). The
  segmenter's wait for end-of-speech silence is part of it, as a user would see it.
- ``ttfr``: the first segment's arrival minus the first chunk's send.
- ``interim_interval``: time between successive interims of one segment.
- ``rtf``: the stream's wall time (first chunk to ``done``) over its audio's duration.
"""

from __future__ import annotations

import bisect
import itertools
import math
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from streamer.bench.expected import Expected, Span
from streamer.bench.sender import StreamRecord

_EPS = 2e-6  # times are rounded to the microsecond


@dataclass(slots=True)
class Check:
    """How one stream's final results compare with what its audio must produce."""

    expected: int = 0
    received: int = 0
    lost: int = 0
    duplicated: int = 0
    unexpected: int = 0
    out_of_order: int = 0
    wrong_count: int = 0

    @property
    def clean(self) -> bool:
        return not (
            self.lost or self.duplicated or self.unexpected or self.out_of_order or self.wrong_count
        )

    def add(self, other: Check) -> None:
        self.expected += other.expected
        self.received += other.received
        self.lost += other.lost
        self.duplicated += other.duplicated
        self.unexpected += other.unexpected
        self.out_of_order += other.out_of_order
        self.wrong_count += other.wrong_count


@dataclass(slots=True)
class StreamStats:
    """One stream's outcome and figures."""

    index: int
    audio: str
    status: str
    """``ok``, ``refused`` (``overloaded`` at start), or ``failed``."""
    audio_seconds: float
    check: Check = field(default_factory=Check)
    final_delays: list[float] = field(default_factory=list)
    final_times: list[float] = field(default_factory=list)
    """When each final arrived, seconds since the run began (for the timeline)."""
    interim_intervals: list[float] = field(default_factory=list)
    ttfr: float | None = None
    rtf: float | None = None
    refusal_seconds: float | None = None
    """For a refused stream: the ``start`` sent to the ``error`` received."""
    errors: Counter[str] = field(default_factory=Counter)
    close_code: int | None = None
    problem: str | None = None


def _channel(event: dict[str, Any]) -> int:
    return int(event.get("channel") or 0)


def check_segmented(finals: Sequence[dict[str, Any]], spans: Sequence[Span]) -> Check:
    """Finals of one channel against the exact spans the offline segmentation found."""
    got = [(round(f["start_time"], 6), round(f["end_time"], 6)) for f in finals]
    have, want = Counter(got), Counter(spans)
    return Check(
        expected=len(spans),
        received=len(got),
        lost=sum((want - have).values()),
        duplicated=sum(max(have[s] - 1, 0) for s in want if s in have),
        unexpected=sum(n for s, n in have.items() if s not in want),
        out_of_order=sum(1 for a, b in itertools.pairwise(got) if b[0] < a[0]),
    )


def check_tiling(finals: Sequence[dict[str, Any]], end: float) -> Check:
    """Finals of one channel must tile ``[0, end)`` in order: no gap, no overlap.

    A gap counts as as many lost results as the typical segment length fits into it.
    """
    spans = [(float(f["start_time"]), float(f["end_time"])) for f in finals]
    check = Check(received=len(spans))
    check.out_of_order = sum(1 for a, b in itertools.pairwise(spans) if b[0] < a[0])
    lengths = [e - s for s, e in spans if e > s]
    typical = statistics.median(lengths) if lengths else max(end, _EPS)
    position = 0.0
    for start, stop in sorted(spans):
        if start > position + _EPS:
            check.lost += math.ceil((start - position) / typical - 1e-3)
        elif start < position - _EPS:
            check.duplicated += 1
        position = max(position, stop)
    tolerance = 1.5 / 8000  # one sample at the lowest model rate, and rounding
    if end - position > tolerance:
        check.lost += max(1, math.ceil((end - position) / typical - 1e-3))
    check.expected = check.received - check.duplicated + check.lost
    return check


def _count_ok(final: dict[str, Any], model_rate: int) -> bool:
    count = final.get("count")
    if not isinstance(count, int):
        return True  # not the test model: nothing to check
    span = (float(final["end_time"]) - float(final["start_time"])) * model_rate
    return abs(count - span) <= 1.5


def analyse(record: StreamRecord, expected: Expected, origin: float) -> StreamStats:
    """Check one stream's results and measure it; ``origin`` is when the run began."""
    audio = record.audio
    stats = StreamStats(
        index=record.index,
        audio=audio.key,
        status="ok",
        audio_seconds=audio.duration,
        close_code=record.close_code,
    )
    events = record.events
    ready = next((e for e in events if e.get("type") == "ready"), None)
    for event in events:
        if event.get("type") == "error":
            stats.errors[str(event.get("code"))] += 1
    if ready is None:
        stats.status = "refused" if stats.errors.get("overloaded") else "failed"
        if stats.errors and record.start_sent is not None:
            stats.refusal_seconds = record.arrivals[0] - record.start_sent
        stats.problem = record.failure or f"no ready (errors: {dict(stats.errors) or 'none'})"
        return stats
    done = next((i for i, e in enumerate(events) if e.get("type") == "done"), None)
    if record.failure or done is None:
        stats.status = "failed"
        stats.problem = record.failure or f"no done (close code {record.close_code})"
    model_rate = int(ready.get("model_sample_rate") or 16000)
    channels = int(ready.get("channels") or 1)
    timed = zip(events, record.arrivals, strict=True)
    segments = [(e, t) for e, t in timed if e.get("type") == "segment"]
    finals = [(e, t) for e, t in segments if e.get("is_final", True)]
    for channel in range(channels):
        mine = [e for e, _ in finals if _channel(e) == channel]
        if expected.spans is not None:
            spans = expected.spans[channel] if channel < len(expected.spans) else ()
            stats.check.add(check_segmented(mine, spans))
        else:
            stats.check.add(check_tiling(mine, expected.frames / expected.sample_rate))
    stats.check.wrong_count = sum(1 for e, _ in finals if not _count_ok(e, model_rate))
    if not stats.check.clean and stats.problem is None:
        stats.problem = "results do not match the audio"

    sends, frames = record.send_times, record.frames_sent
    last_frame = frames[-1] if frames else 0
    for event, arrived in finals:
        end_frame = math.ceil(event["end_time"] * audio.sample_rate - 1e-3)
        k = bisect.bisect_left(frames, end_frame)
        if end_frame >= last_frame or k >= len(sends):
            sent = record.stop_sent if record.stop_sent is not None else sends[-1]
        else:
            sent = sends[k]
        stats.final_delays.append(arrived - sent)
        stats.final_times.append(arrived - origin)
    if segments and sends:
        stats.ttfr = segments[0][1] - sends[0]
    last_interim: dict[tuple[int, float], float] = {}
    for event, arrived in segments:
        if event.get("is_final", True):
            continue
        key = (_channel(event), round(event["start_time"], 6))
        if key in last_interim:
            stats.interim_intervals.append(arrived - last_interim[key])
        last_interim[key] = arrived
    if done is not None and sends and audio.duration > 0:
        stats.rtf = (record.arrivals[done] - sends[0]) / audio.duration
    return stats


def distribution(values: Iterable[float]) -> dict[str, float | int | None]:
    """Count, mean, p50, p95, p99 and max of ``values`` (None when there are none)."""
    data = sorted(values)
    if not data:
        return {"count": 0, "mean": None, "p50": None, "p95": None, "p99": None, "max": None}

    def pct(q: float) -> float:
        # Nearest rank: the smallest value with at least q of the data at or below it.
        rank = max(math.ceil(q * len(data)), 1)
        return round(data[rank - 1], 6)

    return {
        "count": len(data),
        "mean": round(statistics.fmean(data), 6),
        "p50": pct(0.50),
        "p95": pct(0.95),
        "p99": pct(0.99),
        "max": round(data[-1], 6),
    }
