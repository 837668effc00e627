"""Daemon worker threads for sync handlers on asyncio.

``concurrent.futures.ThreadPoolExecutor`` joins its workers at interpreter exit, so one
abandoned sync handler that never returns would keep the process alive forever. Handlers
past their timeout are abandoned by design, hence daemon threads of our own.
"""

from __future__ import annotations

import contextvars
import threading
from collections import deque
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable

_IDLE_SECONDS = 30.0


def _deliver(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    # The emitter may have given up on the future (timeout, cancellation) meanwhile.
    if future.done():
        return
    if exc is None:
        future.set_result(result)
    else:
        future.set_exception(exc)


Outcome = tuple["asyncio.Future[Any]", Any, "BaseException | None"]


class WorkerPool:
    """Runs callables in up to ``max_workers`` daemon threads, growing on demand."""

    def __init__(self, max_workers: int) -> None:
        if max_workers < 1:
            raise ValueError(f"max_threads must be at least 1, not {max_workers}")
        self._max_workers = max_workers
        self._cond = threading.Condition(threading.Lock())
        self._jobs: deque[tuple[Callable[[Any], Any], Any, asyncio.Future[Any]]] = deque()
        self._idle = 0
        self._threads = 0
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

    def submit(
        self, fn: Callable[[Any], Any], arg: Any, loop: asyncio.AbstractEventLoop
    ) -> asyncio.Future[Any]:
        """Run ``fn(arg)`` in a worker, in a copy of the caller's context; return its future."""
        future: asyncio.Future[Any] = loop.create_future()
        context = contextvars.copy_context()
        with self._cond:
            self._jobs.append((context.run, (fn, arg), future))
            if not self._waking:
                self._wake_one()
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

    def _work(self) -> None:
        started = True  # a new worker was started to take a job: it is the one on its way
        while True:
            with self._cond:
                if started:
                    self._waking = started = False
                while not self._jobs:
                    self._idle += 1
                    notified = self._cond.wait(_IDLE_SECONDS)
                    self._idle -= 1
                    self._waking = False
                    if not notified and not self._jobs:
                        self._threads -= 1
                        return
                run, (fn, arg), future = self._jobs.popleft()
                if self._jobs and not self._waking:
                    self._wake_one()
            try:
                result = run(fn, arg)  # type: ignore[call-arg]
            except BaseException as exc:  # delivered to the emitter, which decides what it is
                outcome: Outcome = (future, None, exc)
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
            del future, outcome, batch, loop

    def _deliver_finished(self, loop: asyncio.AbstractEventLoop) -> None:
        """In the loop: resolve the futures of every job finished since the last call."""
        with self._finished_lock:
            batch = self._finished.pop(loop, ())
        for future, result, exc in batch:
            _deliver(future, result, exc)
