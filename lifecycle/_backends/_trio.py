"""The trio backend: groups of handlers, their deadlines and background handlers.

Written against trio itself rather than through anyio: one nursery and one cancel scope
per distinct timeout in a group, not an anyio task group with two anyio scopes per
handler, which cost 2.2-2.5 times a plain trio nursery. Handlers of one group start
together, so those sharing a timeout share a deadline, and a handler still running at its
deadline is given up alone: the others' results are already in.
"""

from __future__ import annotations

import math
from time import perf_counter
from typing import TYPE_CHECKING

import trio

from .._results import HandlerResult, Status
from ._inline import run_inline

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from .._event import Event
    from .._plan import Group, TimeoutBuckets
    from .._results import ResultPart
    from .._subscription import Subscription
    from .._threads import WorkerPool
    from ._background import Background

__all__ = ["TrioBackend"]


async def _run_one(
    sub: Subscription,
    event: Event,
    pool: WorkerPool,
    slots: list[HandlerResult | None],
    index: int,
    started: float,
) -> None:
    # No cancel scope of its own: the scope for its timeout cancels it. If that happens,
    # Cancelled goes through (it is not an Exception) and the slot stays empty, which is
    # how a timeout is told.
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
        started,
    )


async def _run_until(
    deadline: float,
    subs: Sequence[Subscription],
    indexes: Sequence[int],
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
                start_soon(_run_one, subs[index], event, pool, slots, index, started)
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
                started,
            )


async def wait_for(wait: Callable[[], Awaitable[object]], timeout: float | None) -> bool:  # noqa: ASYNC109 - the loop-free code waits here
    """Await ``wait()`` for at most ``timeout`` seconds (``None``: no limit); did it end?"""
    with trio.move_on_after(math.inf if timeout is None else max(timeout, 0.0)):
        await wait()
        return True
    return False


class TrioBackend:
    """How one bus runs handlers on trio.

    Args:
        pool: the bus's worker threads for plain handlers (through anyio's threads).
        background: the bus's background handlers in flight.
    """

    __slots__ = ("background", "pool")

    loop = None  # no asyncio loop runs where trio does
    new_event = trio.Event

    def __init__(self, pool: WorkerPool, background: Background) -> None:
        self.pool = pool
        self.background = background

    wait_for = staticmethod(wait_for)

    @staticmethod
    def shielded() -> trio.CancelScope:
        """Shield the block from cancellation."""
        return trio.CancelScope(shield=True)

    async def run_group(self, group: Group, event: Event, results: list[ResultPart]) -> None:
        """Run one group of blocking handlers concurrently and append their results in order."""
        subs = group.subs
        pool = self.pool
        started = perf_counter()
        slots: list[HandlerResult | None] = [None] * len(subs)
        if group.inline:
            for index, sub in enumerate(subs):
                if sub.inline:
                    slots[index] = run_inline(sub, event)
        timeouts = group.timeouts
        if timeouts:
            now = trio.current_time()
            if len(timeouts) == 1:
                ((timeout, indexes),) = timeouts
                deadline = math.inf if timeout is None else now + timeout
                await _run_until(deadline, subs, indexes, event, pool, slots, started)
            else:
                async with trio.open_nursery() as nursery:
                    for timeout, indexes in timeouts:
                        nursery.start_soon(
                            _run_until,
                            math.inf if timeout is None else now + timeout,
                            subs,
                            indexes,
                            event,
                            pool,
                            slots,
                            started,
                        )
        results.extend(slots)  # type: ignore[arg-type]  # every slot is filled by now

    def start_background(
        self, subs: tuple[Subscription, ...], timeouts: TimeoutBuckets, event: Event
    ) -> None:
        """Start ``subs`` in the background (the bus made room for them) and track them.

        Each runs as a system task under a cancel scope of its own, which the drain
        cancels if it is still running then.
        """
        started = perf_counter()
        table = self.background.table
        by_index: list[float | None] = [None] * len(subs)
        for timeout, indexes in timeouts:
            for index in indexes:
                by_index[index] = timeout
        for sub, timeout in zip(subs, by_index, strict=True):
            scope = trio.CancelScope()
            table[scope] = (sub, event, started, None)
            trio.lowlevel.spawn_system_task(self._run_background, sub, timeout, event, scope)

    async def _run_background(
        self, sub: Subscription, limit: float | None, event: Event, scope: trio.CancelScope
    ) -> None:
        slot: list[HandlerResult | None] = [None]
        with scope:
            deadline = math.inf if limit is None else trio.current_time() + limit
            await _run_until(deadline, (sub,), (0,), event, self.pool, slot, perf_counter())
        result = slot[0]
        if self.background.table.pop(scope, None) is not None and result is not None:
            self.background.finished(result)
