"""Structured log lines for lifecycle-bus runs and handler failures, with structlog.

``attach(bus)`` logs every ``environment.starting`` and ``environment.exited`` event,
at a level that follows the run's outcome, and every handler failure or timeout the bus
reports. It logs through the application's own structlog configuration; programs that
have none can ask for a console or a JSON rendering of the adapter's lines alone
(``render="console"`` / ``render="json"``), without touching the global configuration.

.. versionadded:: 0.1
"""

from __future__ import annotations

import logging
import sys
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Literal, TextIO

import structlog

from lifecycle import EXITED, STARTING, Attachment, Outcome, Status, escape, escape_fields

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from lifecycle import Event, EventBus, HandlerResult

__all__ = [
    "DEFAULT_LEVELS",
    "StructlogAdapter",
    "attach",
    "console_logger",
    "escape",
    "escape_fields",
    "json_logger",
]

DEFAULT_LEVELS: Mapping[str, str] = {
    Outcome.SUCCEEDED.value: "info",
    Outcome.CANCELLED.value: "warning",
    Outcome.TERMINATED.value: "warning",
    Outcome.ABORTED.value: "error",
    Outcome.FAILED.value: "error",
    Outcome.KILLED.value: "error",
    Outcome.TIMEOUT.value: "error",
    Outcome.LOST.value: "error",
}
"""The level of an ``environment.exited`` line for each outcome."""

_LEVELS = frozenset({"debug", "info", "warning", "error", "critical"})
# Runs seen lately, so that handler failures can name their environment; bounded.
_REMEMBERED_RUNS = 4096

# ``escape`` and ``escape_fields`` (.. versionadded:: 0.2) are lifecycle's own, re-exported:
# the console lines of ``lifecycle run``, ``listen``, ``watch`` and this adapter escape alike.


def _own_logger(file: TextIO | None, level: str, renderers: list[Any]) -> Any:
    return structlog.wrap_logger(
        # One write per line (PrintLogger writes the newline apart): no other output
        # written at the same time, a callback's print say, can land inside a line.
        structlog.WriteLogger(file if file is not None else sys.stderr),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *renderers,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
    )


def console_logger(file: TextIO | None = None, *, level: str = "info", colors: bool = False) -> Any:
    """A structlog logger that renders readable console lines to ``file`` (default stderr).

    Control characters in the values are escaped. It does not change structlog's global
    configuration.
    """
    return _own_logger(file, level, [escape_fields, structlog.dev.ConsoleRenderer(colors=colors)])


def json_logger(file: TextIO | None = None, *, level: str = "info") -> Any:
    """A structlog logger that writes one JSON object per line to ``file`` (default stderr).

    It does not change structlog's global configuration.
    """
    return _own_logger(file, level, [structlog.processors.JSONRenderer(sort_keys=True)])


class StructlogAdapter(Attachment):
    """The handle :func:`attach` returns; ``detach()`` stops the logging.

    Attributes:
        logger: the structlog logger the lines go to.
    """

    def __init__(
        self, logger: Any, levels: Mapping[str, str], tracebacks: bool, attributes: bool
    ) -> None:
        super().__init__()
        self.logger = logger
        self.levels = dict(levels)
        self.tracebacks = tracebacks
        self.attributes = attributes
        self._runs: OrderedDict[str, str] = OrderedDict()

    def fields(self, event: Event) -> dict[str, Any]:
        """The structured fields of one event's log line."""
        info = event.environment
        fields: dict[str, Any] = {
            "environment": info.name,
            "labels": sorted(info.labels),
            "run_id": event.run_id,
            "host": info.host,
            "pid": info.pid,
        }
        if self.attributes and event.attributes:
            fields["attributes"] = event.to_dict()["attributes"]
        if event.outcome is not None:
            fields["outcome"] = event.outcome.value
        if event.duration is not None:
            fields["duration"] = round(event.duration, 6)
        if event.exit_code is not None:
            fields["exit_code"] = event.exit_code
        if event.error is not None:
            fields["error"] = f"{event.error.type}: {event.error.message}"
            if self.tracebacks and event.error.traceback:
                # "exception" is where structlog's renderers expect a formatted traceback.
                fields["exception"] = event.error.traceback
        return fields

    def log_event(self, event: Event) -> None:
        if event.run_id not in self._runs:
            # Kept past exited: the results of exited handlers are announced after it.
            self._runs[event.run_id] = event.environment.name
            if len(self._runs) > _REMEMBERED_RUNS:
                self._runs.popitem(last=False)
        level = "info"
        if event.outcome is not None:
            level = self.levels.get(event.outcome.value, "error")
        getattr(self.logger, level)(event.name, **self.fields(event))

    def log_result(self, bus: EventBus, *, result: HandlerResult) -> None:
        if result.status is Status.OK:
            return
        fields: dict[str, Any] = {
            "handler": result.handler,
            "signal": result.signal,
            "run_id": result.run_id,
            "status": result.status.value,
            "duration": round(result.duration, 6),
            "bus": bus.name,
        }
        environment = self._runs.get(result.run_id or "")
        if environment is not None:
            fields["environment"] = environment
        if result.background:
            fields["background"] = True
        if result.status is not Status.TIMEOUT:
            problem = result.describe_error()
            if problem:
                fields["error"] = problem
        message = {
            Status.ERROR: "lifecycle.handler_failed",
            Status.TIMEOUT: "lifecycle.handler_timed_out",
        }.get(result.status, "lifecycle.handler_cancelled")
        log = self.logger.warning if result.status is Status.CANCELLED else self.logger.error
        log(message, **fields)


