"""What an emit reports: one result per handler."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from time import perf_counter, time
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from ._event import Event
    from ._subscription import Subscription

__all__ = ["CloseReport", "EmitReport", "HandlerResult", "Status"]


class Status(str, Enum):
    """How one handler's call ended."""

    OK = "ok"
    """It returned."""
    ERROR = "error"
    """It raised an exception (kept in :attr:`HandlerResult.exception`)."""
    TIMEOUT = "timeout"
    """It outlived its timeout: an async handler was cancelled, a sync one abandoned."""
    CANCELLED = "cancelled"
    """It was cancelled: the emitter was cancelled, or the bus closed before it finished."""

    def __str__(self) -> str:
        return self.value


_offset: tuple[float, float] = (float("-inf"), 0.0)  # (perf_counter when read, time - perf)


def _wall_offset() -> float:
    """``time() - perf_counter()``, read again once a second: a wall clock step is followed."""
    global _offset
    now = perf_counter()
    read_at, offset = _offset
    if now - read_at > 1.0:
        offset = time() - perf_counter()
        _offset = (now, offset)
    return offset


class HandlerResult(NamedTuple):
    """The result of one handler for one event (immutable).

    A named tuple rather than a frozen dataclass: one is built per handler per emit, and a
    frozen dataclass costs four times as much to build (1.3 us against 0.4 us), which the
    benchmark saw on every dispatch path.
    """

    handler: str
    signal: str
    status: Status
    duration: float
    exception: BaseException | None = None
    critical: bool = False
    background: bool = False
    run_id: str | None = None
    started: float | None = None
    """When the handler started, on the :func:`time.perf_counter` clock (``None`` for a
    result built by hand); ``ended`` is ``started + duration``, and :attr:`start_time`
    and :attr:`end_time` give both as wall-clock time.

    .. versionadded:: 0.2
    """

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    @property
    def ended(self) -> float | None:
        """When the handler ended (or was given up), on the ``perf_counter`` clock."""
        return None if self.started is None else self.started + self.duration

    @property
    def start_time(self) -> float | None:
        """When the handler started, in POSIX seconds (``time.time()``'s clock).

        Converted from :attr:`started` when asked, at the offset between the two clocks
        (read at most once a second, so that the start and end of one result, converted
        one after the other, are exactly ``duration`` apart): a result costs no wall-clock
        reading to build. ``None`` if not known.

        .. versionadded:: 0.2
        """
        if self.started is None:
            return None
        return self.started + _wall_offset()

    @property
    def end_time(self) -> float | None:
        """When the handler ended (or was given up), in POSIX seconds; ``None`` if not known.

        .. versionadded:: 0.2
        """
        start = self.start_time
        return None if start is None else start + self.duration

    def describe_error(self) -> str:
        """A one-line description of what went wrong (empty for ``ok``)."""
        if self.status is Status.OK:
            return ""
        if self.status is Status.TIMEOUT:
            return f"given up at its timeout after {self.duration:.3g} s"
        if self.exception is None:
            return str(self.status.value)
        return f"{type(self.exception).__name__}: {self.exception}"


class InlineRun:
    """What a group of inline handlers left behind, made into results only when asked.

    Running cheap sync handlers inline costs little more than calling them; building a
    result per handler would cost more than the calls. So the group keeps one clock
    reading per handler (each one's end is the next one's start) and the exceptions of
    those that raised, and :attr:`EmitReport.results` builds the results on first access.
    """

    __slots__ = ("event", "failures", "stamps", "started", "subs")

    def __init__(
        self,
        subs: tuple[Subscription, ...],
        event: Event,
        started: float,
        stamps: list[float],
        failures: dict[int, Exception] | None,
    ) -> None:
        self.subs = subs
        self.event = event
        self.started = started
        self.stamps = stamps
        self.failures = failures

    def results(self) -> list[HandlerResult]:
        new = tuple.__new__
        name, run_id = self.event.name, self.event.run_id
        failures = self.failures or {}
        out: list[HandlerResult] = []
        last = self.started
        for index, (sub, now) in enumerate(zip(self.subs, self.stamps, strict=True)):
            exc = failures.get(index)
            status = Status.OK if exc is None else Status.ERROR
            out.append(
                new(
                    HandlerResult,
                    (sub.name, name, status, now - last, exc, sub.critical, False, run_id, last),
                )
            )
            last = now
        return out


# One part of an emit's results: a result, or a group of inline handlers' raw figures.
ResultPart = HandlerResult | InlineRun


def _build(parts: Sequence[ResultPart]) -> tuple[HandlerResult, ...]:
    results: list[HandlerResult] = []
    for part in parts:
        if isinstance(part, InlineRun):
            results.extend(part.results())
        else:
            results.append(part)
    return tuple(results)


