"""What a stream needs of inference: submit audio, get a ticket, await or withdraw it.

The pipeline depends on this seam, not on a concrete scheduler: the local ``Scheduler``
implements it over any worker pool (threads, processes, Ray Serve), and a test or another
backend can stand in for it.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from streamer.inference.model import Output

__all__ = ["InferenceBackend", "Ticket"]


class Ticket(Protocol):
    """One submitted inference: awaiting it gives the output or raises its typed error
    (``asyncio.CancelledError`` once withdrawn). Cancelling a task that awaits it does
    not withdraw it; ``cancel`` does."""

    final: bool

    def __await__(self) -> Generator[Any, None, Output]: ...

    def cancel(self) -> bool:
        """Withdraw the inference if no worker has taken it yet; whether it was."""
        ...

    def hasten(self) -> None:
        """A final now asked for by ``finalize``: if still queued, it goes ahead of every
        other queued decode (as if submitted ``forced``)."""
        ...

    def done(self) -> bool:
        """Whether the outcome is known (a result, an error, or withdrawn)."""
        ...

    def cancelled(self) -> bool:
        """Whether it was withdrawn (by ``cancel``, or dropped when it was submitted)."""
        ...

    def exception(self) -> BaseException | None:
        """The error it failed with, once ``done`` and not withdrawn."""
        ...

    def add_done_callback(self, callback: Callable[[Ticket], None]) -> None:
        """Call ``callback(ticket)`` on the event loop once the outcome is known."""
        ...


class InferenceBackend(Protocol):
    """Runs the inferences of every stream."""

    def submit(
        self,
        stream: str,
        audio: NDArray[np.float32],
        *,
        final: bool = True,
        words: bool = False,
        forced: bool = False,
    ) -> Ticket:
        """Queue one inference of ``stream``; an interim may come back already withdrawn.

        ``forced``: a final a ``finalize`` asked for, which someone is waiting on now: it
        goes ahead of every other queued decode."""
        ...

    def cancel_stream(self, stream: str) -> int:
        """Withdraw every queued inference of ``stream``; how many."""
        ...

    @property
    def behind(self) -> bool:
        """Whether finals wait for a worker now: a decode submitted now starts late."""
        ...
