"""Exceptions raised by lifecycle-bus.

The hierarchy::

    LifecycleError
    ├── BusClosedError        emitting or subscribing on a closed bus
    ├── EmitDepthError        a handler's emit nested deeper than the bus allows
    ├── AbandonedThreadsError too many hung sync handlers; a sync handler was not run
    ├── StartAborted          a critical ``environment.starting`` handler failed
    ├── RunTimeoutError       a run outlived its time limit (also a ``TimeoutError``)
    ├── RunTerminated         SIGTERM or SIGINT ended a run under the blocking runner
    │                         (also a ``SystemExit``: 128 + n if uncaught)
    └── ConfigError           a configuration file is wrong (file, key and value)

Programmer mistakes (subscribing something that is not callable, a handler whose
signature cannot take the event, a negative timeout) raise ``TypeError`` or
``ValueError`` with a message that says what was expected.
"""

from __future__ import annotations

import signal as _signal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._results import EmitReport


class LifecycleError(Exception):
    """Base class of every error that lifecycle-bus raises on purpose."""


class BusClosedError(LifecycleError):
    """Raised when emitting on, or subscribing to, a bus that is closing or closed."""

    def __init__(self, bus_name: str, action: str = "emit on") -> None:
        super().__init__(
            f"cannot {action} event bus {bus_name!r}: it is closed; "
            "create a new EventBus (a closed bus cannot be reopened)"
        )
        self.bus_name = bus_name


class EmitDepthError(LifecycleError):
    """Raised by ``emit`` when handlers emitting from handlers nest past the bus's limit.

    It surfaces as an ``error`` result of the handler that tried to emit, so a runaway
    recursion ends as a report instead of a crash or a hang.
    """

    def __init__(self, signal: str, depth: int, limit: int) -> None:
        super().__init__(
            f"emit of {signal!r} refused at nesting depth {depth}: handlers emitting from "
            f"handlers may nest at most {limit} deep (EventBus(max_depth=...))"
        )
        self.signal = signal
        self.depth = depth
        self.limit = limit


class AbandonedThreadsError(LifecycleError):
    """A plain (sync) handler was not run: too many abandoned handler threads still run.

    A plain handler given up at its timeout keeps running in its thread, which the bus
    abandons and replaces. Once ``max_abandoned_threads`` such threads are still running,
    the bus refuses to start more plain handlers until some return: each one it refuses
    gets this error as its result (status ``error``) instead of running.

    .. versionadded:: 0.2
    """

    def __init__(self, bus_name: str, abandoned: int, limit: int) -> None:
        super().__init__(
            f"sync handler not run on event bus {bus_name!r}: {abandoned} sync handlers "
            f"given up at their timeouts are still running in abandoned threads, the most "
            f"the bus allows (EventBus(max_abandoned_threads={limit})); find the handlers "
            "that hang (logged as timed out) and give them a way to return"
        )
        self.bus_name = bus_name
        self.abandoned = abandoned
        self.limit = limit


class StartAborted(LifecycleError):
    """Raised by ``Environment.running`` when a critical ``starting`` handler failed.

    The body did not run; ``environment.exited`` was emitted with outcome ``aborted``.
    ``report`` is the report of the ``starting`` emit, ``causes`` its failed critical results.
    """

    def __init__(self, environment: str, report: EmitReport) -> None:
        causes = [r for r in report.results if r.critical and not r.ok]
        described = ", ".join(
            f"{r.handler} ({r.status.value}: {r.describe_error()})" for r in causes
        )
        super().__init__(
            f"run of environment {environment!r} aborted before its body ran: "
            f"critical starting handler failed: {described}"
        )
        self.environment = environment
        self.report = report
        self.causes = tuple(causes)


class RunTimeoutError(LifecycleError, TimeoutError):
    """Raised by ``Environment.running`` when the body outlived the run's ``timeout``."""

    def __init__(self, environment: str, timeout: float) -> None:
        super().__init__(
            f"run of environment {environment!r} exceeded its time limit of {timeout:g} s"
        )
        self.environment = environment
        self.timeout = timeout


class RunTerminated(LifecycleError, SystemExit):
    """Raised by the blocking runner after SIGTERM or SIGINT ended the run.

    ``environment.exited`` was emitted with outcome ``terminated``. ``exit_status`` is the
    shell's convention for a process ended by that signal (128 + the signal number).

    It is also a ``SystemExit`` whose ``code`` is ``exit_status``: left uncaught, it ends
    the program quietly with status 143 (SIGTERM) or 130 (SIGINT), as a supervisor
    expects of an orderly stop, instead of a traceback and status 1. ``except
    RunTerminated`` (or ``except LifecycleError``) still catches it.

    .. versionchanged:: 0.2
       Also a ``SystemExit`` with ``code`` set to ``exit_status``.
    """

    def __init__(self, environment: str, signum: int) -> None:
        name = _signal.Signals(signum).name
        super().__init__(f"run of environment {environment!r} was terminated by {name}")
        self.environment = environment
        self.signum = signum
        self.signal_name = name
        self.exit_status = 128 + signum
        self.code = self.exit_status  # what the interpreter exits with, if uncaught


class ConfigError(LifecycleError):
    """Raised when a configuration file cannot be used; names the file, key and bad value."""

    def __init__(self, file: str, key: str | None, message: str, value: Any = None) -> None:
        where = f"{file}: {key}" if key else file
        shown = "" if value is None else f" (got {value!r})"
        super().__init__(f"{where}: {message}{shown}")
        self.file = file
        self.key = key
        self.value = value


class Terminated(BaseException):
    """Raised into a run's body by the blocking runner when SIGTERM or SIGINT arrives.

    Private: the runner turns it into :exc:`RunTerminated` once ``exited`` has gone out.
    A ``BaseException`` like ``KeyboardInterrupt``, so ``except Exception`` in user code
    does not swallow it. It lives here, not with the environment that classifies it, so
    that the runner and the environment need not import each other.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
