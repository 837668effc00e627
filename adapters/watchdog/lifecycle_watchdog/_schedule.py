"""Expected starts: a cron expression in a time zone, or a fixed interval, plus a grace.

A schedule is cut into *slots*. A slot has the time the job was expected (``due``) and a
window ``[opens, closes]``; it is met by any ``environment.starting`` of the environment
seen inside the window and missed when the window closes without one.

- cron: ``due`` is each time the expression fires (in its time zone, with cron's own
  daylight-saving rules, through cronsim); the window is ``due - grace`` to
  ``due + grace``, so a job started by a slightly fast clock still counts.
- interval: periods of ``every`` seconds aligned on the Unix epoch (so every watchdog cuts
  the same slots); the window is the period plus the grace: at least one start per period.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from cronsim import CronSim, CronSimError

if TYPE_CHECKING:
    from collections.abc import Iterator
    from zoneinfo import ZoneInfo

__all__ = ["Expectation", "Slot"]


@dataclass(frozen=True, slots=True)
class Slot:
    """One expected start: when it was due and the window that meets it (POSIX seconds)."""

    due: float
    opens: float
    closes: float


@dataclass(frozen=True, slots=True)
class Expectation:
    """What the watchdog expects of one environment.

    Args:
        environment: the environment's name, as in its events.
        cron: a cron expression (5 fields, or 6 with seconds first), or ``None``.
        every: an interval in seconds, or ``None`` (give at most one of ``cron``/``every``).
        timezone: the time zone of ``cron`` (a ``zoneinfo.ZoneInfo``); UTC when ``None``.
        grace: seconds a start may be late (and, for cron, early).
        max_duration: seconds after which a live run of this environment is overdue.
        name: what the slots are filed under; the environment's name by default.
        labels: labels put on the ``environment.missed`` events (for label filters).

    Raises:
        ValueError: the expression does not parse, or a number is out of range.

    .. versionadded:: 0.2
    """

    environment: str
    cron: str | None = None
    every: float | None = None
    timezone: ZoneInfo | None = None
    grace: float = 60.0
    max_duration: float | None = None
    name: str = ""
    labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.environment)
        if self.cron is not None and self.every is not None:
            raise ValueError("give either cron or every, not both")
        if self.cron is not None:
            try:
                CronSim(self.cron, datetime.now(timezone.utc))
            except (CronSimError, ValueError, IndexError) as exc:
                raise ValueError(f"cron expression {self.cron!r} is not valid: {exc}") from None
        for label, value in (
            ("every", self.every),
            ("grace", self.grace),
            ("max_duration", self.max_duration),
        ):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{label} must be a number of seconds, not {value!r}")
            if not math.isfinite(value) or value < 0 or (label != "grace" and value == 0):
                raise ValueError(f"{label} must be a finite number of seconds > 0, not {value!r}")

    @property
    def scheduled(self) -> bool:
        return self.cron is not None or self.every is not None

    def describe(self) -> str:
        if self.cron is not None:
            zone = self.timezone.key if self.timezone is not None else "UTC"
            return f"cron {self.cron} ({zone})"
        if self.every is not None:
            return f"every {self.every:g} s"
        return "no schedule"

    def slots(self, after: float) -> Iterator[Slot]:
        """The slots whose window closes after ``after``, in order (endless)."""
        if self.every is not None:
            every = float(self.every)
            k = math.floor((after - self.grace) / every)
            while True:
                opens = k * every
                slot = Slot(due=opens + every, opens=opens, closes=opens + every + self.grace)
                k += 1
                if slot.closes > after:
                    yield slot
        elif self.cron is not None:
            zone = self.timezone or timezone.utc
            # Slots that close after `after` were due after `after - grace`.
            start = datetime.fromtimestamp(after - self.grace - 1, zone)
            for moment in CronSim(self.cron, start):
                due = moment.timestamp()
                slot = Slot(due=due, opens=due - self.grace, closes=due + self.grace)
                if slot.closes > after:
                    yield slot
