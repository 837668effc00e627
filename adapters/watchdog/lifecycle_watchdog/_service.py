"""The watchdog service: the judge's verdicts, won in the store, then published and emitted.

Order of one verdict: (1) the compare-and-set write in the shared store; only the
watchdog whose write lands goes on; (2) publish the verdict's events to JetStream with
their deterministic ``Nats-Msg-Id`` (so even a retry after a crash stores one); (3) emit
them on the local bus, where the usual adapters (webhook/Slack, Prometheus, structlog)
see an ordinary lifecycle event.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, TypeAlias

import structlog

from ._model import RunRecord, RunState

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from lifecycle import Event, EventBus

    from ._judge import Change, Judge
    from ._store import RunStore

__all__ = ["Publish", "Watchdog"]

logger = structlog.get_logger("lifecycle.watchdog")

Publish: TypeAlias = "Callable[[Event, str], Awaitable[None]]"
"""``await publish(event, msg_id)``: store one event in the stream, deduplicated by id."""


class Watchdog:
    """Feed it events, ask it to judge; it writes, publishes and emits the verdicts.

    Args:
        judge: the run table and the expectations.
        store: the shared table (:class:`JetStreamStore`, or :class:`MemoryStore`).
        publish: ``await publish(event, msg_id)`` stores an event in the stream; ``None``
            publishes nothing (a watchdog that only notifies locally).
        bus: the local bus for the notifying adapters; ``None`` emits nothing.
        clock: POSIX seconds now; ``time.time`` by default (tests pass their own).

    .. versionadded:: 0.2
    """

    def __init__(
        self,
        judge: Judge,
        store: RunStore,
        *,
        publish: Publish | None = None,
        bus: EventBus | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.judge = judge
        self.store = store
        self.publish = publish
        self.bus = bus
        self.clock = clock
        self.verdicts: dict[str, int] = {}
        """How many verdicts of each kind this watchdog won (``lost``, ``missed``, ...)."""
        self.rounds = 0
        """How many times it judged."""

    async def restore(self) -> tuple[int, float] | None:
        """Load the stored table into the judge; return the stored checkpoint, if any."""
        self.judge.restore(await self.store.records())
        return await self.store.checkpoint()

    async def feed(self, event: Event, seen_at: float, seq: int) -> None:
        """Take one event from the stream (``seen_at``: when the server stored it)."""
        for change in self.judge.observe(event, seen_at, seq):
            await self.apply(change)

    def has_due(self, now: float) -> bool:
        """Whether judging at ``now`` would find anything (it changes nothing)."""
        return bool(self.judge.due(now, slots=False)) or self.judge.slots_pending(now)

    async def judge_now(
        self,
        caught_up: Callable[[], Awaitable[bool]] | None = None,
        *,
        now: float | None = None,
    ) -> list[Change]:
        """Judge at ``now`` (the clock's time by default); return the changes it won.

        Every event stored before ``now`` must have been fed first; ``caught_up``, if
        given, is asked when there is something to judge, and while it says no, nothing
        is declared (a watchdog that lags behind the stream would otherwise call a live
        run lost).
        """
        self.rounds += 1
        if now is None:
            now = self.clock()
        if caught_up is not None and self.has_due(now) and not await caught_up():
            return []
        won: list[Change] = []
        for change in self.judge.due(now):
            if await self.apply(change):
                won.append(change)
        return won

    async def apply(self, change: Change, depth: int = 0) -> bool:
        """Win ``change`` in the store, then publish and emit it; ``False`` if it lost."""
        if change.kind == "refresh":
            stored = await self.store.get(change.key)
            if stored is not None:
                self.judge.adopt(stored)
            return False
        if change.claim is not None:
            won = await self.store.claim(change.key, change.claim)
        elif change.merge is not None:
            won, stored = await self.store.transition(change.key, change.merge)
            if stored is not None:
                (self.judge.commit if won else self.judge.adopt)(stored)
            if not won and change.event is not None and depth < 3:
                # Another watchdog's verdict came first: see the event again in its light
                # (an `exited` that meets a stored `lost` is late truth, for instance).
                for again in self.judge.observe(change.event, change.seen_at, change.seq):
                    await self.apply(again, depth + 1)
                return False
        else:
            return False
        if not won:
            return False
        self.verdicts[change.kind] = self.verdicts.get(change.kind, 0) + 1
        if change.publish or change.emit:
            logger.info(
                f"watchdog: {change.kind}",
                key=change.key,
                events=[event.name for event in change.emit],
            )
        if self.publish is not None:
            for event, msg_id in change.publish:
                await self.publish(event, msg_id)
        if self.bus is not None:
            for event in change.emit:
                await self.bus.emit(event)
        return True

    def live(self) -> list[RunRecord]:
        return [r for r in self.judge.live() if r.state in (RunState.RUNNING, RunState.LOST)]
