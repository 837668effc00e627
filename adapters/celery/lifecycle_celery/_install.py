"""``install(app)``: Celery's signals, connected so that each task execution is a lifecycle run.

Where each signal fires, and what it becomes::

    worker_process_init      each pool process (a prefork child    the process's Runtime
                             after the fork; solo: the worker)     (loop thread, bus, config)
    task_prerun              the process running the task          starting, then heartbeats
    task_postrun             the same process                      exited: the task's outcome
    task_failure             the main process, for a hard time     exited (timeout) for the
                             limit (the child was killed)          child's run
    task_revoked             the main process                      exited (terminated or
                                                                   cancelled), unless a run
                                                                   here ends it
    worker_process_shutdown  a pool process that ends              runs in flight: exited
    worker_shutdown          the main process                      (terminated); queue sent

A pool process killed outright (SIGKILL, the OOM killer) says nothing: its runs stop
sending heartbeats, and ``lifecycle watch`` reports each of them ``lost``, once.
"""

from __future__ import annotations

import atexit
import math
import os
import socket
import threading
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from celery import signals
from celery.exceptions import Retry, SoftTimeLimitExceeded, TimeLimitExceeded

from lifecycle import Config, Outcome, find_config, load_config

from ._runtime import Runtime, TaskRun

if TYPE_CHECKING:
    from collections.abc import Mapping

    from celery import Celery, Task

__all__ = ["Installation", "install", "run_id_for"]

logger = structlog.get_logger("lifecycle.celery")

_REPORTED = 1024
"""Run ids whose end the main process reported, remembered to report each once."""

LABEL = "celery"
"""The label every task's environment carries, beside ``queue:<name>``."""


def run_id_for(
    task_id: str, retries: int = 0, *, redelivered: bool = False, host: str = "", pid: int = 0
) -> str:
    """The run id of one execution of a task.

    The task id for its first execution; ``<task id>.retry-<n>`` for its n-th retry (Celery
    keeps the task id across retries, a run id must not repeat); a message the broker
    delivered again (after a worker was lost, with ``acks_late``) runs as
    ``<that id>.redelivered-<pid>@<host>``, the worker process that took it up.
    """
    run_id = task_id if not retries else f"{task_id}.retry-{retries}"
    if redelivered:
        run_id = f"{run_id}.redelivered-{pid}@{host}"
    return run_id


def _positive(value: Any, name: str, *, none: bool = False) -> float | None:
    if value is None and none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {value!r}")
    if math.isnan(value) or math.isinf(value) or value <= 0:
        if value == 0 and none:
            return None
        raise ValueError(f"{name} must be a finite number of seconds > 0, not {value!r}")
    return float(value)


