"""One event loop per worker process, in a daemon thread, holding the bus and the task runs.

Celery task bodies are synchronous and run in the pool's processes (prefork children) or
threads (solo, threads). Each such process gets one :class:`Runtime`: a thread running an
asyncio loop with an :class:`~lifecycle.EventBus`, the configuration's adapters and
handlers attached to it, and one ``Environment.running`` per task in flight (so each task
has its heartbeats and its exactly-once ``exited``). Task threads hand it work with
``loop.call_soon_threadsafe`` (no round trip: anyio's ``BlockingPortal`` waits for the loop
at every call, which cost a task a third of its time on a loaded machine) and wait only for
the ``starting`` handlers, never longer than ``start_timeout``.

A prefork child is a fork of the main process: a thread does not survive a fork, so a
runtime belongs to the process that created it (``pid``) and a child makes its own.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import threading
from dataclasses import dataclass, field
from time import perf_counter
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from lifecycle import (
    EXITED,
    HEARTBEAT,
    STARTING,
    Environment,
    ErrorInfo,
    EventBus,
    Outcome,
    Subscription,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from anyio.abc import TaskGroup, TaskStatus

    from lifecycle import Attachment, Config

__all__ = ["Runtime", "TaskRun"]

logger = structlog.get_logger("lifecycle.celery")

BATCH = 0.01
"""Seconds the loop may let hand-overs gather before it takes them (unless a task waits)."""

EXIT_GRACE = 30.0
"""Seconds an ``exited`` emit may take, as ``Environment(exit_grace=...)`` by default."""


@dataclass(eq=False)
class TaskRun:
    """One task execution as a lifecycle run, from ``task_prerun`` to its end."""

    run_id: str
    name: str
    labels: frozenset[str]
    attributes: dict[str, Any]
    started: threading.Event = field(default_factory=threading.Event)
    """Set once the ``starting`` handlers are done (or the run could not start)."""
    ended: anyio.Event | None = None
    """Set, in the loop, when the task ended; created in the loop."""
    outcome: Outcome = Outcome.SUCCEEDED
    error: BaseException | None = None
    end_attributes: dict[str, Any] = field(default_factory=dict)
    started_at: float = field(default_factory=perf_counter)
    ended_at: float | None = None
    beats: int = 0
    silent: bool = False
    """Ended without ``exited``: another process reports it (see :meth:`Runtime.interrupt`)."""


class Runtime:
    """The lifecycle side of one worker process: its loop thread, bus, and runs in flight.

    Args:
        config: what to attach to the bus (``None``: nothing, the events go nowhere).
        heartbeat: seconds between each run's heartbeats (``None``: none).
        start_timeout: the longest a task waits for its ``starting`` handlers.
        close_timeout: the longest :meth:`close` waits for the last events to go out.
    """

    def __init__(
        self,
        config: Config | None,
        *,
        heartbeat: float | None,
        start_timeout: float,
        close_timeout: float,
    ) -> None:
        self.pid = os.getpid()
        self.config = config
        self.heartbeat = heartbeat
        self.start_timeout = start_timeout
        self.close_timeout = close_timeout
        self.runs: dict[str, TaskRun] = {}
        self._live: dict[str, TaskRun] = {}
        """The runs whose ``starting`` went out and which have not ended: the beating ones."""
        self._environments: dict[tuple[str, frozenset[str]], Environment] = {}
        self._ready = threading.Event()
        self._closed = threading.Event()
        self._waits_for_start = True
        self._failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[tuple[Callable[..., object], tuple[Any, ...]]] = []
        self._pending_lock = threading.Lock()
        self._scheduled = False
        """A wake-up of the loop is on its way for what is pending."""
        self._wake: asyncio.Event
        self._group: TaskGroup | None = None
        self._stop: anyio.Event | None = None
        self._bus: EventBus | None = None
        self._thread = threading.Thread(
            target=self._thread_main, name="lifecycle-celery", daemon=True
        )

    def start(self) -> None:
        """Start the loop thread and attach the configuration; raise what attaching raised."""
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise self._failure

    @property
    def alive(self) -> bool:
        return self._loop is not None and not self._closed.is_set()

    # -- from task threads ----------------------------------------------------------

    def begin(self, run: TaskRun) -> None:
        """Emit ``starting`` for ``run`` and wait for its handlers (at most ``start_timeout``).

        Only handlers that may do real work are waited for: when every ``starting``
        subscriber is inline (a cheap function run in the emit: the NATS adapter's enqueue,
        a log line) or background, the task goes on at once, and its ``starting`` still
        goes out before its ``exited`` (one queue, in order). Waiting costs the task a
        thread switch, which a loaded machine makes dear.
        """
        self.runs[run.run_id] = run
        if not self._submit(self._spawn, run, wake=self._waits_for_start):
            self.runs.pop(run.run_id, None)
            return
        if not self._waits_for_start:
            return
        if not run.started.wait(self.start_timeout):
            logger.warning(
                "starting handlers still running: the task goes on without them",
                run_id=run.run_id,
                task=run.name,
                start_timeout=self.start_timeout,
            )

    def end(
        self,
        run_id: str,
        outcome: Outcome,
        error: BaseException | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> bool:
        """End the run ``run_id`` of this process with ``outcome``; ``False`` if none is live.

        Returns at once: ``exited`` goes out from the loop while the worker goes on.
        """
        run = self.runs.pop(run_id, None)
        if run is None:
            return False
        run.outcome = outcome
        run.error = error
        run.ended_at = perf_counter()
        run.end_attributes.update(attributes or {})
        return self._submit(self._finish, run)

    def interrupt(self, run_id: str) -> None:
        """Stop the heartbeats of ``run_id`` and send no ``exited`` for it.

        For a task whose body a stop of its process interrupted: the main process reports a
        hard time limit or a terminating revoke, and a process that just dies is ``lost``.
        """
        run = self.runs.pop(run_id, None)
        if run is not None:
            run.silent = True
            self._submit(self._finish, run)

    def exited(
        self,
        run_id: str,
        name: str,
        labels: frozenset[str],
        outcome: Outcome,
        error: BaseException | None,
        attributes: Mapping[str, Any],
    ) -> None:
        """Emit ``exited`` for a run another process started (a prefork child killed for
        its hard time limit, a task revoked before it began)."""
        self._submit(self._emit_exited, run_id, name, labels, outcome, error, attributes, wake=True)

    def close(self, reason: Outcome = Outcome.TERMINATED) -> None:
        """End the runs in flight with ``reason``, send what is queued, stop the loop.

        Bounded by ``close_timeout``; what the adapters could not send by then is theirs to
        keep (the NATS adapter spools it to disk).
        """
        for run_id in list(self.runs):
            self.end(run_id, reason, attributes={"celery_state": "WORKER_SHUTDOWN"})
        if not self._submit(self._request_stop, wake=True):
            return
        if not self._closed.wait(self.close_timeout):
            logger.error(
                "lifecycle events not all sent before the worker process ended",
                close_timeout=self.close_timeout,
            )

    def _submit(self, func: Callable[..., object], *args: Any, wake: bool = False) -> bool:
        """Start ``func(*args)`` in the loop; ``False`` if the loop is gone.

        At once if ``wake`` (a task waits for it), else with whatever else comes within
        :data:`BATCH` seconds: waking the loop thread twice per task makes it fight the
        task's own thread for the GIL, and on a busy machine for a CPU too.
        """
        loop = self._loop
        if loop is None or self._closed.is_set():
            return False
        with self._pending_lock:
            self._pending.append((func, args))
            schedule = not self._scheduled
            self._scheduled = True
        try:
            if wake:
                loop.call_soon_threadsafe(self._wake.set)
            elif schedule:
                loop.call_soon_threadsafe(loop.call_later, BATCH, self._wake.set)
        except RuntimeError:  # the loop closed between the check and the call
            return False
        return True

    # -- in the loop thread -----------------------------------------------------------

    def _thread_main(self) -> None:
        try:
            anyio.run(self._main, backend="asyncio")
        except BaseException as exc:  # reported to start(), or logged: the thread ends here
            if not self._ready.is_set():
                self._failure = exc
            else:
                logger.exception("the lifecycle loop of this worker process failed")
        finally:
            self._closed.set()
            self._ready.set()

    async def _main(self) -> None:
        self._stop = anyio.Event()
        self._beating = anyio.CancelScope()
        bus = EventBus(name="celery")
        attachment: Attachment | None = None
        try:
            attachment = self.config.attach(bus) if self.config is not None else None
            async with anyio.create_task_group() as group:
                self._bus, self._group = bus, group
                self._waits_for_start = any(
                    not isinstance(receiver, Subscription)
                    or not (receiver.inline or receiver.background)
                    for receiver in bus.signal(STARTING).receivers.values()
                )
                self._wake = asyncio.Event()
                self._loop = asyncio.get_running_loop()
                dispatching = await group.start(self._dispatch)
                if self.heartbeat is not None:
                    group.start_soon(self._heartbeats, self.heartbeat)
                self._ready.set()
                await self._stop.wait()
                # What came before the stop request is dispatched (one queue, in order); the
                # runs it ended emit their exited before the task group lets go.
                dispatching.cancel()
                self._beating.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await bus.aclose()
                if attachment is not None:
                    attachment.detach()

    async def _heartbeats(self, interval: float) -> None:
        """Every ``interval`` seconds, ``environment.heartbeat`` for each run in flight.

        One ticker for the process rather than a task per run (``lifecycle.heartbeats``):
        most Celery tasks end before their first beat, and should not pay for one. A run's
        first beat comes within one interval of its start, then one every interval, with
        the attributes ``lifecycle.heartbeats`` gives (``sequence``, ``interval``,
        ``elapsed``).
        """
        with self._beating:
            while True:
                await anyio.sleep(interval)
                await self._beat(interval)

    async def _beat(self, interval: float) -> None:
        """One heartbeat for each run in flight."""
        now = perf_counter()
        for run in list(self._live.values()):
            run.beats += 1
            environment = self._environment(run.name, run.labels)
            attributes = {
                "sequence": run.beats,
                "interval": interval,
                "elapsed": round(now - run.started_at, 3),
            }
            try:
                await environment.emit(
                    environment.event(HEARTBEAT, run.run_id, attributes=attributes)
                )
            except Exception:
                logger.exception("heartbeat emit failed", run_id=run.run_id, task=run.name)

    async def _dispatch(
        self, *, task_status: TaskStatus[anyio.CancelScope] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run what task threads handed over, in a task (anyio needs one to start others)."""
        assert self._group is not None
        with anyio.CancelScope() as scope:
            task_status.started(scope)
            while True:
                await self._wake.wait()
                self._wake.clear()
                with self._pending_lock:
                    batch = list(self._pending)
                    self._pending.clear()
                    self._scheduled = False
                for func, args in batch:
                    if inspect.iscoroutinefunction(func):
                        self._group.start_soon(func, *args)
                    else:
                        func(*args)

    def _request_stop(self) -> None:
        assert self._stop is not None
        self._stop.set()

    def _environment(self, name: str, labels: frozenset[str]) -> Environment:
        key = (name, labels)
        environment = self._environments.get(key)
        if environment is None:
            environment = self._environments[key] = Environment(name, labels, bus=self._bus)
        return environment

    def _spawn(self, run: TaskRun) -> None:
        assert self._group is not None
        run.ended = anyio.Event()
        self._group.start_soon(self._lifetime, run, name=f"lifecycle-celery {run.run_id}")

    def _finish(self, run: TaskRun) -> None:
        if run.ended is not None:
            run.ended.set()

    async def _lifetime(self, run: TaskRun) -> None:
        """One task's run: ``starting``, then (in :meth:`_heartbeats`) beats until it ends, ``exited``.

        Not ``Environment.running``: a run may end here without ``exited`` (see
        :meth:`interrupt`), and a critical ``starting`` handler does not stop a Celery task.
        """
        assert run.ended is not None
        environment = self._environment(run.name, run.labels)
        attributes = run.attributes
        if self.heartbeat is not None:
            attributes = {**attributes, "heartbeat_interval": self.heartbeat}
        try:
            await environment.emit(environment.event(STARTING, run.run_id, attributes=attributes))
        except Exception:
            logger.exception("starting event not delivered", run_id=run.run_id, task=run.name)
        finally:
            run.started.set()
        self._live[run.run_id] = run
        try:
            await run.ended.wait()
        finally:
            for table in (self._live, self.runs):
                if table.get(run.run_id) is run:
                    del table[run.run_id]
        if run.silent:
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(EXIT_GRACE) as scope:
            await self._emit_exited(
                run.run_id,
                run.name,
                run.labels,
                run.outcome,
                run.error,
                {**run.attributes, **run.end_attributes},
                duration=(run.ended_at or perf_counter()) - run.started_at,
            )
        if scope.cancelled_caught:
            logger.error(
                "exited handlers cut off by the exit grace period",
                run_id=run.run_id,
                task=run.name,
                grace=EXIT_GRACE,
            )

    async def _emit_exited(
        self,
        run_id: str,
        name: str,
        labels: frozenset[str],
        outcome: Outcome,
        error: BaseException | None,
        attributes: Mapping[str, Any],
        *,
        duration: float | None = None,
    ) -> None:
        environment = self._environment(name, labels)
        event = environment.event(
            EXITED,
            run_id,
            attributes=attributes,
            outcome=outcome,
            duration=duration,
            error=None
            if error is None or outcome is Outcome.SUCCEEDED
            else ErrorInfo.from_exception(error),
        )
        try:
            await environment.emit(event)
        except Exception:
            logger.exception("exited event not delivered", run_id=run_id, task=name)
