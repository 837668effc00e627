"""The watchdog's data: its signals, the run table's records and the deterministic ids.

A record is what every watchdog agrees on about one run. It is stored as JSON in a
JetStream key-value bucket (one key per run); only the transitions that matter
(``starting``, ``exited``, a verdict) are written, never each heartbeat, so the store
costs nothing per beat. Times are POSIX seconds as the NATS server stamped the event
when it stored it, so every watchdog reading the stream sees the same times.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from lifecycle import MISSED, OVERDUE, RECOVERED

__all__ = [
    "MISSED",
    "OVERDUE",
    "RECOVERED",
    "RunRecord",
    "RunState",
    "iso",
    "run_key",
    "verdict_id",
]


# Namespace of the deterministic event ids (uuid5): two watchdogs that reach the same
# verdict build the same id, so a race, a retry or a replay still yields one event.
_NAMESPACE = uuid.UUID("6d1f1b2e-5a55-4c8e-9a51-1c2f0b7e5d10")


def verdict_id(kind: str, *parts: object) -> str:
    """The deterministic event id of a verdict, e.g. ``verdict_id("lost", run_id)``."""
    return uuid.uuid5(_NAMESPACE, ":".join([kind, *map(str, parts)])).hex


def iso(seconds: float | None) -> str | None:
    """POSIX seconds as an ISO 8601 UTC string (``None`` stays ``None``)."""
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat()


_KEY_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def key_token(text: str) -> str:
    """``text`` as one key-value key token: bytes outside ``[A-Za-z0-9_-]`` become ``=XX``."""
    if not text:
        return "="
    return "".join(chr(b) if b in _KEY_SAFE else f"={b:02X}" for b in text.encode())


def run_key(run_id: str) -> str:
    """The key of a run's record in the bucket."""
    return f"run.{key_token(run_id)}"


class RunState(str, Enum):
    """Where a run stands in the table."""

    RUNNING = "running"
    """Alive as far as anyone knows: its last sign of life is within the allowance."""
    LOST = "lost"
    """Declared lost; the run's own ``exited`` or a heartbeat may still come (late truth)."""
    EXITED = "exited"
    """Its own ``environment.exited`` arrived: the run is over."""

    def __str__(self) -> str:
        return self.value


@dataclass(slots=True)
class RunRecord:
    """One run in the table.

    Mutable only for the heartbeat fast path of the judge (``last_seen``,
    ``last_heartbeat``, ``interval``); every other change makes a new record.

    ``last_seen`` is the time of the last sign of life (``starting`` or a heartbeat);
    ``seq`` the stream sequence of the last event written to the store for this run;
    ``judged_seq`` the last stream sequence the watchdog had read when it declared the run
    lost: an event of the run stored after it is late truth.
    """

    run_id: str
    environment: str
    labels: tuple[str, ...] = ()
    host: str = ""
    pid: int = 0
    started: float = 0.0
    last_seen: float = 0.0
    last_heartbeat: float | None = None
    interval: float | None = None
    state: RunState = RunState.RUNNING
    seq: int = 0
    lost_count: int = 0
    lost_at: float | None = None
    judged_seq: int = 0
    overdue: bool = False
    outcome: str | None = None
    late: bool = False
    lost_event: dict[str, Any] | None = field(default=None, compare=False)
    announced: bool = True
    """False between winning a ``lost`` verdict and having published and emitted it."""
    trace: dict[str, str] | None = field(default=None, compare=False)
    """The run's W3C trace context (``traceparent``, ``tracestate``) as its events carry
    it, copied into the verdicts so that a tracing adapter links them to the run's trace."""

    def evolve(self, **changes: Any) -> RunRecord:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        # By hand: dataclasses.asdict deep-copies, and this runs once per stored write.
        data = {name: getattr(self, name) for name in _FIELDS}
        data["labels"] = list(self.labels)
        data["state"] = self.state.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        values = dict(data)
        values["labels"] = tuple(values.get("labels", ()))
        values["state"] = RunState(values.get("state", "running"))
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in values.items() if k in known})


_FIELDS = tuple(f.name for f in fields(RunRecord))
