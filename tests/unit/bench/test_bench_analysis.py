"""The bench's checks and its search, without a server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from streamer.bench.analysis import Check, check_segmented, check_tiling, distribution
from streamer.bench.runner import LoadSpec, Progress, RunResult, search, summarise


def finals(*spans: tuple[float, float]) -> list[dict[str, Any]]:
    return [{"start_time": s, "end_time": e, "is_final": True} for s, e in spans]


def test_tiling_counts_gaps_as_lost_and_overlaps_as_duplicates() -> None:
    assert check_tiling(finals((0, 1), (1, 2), (2, 2.5)), 2.5).clean
    assert check_tiling(finals((0, 1), (2, 3)), 3.0).lost == 1  # 1-2 missing
    assert check_tiling(finals((0, 1), (1, 2)), 3.0).lost == 1  # the tail is missing
    assert check_tiling(finals((0, 1), (3, 4)), 4.0).lost == 2
    repeated = check_tiling(finals((0, 1), (1, 2), (1, 2)), 2.0)
    assert repeated.duplicated == 1 and repeated.lost == 0
    swapped = check_tiling(finals((1, 2), (0, 1)), 2.0)
    assert swapped.out_of_order == 1 and swapped.lost == 0
    assert check_tiling([], 1.0).lost == 1


def test_segmented_spans_must_match_exactly() -> None:
    want = ((0.5, 1.5), (2.0, 3.0))
    assert check_segmented(finals(*want), want).clean
    got = check_segmented(finals((0.5, 1.5), (0.5, 1.5), (2.0, 3.1)), want)
    assert (got.lost, got.duplicated, got.unexpected) == (1, 1, 1)
    assert check_segmented(finals((2.0, 3.0), (0.5, 1.5)), want).out_of_order == 1


def test_distribution_uses_nearest_rank() -> None:
    d = distribution(float(v) for v in range(1, 101))
    assert (d["count"], d["p50"], d["p95"], d["p99"], d["max"]) == (100, 50, 95, 99, 100)
    assert distribution([])["p95"] is None


async def test_the_search_finds_the_largest_count_that_meets_the_objective() -> None:
    spec = LoadSpec(url="ws://x/api/v1/segmented", files=(Path("a.wav"),), streams=100)
    tried: list[int] = []

    async def trial(load: LoadSpec, say: Progress | None) -> RunResult:
        # A server whose p95 is 0.3 s up to 337 streams, then far worse.
        tried.append(load.streams)
        summary = summarise(load, [], 1.0)
        summary["final_delay"]["p95"] = 0.3 if load.streams <= 337 else 5.0
        summary["results"]["clean"] = Check().clean
        return RunResult(load, summary, [])

    found = await search(
        spec,
        added_seconds=None,
        p95_seconds=0.5,
        low=100,
        high=1000,
        resolution=10,
        trial=trial,
        cool_down=0,
    )
    assert 327 < found.best <= 337
    assert tried[:3] == [100, 150, 225]  # grows by half while it passes, then bisects
    assert len(tried) < 12
