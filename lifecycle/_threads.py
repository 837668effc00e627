"""Worker threads for sync handlers, and what becomes of those that hang.

``concurrent.futures.ThreadPoolExecutor`` joins its workers at interpreter exit, so one
abandoned sync handler that never returns would keep the process alive forever. Handlers
past their timeout are abandoned by design, hence daemon threads of our own.

A thread cannot be stopped from outside, so a handler given up at its timeout (or when its
emitter is cancelled) runs on in its thread. That thread is *abandoned*: it no longer
counts against ``max_threads``, and a new worker takes its place, so hung handlers cannot
starve the handlers after them. Abandoned threads are counted; once
``max_abandoned_threads`` of them are still running, sync handlers are not started at all
(those already queued included) but fail at once with
:exc:`~lifecycle.AbandonedThreadsError`. That bounds the threads, and the memory, that hung
handlers can hold: fewer than ``max_abandoned_threads + max_threads`` abandoned ones (the
handlers running when the limit is reached may hang too). The count goes down as
abandoned handlers return.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import threading
from collections import deque
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from ._exceptions import AbandonedThreadsError
from ._logging import logger

if TYPE_CHECKING:
    from collections.abc import Callable

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


class _JobFuture(asyncio.Future):  # type: ignore[type-arg]
    """The future of one job; cancelling it (giving up on it) tells the pool.

    Its attributes are set by :meth:`WorkerPool.submit`; slots and no ``__init__`` keep
    it as cheap to make as a plain future.
    """

    __slots__ = ("arg", "pool", "state")

    pool: WorkerPool
    state: int
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
    docstring): the pool forgets them and starts others.
    """

    def __init__(self, max_workers: int, max_abandoned: int = 32, name: str = "") -> None:
        for option, value in (
            ("max_threads", max_workers),
            ("max_abandoned_threads", max_abandoned),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{option} must be an int >= 1, not {value!r}")
        self._max_workers = max_workers
        self.max_abandoned = max_abandoned
        self.name = name
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
        # anyio's threads (trio) are bounded by this limiter, which a job leaves when it is
        # given up; the threads themselves are unbounded, so an abandoned one holds nothing.
        self._limiter = anyio.CapacityLimiter(max_workers)
        self._unbounded = anyio.CapacityLimiter(math.inf)

    def _refused(self) -> AbandonedThreadsError:
        return AbandonedThreadsError(self.name, self.abandoned, self.max_abandoned)

    def submit(
        self, fn: Callable[[Any], Any], arg: Any, loop: asyncio.AbstractEventLoop
    ) -> asyncio.Future[Any]:
        """Run ``fn(arg)`` in a worker, in a copy of the caller's context; return its future.

        Past the limit of abandoned threads, the future fails at once and ``fn`` never runs.
        """
        future = _JobFuture(loop=loop)
        future.pool, future.state, future.arg = self, _QUEUED, arg
        context = contextvars.copy_context()
        with self._cond:
            if self.abandoned < self.max_abandoned:
                self._jobs.append((context.run, (fn, arg), future))
                if not self._waking:
                    self._wake_one()
                return future
        future.state = _DROPPED
        future.set_exception(self._refused())
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
            self._abandon_locked(future)
            self._threads -= 1  # its place goes to a new worker
            if self._jobs and not self._waking:
                self._wake_one()
            abandoned = self.abandoned
        self._warn(future.arg, abandoned)

    def _abandon_locked(self, job: _JobFuture | _Job) -> None:
        job.state = _ABANDONED
        self.abandoned += 1

    def _warn(self, event: Any, abandoned: int) -> None:
        logger.warning(
            "sync handler given up while running; its thread is abandoned and replaced",
            bus=self.name,
            signal=getattr(event, "name", None),
            run_id=getattr(event, "run_id", None),
            abandoned_threads=abandoned,
            max_abandoned_threads=self.max_abandoned,
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
                        self.abandoned -= 1
                        return
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
                # Queued before the limit was reached, it is refused all the same.
                refused = self.abandoned >= self.max_abandoned
                future.state = _DROPPED if refused else _RUNNING
                if self._jobs and not self._waking:
                    self._wake_one()
            outcome: Outcome
            if refused:
                outcome = (future, None, self._refused())
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
            AbandonedThreadsError: too many abandoned threads; ``fn`` did not run.
        """
        if self.abandoned >= self.max_abandoned:
            raise self._refused()
        job = _Job()
        cond = self._cond

        def call() -> Any:
            with cond:
                if job.state != _QUEUED:
                    return None  # given up before its thread started
                job.state = _RUNNING
            try:
                return fn(arg)
            finally:
                with cond:
                    if job.state == _ABANDONED:
                        self.abandoned -= 1
                    else:
                        job.state = _DONE

        async with self._limiter:
            if self.abandoned >= self.max_abandoned:
                raise self._refused()  # reached while this job waited for a thread
            try:
                return await anyio.to_thread.run_sync(
                    call, abandon_on_cancel=True, limiter=self._unbounded
                )
            except BaseException:
                with cond:
                    running = job.state == _RUNNING
                    if running:
                        self._abandon_locked(job)
                    elif job.state == _QUEUED:
                        job.state = _DROPPED
                    abandoned = self.abandoned
                if running:
                    self._warn(arg, abandoned)
                raise