def attach(
    bus: EventBus,
    *,
    render: Literal["console", "json"] | None = None,
    file: TextIO | None = None,
    level: str = "info",
    logger: Any = None,
    signals: Iterable[str] = (STARTING, EXITED),
    handler_failures: bool = True,
    levels: Mapping[str, str] | None = None,
    tracebacks: bool = True,
    attributes: bool = True,
    labels: Iterable[str] = (),
) -> StructlogAdapter:
    """Log lifecycle events and handler failures of ``bus`` with structlog.

    Args:
        bus: the bus to observe.
        render: ``None`` (default) logs through your structlog configuration, as
            ``structlog.get_logger("lifecycle.events")``; ``"console"`` or ``"json"`` render
            the adapter's lines to ``file`` themselves, for programs with no configuration.
        file: where ``render`` writes (default stderr).
        level: the least level ``render`` writes.
        logger: a structlog logger of your own to log to (overrides ``render``).
        signals: the signals to log; any signal may be added, such as
            ``"environment.heartbeat"``.
        handler_failures: also log handlers that failed, timed out or were cancelled.
        levels: outcome name to level, over :data:`DEFAULT_LEVELS`.
        tracebacks: add a failed run's traceback as the ``exception`` field.
        attributes: add the event's attributes as the ``attributes`` field.
        labels: only log environments that carry all these labels.

    The subscriptions are ``inline``: a log call is cheap and must not wait for a worker
    thread, and the line is written before the emit returns.

    Raises:
        ValueError: ``render`` or a level is not one of the known names.
    """
    if render not in (None, "console", "json"):
        raise ValueError(f"render must be 'console', 'json' or None, not {render!r}")
    merged = {**DEFAULT_LEVELS, **(levels or {})}
    for name in (level, *merged.values()):
        if name not in _LEVELS:
            raise ValueError(f"unknown log level {name!r}; use one of {', '.join(sorted(_LEVELS))}")
    if isinstance(signals, str):
        raise TypeError(f"signals must be a list of signal names, not the string {signals!r}")
    if logger is None:
        if render == "console":
            logger = console_logger(file, level=level)
        elif render == "json":
            logger = json_logger(file, level=level)
        else:
            logger = structlog.get_logger("lifecycle.events")
    adapter = StructlogAdapter(logger, merged, tracebacks, attributes)
    try:
        for signal in dict.fromkeys(signals):
            adapter.add(
                bus.subscribe(
                    signal,
                    adapter.log_event,
                    inline=True,
                    labels=labels,
                    name=f"lifecycle_structlog:{signal}",
                )
            )
        if handler_failures:
            # The adapter's line carries more (the environment), so the bus's own
            # failure line would only say the same thing twice.
            adapter.add(bus.on_result(adapter.log_result, logs_failures=True))
    except BaseException:
        adapter.detach()
        raise
    return adapter
