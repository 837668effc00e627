"""Running one group of handlers for one event: the hot path.

Two implementations with one contract. On asyncio, handlers become bare tasks (eagerly
started where Python offers it) tracked by one waiter future, with one timer per loop for
all deadlines (:class:`Deadlines`), so dispatch costs about what ``asyncio.gather`` costs and leaves no cyclic
garbage. On trio, one nursery and one cancel scope per distinct timeout do the same job.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import sys
from time import perf_counter
from typing import TYPE_CHECKING, Any

from ._results import HandlerResult, InlineRun, Status

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ._event import Event
    from ._results import ResultPart
    from ._subscription import Subscription
    from ._threads import WorkerPool

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


def run_inline(sub: Subscription, event: Event) -> HandlerResult:
    """Run one inline handler where it stands among tasks of a mixed group."""
    started = perf_counter()
    error: Exception | None = None
    try:
        sub.call(event)
    except Exception as exc:
        error = exc
    status = Status.OK if error is None else Status.ERROR
    return HandlerResult(
        sub.name,
        event.name,
        status,
        perf_counter() - started,
        error,
        sub.critical,
        False,
        event.run_id,
    )


def run_inline_group(
    subs: tuple[Subscription, ...],
    calls: tuple[Callable[[Event], Any], ...],
    event: Event,
    parts: list[ResultPart],
) -> None:
    """Run a group of inline handlers one after the other; append what they left.

    The fast path for cheap sync handlers: per handler, the call and one clock reading
    (each one's end is the next one's start), nothing else unless it raised. The results
    are built only when someone reads them (:class:`~lifecycle._results.InlineRun`).
    """
    stamps: list[float] = []
    stamp = stamps.append
    clock = perf_counter
    failures: dict[int, Exception] | None = None
    todo = calls
    started = clock()
    while True:
        try:
            for call in todo:
                call(event)
                stamp(clock())
        except Exception as exc:
            stamp(clock())
            index = len(stamps) - 1
            if failures is None:
                failures = {}
            failures[index] = exc
            todo = calls[index + 1 :]
            continue
        break
    run = _new(InlineRun)  # plain slot stores: cheaper than a call to __init__
    run.subs = subs
    run.event = event
    run.started = started
    run.stamps = stamps
    run.failures = failures
    parts.append(run)


_new = object.__new__


def result_of(
    sub: Subscription, event: Event, future: asyncio.Future[Any], duration: float, timed_out: bool
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
        sub.name, event.name, status, duration, exc, sub.critical, sub.background, event.run_id
    )


def retrieve_quietly(future: asyncio.Future[Any]) -> None:
    """Mark a future's exception as seen, so asyncio does not log it as never retrieved."""
    if not future.cancelled():
        future.exception()


