"""The watchdog service: the judge's verdicts, won in the store, then published and emitted.

Order of one verdict: (1) the compare-and-set write in the shared store; only the
watchdog whose write lands goes on; (2) publish the verdict's events to JetStream with
their deterministic ``Nats-Msg-Id`` (so even a retry after a crash stores one); (3) emit
them on the local bus, where the usual adapters (webhook/Slack, Prometheus, structlog)
see an ordinary lifecycle event.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, TypeAlias

import anyio
import structlog

from lifecycle import HEARTBEAT, SCHEMA_VERSION, Event

from ._judge import lost_msg_id
from ._model import RunRecord, RunState, run_key

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from anyio.abc import TaskGroup

    from lifecycle import EventBus

    from ._judge import Change, Judge
    from ._store import RunStore

__all__ = ["Publish", "Watchdog"]

_BOOKKEEPING = frozenset({"start", "exit"})
_BEAT_PREFIX = b'{"schema_version":%d,"name":"%s",' % (SCHEMA_VERSION, HEARTBEAT.encode())

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
        """How many times it judged (a round that found nothing due counts too)."""
        self._judged = anyio.Event()
        self.background: TaskGroup | None = None
        """Where bookkeeping writes go (``start``, ``exit``); ``None``: written in line.

        Those writes announce nothing, so they need not hold up the reading of the
        stream: a burst of 10,000 starts would otherwise cost 10,000 round trips in a row.
        :meth:`flush` waits for them (before a checkpoint).
        """
        self._in_flight = 0
        self._idle = anyio.Event()
        self._idle.set()
        self._limit = anyio.Semaphore(256)
        self._unannounced: dict[str, tuple[int, Event, str]] = {}

    async def restore(self) -> tuple[int, float] | None:
        """Load the stored table into the judge; return the stored checkpoint, if any.

        A ``lost`` verdict won by a watchdog that stopped before announcing it is
        announced now (published under its own ``Nats-Msg-Id``, emitted by whichever
        watchdog marks it announced).
        """
        records = await self.store.records()
        self.judge.restore(records)
        for record in records:
            await self._announce_stored(record)
        return await self.store.checkpoint()

    async def _announce_stored(self, record: RunRecord) -> None:
        """Announce a stored ``lost`` verdict that nobody marked announced yet.

        Safe whoever won it: the publish is deduplicated by its ``Nats-Msg-Id`` and only
        the watchdog whose mark lands emits.
        """
        if record.state is RunState.LOST and not record.announced and record.lost_event:
            await self._announce(
                run_key(record.run_id),
                record.lost_count,
                Event.from_dict(record.lost_event),
                lost_msg_id(record.run_id, record.lost_count),
            )

    async def _announce(self, key: str, count: int, event: Event, msg_id: str) -> bool:
        """Publish a lost verdict, then emit it if this watchdog marks it announced.

        Publishing first: a crash before the mark publishes again on restart, which the
        stream's duplicate window drops. Emitting last, for the one watchdog whose mark
        lands: the local notification goes out once.
        """
        if self.publish is not None:
            try:
                await self.publish(event, msg_id)
            except Exception as exc:
                # NATS away for longer than the publish may wait: keep the verdict and
                # try again at the next judgement (and a restarted watchdog would too).
                logger.warning(
                    "watchdog: could not publish a verdict yet; will retry",
                    msg_id=msg_id,
                    error=str(exc) or type(exc).__name__,
                )
                self._unannounced[key] = (count, event, msg_id)
                return False
        self._unannounced.pop(key, None)

        def mark(stored: RunRecord | None) -> RunRecord | None:
            if stored is None or stored.announced or stored.lost_count != count:
                return None
            return stored.evolve(announced=True)

        won, stored = await self.store.transition(key, mark)
        if stored is not None:
            self.judge.adopt(stored)
        if won and self.bus is not None:
            await self.bus.emit(event)
        return won

    async def feed_json(self, data: bytes, seen_at: float, seq: int) -> None:
        """Take one message's payload: a heartbeat of a running run takes a fast path.

        Raises:
            ValueError, TypeError, KeyError: the payload is not a lifecycle event.
        """
        if data.startswith(_BEAT_PREFIX):
            # Event.to_json's own layout: read the run id without parsing the whole event.
            start = data.find(b'"run_id":"', len(_BEAT_PREFIX))
            end = data.find(b'"', start + 10) if start > 0 else -1
            if end > 0:
                quoted = data[start + 10 : end]
                if b"\\" not in quoted and self.judge.beat(quoted.decode(), seen_at, seq):
                    return
        raw = json.loads(data)
        if (
            isinstance(raw, dict)
            and raw.get("name") == HEARTBEAT
            and raw.get("schema_version") == SCHEMA_VERSION
        ):
            attributes = raw.get("attributes")
            interval = attributes.get("interval") if isinstance(attributes, dict) else None
            run_id = raw.get("run_id")
            if isinstance(run_id, str) and self.judge.beat(run_id, seen_at, seq, interval):
                return
        if not isinstance(raw, dict):
            raise TypeError(f"a lifecycle event is a JSON object, not {type(raw).__name__}")
        await self.feed(Event.from_dict(raw), seen_at, seq)

    async def feed(self, event: Event, seen_at: float, seq: int) -> None:
        """Take one event from the stream (``seen_at``: when the server stored it)."""
        for change in self.judge.observe(event, seen_at, seq):
            if self.background is not None and change.kind in _BOOKKEEPING and not change.emit:
                await self._limit.acquire()
                self._in_flight += 1
                self._idle = anyio.Event() if self._idle.is_set() else self._idle
                self.background.start_soon(self._write, change)
            else:
                await self.apply(change)

    async def _write(self, change: Change) -> None:
        try:
            await self.apply(change)
        except Exception:
            logger.exception("watchdog: a table write failed", key=change.key)
        finally:
            self._limit.release()
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    async def flush(self) -> None:
        """Wait for the bookkeeping writes in flight."""
        await self._idle.wait()

    def _round_done(self) -> None:
        """Count a round of judgement as done, and wake whoever waits for one."""
        self.rounds += 1
        self._judged.set()
        self._judged = anyio.Event()

    async def wait_judged(self, rounds: int = 1) -> None:
        """Return once this watchdog has finished judging ``rounds`` more times.

        What a round decided (a verdict emitted, a run seen) is in place by then: tests and
        embedders wait on this instead of looking at the table again and again.
        """
        target = self.rounds + rounds
        while self.rounds < target:
            await self._judged.wait()

    def has_due(self, now: float) -> bool:
        """Whether judging at ``now`` would find anything (it changes nothing)."""
        return self.judge.runs_due(now) or self.judge.slots_pending(now)

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
        for key, (count, event, msg_id) in list(self._unannounced.items()):
            await self._announce(key, count, event, msg_id)
        if now is None:
            now = self.clock()
        won: list[Change] = []
        if caught_up is None or not self.has_due(now) or await caught_up():
            for change in self.judge.due(now):
                if await self.apply(change):
                    won.append(change)
        self._round_done()  # counted once its verdicts are out, so that a waiter sees them
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
            won, stored = await self.store.transition(
                change.key, change.merge, create_first=change.kind == "start"
            )
            if stored is not None:
                (self.judge.commit if won else self.judge.adopt)(stored)
            if not won and stored is not None and change.kind == "lost":
                # Lost to another watchdog mid-announcement, or to our own write whose
                # reply the network lost (we then think it failed): either way, see that
                # it is announced, or nobody would until a restart.
                await self._announce_stored(stored)
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
        if change.kind == "lost":
            [(event, msg_id)] = change.publish
            count = self.judge.table[event.run_id].lost_count
            await self._announce(change.key, count, event, msg_id)
            return True
        if self.publish is not None:
            for event, msg_id in change.publish:
                await self.publish(event, msg_id)
        if self.bus is not None:
            for event in change.emit:
                await self.bus.emit(event)
        return True

    def live(self) -> list[RunRecord]:
        return [r for r in self.judge.live() if r.state in (RunState.RUNNING, RunState.LOST)]

    def ended(self) -> list[RunRecord]:
        """The runs that ended within the judge's ``forget_after``, oldest end first."""
        ended = [r for r in self.judge.table.values() if r.state is RunState.EXITED]
        return sorted(ended, key=lambda r: r.last_seen)