class EmitReport:
    """What ``EventBus.emit`` returns: one result per blocking handler (immutable).

    Background handlers are only named here (``background``): their results arrive
    later on the bus's result hook and in the log, and at ``aclose`` if they had to be
    cancelled.

    .. versionchanged:: 0.2
       A plain immutable class rather than a frozen dataclass; the results of inline
       handlers are built on first access of :attr:`results`.
    """

    # Private slots behind read-only properties: setting one is an AttributeError, and
    # the bus fills them with plain stores (a frozen dataclass's object.__setattr__ per
    # field cost more than the rest of an emit of one inline handler).
    __slots__ = ("_background", "_duration", "_event", "_parts", "_results")
    __match_args__ = ("event", "results", "background", "duration")

    _event: Event
    _background: tuple[str, ...]
    _duration: float
    _results: tuple[HandlerResult, ...] | None
    _parts: Sequence[ResultPart] | None

    def __init__(
        self,
        event: Event,
        results: Iterable[HandlerResult] = (),
        background: tuple[str, ...] = (),
        duration: float = 0.0,
    ) -> None:
        self._event = event
        self._results = tuple(results)
        self._parts = None
        self._background = background
        self._duration = duration

    @classmethod
    def _lazy(
        cls,
        event: Event,
        parts: list[ResultPart],
        background: tuple[str, ...],
        duration: float,
    ) -> EmitReport:
        """A report whose results are built from ``parts`` when first read."""
        report = _new(cls)
        report._event = event
        report._results = None
        report._parts = parts
        report._background = background
        report._duration = duration
        return report

    @property
    def event(self) -> Event:
        """The event that was emitted."""
        return self._event

    @property
    def background(self) -> tuple[str, ...]:
        """The names of the background handlers started."""
        return self._background

    @property
    def duration(self) -> float:
        """Seconds the emit took."""
        return self._duration

    @property
    def results(self) -> tuple[HandlerResult, ...]:
        """One result per blocking handler, in order."""
        results = self._results
        if results is None:
            results = self._results = _build(self._parts or ())
            self._parts = None
        return results

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, EmitReport)
        return (self.event, self.results, self.background, self.duration) == (
            other.event,
            other.results,
            other.background,
            other.duration,
        )

    def __hash__(self) -> int:
        return hash((self.event, self.results, self.background, self.duration))

    def __repr__(self) -> str:
        return (
            f"EmitReport(event={self.event!r}, results={self.results!r}, "
            f"background={self.background!r}, duration={self.duration!r})"
        )

    @property
    def ok(self) -> bool:
        """True when every blocking handler returned."""
        return all(result.status is Status.OK for result in self.results)

    @property
    def failures(self) -> tuple[HandlerResult, ...]:
        """The results that are not ``ok``."""
        return tuple(result for result in self.results if result.status is not Status.OK)

    @property
    def critical_failures(self) -> tuple[HandlerResult, ...]:
        return tuple(r for r in self.results if r.critical and r.status is not Status.OK)

    def counts(self) -> dict[Status, int]:
        """How many results ended in each status."""
        counted = Counter(result.status for result in self.results)
        return {status: counted[status] for status in Status}

    def __str__(self) -> str:
        counts = ", ".join(f"{n} {status.value}" for status, n in self.counts().items() if n)
        lines = [
            f"{self.event.name} (run {self.event.run_id}): "
            f"{len(self.results)} handler(s) in {self.duration * 1000:.1f} ms"
            + (f" - {counts}" if counts else "")
        ]
        width = max((len(r.handler) for r in self.results), default=0)
        for result in self.results:
            line = (
                f"  {result.handler:<{width}}  {result.status.value:<9} "
                f"{result.duration * 1000:8.1f} ms"
            )
            problem = result.describe_error()
            if problem:
                line += f"  {problem}"
            lines.append(line)
        if self.background:
            lines.append(
                f"  (+ {len(self.background)} in background: {', '.join(self.background)})"
            )
        return "\n".join(lines)


_new = object.__new__


@dataclass(frozen=True, slots=True)
class CloseReport:
    """What ``EventBus.aclose`` and ``EventBus.drain`` return.

    ``cancelled`` holds the background handlers still running after the grace period,
    which were cancelled (or, for sync handlers, abandoned).
    """

    cancelled: tuple[HandlerResult, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.cancelled

    def __str__(self) -> str:
        if not self.cancelled:
            return "all background handlers finished"
        names = ", ".join(f"{r.handler} ({r.signal})" for r in self.cancelled)
        return f"{len(self.cancelled)} background handler(s) cancelled at close: {names}"
