"""Background handlers in flight, whatever the loop: the table, back-pressure and drain.

A backend starts background handlers and enters each in :attr:`Background.table` under
a key it can cancel (an asyncio future, a trio cancel scope); when one ends, the backend
takes it out and hands its result to :meth:`Background.finished`. What is still in the
table when the bus drains is cancelled and reported here.
"""

from __future__ import annotations

from time import perf_counter
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

from .._logging import logger
from .._results import CloseReport, HandlerResult, Status

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from .._event import Event
    from .._subscription import Subscription

__all__ = ["Background", "Entry", "WaitFor", "Waitable"]


class Waitable(Protocol):
    """An event of the running loop (``asyncio.Event``, ``trio.Event``)."""

    def set(self) -> None: ...

    async def wait(self) -> Any: ...


class Releases(Protocol):
    """What a backend keeps beside a background handler to time it out (or ``None``)."""

    def release(self) -> None: ...


WaitFor: TypeAlias = "Callable[[Callable[[], Awaitable[object]], float | None], Awaitable[bool]]"
"""A loop's bounded wait: ``await wait_for(wait, timeout)`` awaits ``wait()`` for at most
``timeout`` seconds (``None``: no limit) and says whether it ended (one per backend module)."""

Entry = tuple["Subscription", "Event", float, "Releases | None"]
"""A background handler in flight: its subscription, event, start and deadline."""


class Background:
    """The background handlers of one bus that are still running.

    Args:
        limit: how many may run at once; past it, starting another waits for room.
        announce: called with each one's result (the bus's result hooks and log).
        name: the bus's name, for the log.
    """

    __slots__ = ("_idle", "_room", "announce", "limit", "name", "table")

    def __init__(self, limit: int, announce: Callable[[HandlerResult], None], name: str) -> None:
        self.limit = limit
        self.announce = announce
        self.name = name
        # Key (what cancels it) -> entry.
        self.table: dict[Any, Entry] = {}
        self._room: Waitable | None = None
        self._idle: Waitable | None = None

    def __len__(self) -> int:
        return len(self.table)

    def has_room(self, count: int) -> bool:
        return len(self.table) + count <= self.limit

    async def wait_for_room(self, new_event: Callable[[], Waitable]) -> None:
        """Back-pressure instead of loss: wait until one more may start."""
        while len(self.table) >= self.limit:
            if self._room is None:
                self._room = new_event()
            await self._room.wait()

    def finished(self, result: HandlerResult) -> None:
        """One left the table with ``result``: announce it, wake whoever waits for room."""
        self.announce(result)
        if self._room is not None and len(self.table) < self.limit:
            self._room.set()
            self._room = None
        if self._idle is not None and not self.table:
            self._idle.set()

    async def drain(
        self,
        grace: float | None,
        new_event: Callable[[], Waitable],
        wait_for: WaitFor,
    ) -> CloseReport:
        """Wait up to ``grace`` seconds for the table to empty; cancel and report the rest.

        ``wait_for`` is the loop's bounded wait (:meth:`Backend.wait_for`).
        """
        until = None if grace is None else perf_counter() + grace
        while self.table:
            self._idle = new_event()
            if not await wait_for(
                self._idle.wait, None if until is None else until - perf_counter()
            ):
                break
        self._idle = None
        cancelled: list[HandlerResult] = []
        while self.table:
            key, (sub, event, started, deadline) = self.table.popitem()
            if deadline is not None:
                deadline.release()
            key.cancel()
            result = HandlerResult(
                sub.name, event.name, Status.CANCELLED, perf_counter() - started, None,
                sub.critical, True, event.run_id, started,
            )  # fmt: skip
            cancelled.append(result)
            self.finished(result)
        if cancelled:
            logger.warning(
                "background handlers cancelled after the grace period",
                bus=self.name,
                grace=grace,
                handlers=[f"{r.handler} ({r.signal}, run {r.run_id})" for r in cancelled],
            )
        return CloseReport(tuple(cancelled))
