"""Charts come with the ``bench`` extra; without matplotlib the hint says how to get it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from streamer.bench import report


def test_without_matplotlib_charts_say_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A None entry makes ``import matplotlib`` fail, as it does where it is not installed.
    for name in [n for n in sys.modules if n == "matplotlib" or n.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert not report.charts_available()
    with pytest.raises(report.ChartsUnavailable, match=r"pip install 'streamer\[bench\]'"):
        report._pyplot()


def test_with_the_bench_extra_charts_are_available() -> None:
    assert report.charts_available()
