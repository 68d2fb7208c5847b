"""What a route asks of the pipeline: post an event, run an inference, withdraw one."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from streamer.events import Event

__all__ = ["Adopt", "Infer", "Post", "Withdraw", "Work"]


@dataclass(frozen=True, slots=True)
class Post:
    """Send ``event`` once everything before it has been sent."""

    event: Event


@dataclass(frozen=True, slots=True, eq=False)
class Infer:
    """Run the model on ``audio`` (at the model's rate); its result, for ``[start, end)``
    seconds of ``channel``, leaves in this place of the order.

    ``key`` names the inference for a later ``Withdraw``; a final is never withdrawn.
    ``forced``: a final cut by ``finalize`` (for front-ends that mark them).
    ``speculative``: a final decoded ahead, at a pause: its result is kept aside, not
    sent, until the route adopts it as the segment's final (``Adopt``) or withdraws it.
    """

    key: int
    channel: int
    start: float
    end: float
    audio: NDArray[np.float32]
    final: bool
    forced: bool = False
    speculative: bool = False


@dataclass(frozen=True, slots=True)
class Withdraw:
    """The interim (or speculative final) ``key`` is superseded: drop it if no worker has
    taken it yet, and never send its result."""

    key: int


@dataclass(frozen=True, slots=True)
class Adopt:
    """The speculative inference ``key`` decoded exactly this final's audio: its result
    leaves in this place of the order as the final (``forced`` as a ``finalize`` cut)."""

    key: int
    forced: bool = False


Work = Post | Infer | Withdraw | Adopt
