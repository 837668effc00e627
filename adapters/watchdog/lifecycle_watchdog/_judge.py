"""The watchdog's judgement, pure: a run table fed with events, asked what is due at a time.

Nothing here reads a clock, sleeps or does I/O. ``observe`` takes an event with the time
and the stream sequence at which the server stored it; ``due(now)`` returns the verdicts
that ``now`` calls for. Each answer is a :class:`Change`: what to write to the shared
store (as a ``merge`` of the stored record, refused when another watchdog got there
first), and the events to publish and to emit if the write wins. The service in
``_service.py`` does the writing; tests drive this module with any time they like.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from lifecycle import EXITED, HEARTBEAT, STARTING, EnvironmentInfo, Event, Outcome

from ._model import (
    MISSED,
    OVERDUE,
    RECOVERED,
    RunRecord,
    RunState,
    iso,
    key_token,
    run_key,
    verdict_id,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

    from ._schedule import Expectation, Slot

__all__ = ["Change", "Judge", "Policy"]


@dataclass(frozen=True, slots=True)
class Policy:
    """How many heartbeat intervals of silence make a run lost.

    Args:
        misses: the default number of missed intervals (3).
        environments: per environment name, its own number.
        labels: per label, its own number; when several of a run's labels have one, the
            largest (most patient) wins. An environment's own number beats its labels'.
        default_interval: the interval assumed for a run that has not said its own (no
            ``heartbeat_interval`` on ``starting`` and no heartbeat yet); ``None`` leaves
            such runs unjudged until their first heartbeat.

    .. versionadded:: 0.2
    """

    misses: float = 3.0
    environments: Mapping[str, float] = field(default_factory=dict)
    labels: Mapping[str, float] = field(default_factory=dict)
    default_interval: float | None = None

    def misses_for(self, environment: str, labels: Iterable[str]) -> float:
        if environment in self.environments:
            return self.environments[environment]
        found = [self.labels[label] for label in labels if label in self.labels]
        return max(found) if found else self.misses


@dataclass(frozen=True, slots=True)
class Change:
    """One write the service must win before it publishes and emits.

    ``merge`` maps the stored record (``None`` if there is none) to the record to store,
    or to ``None`` when the store already holds another watchdog's verdict; then the
    service adopts the stored record and, if ``event`` is set, observes it again.
    ``claim`` changes are create-only markers (one missed slot) instead.
    """

    kind: str
    key: str
    merge: Callable[[RunRecord | None], RunRecord | None] | None = None
    publish: tuple[tuple[Event, str], ...] = ()
    emit: tuple[Event, ...] = ()
    event: Event | None = None
    seen_at: float = 0.0
    seq: int = 0
    claim: dict[str, Any] | None = None


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value) or value <= 0:
        return None
    return float(value)


_TRACE_KEYS = ("traceparent", "tracestate")


def _trace(attributes: Mapping[str, Any]) -> dict[str, str] | None:
    """The run's trace context from an event's attributes (the NATS publisher puts it there)."""
    found = {key: attributes[key] for key in _TRACE_KEYS if isinstance(attributes.get(key), str)}
    return found if found.get("traceparent") else None


def _lost_id(run_id: str, count: int) -> str:
    return verdict_id("lost", run_id, *([count] if count > 1 else []))


def lost_msg_id(run_id: str, count: int) -> str:
    """The ``Nats-Msg-Id`` of a run's ``count``-th lost verdict."""
    return f"lost:{run_id}{_suffix(count)}"


def _suffix(count: int) -> str:
    # The first verdict of a run uses the bare id (`lost:<run_id>`); a run that came
    # back and was lost again gets `:2`, `:3`, ...
    return "" if count == 1 else f":{count}"


ENDED_KEPT = 600.0
"""Seconds an ended run is kept in a judge's table: what ``lifecycle runs --all`` shows as
having ended recently, whether a watchdog answers or the stored table does."""


