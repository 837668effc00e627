"""Heartbeats: ``environment.heartbeat`` at an interval while a run is alive.

A watchdog elsewhere (a webhook receiver, a metrics alert on the last heartbeat) tells a
live run from a dead one by these events: each carries the run id, a sequence number and
the interval the watchdog should expect.
"""

from __future__ import annotations

import math
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from ._event import HEARTBEAT
from ._logging import logger

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine

    from anyio.abc import TaskStatus

    from ._environment import Run

__all__ = ["heartbeats"]


def check_interval(interval: float | None) -> float | None:
    """Validate a heartbeat interval; ``None`` or ``0`` turn heartbeats off."""
    if interval is None:
        return None
    if isinstance(interval, bool) or not isinstance(interval, (int, float)):
        raise TypeError(f"heartbeat interval must be a number of seconds or None, not {interval!r}")
    if math.isnan(interval) or interval < 0 or math.isinf(interval):
        raise ValueError(
            f"heartbeat interval must be a finite number of seconds >= 0 (0 turns heartbeats "
            f"off), not {interval!r}"
        )
    return float(interval) or None


@asynccontextmanager
async def sidecar(task: Callable[..., Coroutine[Any, Any, object]]) -> AsyncIterator[None]:
    """Run ``task`` beside the body; cancel it when the body ends.

    The body starts once ``task`` has called ``task_status.started()`` (so a signal
    receiver is in place before anything can signal). Unlike a bare task group, the body's
    own exception (or cancellation) leaves unwrapped, so callers such as
    ``Environment.running`` still see a ``KeyboardInterrupt`` or a cancellation for what
    it is, not inside an ``ExceptionGroup``.
    """
    import anyio

    error: BaseException | None = None
    async with anyio.create_task_group() as group:
        await group.start(task)
        try:
            yield
        except BaseException as exc:  # re-raised below, once the task group is gone
            error = exc
        finally:
            group.cancel_scope.cancel()
    if error is not None:
        try:
            raise error
        finally:
            error = None  # break the reference cycle through the traceback


async def send_heartbeats(
    run: Run,
    interval: float,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], Awaitable[object]] | None = None,
) -> None:
    """Emit ``environment.heartbeat`` for ``run`` every ``interval`` seconds, until cancelled.

    Beats keep to a fixed schedule: a slow handler delays its own beat, and missed beats
    are skipped rather than sent in a burst. A failing emit is logged, never raised.
    ``clock`` and ``sleep`` are the event loop's (default: anyio's, for either loop).
    """
    if clock is None or sleep is None:
        import anyio

        clock, sleep = anyio.current_time, anyio.sleep
    environment = run.environment
    start = clock()
    sequence = 0
    while True:
        sequence += 1
        now = clock()
        due = start + sequence * interval
        if due < now:
            # Handlers outlived the interval: skip to the next beat in the future.
            sequence = math.floor((now - start) / interval) + 1
            due = start + sequence * interval
        await sleep(due - now)
        attributes = {
            "sequence": sequence,
            "interval": interval,
            "elapsed": round(clock() - start, 3),
        }
        try:
            await environment.emit(environment.event(HEARTBEAT, run.run_id, attributes=attributes))
        except Exception:
            logger.exception(
                "heartbeat emit failed", environment=environment.name, run_id=run.run_id
            )


@asynccontextmanager
async def heartbeats(run: Run, interval: float | None = 30.0) -> AsyncIterator[None]:
    """Emit ``environment.heartbeat`` for ``run`` every ``interval`` seconds inside the block.

    Use it inside ``Environment.running``::

        async with env.running() as run, lifecycle.heartbeats(run, 10):
            await work()

    Each event carries the run id and the attributes ``sequence`` (1, 2, ...),
    ``interval`` and ``elapsed`` (seconds since the block began). The first beat comes one
    interval after the block begins (``environment.starting`` already said the run is
    alive). Exceptions and cancellation of the body pass through unchanged.

    Args:
        run: the run, as yielded by ``Environment.running``.
        interval: seconds between beats; ``None`` or ``0`` sends none.

    Raises:
        TypeError, ValueError: ``interval`` is not a finite number of seconds >= 0.

    .. versionadded:: 0.1
    """
    checked = check_interval(interval)
    if checked is None:
        yield
        return
    import anyio

    async def beat(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await send_heartbeats(run, checked)

    async with sidecar(beat):
        yield
