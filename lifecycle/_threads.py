"""Worker threads for sync handlers, and what becomes of those that hang.

``concurrent.futures.ThreadPoolExecutor`` joins its workers at interpreter exit, so one
abandoned sync handler that never returns would keep the process alive forever. Handlers
past their timeout are abandoned by design, hence daemon threads of our own.

A thread cannot be stopped from outside, so a handler given up at its timeout (or when its
emitter is cancelled) runs on in its thread. That thread is *abandoned*: it no longer
counts against ``max_threads``, and a new worker takes its place, so hung handlers cannot
starve the handlers after them.

Abandoned threads are counted per handler (the callable run, so one subscription) and in
all. Two bulkheads bound them:

- a handler with ``max_abandoned_per_handler`` of its own calls still hanging is not
  started again until one of them returns: its calls fail at once with
  :exc:`~lifecycle.AbandonedThreadsError`, and only its calls. A handler that hangs on
  every event thus holds a few threads, never the others' share;
- as a last resort, once ``max_abandoned_threads`` abandoned threads are running in all
  (many handlers hanging at once), every sync handler is refused.

Both hold for jobs already queued too. Hung handlers thus hold fewer than
``max_abandoned_threads + max_threads`` threads (the handlers running when the limit is
reached may hang too). Refusals are counted (:attr:`WorkerPool.refused`) and logged once
per handler when they begin, and once when the handler runs again, never once per event.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import threading
from collections import deque
from typing import TYPE_CHECKING, Any

from ._exceptions import AbandonedThreadsError
from ._logging import logger
from ._subscription import handler_name

if TYPE_CHECKING:
    from collections.abc import Callable

    import anyio

_IDLE_SECONDS = 30.0

# Where a job stands; changed only with the pool's lock held.
_QUEUED = 0
"""Submitted, not taken by a worker yet."""
_RUNNING = 1
"""A worker is running it."""
_DROPPED = 2
"""Given up before a worker took it: it never runs."""
_ABANDONED = 3
"""Given up while running: its thread is no longer the pool's."""
_DONE = 4
"""It returned (or raised) before anyone gave up on it."""


