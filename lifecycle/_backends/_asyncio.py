"""The asyncio backend: groups of handlers, their deadlines and background handlers.

Handlers become bare tasks (eagerly started where Python offers it) tracked by one waiter
future, with one timer per loop for every deadline (:class:`Deadlines`), blocking groups'
and background handlers' alike, so dispatch costs about what ``asyncio.gather`` costs and
leaves no cyclic garbage.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import math
import sys
from contextlib import AbstractContextManager
from time import perf_counter
from typing import TYPE_CHECKING, Any

from .._results import HandlerResult, Status
from ._inline import run_inline

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from .._event import Event
    from .._plan import Group, TimeoutBuckets
    from .._results import ResultPart
    from .._subscription import Subscription
    from .._threads import WorkerPool
    from ._background import Background

__all__ = ["AsyncioBackend", "Deadlines", "shielded", "wait_for"]

EAGER = sys.version_info >= (3, 12)
"""Tasks start eagerly: a handler that never suspends is done when its task is made."""

if sys.version_info >= (3, 12):

    def start_task(loop: asyncio.AbstractEventLoop, coro: Any) -> asyncio.Future[Any]:
        # Eager start runs the handler up to its first suspension right here: a handler
        # that never suspends costs no task switch at all.
        return asyncio.Task(coro, loop=loop, eager_start=True)  # type: ignore[call-arg,unused-ignore]

else:

    def start_task(loop: asyncio.AbstractEventLoop, coro: Any) -> asyncio.Future[Any]:
        if loop.get_task_factory() is None:
            # What loop.create_task does, minus its checks and naming: a third cheaper.
            return asyncio.Task(coro, loop=loop)
        return loop.create_task(coro)


# How many times the emitter yields to the loop before it waits with done callbacks and a
# waiter future.
# Most handlers finish in their first step or two (one that never suspends, one that
# checkpoints once or awaits something already done). For them, yielding and then looking
# at the tasks costs one loop iteration, where done callbacks and a waiter cost two more
# iterations plus a callback per handler. A yield that finished nothing ends the yielding
# early, so handlers that wait for I/O cost at most two extra iterations.
YIELDS = 3

# After a group's handlers outlived the yields to the loop, how many emits skip them.
SKIP_YIELDS = 16


def result_of(
    sub: Subscription,
    event: Event,
    future: asyncio.Future[Any],
    started: float,
    ended: float,
    timed_out: bool,
) -> HandlerResult:
    """The result of a finished (or given up) handler future."""
    if timed_out:
        status, exc = Status.TIMEOUT, None
    elif future.cancelled():
        status, exc = Status.CANCELLED, None
    else:
        exc = future.exception()
        status = Status.OK if exc is None else Status.ERROR
    return HandlerResult(
        sub.name,
        event.name,
        status,
        ended - started,
        exc,
        sub.critical,
        sub.background,
        event.run_id,
        started,
    )


def retrieve_quietly(future: asyncio.Future[Any]) -> None:
    """Mark a future's exception as seen, so asyncio does not log it as never retrieved."""
    if not future.cancelled():
        future.exception()


class Timed:
    """Handlers that :class:`Deadlines` gives up at their deadlines, unless closed first."""

    __slots__ = ("closed", "deadlines")

    def __init__(self) -> None:
        self.closed = False  # done, or no longer waited for: its deadlines are void
        self.deadlines = 0  # its entries in Deadlines that have not fired

    def expire(self, futures: list[asyncio.Future[Any]]) -> None:
        """The deadline of ``futures`` passed: give up those still running."""
        raise NotImplementedError