class AsyncioGroup:
    """Waits for the futures still running after the first steps; gives up at timeouts."""

    __slots__ = ("closed", "deadlines", "ends", "given_up", "pending", "waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop, futures: list[asyncio.Future[Any]]) -> None:
        self.closed = False  # the emitter stopped waiting: its deadlines are void
        self.deadlines = 0  # its entries in Deadlines that have not fired
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


class Deadlines:
    """One timer for the deadlines of every group waiting on one loop.

    A timer per group (``loop.call_at``, cancelled when the group finishes) cost about as
    much as the rest of a slow emit: a timer handle, a heap push, a cancel and, every
    hundred or so, a rebuild of the loop's heap. Here a group adds its deadlines to a heap
    of its own and a single timer is armed at the earliest one; with one timeout for all
    handlers the deadlines only grow, so the timer is armed once and stays. The entries of
    finished groups are dropped when they reach the top, or all at once when they outnumber
    the live ones, so the heap stays within twice the deadlines still pending.

    Args:
        loop: the loop whose groups this watches.
    """

    __slots__ = ("armed_at", "entries", "handle", "live", "loop", "sequence")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        # (when, sequence, group, futures); the sequence keeps groups out of comparisons.
        self.entries: list[tuple[float, int, AsyncioGroup, list[asyncio.Future[Any]]]] = []
        self.handle: asyncio.TimerHandle | None = None
        self.armed_at = math.inf
        self.live = 0
        self.sequence = 0

    def add(self, when: float, group: AsyncioGroup, futures: list[asyncio.Future[Any]]) -> None:
        """Give up ``futures`` of ``group`` at loop time ``when``, unless it closed first."""
        self.sequence += 1
        heapq.heappush(self.entries, (when, self.sequence, group, futures))
        group.deadlines += 1
        self.live += 1
        if when < self.armed_at:
            self._arm(when)

    def close(self, group: AsyncioGroup) -> None:
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


# How many times the emitter yields to the loop before it waits with done callbacks and a
# waiter future.
# Most handlers finish in their first step or two (one that never suspends, one that
# checkpoints once or awaits something already done). For them, yielding and then looking
# at the tasks costs one loop iteration, where done callbacks and a waiter cost two more
# iterations plus a callback per handler. A yield that finished nothing ends the yielding
# early, so handlers that wait for I/O cost at most two extra iterations.
YIELDS = 3


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


async def run_group_asyncio(
    loop: asyncio.AbstractEventLoop,
    pool: WorkerPool,
    deadlines: Deadlines,
    subs: Sequence[Subscription],
    event: Event,
    results: list[ResultPart],
    yields: int = YIELDS,
) -> bool:
    """Run one group of blocking handlers concurrently and append their results in order.

    Yield to the loop up to ``yields`` times before waiting with done callbacks, timers
    and a waiter; return whether it came to that (the caller may then try fewer yields
    next time: each costs the emitter a task step).
    """
    started = perf_counter()
    opened = loop.time()
    # One entry per handler, in order: its future, or its result if it ran inline.
    slots: list[Any] = []
    futures: list[asyncio.Future[Any]] = []
    # The futures by timeout, for the deadlines if it comes to waiting. Those that are
    # done by then stay in: giving up on a finished future does nothing.
    by_timeout: dict[float, list[asyncio.Future[Any]]] = {}
    inline = False
    for sub in subs:
        if sub.inline:
            inline = True
            slots.append(None)  # filled below, once the tasks are started
            continue
        future = (
            start_task(loop, sub.call(event))
            if sub.is_async
            else pool.submit(sub.call, event, loop)
        )
        slots.append(future)
        futures.append(future)
        timeout = sub.timeout
        if timeout is not None:
            bucket = by_timeout.get(timeout)
            if bucket is None:
                by_timeout[timeout] = [future]
            else:
                bucket.append(future)
    if inline:
        for index, sub in enumerate(subs):
            if sub.inline:
                slots[index] = run_inline(sub, event)
    ends: dict[asyncio.Future[Any], float] = {}
    group: AsyncioGroup | None = None
    try:
        # Eagerly started tasks (3.12+) that never suspended are done already; without
        # eager start, no task has run yet.
        running = _finished(futures, ends) if EAGER else futures
        done_yields = 0
        while running and done_yields < yields:
            done_yields += 1
            await asyncio.sleep(0)
            still = _finished(running, ends)
            if len(still) == len(running) and done_yields > 1:
                break
            running = still
        if running:
            group = AsyncioGroup(loop, running)
            for timeout, bucket in by_timeout.items():
                deadlines.add(opened + timeout, group, bucket)
            await group.waiter
    except BaseException:
        # The emitter was cancelled: take the handlers down with it, say so, and re-raise.
        if group is not None:
            deadlines.close(group)
            by_timeout.clear()
        for future in futures:
            if future.done():
                retrieve_quietly(future)
                continue
            # Every future still running is watched by the group, if there is one.
            if group is not None:
                group.given_up.add(future)
            else:
                future.add_done_callback(retrieve_quietly)
            future.cancel()
        raise
    given_up: set[asyncio.Future[Any]] | tuple[()] = ()
    waited = group is not None
    if group is not None:
        deadlines.close(group)
        ends.update(group.ends)
        given_up = group.given_up
        # Its entries may stay in the deadline heap a while: they must not hold the
        # futures (an exception's traceback holds frames, and the frames what they held).
        group.ends = {}
        for bucket in by_timeout.values():
            bucket.clear()
        group = None
    # Each task is let go as soon as its result is built, so the results replace the
    # tasks in memory instead of piling up on top of them: fewer young objects alive at
    # once means fewer collections of generation 0 (see the benchmark's gc figures).
    futures.clear()
    by_timeout.clear()
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
                (sub.name, name, status, duration, exc, sub.critical, sub.background, run_id),
            )
        )
    return waited


