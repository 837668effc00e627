"""Inline handlers: plain functions run in the emitter itself, whatever the loop."""

from __future__ import annotations

from time import perf_counter
from typing import TYPE_CHECKING, Any

from .._results import HandlerResult, InlineRun, Status

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._event import Event
    from .._results import ResultPart
    from .._subscription import Subscription

__all__ = ["run_inline", "run_inline_group"]


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
        started,
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