class Deadlines:
    """One timer for every deadline of the handlers running on one loop.

    A timer per group (``loop.call_at``, cancelled when the group finishes) cost about as
    much as the rest of a slow emit: a timer handle, a heap push, a cancel and, every
    hundred or so, a rebuild of the loop's heap. Here a group (or the background handlers
    of an emit) adds its deadlines to a heap of its own and a single timer is armed at
    the earliest one; with one timeout for all handlers the deadlines only grow, so the
    timer is armed once and stays. The entries of closed groups are dropped when they
    reach the top, or all at once when they outnumber the live ones, so the heap stays
    within twice the deadlines still pending.

    Args:
        loop: the loop whose handlers this watches.
    """

    __slots__ = ("armed_at", "entries", "handle", "live", "loop", "sequence")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        # (when, sequence, group, futures); the sequence keeps groups out of comparisons.
        self.entries: list[tuple[float, int, Timed, list[asyncio.Future[Any]]]] = []
        self.handle: asyncio.TimerHandle | None = None
        self.armed_at = math.inf
        self.live = 0
        self.sequence = 0

    def add(self, when: float, group: Timed, futures: list[asyncio.Future[Any]]) -> None:
        """Give up ``futures`` of ``group`` at loop time ``when``, unless it closed first."""
        self.sequence += 1
        heapq.heappush(self.entries, (when, self.sequence, group, futures))
        group.deadlines += 1
        self.live += 1
        if when < self.armed_at:
            self._arm(when)

    def close(self, group: Timed) -> None:
        """``group`` is done (or its emitter stopped waiting): its deadlines are void."""
        group.closed = True
        self.live -= group.deadlines
        group.deadlines = 0
        entries = self.entries
        if len(entries) > 64 and len(entries) > 2 * self.live:
            self.entries = [entry for entry in entries if not entry[2].closed]
            heapq.heapify(self.entries)

    def _arm(self, when: float) -> None:
        if self.handle is not None:
            self.handle.cancel()
        self.handle = self.loop.call_at(when, self._fire)
        self.armed_at = when

    def _fire(self) -> None:
        self.handle = None
        self.armed_at = math.inf
        entries = self.entries
        now = self.loop.time()
        while entries and (entries[0][0] <= now or entries[0][2].closed):
            _, _, group, futures = heapq.heappop(entries)
            if not group.closed:
                group.deadlines -= 1
                self.live -= 1
                group.expire(futures)
        if entries:
            self._arm(entries[0][0])