class Installation:
    """What :func:`install` connected; :meth:`uninstall` disconnects it.

    .. versionadded:: 0.2
    """

    def __init__(
        self,
        app: Celery,
        config: Config | None,
        *,
        heartbeat: float | None,
        start_timeout: float,
        close_timeout: float,
    ) -> None:
        self.app = app
        self.config = config
        self.heartbeat = heartbeat
        self.start_timeout = start_timeout
        self.close_timeout = close_timeout
        self.host = socket.gethostname()
        self._runtime: Runtime | None = None
        self._broken_pid = 0
        self._lock = threading.Lock()
        # The main process's view of the requests its pool runs, for the signals that name
        # only a task id (a hard time limit): gone with the request, so nothing to clean up.
        self._received: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()
        self._reported: dict[str, None] = {}
        self._connected = [
            (signals.worker_process_init, self._on_process_init),
            (signals.worker_process_shutdown, self._on_process_shutdown),
            (signals.worker_shutdown, self._on_process_shutdown),
            (signals.task_received, self._on_received),
            (signals.task_prerun, self._on_prerun),
            (signals.task_postrun, self._on_postrun),
            (signals.task_failure, self._on_failure),
            (signals.task_revoked, self._on_revoked),
        ]
        for signal, receiver in self._connected:
            signal.connect(receiver, weak=False)
        os.register_at_fork(after_in_child=self._forget)

    def __repr__(self) -> str:
        return f"<lifecycle_celery.Installation app={self.app.main!r}>"

    def uninstall(self) -> None:
        """Disconnect the signals and close this process's runtime (runs in flight: terminated)."""
        for signal, receiver in self._connected:
            signal.disconnect(receiver)
        self._connected = []
        self._close()

    # -- the per-process runtime -------------------------------------------------------

    def _forget(self) -> None:
        # A forked child has the parent's objects but not its threads: start afresh.
        self._runtime = None
        self._lock = threading.Lock()

    def runtime(self) -> Runtime | None:
        """This process's runtime, started at first use; ``None`` if it cannot start."""
        runtime = self._runtime
        pid = os.getpid()
        if runtime is not None and runtime.pid == pid:
            return runtime if runtime.alive else None
        if self._broken_pid == pid:
            return None
        with self._lock:
            if self._runtime is None or self._runtime.pid != pid:
                runtime = Runtime(
                    self.config,
                    heartbeat=self.heartbeat,
                    start_timeout=self.start_timeout,
                    close_timeout=self.close_timeout,
                )
                try:
                    runtime.start()
                except Exception:
                    # Said once per process; the tasks run on without lifecycle events.
                    logger.exception("lifecycle events are off in this worker process")
                    self._broken_pid = pid
                    return None
                self._runtime = runtime
                # A process that ends without a worker signal (tasks run eagerly, a solo
                # worker's cold shutdown) still hands its last events over.
                atexit.register(self._on_process_shutdown)
            return self._runtime

    def _close(self) -> None:
        runtime, self._runtime = self._runtime, None
        if runtime is not None and runtime.pid == os.getpid():
            runtime.close()

    # -- the signals (Celery logs what a receiver raises; these never raise anyway) ------

    def _mine(self, task: Task[Any, Any] | None) -> bool:
        return task is not None and task.app is self.app

    def _on_process_init(self, **_: Any) -> None:
        self.runtime()  # the publisher connects before the first task, not during it

    def _on_process_shutdown(self, **_: Any) -> None:
        try:
            self._close()
        except Exception:
            logger.exception("closing the lifecycle runtime failed")

    def _on_received(self, request: Any = None, **_: Any) -> None:
        if request is not None and request.task is not None and self._mine(request.task):
            self._received[request.id] = request

    def _task_runtime(self, task: Task[Any, Any] | None) -> Runtime | None:
        """This process's runtime, for a task of this app; ``None`` to leave the task alone."""
        return self.runtime() if self._mine(task) else None

    def _on_prerun(self, task_id: str = "", task: Task[Any, Any] | None = None, **_: Any) -> None:
        runtime = self._task_runtime(task)
        if runtime is None or task is None:
            return
        try:
            runtime.begin(self._task_run(task_id, task, task.request))
        except Exception:
            logger.exception("starting a task's lifecycle run failed", task_id=task_id)

    def _on_postrun(
        self,
        task_id: str = "",
        task: Task[Any, Any] | None = None,
        retval: Any = None,
        state: str | None = None,
        **_: Any,
    ) -> None:
        runtime = self._task_runtime(task)
        if runtime is None or task is None:
            return
        try:
            request = task.request
            run_id = self._run_id(task_id, request, os.getpid())
            if state is None:
                # No state: a BaseException stopped the body, so the process is being
                # stopped (a hard time limit, a terminating revoke, a cold shutdown). The
                # main process reports the first two; a process that dies is lost.
                runtime.interrupt(run_id)
                return
            outcome, error, attributes = outcome_of(state, retval)
            if state == "RETRY":
                attributes["celery_next_run"] = run_id_for(task_id, (request.retries or 0) + 1)
            runtime.end(run_id, outcome, error, attributes)
        except Exception:
            logger.exception("ending a task's lifecycle run failed", task_id=task_id)

    def _on_failure(
        self,
        sender: Task[Any, Any] | None = None,
        task_id: str = "",
        exception: BaseException | None = None,
        **_: Any,
    ) -> None:
        # Only the main process's report of a hard time limit: the task's own process, which
        # would have ended the run, is dead. Other failures end the run at task_postrun.
        if not isinstance(exception, TimeLimitExceeded) or not self._mine(sender):
            return
        assert sender is not None
        request = self._received.get(task_id)
        if request is None:
            return
        try:
            self._exited_elsewhere(
                sender,
                task_id,
                request.request_dict,
                request.worker_pid,
                Outcome.TIMEOUT,
                exception,
                {"celery_state": "FAILURE", "celery_time_limit": "hard"},
            )
        except Exception:
            logger.exception("reporting a hard time limit failed", task_id=task_id)

    def _on_revoked(
        self,
        sender: Task[Any, Any] | None = None,
        request: Any = None,
        terminated: bool = False,
        signum: Any = None,
        expired: bool = False,
        **_: Any,
    ) -> None:
        if request is None or not self._mine(sender):
            return
        assert sender is not None
        try:
            received = self._received.get(request.id)
            pid = received.worker_pid if received is not None else None
            attributes: dict[str, Any] = {
                "celery_state": "REVOKED",
                "celery_revoked": "expired"
                if expired
                else "terminated"
                if terminated
                else "revoked",
            }
            if terminated and signum is not None:
                attributes["celery_signal"] = str(signum)
            outcome = Outcome.TERMINATED if terminated else Outcome.CANCELLED
            self._exited_elsewhere(sender, request.id, request, pid, outcome, None, attributes)
        except Exception:
            logger.exception("reporting a revoked task failed", task_id=getattr(request, "id", ""))

    # -- runs ------------------------------------------------------------------------

    def _run_id(self, task_id: str, request: Any, pid: int | None) -> str:
        delivery = _get(request, "delivery_info") or {}
        return run_id_for(
            task_id,
            _get(request, "retries") or 0,
            redelivered=bool(delivery.get("redelivered")),
            host=self.host,
            pid=pid or 0,
        )

    def _task_run(self, task_id: str, task: Task[Any, Any], request: Any) -> TaskRun:
        pid = os.getpid()
        retries = request.retries or 0
        delivery = request.delivery_info or {}
        queue = delivery.get("routing_key")
        attributes: dict[str, Any] = {
            "celery_task_id": task_id,
            "celery_hostname": request.hostname,
            "celery_pid": pid,
            "celery_queue": queue,
            "celery_attempt": retries + 1,
        }
        if retries:
            attributes["celery_previous_run"] = run_id_for(task_id, retries - 1)
        if delivery.get("redelivered"):
            attributes["celery_redelivered"] = True
            attributes["celery_previous_run"] = run_id_for(task_id, retries)
        return TaskRun(
            run_id=self._run_id(task_id, request, pid),
            name=task.name,
            labels=_labels(queue),
            attributes=attributes,
        )

    def _exited_elsewhere(
        self,
        task: Task[Any, Any],
        task_id: str,
        request: Any,
        pid: int | None,
        outcome: Outcome,
        error: BaseException | None,
        attributes: Mapping[str, Any],
    ) -> None:
        """``exited`` for a run whose process cannot say it: from here, unless it runs here."""
        runtime = self.runtime()
        if runtime is None:
            return
        run_id = self._run_id(task_id, request, pid)
        if run_id in self._reported:
            return  # Celery sends task_failure twice for a hard time limit
        self._reported[run_id] = None
        while len(self._reported) > _REPORTED:
            del self._reported[next(iter(self._reported))]
        if runtime.end(run_id, outcome, error, attributes):
            return  # solo and threads pools: the run is this process's own
        delivery = _get(request, "delivery_info") or {}
        queue = delivery.get("routing_key")
        runtime.exited(
            run_id,
            task.name,
            _labels(queue),
            outcome,
            error,
            {
                "celery_task_id": task_id,
                "celery_hostname": _get(request, "hostname"),
                "celery_pid": pid,
                "celery_queue": queue,
                **attributes,
            },
        )