class Judge:
    """The run table and the expected starts, judged at the times it is given.

    Args:
        policy: the lost-run policy.
        expectations: the ``[[expect]]`` entries.
        slots_from: slots that close at or before this time are not judged (the watchdog's
            first start, or the time up to which the store says slots were judged).
        forget_after: seconds an ended run stays in memory (so replays stay idempotent).

    .. versionadded:: 0.2
    """

    def __init__(
        self,
        policy: Policy | None = None,
        expectations: Sequence[Expectation] = (),
        *,
        slots_from: float = 0.0,
        forget_after: float = ENDED_KEPT,
    ) -> None:
        self.policy = policy or Policy()
        self.expectations = tuple(expectations)
        self.table: dict[str, RunRecord] = {}
        self.consumed = 0
        """The highest stream sequence observed."""
        self.forget_after = forget_after
        self._max_duration = {
            e.environment: e.max_duration for e in self.expectations if e.max_duration
        }
        self._watched = {e.environment for e in self.expectations if e.scheduled}
        self._starts: dict[str, list[float]] = {name: [] for name in self._watched}
        self.slots_from = slots_from
        """Slots whose window opens before this time are not judged (set before judging)."""
        self.silence_from = 0.0
        """Silence before this time is not held against a run: the watchdog lost the server
        until then, and while the server is away no run can store a heartbeat either."""
        self._next_slot: dict[str, Slot] = {}
        self._keep_starts = max(
            [2 * e.grace + (e.every or 0) for e in self.expectations if e.scheduled] or [0]
        )

    # -- the table -----------------------------------------------------------------

    def restore(self, records: Iterable[RunRecord]) -> None:
        """Load records read from the store (a restart), before replaying the stream."""
        for record in records:
            self.table[record.run_id] = record

    def adopt(self, stored: RunRecord) -> None:
        """Take the stored record's verdict, keeping the freshest signs of life seen here."""
        local = self.table.get(stored.run_id)
        if local is not None:
            stored = stored.evolve(
                last_seen=max(stored.last_seen, local.last_seen),
                last_heartbeat=max(
                    (t for t in (stored.last_heartbeat, local.last_heartbeat) if t is not None),
                    default=None,
                ),
                interval=stored.interval or local.interval,
            )
        self.table[stored.run_id] = stored

    def commit(self, stored: RunRecord) -> None:
        """Record a write that won."""
        self.adopt(stored)

    def live(self) -> list[RunRecord]:
        """The runs not yet over (running or lost), oldest first."""
        runs = [r for r in self.table.values() if r.state is not RunState.EXITED]
        return sorted(runs, key=lambda r: (r.started, r.run_id))

    def lookback(self) -> float:
        """Seconds of stream to replay before a checkpoint to judge every live run again."""
        spans = [2 * e.grace + (e.every or 0) for e in self.expectations if e.scheduled]
        for record in self.table.values():
            interval = record.interval or self.policy.default_interval
            if record.state is RunState.RUNNING and interval:
                spans.append(self.policy.misses_for(record.environment, record.labels) * interval)
        return max(spans, default=0.0)

    # -- events --------------------------------------------------------------------

    def observe(self, event: Event, seen_at: float, seq: int) -> list[Change]:
        """Take one event from the stream; return the writes it calls for."""
        self.consumed = max(self.consumed, seq)
        name = event.name
        if name == STARTING:
            return self._starting(event, seen_at, seq)
        if name == HEARTBEAT:
            return self._heartbeat(event, seen_at, seq)
        if name == EXITED:
            return self._exited(event, seen_at, seq)
        if name in (OVERDUE, RECOVERED) and event.run_id in self.table:
            # Another watchdog's verdict (or ours, read back): learn it from the store.
            return [Change("refresh", run_key(event.run_id))]
        return []

    def _new_record(self, event: Event, seen_at: float, seq: int, started: float) -> RunRecord:
        info = event.environment
        attributes = event.attributes
        interval = _number(attributes.get("heartbeat_interval")) or _number(
            attributes.get("interval")
        )
        beat = seen_at if event.name == HEARTBEAT else None
        return RunRecord(
            run_id=event.run_id,
            environment=info.name,
            labels=tuple(sorted(info.labels)),
            host=info.host,
            pid=info.pid,
            started=started,
            last_seen=seen_at,
            last_heartbeat=beat,
            interval=interval,
            seq=seq,
            trace=_trace(attributes),
        )

    def _create(self, record: RunRecord, event: Event, seen_at: float, seq: int) -> Change:
        self.table[record.run_id] = record

        def merge(stored: RunRecord | None) -> RunRecord | None:
            return record if stored is None else None

        return Change("start", run_key(record.run_id), merge, event=event, seen_at=seen_at, seq=seq)

    def _starting(self, event: Event, seen_at: float, seq: int) -> list[Change]:
        env = event.environment.name
        if env in self._watched:
            self._starts[env].append(seen_at)
        if event.run_id in self.table:
            return []  # a replay, or a duplicate
        return [self._create(self._new_record(event, seen_at, seq, seen_at), event, seen_at, seq)]

    def beat(self, run_id: str, seen_at: float, seq: int, interval: Any = None) -> bool:
        """The heartbeat fast path: ``True`` if it only freshened a running run.

        ``False`` means the beat needs the whole event (an unknown run, a lost one):
        call :meth:`observe`.
        """
        record = self.table.get(run_id)
        if record is None or record.state is not RunState.RUNNING:
            return False
        checked = _number(interval)
        if checked is None and record.interval is None:
            return False  # it has not said its interval yet: the whole event may
        self.consumed = max(self.consumed, seq)
        record.last_seen = max(record.last_seen, seen_at)
        if record.last_heartbeat is None or seen_at > record.last_heartbeat:
            record.last_heartbeat = seen_at
        if checked is not None:
            record.interval = checked
        return True

    def _heartbeat(self, event: Event, seen_at: float, seq: int) -> list[Change]:
        record = self.table.get(event.run_id)
        if record is None:
            # A run whose `starting` came before anything we read: learn it from its beat.
            elapsed = _number(event.attributes.get("elapsed")) or 0.0
            new = self._new_record(event, seen_at, seq, seen_at - elapsed)
            return [self._create(new, event, seen_at, seq)]
        if self.beat(record.run_id, seen_at, seq, event.attributes.get("interval")):
            return []
        if record.state is RunState.LOST and seq > record.judged_seq:
            return [self._late(record, event, seen_at, seq)]
        return []

    def _exited(self, event: Event, seen_at: float, seq: int) -> list[Change]:
        record = self.table.get(event.run_id)
        if event.outcome is Outcome.LOST:
            # A verdict, ours or another watchdog's: the store holds the details.
            return [Change("refresh", run_key(event.run_id))]
        if record is None:
            return []  # a run that began and ended before anything we read
        if record.state is RunState.RUNNING:
            basis = record.lost_count
            # A run once declared lost that came back: its end is news to whoever was
            # told it was lost, so it is delivered marked too.
            emit = (self._mark(event, record),) if record.late else ()
            new = record.evolve(
                state=RunState.EXITED,
                outcome=None if event.outcome is None else event.outcome.value,
                last_seen=max(record.last_seen, seen_at),
                seq=seq,
            )
            self.table[record.run_id] = new

            def merge(stored: RunRecord | None) -> RunRecord | None:
                if stored is not None and (
                    stored.state is not RunState.RUNNING or stored.lost_count != basis
                ):
                    return None
                return new.evolve(overdue=new.overdue or bool(stored and stored.overdue))

            return [
                Change(
                    "exit",
                    run_key(record.run_id),
                    merge,
                    emit=emit,
                    event=event,
                    seen_at=seen_at,
                    seq=seq,
                )
            ]
        if record.state is RunState.LOST and seq > record.judged_seq:
            return [self._late(record, event, seen_at, seq)]
        return []

    def _mark(self, event: Event, record: RunRecord) -> Event:
        """The run's own event, unchanged but for attributes saying it came after ``lost``."""
        return event.evolve(
            attributes={
                **event.attributes,
                "after_lost": True,
                "lost_event_id": _lost_id(record.run_id, record.lost_count),
                "lost_at": iso(record.lost_at),
            }
        )

    def _late(self, record: RunRecord, event: Event, seen_at: float, seq: int) -> Change:
        """The run's own word after it was declared lost: deliver it marked, then recover."""
        count = record.lost_count
        suffix = _suffix(count)
        lost_id = _lost_id(record.run_id, count)
        marked = self._mark(event, record)
        recovered = Event(
            name=RECOVERED,
            run_id=record.run_id,
            environment=event.environment,
            event_id=verdict_id("recovered", record.run_id, *([count] if count > 1 else [])),
            timestamp=_at(seen_at),
            attributes={
                "lost_event_id": lost_id,
                "lost_at": iso(record.lost_at),
                "truth": event.name,
                "truth_event_id": event.event_id,
                "outcome": None if event.outcome is None else event.outcome.value,
                "silent_for": round(seen_at - record.last_seen, 3),
            },
        )
        if event.name == EXITED:
            new = record.evolve(
                state=RunState.EXITED,
                outcome=None if event.outcome is None else event.outcome.value,
                last_seen=seen_at,
                late=True,
                seq=seq,
            )
        else:
            new = record.evolve(
                state=RunState.RUNNING,
                last_seen=seen_at,
                last_heartbeat=seen_at if event.name == HEARTBEAT else record.last_heartbeat,
                interval=_number(event.attributes.get("interval")) or record.interval,
                late=True,
                seq=seq,
            )

        def merge(stored: RunRecord | None) -> RunRecord | None:
            if stored is None or stored.state is not RunState.LOST or stored.lost_count != count:
                return None
            return new

        return Change(
            "late",
            run_key(record.run_id),
            merge,
            publish=((recovered, f"recovered:{record.run_id}{suffix}"),),
            emit=(marked, recovered),
            event=event,
            seen_at=seen_at,
            seq=seq,
        )

    # -- time ----------------------------------------------------------------------

    def runs_due(self, now: float) -> bool:
        """Whether a run is lost or overdue at ``now`` (a quick look; it builds nothing)."""
        policy = self.policy
        default = policy.default_interval
        plain = not policy.environments and not policy.labels
        limits = self._max_duration
        silence_from = self.silence_from
        for record in self.table.values():
            if record.state is not RunState.RUNNING:
                continue
            interval = record.interval or default
            if interval:
                misses = (
                    policy.misses if plain else policy.misses_for(record.environment, record.labels)
                )
                if now >= max(record.last_seen, silence_from) + misses * interval:
                    return True
            if limits and not record.overdue:
                limit = limits.get(record.environment)
                if limit is not None and now >= record.started + limit:
                    return True
        return False

    def slots_pending(self, now: float) -> bool:
        """Whether an expected slot has closed by ``now`` and waits to be judged."""
        for expectation in self.expectations:
            if expectation.scheduled:
                slot = self._next_slot.get(expectation.name)
                if slot is None:
                    slot = self._next_slot[expectation.name] = self._first_slot(expectation)
                if slot.closes <= now:
                    return True
        return False

    def due(self, now: float, *, slots: bool = True) -> list[Change]:
        """The verdicts that ``now`` calls for: lost and overdue runs, missed slots.

        Judging slots moves past them (each slot is judged once); ``slots=False`` looks at
        the runs only and changes nothing.
        """
        changes: list[Change] = []
        for record in list(self.table.values()):
            if record.state is RunState.EXITED:
                if record.last_seen < now - self.forget_after:
                    del self.table[record.run_id]
                continue
            if record.state is not RunState.RUNNING:
                continue
            interval = record.interval or self.policy.default_interval
            if interval:
                misses = self.policy.misses_for(record.environment, record.labels)
                deadline = max(record.last_seen, self.silence_from) + misses * interval
                if now >= deadline:
                    changes.append(self._lost(record, now, misses, interval, deadline))
                    continue
            limit = self._max_duration.get(record.environment)
            if limit is not None and not record.overdue and now >= record.started + limit:
                changes.append(self._overdue(record, now, limit))
        if slots:
            changes.extend(self._missed(now))
        return changes

    def _info(self, record: RunRecord) -> EnvironmentInfo:
        return EnvironmentInfo(
            name=record.environment,
            labels=frozenset(record.labels),
            host=record.host,
            pid=record.pid,
        )

    def _lost(
        self, record: RunRecord, now: float, misses: float, interval: float, deadline: float
    ) -> Change:
        count = record.lost_count + 1
        event = Event(
            name=EXITED,
            run_id=record.run_id,
            environment=self._info(record),
            event_id=_lost_id(record.run_id, count),
            timestamp=_at(now),
            outcome=Outcome.LOST,
            duration=round(max(0.0, record.last_seen - record.started), 3),
            attributes={
                "started": iso(record.started),
                "last_heartbeat": iso(record.last_heartbeat),
                "last_seen": iso(record.last_seen),
                "heartbeat_interval": interval,
                "misses": misses,
                "deadline": iso(deadline),
                **(record.trace or {}),
            },
        )
        new = record.evolve(
            state=RunState.LOST,
            lost_count=count,
            lost_at=now,
            judged_seq=self.consumed,
            lost_event=event.to_dict(),
            announced=False,
        )
        basis = record.lost_count

        def merge(stored: RunRecord | None) -> RunRecord | None:
            if stored is not None and (
                stored.state is not RunState.RUNNING or stored.lost_count != basis
            ):
                return None
            return new.evolve(overdue=new.overdue or bool(stored and stored.overdue))

        return Change(
            "lost",
            run_key(record.run_id),
            merge,
            publish=((event, lost_msg_id(record.run_id, count)),),
            emit=(event,),
        )

    def _overdue(self, record: RunRecord, now: float, limit: float) -> Change:
        event = Event(
            name=OVERDUE,
            run_id=record.run_id,
            environment=self._info(record),
            event_id=verdict_id("overdue", record.run_id),
            timestamp=_at(now),
            attributes={
                "started": iso(record.started),
                "max_duration": limit,
                "elapsed": round(now - record.started, 3),
                "last_seen": iso(record.last_seen),
                **(record.trace or {}),
            },
        )

        def merge(stored: RunRecord | None) -> RunRecord | None:
            base = stored or record
            if base.overdue or base.state is not RunState.RUNNING:
                return None
            return base.evolve(overdue=True)

        return Change(
            "overdue",
            run_key(record.run_id),
            merge,
            publish=((event, f"overdue:{record.run_id}"),),
            emit=(event,),
        )

    def _missed(self, now: float) -> list[Change]:
        changes: list[Change] = []
        horizon = now - self._keep_starts - 1.0
        for expectation in self.expectations:
            if not expectation.scheduled:
                continue
            starts = self._starts[expectation.environment]
            slot = self._next_slot.get(expectation.name)
            if slot is None:
                slot = self._first_slot(expectation)
            slots = None
            while slot.closes <= now:
                if not any(slot.opens <= t <= slot.closes for t in starts):
                    changes.append(self._missed_slot(expectation, slot, starts, now))
                if slots is None:
                    slots = expectation.slots(slot.closes)
                slot = next(slots)
            self._next_slot[expectation.name] = slot
            if starts and starts[0] < horizon:
                starts[:] = [t for t in starts if t >= horizon]
        return changes

    def _first_slot(self, expectation: Expectation) -> Slot:
        # The first slot judged is the first whose window opens once we watch: a start
        # before `slots_from` may have happened unseen.
        for slot in expectation.slots(self.slots_from):
            if slot.opens >= self.slots_from:
                return slot
        raise AssertionError("slots are endless")  # pragma: no cover

    def _missed_slot(
        self, expectation: Expectation, slot: Slot, starts: list[float], now: float
    ) -> Change:
        name = expectation.name
        due = iso(slot.due)
        event = Event(
            name=MISSED,
            run_id=verdict_id("slot", name, slot.due),
            environment=EnvironmentInfo(
                name=expectation.environment,
                labels=frozenset(expectation.labels),
                host="",
                pid=0,
            ),
            event_id=verdict_id("missed", name, slot.due),
            timestamp=_at(now),
            attributes={
                "expectation": name,
                "schedule": expectation.describe(),
                "due": due,
                "window_opens": iso(slot.opens),
                "window_closes": iso(slot.closes),
                "grace": expectation.grace,
                "last_started": iso(max(starts)) if starts else None,
            },
        )
        key = f"missed.{key_token(name)}.{round(slot.due * 1000)}"
        return Change(
            "missed",
            key,
            publish=((event, f"missed:{name}:{due}"),),
            emit=(event,),
            claim={"expectation": name, "due": due, "event_id": event.event_id},
        )
