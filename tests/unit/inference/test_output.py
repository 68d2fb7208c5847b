"""The output rules: JSON values pass unchanged, numpy becomes Python, the rest is refused."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.inference.output import MAX_DEPTH, OutputError, json_safe

_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
)
_json = st.recursive(
    _leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=15,
)
_outputs = st.dictionaries(
    st.text(max_size=8).filter(
        lambda k: k not in {"type", "channel", "start_time", "end_time", "is_final"}
    ),
    _json,
)


@settings(deadline=None)  # a busy test machine is no reason to fail
@given(_outputs)
def test_json_values_pass_unchanged(output: dict[str, Any]) -> None:
    safe = json_safe(output)
    assert safe == output
    assert json.loads(json.dumps(safe, allow_nan=False)) == output


def test_numpy_values_become_python_values() -> None:
    safe = json_safe(
        {
            "i": np.int64(3),
            "f": np.float32(0.25),
            "b": np.bool_(False),
            "a": np.array([[1, 2], [3, 4]], dtype=np.uint8),
            "t": (np.float64(1.5), "x"),
            "nested": {"k": [np.int8(-1)]},
        }
    )
    assert safe == {
        "i": 3,
        "f": 0.25,
        "b": False,
        "a": [[1, 2], [3, 4]],
        "t": [1.5, "x"],
        "nested": {"k": [-1]},
    }
    assert type(safe["i"]) is int and type(safe["f"]) is float and type(safe["b"]) is bool
    assert type(safe["a"][0][0]) is int


@pytest.mark.parametrize(
    ("output", "needle"),
    [
        ({"p": math.nan}, "output['p'] is nan"),
        ({"p": [1.0, math.inf]}, "output['p'][1] is inf"),
        ({"p": np.float32("nan")}, "is nan"),
        ({"p": np.array([1.0, np.nan])}, "output['p'][1] is nan"),
        ({"s": {1, 2}}, "is of type set"),
        ({"b": b"raw"}, "is of type bytes"),
        ({"c": 1j}, "is of type complex"),
        ({"o": object()}, "is of type object"),
        ({1: "one"}, "key that is not a string"),
        ({"type": "mine"}, "the key 'type'"),
        ({"is_final": False}, "the key 'is_final'"),
        ([1, 2], "returned a list, not a dict"),
        (None, "returned a NoneType"),
    ],
)
def test_values_without_a_json_form_are_refused_naming_where(output: Any, needle: str) -> None:
    with pytest.raises(OutputError) as info:
        json_safe(output)
    assert needle in str(info.value)


def test_a_value_that_contains_itself_is_refused() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(OutputError, match=f"more than {MAX_DEPTH} levels"):
        json_safe({"loop": loop})