def _get(request: Any, key: str) -> Any:
    """A field of a task request, whether a ``Context`` or a request dict."""
    if isinstance(request, dict):
        return request.get(key)
    return getattr(request, key, None)


def _labels(queue: str | None) -> frozenset[str]:
    return frozenset({LABEL, f"queue:{queue}"} if queue else {LABEL})


def outcome_of(
    state: str | None, retval: Any
) -> tuple[Outcome, BaseException | None, dict[str, Any]]:
    """A finished task's lifecycle outcome, error and attributes, from Celery's state."""
    attributes: dict[str, Any] = {"celery_state": state}
    if state in ("SUCCESS", "IGNORED"):
        return Outcome.SUCCEEDED, None, attributes
    error = retval if isinstance(retval, BaseException) else None
    if state == "RETRY" and isinstance(retval, Retry):
        if retval.when is not None:
            attributes["celery_retry_when"] = str(retval.when)
        cause = retval.exc
        return Outcome.FAILED, cause if isinstance(cause, BaseException) else retval, attributes
    if isinstance(retval, SoftTimeLimitExceeded):
        attributes["celery_time_limit"] = "soft"
        return Outcome.TIMEOUT, retval, attributes
    return Outcome.FAILED, error, attributes


def install(
    app: Celery,
    *,
    config: str | os.PathLike[str] | Config | None = None,
    heartbeat: float | None = 30.0,
    start_timeout: float = 10.0,
    close_timeout: float = 10.0,
) -> Installation:
    """Make each execution of ``app``'s tasks a lifecycle run.

    Call it once where the app is made (the module ``celery -A`` loads)::

        app = Celery("jobs", broker="redis://...")
        lifecycle_celery.install(app, config="lifecycle.toml")

    Each task execution emits ``environment.starting`` before its body (environment: the
    task's name; labels ``celery`` and ``queue:<queue>``; run id: see :func:`run_id_for`),
    ``environment.heartbeat`` every ``heartbeat`` seconds while it runs, and
    ``environment.exited`` once after it, with the outcome Celery gave it. Handlers and
    adapters come from ``config``, as for ``lifecycle run``, attached in every worker
    process (each prefork child has its own bus and publisher).

    Handlers never hurt the worker: a task waits at most ``start_timeout`` seconds for its
    ``starting`` handlers, never for its ``exited`` ones, and nothing they raise reaches it.

    Args:
        app: the Celery application.
        config: a ``lifecycle.toml`` (or ``pyproject.toml``) path, or a loaded
            :class:`~lifecycle.Config`; default: the one :func:`lifecycle.find_config`
            finds in the current directory, if any.
        heartbeat: seconds between heartbeats of each task in flight; ``None`` or ``0``
            sends none (and a watchdog cannot tell a dead worker's tasks).
        start_timeout: the longest a task waits for its ``starting`` handlers.
        close_timeout: the longest a worker process, when it ends, waits for its last
            events to be handled and sent.

    Raises:
        lifecycle.ConfigError: the configuration is wrong (the message names file and key).
        TypeError, ValueError: an option is wrong.

    .. versionadded:: 0.2
    """
    interval = _positive(heartbeat, "heartbeat", none=True)
    start = _positive(start_timeout, "start_timeout")
    close = _positive(close_timeout, "close_timeout")
    assert start is not None
    assert close is not None
    if config is not None and not isinstance(config, Config):
        config = load_config(Path(config))
    elif config is None:
        found = find_config()
        config = load_config(found) if found is not None else None
    return Installation(app, config, heartbeat=interval, start_timeout=start, close_timeout=close)
