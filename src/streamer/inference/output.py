"""The rules a model's output must follow to reach a client: JSON values only.

A model returns a dict per input. Before it leaves, it is made JSON-safe: numpy scalars
become Python numbers, numpy arrays lists, tuples lists; strings, finite numbers, booleans,
None, lists and dicts with string keys pass as they are. Anything else (NaN or infinity, a
set, bytes, an object) is refused, and so is a key that is a field of the ``segment`` event
(``type``, ``channel``, ``start_time``, ``end_time``, ``is_final``): the client gets a
``model_error`` for that segment instead, naming the reason, and the stream goes on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from streamer.events import SEGMENT_FIELDS

MAX_DEPTH = 32
"""Nesting deeper than this is refused (and a self-referencing value with it)."""


class OutputError(ValueError):
    """The model's output cannot be sent; the message says why."""


def json_safe(output: object) -> dict[str, Any]:
    """A JSON-safe copy of one model output, or ``OutputError``."""
    if not isinstance(output, Mapping):
        raise OutputError(f"the model returned a {type(output).__name__}, not a dict")
    safe = _value(output, "output", 0)
    assert isinstance(safe, dict)
    clashes = sorted(set(safe) & SEGMENT_FIELDS)
    if clashes:
        raise OutputError(
            f"the model's output uses the key {clashes[0]!r}, which is a field of the segment event"
        )
    return safe


def _value(value: object, where: str, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise OutputError(f"{where} is nested more than {MAX_DEPTH} levels deep")
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, int):
        return int(value)  # an IntEnum or other int subclass, as a plain number
    if isinstance(value, float):
        return _finite(float(value), where)
    if isinstance(value, np.generic):
        return _value(value.item(), where, depth)
    if isinstance(value, np.ndarray):
        return _value(value.tolist(), where, depth)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise OutputError(f"{where} has a key that is not a string: {key!r:.40}")
            out[key] = _value(item, f"{where}[{key!r}]", depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [_value(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value)]
    raise OutputError(f"{where} is of type {type(value).__name__}, which has no JSON form")


def _finite(value: float, where: str) -> float:
    if not math.isfinite(value):
        raise OutputError(f"{where} is {value}, which has no JSON form")
    return value