def _deliver(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    # The emitter may have given up on the future (timeout, cancellation) meanwhile.
    if future.done():
        return
    if exc is None:
        future.set_result(result)
    else:
        future.set_exception(exc)


Outcome = tuple["asyncio.Future[Any]", Any, "BaseException | None"]


class _Hung:
    """The calls of one handler that were abandoned and still run."""

    __slots__ = ("count", "fn", "refused")

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        # Held, so that the id it is filed under cannot be reused while it is.
        self.fn = fn
        self.count = 0
        # Calls refused since the handler reached its limit; 0 while it is not refused.
        self.refused = 0

    @property
    def name(self) -> str:
        # _drop_event's wrapper names the handler it wraps.
        return handler_name(getattr(self.fn, "__wrapped__", self.fn))


class _JobFuture(asyncio.Future):  # type: ignore[type-arg]
    """The future of one job; cancelling it (giving up on it) tells the pool.

    Its attributes are set by :meth:`WorkerPool.submit`; slots and no ``__init__`` keep
    it as cheap to make as a plain future.
    """

    __slots__ = ("arg", "fn", "pool", "state")

    pool: WorkerPool
    state: int
    fn: Callable[[Any], Any]
    arg: Any

    def cancel(self, msg: Any | None = None) -> bool:
        if not super().cancel(msg):
            return False
        self.pool._given_up(self)
        return True


class _Job:
    """Where one job run by anyio's threads (trio) stands."""

    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state = _QUEUED


class WorkerPool:
    """Runs callables in up to ``max_workers`` daemon threads, growing on demand.

    Threads whose job was given up while running are abandoned (see the module
    docstring): the pool forgets them and starts others. Calls of one callable share its
    bulkhead: ``fn`` is the handler, the same object on every call of one subscription.
    """

    def __init__(
        self,
        max_workers: int,
        max_abandoned: int = 128,
        name: str = "",
        max_per_handler: int = 2,
    ) -> None:
        for option, value in (
            ("max_threads", max_workers),
            ("max_abandoned_threads", max_abandoned),
            ("max_abandoned_per_handler", max_per_handler),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{option} must be an int >= 1, not {value!r}")
        self._max_workers = max_workers
        self.max_abandoned = max_abandoned
        self.max_per_handler = max_per_handler
        self.name = name
        # Handlers with abandoned calls still running, by id of the callable. Empty
        # exactly when no abandoned thread runs, which keeps the usual submit to one test.
        self._hung: dict[int, _Hung] = {}
        # Calls refused in all, and since the last time the whole pool was at its limit.
        self.refused = 0
        self._refused_at_limit = 0
        self._cond = threading.Condition(threading.Lock())
        self._jobs: deque[tuple[Callable[[Any], Any], Any, _JobFuture]] = deque()
        self._idle = 0
        self._threads = 0
        # Threads running a job that was given up; they leave when it returns.
        self.abandoned = 0
        # True while a worker has been woken (or started) to take a job and has not
        # reached the queue yet. One is on its way at a time: a worker that takes a job
        # and sees more queued wakes the next. A burst of quick handlers is then run by
        # one or two threads instead of waking one per handler to fight over the
        # interpreter lock, and a handler that blocks still never holds up the jobs
        # queued behind it. Every worker returning from a wait clears it, so a lost
        # wake-up (a notify racing an idle timeout) cannot leave it set.
        self._waking = False
        # Finished jobs not yet handed to their loop, by loop. Workers append; the first
        # append for a loop schedules one delivery there, which takes them all: a burst
        # of quick handlers costs the loop one wake-up, not one per handler.
        self._finished: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
        self._finished_lock = threading.Lock()
        # anyio's threads (trio) are bounded by the first limiter, which a job leaves when
        # it is given up; the threads themselves are unbounded (the second), so an
        # abandoned one holds nothing. Made on trio's first job: asyncio never imports anyio
        # for them.
        self._limiters: tuple[anyio.CapacityLimiter, anyio.CapacityLimiter] | None = None

    def _refuse_locked(self, fn: Callable[[Any], Any]) -> tuple[AbandonedThreadsError, bool] | None:
        """None if ``fn`` may run now; else the refusal (counted), and whether to log it.

        Only the first refusal of a handler, or the first at the pool's limit, is logged:
        a handler that hangs on every event must not add a line to every event.
        """
        hung = self._hung.get(id(fn))
        if hung is not None and hung.count >= self.max_per_handler:
            self.refused += 1
            hung.refused += 1
            error = AbandonedThreadsError(
                self.name, hung.count, self.max_per_handler, handler=hung.name
            )
            return error, hung.refused == 1
        if self.abandoned >= self.max_abandoned:
            self.refused += 1
            self._refused_at_limit += 1
            error = AbandonedThreadsError(self.name, self.abandoned, self.max_abandoned)
            return error, self._refused_at_limit == 1
        return None

    def _refusal(
        self, refusal: tuple[AbandonedThreadsError, bool], event: Any
    ) -> AbandonedThreadsError:
        """Out of the lock: log a refusal if it is the first of its kind; return its error."""
        error, first = refusal
        if first:
            if error.handler is not None:
                message = (
                    "sync handler refused: its calls given up at their timeouts still run; "
                    "it is not run again until one of them returns"
                )
                option = "max_abandoned_per_handler"
            else:
                message = (
                    "sync handlers refused: too many abandoned threads still run on the bus; "
                    "none is run until some of them return"
                )
                option = "max_abandoned_threads"
            logger.warning(
                message,
                bus=self.name,
                handler=error.handler,
                signal=getattr(event, "name", None),
                run_id=getattr(event, "run_id", None),
                abandoned_threads=error.abandoned,
                **{option: error.limit},
            )
        return error

    def submit(
        self, fn: Callable[[Any], Any], arg: Any, loop: asyncio.AbstractEventLoop
    ) -> asyncio.Future[Any]:
        """Run ``fn(arg)`` in a worker, in a copy of the caller's context; return its future.

        Past a limit of abandoned threads (``fn``'s own, or the pool's), the future fails
        at once and ``fn`` never runs.
        """
        future = _JobFuture(loop=loop)
        future.pool, future.state, future.fn, future.arg = self, _QUEUED, fn, arg
        context = contextvars.copy_context()
        with self._cond:
            refusal = self._refuse_locked(fn) if self._hung else None
            if refusal is None:
                self._jobs.append((context.run, (fn, arg), future))
                if not self._waking:
                    self._wake_one()
                return future
        future.state = _DROPPED
        future.set_exception(self._refusal(refusal, arg))
        return future

    def _wake_one(self) -> None:
        # Called with the lock held, when jobs are queued and no worker is on its way.
        if self._idle > 0:
            self._cond.notify()
        elif self._threads < self._max_workers:
            self._threads += 1
            threading.Thread(target=self._work, name="lifecycle-handler", daemon=True).start()
        else:
            return  # every worker is busy; the first to finish takes the next job
        self._waking = True

    def _given_up(self, future: _JobFuture) -> None:
        """In the loop: the emitter gave up on ``future`` (timeout or cancellation)."""
        with self._cond:
            if future.state == _QUEUED:
                future.state = _DROPPED  # a worker that takes it skips it
                return
            if future.state != _RUNNING:
                return
            hung = self._abandon_locked(future, future.fn)
            self._threads -= 1  # its place goes to a new worker
            if self._jobs and not self._waking:
                self._wake_one()
            counts = self.abandoned, hung.count
        self._warn(future.arg, hung, *counts)

    def _abandon_locked(self, job: _JobFuture | _Job, fn: Callable[[Any], Any]) -> _Hung:
        """Count ``job``, a call of ``fn``, as abandoned; return ``fn``'s hung calls."""
        job.state = _ABANDONED
        self.abandoned += 1
        hung = self._hung.get(id(fn))
        if hung is None:
            hung = self._hung[id(fn)] = _Hung(fn)
        hung.count += 1
        return hung

    def _returned_locked(self, fn: Callable[[Any], Any]) -> list[tuple[str, dict[str, Any]]]:
        """An abandoned call of ``fn`` returned: uncount it; say what runs again, if any."""
        self.abandoned -= 1
        hung = self._hung[id(fn)]
        hung.count -= 1
        lines: list[tuple[str, dict[str, Any]]] = []
        if hung.refused and hung.count < self.max_per_handler:
            lines.append(
                (
                    "sync handler runs again: one of its abandoned calls returned",
                    {"handler": hung.name, "refused_calls": hung.refused},
                )
            )
            hung.refused = 0
        if not hung.count:
            del self._hung[id(fn)]
        if self._refused_at_limit and self.abandoned < self.max_abandoned:
            lines.append(
                (
                    "sync handlers run again: abandoned threads returned",
                    {"refused_calls": self._refused_at_limit},
                )
            )
            self._refused_at_limit = 0
        return lines

    def _recovered(self, lines: list[tuple[str, dict[str, Any]]]) -> None:
        for message, fields in lines:
            logger.info(message, bus=self.name, abandoned_threads=self.abandoned, **fields)

    def _warn(self, event: Any, hung: _Hung, abandoned: int, of_handler: int) -> None:
        logger.warning(
            "sync handler given up while running; its thread is abandoned and replaced",
            bus=self.name,
            handler=hung.name,
            signal=getattr(event, "name", None),
            run_id=getattr(event, "run_id", None),
            abandoned_threads=abandoned,
            max_abandoned_threads=self.max_abandoned,
            handler_abandoned_threads=of_handler,
            max_abandoned_per_handler=self.max_per_handler,
        )

    def _work(self) -> None:
        started = True  # a new worker was started to take a job: it is the one on its way
        future: _JobFuture | None = None
        while True:
            with self._cond:
                if future is not None:
                    if future.state == _ABANDONED:
                        # Given up while it ran: the pool started another worker in our
                        # place, so this thread leaves.
                        lines = self._returned_locked(future.fn)
                        break
                    future.state = _DONE
                    future = None
                if started:
                    self._waking = started = False
                while True:
                    while not self._jobs:
                        self._idle += 1
                        notified = self._cond.wait(_IDLE_SECONDS)
                        self._idle -= 1
                        self._waking = False
                        if not notified and not self._jobs:
                            self._threads -= 1
                            return
                    run, (fn, arg), future = self._jobs.popleft()
                    if future.state == _QUEUED:
                        break
                    future = None  # given up while queued: never run it
                # Queued before a limit was reached, it is refused all the same.
                refusal = self._refuse_locked(fn) if self._hung else None
                future.state = _DROPPED if refusal is not None else _RUNNING
                if self._jobs and not self._waking:
                    self._wake_one()
            outcome: Outcome
            if refusal is not None:
                outcome = (future, None, self._refusal(refusal, arg))
            else:
                try:
                    result = run(fn, arg)  # type: ignore[call-arg]
                except BaseException as exc:  # delivered to the emitter, which decides
                    outcome = (future, None, exc)
                else:
                    outcome = (future, result, None)
            loop = future.get_loop()
            with self._finished_lock:
                batch = self._finished.get(loop)
                if batch is not None and loop.is_closed():
                    # Its delivery was scheduled but the loop closed before running it.
                    batch = None
                first = batch is None
                if first:
                    batch = self._finished[loop] = []
                batch.append(outcome)  # type: ignore[union-attr]
            if first:
                try:
                    loop.call_soon_threadsafe(self._deliver_finished, loop)
                except RuntimeError:
                    # The loop closed while the handler ran: nobody is waiting any more.
                    with self._finished_lock:
                        self._finished.pop(loop, None)
            del outcome, batch, loop
        self._recovered(lines)

    def _deliver_finished(self, loop: asyncio.AbstractEventLoop) -> None:
        """In the loop: resolve the futures of every job finished since the last call."""
        with self._finished_lock:
            batch = self._finished.pop(loop, ())
        for future, result, exc in batch:
            _deliver(future, result, exc)

    # -- anyio's threads, for the backends other than asyncio (trio) -------------------

    async def run_sync(self, fn: Callable[[Any], Any], arg: Any) -> Any:
        """Run ``fn(arg)`` in one of anyio's threads, with the same limits and abandonment.

        Raises:
            AbandonedThreadsError: too many abandoned threads (``fn``'s own, or the
                pool's); ``fn`` did not run.
        """
        import anyio.to_thread

        if self._hung:
            self._check(fn, arg)
        if self._limiters is None:
            self._limiters = (
                anyio.CapacityLimiter(self._max_workers),
                anyio.CapacityLimiter(math.inf),
            )
        limiter, unbounded = self._limiters
        job = _Job()
        cond = self._cond

        def call() -> Any:
            with cond:
                if job.state != _QUEUED:
                    return None  # given up before its thread started
                job.state = _RUNNING
            lines = None
            try:
                return fn(arg)
            finally:
                with cond:
                    if job.state == _ABANDONED:
                        lines = self._returned_locked(fn)
                    else:
                        job.state = _DONE
                if lines:
                    self._recovered(lines)

        async with limiter:
            if self._hung:
                self._check(fn, arg)  # a limit reached while this job waited for a thread
            try:
                return await anyio.to_thread.run_sync(
                    call, abandon_on_cancel=True, limiter=unbounded
                )
            except BaseException:
                with cond:
                    hung = None
                    if job.state == _RUNNING:
                        hung = self._abandon_locked(job, fn)
                        counts = self.abandoned, hung.count
                    elif job.state == _QUEUED:
                        job.state = _DROPPED
                if hung is not None:
                    self._warn(arg, hung, *counts)
                raise

    def _check(self, fn: Callable[[Any], Any], arg: Any) -> None:
        with self._cond:
            refusal = self._refuse_locked(fn)
        if refusal is not None:
            raise self._refusal(refusal, arg)