async def _run_one_trio(
    sub: Subscription,
    event: Event,
    pool: WorkerPool,
    slots: list[HandlerResult | None],
    index: int,
    started: float,
) -> None:
    # No cancel scope of its own: the group's scope for this timeout cancels it. If that
    # happens, Cancelled goes through (it is not an Exception) and the slot stays empty,
    # which is how the group tells a timeout.
    exc: Exception | None = None
    try:
        if sub.is_async:
            await sub.call(event)
        else:
            await pool.run_sync(sub.call, event)
    except Exception as error:
        exc = error
    slots[index] = HandlerResult(
        sub.name,
        event.name,
        Status.OK if exc is None else Status.ERROR,
        perf_counter() - started,
        exc,
        sub.critical,
        sub.background,
        event.run_id,
    )


async def _run_until(
    trio: Any,
    deadline: float,
    subs: Sequence[Subscription],
    indexes: list[int],
    event: Event,
    pool: WorkerPool,
    slots: list[HandlerResult | None],
    started: float,
) -> None:
    """Run the handlers that share one timeout under one cancel scope."""
    with trio.CancelScope(deadline=deadline):
        async with trio.open_nursery() as nursery:
            start_soon = nursery.start_soon
            for index in indexes:
                start_soon(_run_one_trio, subs[index], event, pool, slots, index, started)
    # Here only if the handlers finished or the deadline passed: the emitter's own
    # cancellation propagates out of the nursery. A handler without a result was still
    # running at the deadline.
    given_up = perf_counter() - started
    for index in indexes:
        if slots[index] is None:
            sub = subs[index]
            slots[index] = HandlerResult(
                sub.name,
                event.name,
                Status.TIMEOUT,
                given_up,
                None,
                sub.critical,
                sub.background,
                event.run_id,
            )


async def run_group_trio(
    pool: WorkerPool,
    subs: Sequence[Subscription],
    event: Event,
    results: list[ResultPart],
) -> None:
    """The same contract as :func:`run_group_asyncio`, on trio.

    Written against trio itself rather than through anyio: one nursery and one cancel
    scope per distinct timeout in the group, not an anyio task group with two anyio
    scopes per handler, which cost 2.2-2.5 times a plain trio nursery. Handlers of one
    group start together, so those sharing a timeout share a deadline, and a handler
    still running at its deadline is given up alone: the others' results are already in.
    """
    import trio

    started = perf_counter()
    slots: list[HandlerResult | None] = [None] * len(subs)
    by_timeout: dict[float | None, list[int]] = {}
    for index, sub in enumerate(subs):
        if sub.inline:
            slots[index] = run_inline(sub, event)
        else:
            bucket = by_timeout.get(sub.timeout)
            if bucket is None:
                by_timeout[sub.timeout] = [index]
            else:
                bucket.append(index)
    if by_timeout:
        now = trio.current_time()
        runs = [
            (math.inf if timeout is None else now + timeout, indexes)
            for timeout, indexes in by_timeout.items()
        ]
        if len(runs) == 1:
            deadline, indexes = runs[0]
            await _run_until(trio, deadline, subs, indexes, event, pool, slots, started)
        else:
            async with trio.open_nursery() as nursery:
                for deadline, indexes in runs:
                    nursery.start_soon(
                        _run_until, trio, deadline, subs, indexes, event, pool, slots, started
                    )
    results.extend(slots)  # type: ignore[arg-type]  # every slot is filled by now