class _Waiting(Timed):
    """A group's futures still running after the first steps; its emitter awaits ``waiter``."""

    __slots__ = ("ends", "given_up", "pending", "waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop, futures: list[asyncio.Future[Any]]) -> None:
        self.closed = False
        self.deadlines = 0
        self.waiter: asyncio.Future[None] = loop.create_future()
        self.pending = len(futures)
        self.ends: dict[asyncio.Future[Any], float] = {}
        self.given_up: set[asyncio.Future[Any]] = set()
        for future in futures:
            future.add_done_callback(self.on_done)

    def on_done(self, future: asyncio.Future[Any]) -> None:
        if future in self.given_up:
            retrieve_quietly(future)
            return
        self.ends[future] = perf_counter()
        self.pending -= 1
        if not self.pending and not self.waiter.done():
            self.waiter.set_result(None)

    def expire(self, futures: list[asyncio.Future[Any]]) -> None:
        now = perf_counter()
        for future in futures:
            # A future that is done has its callback queued already; it counts itself.
            if future.done() or future in self.given_up:
                continue
            self.given_up.add(future)
            self.ends[future] = now
            future.cancel()
            self.pending -= 1
        if not self.pending and not self.waiter.done():
            self.waiter.set_result(None)


class _BackgroundBatch(Timed):
    """The background handlers one emit started, while some of them have a deadline."""

    __slots__ = ("backend", "buckets", "pending")

    def __init__(self, backend: AsyncioBackend) -> None:
        self.closed = False
        self.deadlines = 0
        self.backend = backend
        self.pending = 0  # its handlers still in the background table
        self.buckets: list[list[asyncio.Future[Any]]] = []  # its futures in Deadlines

    def release(self) -> None:
        """One of its handlers left the table (it finished, or the bus gave it up)."""
        self.pending -= 1
        if self.pending <= 0 and not self.closed:
            self.close()

    def close(self) -> None:
        self.backend.deadlines.close(self)
        # Its entries may stay in the deadline heap a while: they must not hold the
        # futures, nor what their results and exceptions hold.
        for bucket in self.buckets:
            bucket.clear()

    def expire(self, futures: list[asyncio.Future[Any]]) -> None:
        background = self.backend.background
        table = background.table
        for future in futures:
            entry = table.pop(future, None)
            if entry is None:
                continue  # finished in time
            sub, event, started, _ = entry
            future.cancel()
            self.pending -= 1
            background.finished(result_of(sub, event, future, started, perf_counter(), True))
        futures.clear()
        if self.pending <= 0 and not self.closed:
            self.close()


def _finished(
    running: list[asyncio.Future[Any]], ends: dict[asyncio.Future[Any], float]
) -> list[asyncio.Future[Any]]:
    """Stamp the end time of the futures that are done; return those still running."""
    still = [future for future in running if not future.done()]
    if len(still) < len(running):
        now = perf_counter()
        for future in running:
            if future.done():
                ends[future] = now
    return still


async def wait_for(wait: Callable[[], Awaitable[object]], timeout: float | None) -> bool:
    """Await ``wait()`` for at most ``timeout`` seconds (``None``: no limit); did it end?"""
    if timeout is None:
        await wait()
        return True
    try:
        await asyncio.wait_for(wait(), max(timeout, 0.0))
    except asyncio.TimeoutError:  # TimeoutError itself from 3.11 on
        return False
    return True


def shielded() -> AbstractContextManager[object]:
    """Shield the block from anyio's cancellation, where anyio is in use at all.

    Without anyio imported there is no anyio cancel scope to shield from, and a
    wrapped command's start-up (``lifecycle run``) does not import it for this.
    """
    if "anyio" not in sys.modules:
        return contextlib.nullcontext()
    import anyio

    return anyio.CancelScope(shield=True)


class AsyncioBackend:
    """How one bus runs handlers on one asyncio loop.

    Args:
        loop: the running loop; the bus makes another backend for another loop.
        pool: the bus's worker threads for plain handlers.
        background: the bus's background handlers in flight.
    """

    __slots__ = ("background", "deadlines", "loop", "pool")

    new_event = asyncio.Event

    def __init__(
        self, loop: asyncio.AbstractEventLoop, pool: WorkerPool, background: Background
    ) -> None:
        self.loop: asyncio.AbstractEventLoop | None = loop
        self.pool = pool
        self.background = background
        self.deadlines = Deadlines(loop)

    wait_for = staticmethod(wait_for)

    shielded = staticmethod(shielded)

    async def run_group(self, group: Group, event: Event, results: list[ResultPart]) -> None:
        """Run one group of blocking handlers concurrently and append their results in order.

        Yield to the loop a few times (:data:`YIELDS`) before waiting with done callbacks,
        timers and a waiter; if it came to that, the next emits of this group skip the
        yields for a while (each costs the emitter a task step).
        """
        loop: Any = self.loop
        pool = self.pool
        subs = group.subs
        skip = group.skip_yields
        if skip:
            group.skip_yields = skip - 1
        started = perf_counter()
        opened = loop.time()
        # One entry per handler, in order: its future, or its result if it ran inline.
        slots: list[Any] = []
        futures: list[asyncio.Future[Any]] = []
        for sub in subs:
            if sub.inline:
                slots.append(None)  # filled below, once the tasks are started
                continue
            future = (
                start_task(loop, sub.call(event))
                if sub.is_async
                else pool.submit(sub.call, event, loop)
            )
            slots.append(future)
            futures.append(future)
        if group.inline:
            for index, sub in enumerate(subs):
                if sub.inline:
                    slots[index] = run_inline(sub, event)
        ends: dict[asyncio.Future[Any], float] = {}
        waiting: _Waiting | None = None
        # The futures by timeout, handed to the deadlines if it comes to waiting. Those
        # that are done by then stay in: giving up on a finished future does nothing.
        buckets: list[list[asyncio.Future[Any]]] = []
        deadlines = self.deadlines
        try:
            # Eagerly started tasks (3.12+) that never suspended are done already;
            # without eager start, no task has run yet.
            running = _finished(futures, ends) if EAGER else futures
            done_yields = 0
            yields = 0 if skip else YIELDS
            while running and done_yields < yields:
                done_yields += 1
                await asyncio.sleep(0)
                still = _finished(running, ends)
                if len(still) == len(running) and done_yields > 1:
                    break
                running = still
            if running:
                waiting = _Waiting(loop, running)
                for timeout, indexes in group.timeouts:
                    if timeout is not None:
                        bucket = [slots[index] for index in indexes]
                        buckets.append(bucket)
                        deadlines.add(opened + timeout, waiting, bucket)
                await waiting.waiter
        except BaseException:
            # The emitter was cancelled: take the handlers down with it, say so, re-raise.
            if waiting is not None:
                deadlines.close(waiting)
                for bucket in buckets:
                    bucket.clear()
            for future in futures:
                if future.done():
                    retrieve_quietly(future)
                    continue
                # Every future still running is watched by the waiter, if there is one.
                if waiting is not None:
                    waiting.given_up.add(future)
                else:
                    future.add_done_callback(retrieve_quietly)
                future.cancel()
            raise
        given_up: set[asyncio.Future[Any]] | tuple[()] = ()
        if waiting is not None:
            if not skip:
                group.skip_yields = SKIP_YIELDS
            deadlines.close(waiting)
            ends.update(waiting.ends)
            given_up = waiting.given_up
            # Its entries may stay in the deadline heap a while: they must not hold the
            # futures (an exception's traceback holds frames, and the frames what they
            # held).
            waiting.ends = {}
            for bucket in buckets:
                bucket.clear()
            waiting = None
        # Each task is let go as soon as its result is built, so the results replace the
        # tasks in memory instead of piling up on top of them: fewer young objects alive
        # at once means fewer collections of generation 0 (see the benchmark's gc
        # figures).
        futures.clear()
        new = tuple.__new__
        name, run_id = event.name, event.run_id
        for index, sub in enumerate(subs):
            slot = slots[index]
            if slot.__class__ is HandlerResult:
                results.append(slot)
                continue
            slots[index] = None
            if slot in given_up:
                status, exc = Status.TIMEOUT, None
            elif slot.cancelled():
                status, exc = Status.CANCELLED, None
            else:
                exc = slot.exception()
                status = Status.OK if exc is None else Status.ERROR
            duration = ends.pop(slot) - started
            del slot
            # tuple.__new__ skips the named tuple's Python-level __new__.
            results.append(
                new(
                    HandlerResult,
                    (
                        sub.name,
                        name,
                        status,
                        duration,
                        exc,
                        sub.critical,
                        sub.background,
                        run_id,
                        started,
                    ),
                )
            )

    def start_background(
        self, subs: tuple[Subscription, ...], timeouts: TimeoutBuckets, event: Event
    ) -> None:
        """Start ``subs`` in the background (the bus made room for them) and track them."""
        loop: Any = self.loop
        pool = self.pool
        started = perf_counter()
        table = self.background.table
        batch = None
        for timeout, _ in timeouts:
            if timeout is not None:
                batch = _BackgroundBatch(self)
                break
        futures: list[asyncio.Future[Any]] = []
        finished = 0
        done = self._background_done
        for sub in subs:
            future = (
                start_task(loop, sub.call(event))
                if sub.is_async
                else pool.submit(sub.call, event, loop)
            )
            futures.append(future)
            if future.done():  # an eager task that never suspended
                table[future] = (sub, event, started, None)
                done(future)
                finished += 1
                continue
            table[future] = (sub, event, started, batch)
            future.add_done_callback(done)
        if batch is not None:
            batch.pending = len(futures) - finished
            if batch.pending:
                now = loop.time()
                deadlines = self.deadlines
                first = timeouts[0][0]
                if first is not None and len(timeouts) == 1:
                    # One timeout for all of them, the common case: no list to build.
                    batch.buckets.append(futures)
                    deadlines.add(now + first, batch, futures)
                    return
                for timeout, indexes in timeouts:
                    if timeout is not None:
                        bucket = [futures[index] for index in indexes]
                        batch.buckets.append(bucket)
                        deadlines.add(now + timeout, batch, bucket)

    def _background_done(self, future: asyncio.Future[Any]) -> None:
        background = self.background
        entry = background.table.pop(future, None)
        if entry is None:
            retrieve_quietly(future)  # given up at its timeout or at close, already reported
            return
        sub, event, started, batch = entry
        if batch is not None:
            batch.release()
        background.finished(result_of(sub, event, future, started, perf_counter(), False))
