"""One event loop per process for the lifecycle runs of Prefect flow runs.

Prefect calls state hooks synchronously from the flow's own thread (or its event loop), and
a flow may be sync or async. The lifecycle bus, its adapters and the heartbeats live in a
daemon thread running an asyncio loop of their own: a hook hands work to it through an
anyio :class:`~anyio.from_thread.BlockingPortal` and waits only as long as the blocking
handlers take (each bounded by its timeout), so a flow never shares its loop with a
handler, and heartbeats go on while the flow's own thread is busy.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import queue
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from anyio.from_thread import BlockingPortal

from lifecycle import Attachment, Environment, EventBus, Outcome, StartAborted, load_config

if TYPE_CHECKING:
    from concurrent.futures import Future
    from pathlib import Path

    from lifecycle import Config, Run

__all__ = ["OpenRun", "Runtime", "runtime"]

logger = structlog.get_logger("lifecycle.prefect")

CLOSE_GRACE = 30.0
"""Seconds the process's exit waits for background handlers (a webhook, a NATS publish)."""


@dataclass
class OpenRun:
    """A flow run between its ``starting`` and its ``exited``, as the hooks see it."""

    run_id: str
    environment: Environment
    future: Future[Run] | None = None
    ended: anyio.Event | None = None
    outcome: Outcome = Outcome.SUCCEEDED
    error: BaseException | None = None
    attributes: dict[str, Any] = field(default_factory=dict)


class Runtime:
    """The process's bus, its configured adapters, and the runs in flight."""

    def __init__(self, config: Config | None) -> None:
        self.config = config
        self.runs: dict[str, OpenRun] = {}
        # Runs a critical starting handler aborted: exited went out already, and the flow's
        # body must not run (see observe's guard).
        self.aborted: dict[str, StartAborted] = {}
        self._lock = threading.Lock()
        ready: queue.Queue[BlockingPortal | BaseException] = queue.Queue()
        self._thread = threading.Thread(
            target=anyio.run,
            args=(self._serve, ready),
            name="lifecycle-prefect",
            # A daemon: the interpreter joins non-daemon threads before atexit runs, and
            # the loop ends only in our atexit hook.
            daemon=True,
        )
        self._thread.start()
        started = ready.get()
        if isinstance(started, BaseException):
            raise started
        self.portal = started
        self.bus = self._bus  # set before the portal was handed over
        self._closed = False
        atexit.register(self.close)

    async def _serve(self, ready: queue.Queue[BlockingPortal | BaseException]) -> None:
        self._bus = EventBus(name="lifecycle-prefect")
        try:
            attachment = self.config.attach(self._bus) if self.config is not None else Attachment()
        except BaseException as exc:
            await self._bus.aclose()
            ready.put(exc)
            return
        try:
            async with BlockingPortal() as portal:
                ready.put(portal)
                await portal.sleep_until_stopped()
        finally:
            with anyio.CancelScope(shield=True):
                await self._bus.aclose(grace=CLOSE_GRACE)
                attachment.detach()

    def start(self, record: OpenRun, attributes: dict[str, Any], heartbeat: float | None) -> None:
        """Emit ``starting`` (waiting for its blocking handlers) and keep the run open."""
        with self._lock:
            self.runs[record.run_id] = record
        try:
            record.future, _ = self.portal.start_task(self._hold, record, attributes, heartbeat)
        except StartAborted as exc:
            with self._lock:
                self.runs.pop(record.run_id, None)
                self.aborted[record.run_id] = exc
            logger.warning("flow run aborted by a critical starting handler", run_id=record.run_id)
        except BaseException:
            with self._lock:
                self.runs.pop(record.run_id, None)
            raise

    async def _hold(
        self,
        record: OpenRun,
        attributes: dict[str, Any],
        heartbeat: float | None,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> Run:
        record.ended = anyio.Event()
        async with record.environment.running(
            record.run_id, attributes=attributes, heartbeat=heartbeat
        ) as run:
            task_status.started()
            await record.ended.wait()
            run.attributes.update(record.attributes)
            run.outcome = record.outcome
            run.error = record.error
        return run

    def end(
        self,
        run_id: str,
        outcome: Outcome,
        error: BaseException | None,
        attributes: dict[str, Any],
    ) -> bool:
        """Emit ``exited`` for an open run and wait for its blocking handlers.

        Returns ``False`` when the run never started in this process (its ``starting``
        went out elsewhere): the caller decides what that means. A run aborted at its
        start had its ``exited`` already.
        """
        with self._lock:
            record = self.runs.pop(run_id, None)
            if record is None:
                return self.aborted.pop(run_id, None) is not None
        assert record.future is not None
        record.outcome, record.error = outcome, error
        record.attributes.update(attributes)
        ended = record.ended
        assert ended is not None
        self.portal.call(ended.set)
        record.future.result()
        return True

    def take_abort(self, run_id: str) -> StartAborted | None:
        """The error that aborted ``run_id`` at its start, if one did."""
        with self._lock:
            return self.aborted.get(run_id)

    def close(self) -> None:
        """At exit: end what is still open, drain the background handlers, stop the loop."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            left = list(self.runs)
        for run_id in left:
            # A flow that returned a Cancelled state itself gets no terminal hook from
            # Prefect: its run is ended here, with the state Prefect recorded.
            from ._states import final_state_of

            outcome, error, attributes = final_state_of(run_id)
            self.end(run_id, outcome, error, attributes)
        with contextlib.suppress(RuntimeError):  # the loop is gone already
            self.portal.call(self.portal.stop)
        self._thread.join(CLOSE_GRACE + 5)


_runtime: Runtime | None = None
_runtime_pid: int | None = None
_runtime_lock = threading.Lock()


def runtime(config: str | os.PathLike[str] | None) -> Runtime:
    """This process's runtime, started on first use (and again in a forked child)."""
    global _runtime, _runtime_pid
    with _runtime_lock:
        if _runtime is None or _runtime_pid != os.getpid():
            _runtime = Runtime(_load(config))
            _runtime_pid = os.getpid()
        return _runtime


def _load(config: str | os.PathLike[str] | None) -> Config | None:
    from lifecycle import find_config

    path: Path | str | os.PathLike[str] | None = config
    if path is None:
        path = find_config()
    if path is None:
        logger.warning(
            "no lifecycle configuration found: flow run events reach only handlers "
            "subscribed in code (lifecycle_prefect.bus())"
        )
        return None
    return load_config(path)
