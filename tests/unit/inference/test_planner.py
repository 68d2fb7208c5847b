"""The batch planner alone: which streams the next batch takes from, as a pure function."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streamer.inference.scheduler import plan_batch


def test_finals_go_first_and_no_interim_rides_with_them() -> None:
    assert plan_batch({"a": 1}, {"b": 3}, 8, interims_allowed=True) == ["a"]


def test_forced_finals_go_ahead_of_every_other_final_and_interim_alone() -> None:
    # A finalize waits on a forced final: it rides with no other final, nor interim.
    assert plan_batch({"a": 2, "b": 1}, {"c": 1}, 8, interims_allowed=True, forced={"b": 1}) == [
        "b"
    ]
    assert plan_batch({"a": 1}, {}, 8, interims_allowed=True, forced={"b": 2, "c": 1}) == [
        "b",
        "c",
        "b",
    ]
    assert plan_batch({"a": 1}, {}, 8, interims_allowed=True, forced={}) == ["a"]


def test_interims_only_when_no_final_waits_and_they_are_allowed() -> None:
    assert plan_batch({}, {"b": 2, "c": 1}, 8, interims_allowed=True) == ["b", "c", "b"]
    assert plan_batch({}, {"b": 2}, 8, interims_allowed=False) == []


def test_one_job_per_stream_per_round_in_round_robin_order() -> None:
    picks = plan_batch({"busy": 10, "q1": 1, "q2": 2}, {}, 5, interims_allowed=True)
    assert picks == ["busy", "q1", "q2", "busy", "q2"]


def test_the_limit_cuts_a_round_short() -> None:
    assert plan_batch({"a": 3, "b": 3, "c": 3}, {}, 2, interims_allowed=True) == ["a", "b"]


waiting = st.dictionaries(st.sampled_from("abcdef"), st.integers(1, 5), max_size=6)


@given(waiting, waiting, waiting, st.integers(1, 12), st.booleans())
def test_a_plan_never_takes_more_than_waits_nor_past_the_limit(
    forced: dict[str, int],
    finals: dict[str, int],
    interims: dict[str, int],
    limit: int,
    allowed: bool,
) -> None:
    picks = plan_batch(finals, interims, limit, interims_allowed=allowed, forced=forced)
    source = forced if forced else finals if finals else interims if allowed else {}
    assert len(picks) == min(limit, sum(source.values()))
    for stream in set(picks):
        assert picks.count(stream) <= source[stream]
    # Fair: a stream gets a second job only once every other stream has one or has no more.
    counts = {stream: picks.count(stream) for stream in source}
    for s in source:
        for t in source:
            assert counts[s] <= counts[t] + 1 or counts[t] == source[t]
