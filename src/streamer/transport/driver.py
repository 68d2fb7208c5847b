"""The one async driver of a connection, whatever its transport.

It waits for the next inbound message (decoded by the transport's codec) or a runtime
notice (draining, the drain's expiry, the open stream breaking, the outbox filling), feeds
the connection machine, and carries out the machine's actions on the stream through the
stream factory (``streams.py``). It returns the ``Close`` that ends the connection; the transport's
shell applies it in its own terms (a close code, a status).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from streamer.errors import ClientError, ErrorCode
from streamer.events import Event, StreamError
from streamer.observability.tracing import ConnectionTrace
from streamer.pipeline import Route, StreamPipeline
from streamer.policy import ANONYMOUS, Principal
from streamer.protocol.actions import (
    AbortStream,
    Action,
    Close,
    EmitError,
    Feed,
    Finalize,
    FinishStream,
    OpenStream,
    Send,
    SteerStream,
)
from streamer.protocol.connection import (
    SLOW_CONSUMER_MESSAGE,
    UNLIMITED,
    ConnectionMachine,
    Limits,
    Mode,
)
from streamer.protocol.inputs import (
    Crashed,
    Disconnected,
    DrainExpired,
    DrainStarted,
    Input,
    OutboxFull,
    StreamFailed,
    StreamRefused,
    Tick,
)
from streamer.services import Services
from streamer.transport.outbox import Outbox

log = logging.getLogger(__name__)

T = TypeVar("T")

Receive = Callable[[], Awaitable[Input | None]]
"""The next input from the peer (None: a message that means nothing, such as a ping)."""


class _PeerGone(Exception):
    """The peer went away while the driver waited on the stream."""


class _Interrupted(Exception):
    """An ``_Interrupter``'s own cancellation ended the awaited work."""


class _Interrupter:
    """Lets a callback interrupt what the current task awaits, without a task or a wait
    of its own: ``interrupt`` cancels the task while it is inside ``run`` (and not
    otherwise, the callback may run late), and that cancellation alone becomes
    ``_Interrupted``; any other still propagates."""

    __slots__ = ("_fired", "_inside", "_task")

    def __init__(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._inside = False
        self._fired = False

    def interrupt(self, _: object = None) -> None:
        if self._inside and not self._fired:
            self._fired = True
            self._task.cancel()

    async def run(self, work: Awaitable[T]) -> T:
        self._inside, self._fired = True, False
        try:
            return await work
        except asyncio.CancelledError:
            if self._fired and self._task.uncancel() == 0:
                raise _Interrupted from None
            raise
        finally:
            self._inside = False


def unread_close(services: Services, route: Route) -> Close:
    """The close of a connection whose client did not read the results left at its
    stream's end within the outbox's close grace: ``slow_consumer``, counted."""
    services.results_unread(route)
    return Close(ErrorCode.SLOW_CONSUMER, SLOW_CONSUMER_MESSAGE)


class ConnectionDriver:
    """Runs one connection: inputs into the machine, its actions onto the stream."""

    def __init__(
        self,
        services: Services,
        route: Route,
        mode: Mode,
        receive: Receive,
        outbox: Outbox[Any],
        *,
        limits: Limits = UNLIMITED,
        principal: Principal = ANONYMOUS,
        trace: ConnectionTrace | None = None,
        gone: asyncio.Future[None] | None = None,
        mark_finalize: bool = False,
        interruptible: bool = False,
    ) -> None:
        """``limits``: the connection's (idle time, a stream's length, the message rate).

        ``gone``, where the transport can tell: done as soon as the peer is gone, even
        while its earlier messages are still unread (a WebSocket's lost connection); the
        driver then ends the connection at once, also while a feed waits on a busy
        stream, and the stream's queued work is withdrawn.

        ``interruptible``: ``receive`` may be cancelled and called again without losing a
        message. The driver then awaits it in its own task and cancels it when a notice
        comes, instead of running each receive as a task of its own and waiting on it
        and the notices together (a task and a wait per message)."""
        self.services = services
        self.route = route
        self.machine = ConnectionMachine(mode, limits, self._clock())
        self.principal = principal
        self._receive = receive
        self._outbox = outbox
        self._trace = trace
        self._gone = gone
        self._mark_finalize = mark_finalize
        self._interruptible = interruptible
        self.stream: StreamPipeline | None = None
        self.stream_route = route
        """The open stream's route (a session may open its streams on another)."""
        self._attention: asyncio.Future[None] | None = None
        """While the driver waits on an interruptible receive: the future its notices
        wake (``offer`` may take an input while it is not done); None otherwise."""
        self._wake: Callable[[], None] | None = None
        self._held: Coroutine[Any, Any, None] | list[Action] | Exception | None = None
        """What an input taken by ``offer`` left the driver's own task to do: the wait a
        feed returned, the machine's actions other than a feed, or what went wrong."""

    def emit(self, event: Event) -> None:
        self._outbox.put(event)

    def offer(self, read: Callable[[], Input | None]) -> bool:
        """Take a message now, in the transport's callback, where the driver is waiting
        for its next input with nothing else to see to (an interruptible receive, no
        notice, no deadline passed, nothing held): ``read()`` gives its input, as
        ``receive`` would have (it is called only then, so that a codec with state of its
        own reads each message once), the machine steps, and a lone feed is carried out
        here, so that a message in real time costs no wake-up of the connection's task.
        Whatever else the step calls for (a feed's wait, other actions, what ``read`` or
        the step raised) is left to the task, which is woken for it, and the next message
        waits for the task. False: not taken, nothing read, and the transport must queue
        the message for ``receive``."""
        attention, gone, stream = self._attention, self._gone, self.stream
        if attention is None or self._held is not None:
            return False
        # Each notice wakes the task, some only in the loop's next turn: look at them all.
        if (
            attention.done()
            or (gone is not None and gone.done())
            or self._outbox.slow
            or self.services.draining.is_set()
            or (stream is not None and stream.failed.done())
        ):
            return False
        now = self._clock()
        deadline = self.machine.deadline()
        if deadline is not None and now >= deadline:
            return False
        try:
            message = read()
            if message is None:  # a message that means nothing, such as a ping
                return True
            actions = self.machine.receive(message, now)
            if len(actions) == 1 and isinstance(feed := actions[0], Feed) and stream is not None:
                wait = self._feed(stream, feed.data)
                if wait is None:
                    return True
                self._held = wait
            else:
                self._held = actions
        except Exception as error:  # raised in the task, as if it had taken the message
            self._held = error
        assert self._wake is not None
        self._wake()
        return True

    async def run(self) -> Close:
        """Serve the connection to its end; the open stream, if any, is over on return."""
        services = self.services
        services.connections.add(self)
        try:
            return await self._serve()
        except _PeerGone:
            return await self._step(Disconnected()) or Close(send=False)
        except Exception:
            log.exception("connection failed")
            return await self._crashed()
        finally:  # also when cancelled: the stream's work is withdrawn at once
            services.connections.discard(self)
            held, self._held = self._held, None
            if isinstance(held, Coroutine):
                held.close()
            if self.stream is not None:
                await self._abort("disconnected")

    async def _crashed(self) -> Close:
        try:
            close = await self._step(Crashed())
        except Exception:
            log.exception("connection failed while ending")
            close = None
        return close or Close(send=False)

    async def _serve(self) -> Close:
        services = self.services
        loop = asyncio.get_running_loop()
        # Every notice wakes one future; the per-message wait is on two futures only, and
        # the deadline's timer is re-armed when it fires, not for every message.
        attention: asyncio.Future[None] = loop.create_future()
        timer: asyncio.TimerHandle | None = None
        timer_at = 0.0
        receiving = _Interrupter()  # a notice interrupts an interruptible receive

        def wake(_: object = None) -> None:
            if not attention.done():
                attention.set_result(None)
            receiving.interrupt()

        self._wake = wake

        def fire() -> None:  # the deadline's timer: armed again once it has fired
            nonlocal timer
            timer = None
            wake()

        draining = asyncio.ensure_future(services.draining.wait())
        expired = asyncio.ensure_future(services.drain_expired.wait())
        draining.add_done_callback(wake)
        expired.add_done_callback(wake)
        if self._gone is not None:
            self._gone.add_done_callback(wake)
        self._outbox.on_slow = wake
        watched: StreamPipeline | None = None
        receive: asyncio.Future[Input | None] | None = None
        told_draining = False
        try:
            while True:
                if attention.done():
                    attention = loop.create_future()
                if self._held is not None and (close := await self._carry_held()):
                    return close
                if self._gone is not None and self._gone.done():
                    raise _PeerGone
                if self._outbox.slow and (close := await self._step(OutboxFull())):
                    return close
                if services.draining.is_set() and not told_draining:
                    told_draining = True
                    if close := await self._step(DrainStarted()):
                        return close
                stream = self.stream
                if stream is not None and stream.failed.done():
                    if close := await self._step(StreamFailed()):
                        return close
                    continue
                if stream is not None and services.drain_expired.is_set():
                    if close := await self._step(DrainExpired()):
                        return close
                    continue
                deadline = self.machine.deadline()
                if deadline is not None and self._clock() >= deadline:
                    if close := await self._step(Tick()):
                        return close
                    continue
                if stream is not watched:
                    watched = stream
                    if stream is not None:
                        stream.failed.add_done_callback(wake)
                if deadline is not None and (timer is None or deadline < timer_at):
                    if timer is not None:
                        timer.cancel()
                    timer, timer_at = loop.call_at(deadline, fire), deadline
                if self._interruptible:
                    if attention.done():
                        continue
                    self._attention = attention
                    try:
                        message = await receiving.run(self._receive())
                    except _Interrupted:  # a notice, or what ``offer`` held: see to it first
                        continue
                    finally:
                        self._attention = None
                    if message is not None and (close := await self._step(message)):
                        return close
                    continue
                if receive is None:
                    receive = asyncio.ensure_future(self._receive())
                waits: set[asyncio.Future[Any]] = {receive, attention}
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                if not receive.done():
                    continue
                message = receive.result()
                receive = None
                if message is not None and (close := await self._step(message)):
                    return close
        finally:
            self._outbox.on_slow = None
            if timer is not None:
                timer.cancel()
            for future in (receive, draining, expired):
                if future is not None:
                    future.cancel()

    @staticmethod
    def _clock() -> float:
        return asyncio.get_running_loop().time()

    async def _step(self, event: Input) -> Close | None:
        """Feed one input and carry out what it calls for; the ``Close``, if it ends the
        connection."""
        return await self._carry(self.machine.receive(event, self._clock()))

    async def _carry_held(self) -> Close | None:
        """Carry out what ``offer`` left to the task, before anything after it."""
        held, self._held = self._held, None
        if isinstance(held, Exception):
            raise held
        if isinstance(held, list):
            return await self._carry(held)
        if held is not None:  # a feed's wait
            await self._busy(held)
        return None

    async def _carry(self, actions: list[Action]) -> Close | None:
        """Carry out a step's actions; the ``Close``, if one ends the connection."""
        for action in actions:
            if isinstance(action, Close):
                if action.tell and action.code is not None:
                    self.emit(StreamError(action.code, action.message, reason=action.reason))
                return action
            if isinstance(action, OpenStream):
                route = self.route if action.route is None else Route(action.route)
                try:
                    self.stream = self.services.streams.open(
                        route,
                        action.request,
                        self.emit,
                        self._trace,
                        principal=self.principal,
                        chunk_seconds=action.chunk_seconds,
                        mark_finalize=self._mark_finalize,
                    )
                    self.stream_route = route
                except ClientError as error:
                    return await self._step(StreamRefused(error))
            else:
                await self._act(action)
        return None

    async def _act(self, action: Action) -> None:
        stream = self.stream
        if isinstance(action, Feed):
            assert stream is not None
            if (wait := self._feed(stream, action.data)) is not None:
                await self._busy(wait)
        elif isinstance(action, Finalize):
            assert stream is not None
            await self._busy(stream.finalize())
        elif isinstance(action, FinishStream):
            if stream is not None:
                self.stream = None
                await self.services.streams.end(self.stream_route, stream, flush=True)
                self.machine.busy_until(self._clock())
        elif isinstance(action, AbortStream):
            await self._abort(action.outcome)
        elif isinstance(action, EmitError):
            self.emit(StreamError(action.code, action.message, reason=action.reason))
        elif isinstance(action, Send):
            self._outbox.put_reply(action.payload)
        elif isinstance(action, SteerStream):
            assert stream is not None
            await self._unless_gone(stream.steer(action.command))

    def _feed(self, stream: StreamPipeline, data: bytes) -> Coroutine[Any, Any, None] | None:
        """One message's audio into the stream, counted; what to await, if anything."""
        self.services.bytes_in(self.stream_route, len(data))
        return stream.feed_nowait(data)

    async def _busy(self, work: Coroutine[Any, Any, None]) -> None:
        """Await the stream's ``work`` (it holds the client back) unless the peer goes; the
        client's idle time counts from its end (``ConnectionMachine.busy_until``)."""
        await self._unless_gone(work)
        self.machine.busy_until(self._clock())

    async def _unless_gone(self, work: Coroutine[Any, Any, None]) -> None:
        """Await ``work`` (which may wait on a busy stream); raise ``_PeerGone`` and cancel
        it if the peer goes away first."""
        gone = self._gone
        if gone is None:
            await work
            return
        if gone.done():
            work.close()
            raise _PeerGone
        # Awaited in this task (no task and no wait of its own per message).
        feeding = _Interrupter()
        gone.add_done_callback(feeding.interrupt)
        try:
            await feeding.run(work)
        except _Interrupted:
            raise _PeerGone from None
        finally:
            gone.remove_done_callback(feeding.interrupt)

    async def _abort(self, outcome: str) -> None:
        stream, self.stream = self.stream, None
        if stream is not None:
            await self.services.streams.end(
                self.stream_route, stream, flush=False, outcome_if_dropped=outcome
            )
