"""The adapter: one line per run event and per failed handler, through structlog."""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO, cast

import structlog

from lifecycle import (
    EXITED,
    STARTING,
    AbandonedThreadsError,
    Attachment,
    BusState,
    ErrorInfo,
    Outcome,
    Status,
)
from lifecycle._console import TRACEBACK_LIMIT, VALUE_LIMIT, shorten
from lifecycle._logging import result_fields, route
from lifecycle.plugins import adapter

from ._render import Fields, console_logger, json_logger, to_ecs

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from lifecycle import Event, EventBus, HandlerResult

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
# Below this, the cut marker alone would be longer than what it stands for.
_LEAST_MAX_VALUE = 64


class StructlogAdapter(Attachment):
    """The handle :func:`attach` returns; ``detach()`` stops the logging.

    Attributes:
        logger: the structlog logger the lines go to.
    """

    def __init__(
        self,
        logger: Any,
        levels: Mapping[str, str],
        tracebacks: bool,
        attributes: bool,
        *,
        fields: Fields = "lifecycle",
        max_value: int | None = VALUE_LIMIT,
    ) -> None:
        super().__init__()
        self.logger = logger
        self.levels = dict(levels)
        self.tracebacks = tracebacks
        self.attributes = attributes
        self.ecs = fields == "ecs"
        self.max_value = max_value
        self._max_traceback = None if max_value is None else max(max_value, TRACEBACK_LIMIT)
        # run id -> (environment, signal -> id of the last event of that signal)
        self._runs: OrderedDict[str, tuple[str, dict[str, str]]] = OrderedDict()

    def fields(self, event: Event) -> dict[str, Any]:
        """The structured fields of one event's log line."""
        info = event.environment
        fields: dict[str, Any] = {
            "environment": self._fit(info.name),
            "labels": self._fit(sorted(info.labels)),
            "run_id": event.run_id,
            "event_id": event.event_id,
            "host": info.host,
            "pid": info.pid,
        }
        if self.attributes and event.attributes:
            attributes = event.to_dict()["attributes"]
            # Each attribute on its own: one huge value does not hide the others.
            fields["attributes"] = {key: self._fit(value) for key, value in attributes.items()}
        if event.outcome is not None:
            fields["outcome"] = event.outcome.value
        if event.duration is not None:
            fields["duration"] = round(event.duration, 6)
        if event.exit_code is not None:
            fields["exit_code"] = event.exit_code
        if event.error is not None:
            fields["error"] = self._error(event.error)
            if self.tracebacks and event.error.traceback:
                # "exception" is where structlog's renderers expect a formatted traceback.
                fields["exception"] = shorten(event.error.traceback, self._max_traceback)
        return self._named(event.name, fields)

    def log_event(self, event: Event) -> None:
        seen = self._runs.get(event.run_id)
        if seen is None:
            # Kept past exited: the results of exited handlers are announced after it.
            seen = self._runs[event.run_id] = (event.environment.name, {})
            if len(self._runs) > _REMEMBERED_RUNS:
                self._runs.popitem(last=False)
        seen[1][event.name] = event.event_id
        level = "info"
        if event.outcome is not None:
            level = self.levels.get(event.outcome.value, "error")
        getattr(self.logger, level)(event.name, **self.fields(event))

    def log_result(self, bus: EventBus, *, result: HandlerResult) -> None:
        if result.status is Status.OK or isinstance(result.exception, AbandonedThreadsError):
            # A refused call did not run: the worker pool says so once per handler, in the
            # library's own line (routed here), not once per event.
            return
        fields = {**result_fields(result), "bus": bus.name}
        seen = self._runs.get(result.run_id or "")
        if seen is not None:
            fields["environment"] = self._fit(seen[0])
            event_id = seen[1].get(result.signal)
            if event_id is not None:
                fields["event_id"] = event_id  # the event the handler failed on
        if result.exception is not None and result.status is not Status.TIMEOUT:
            error = ErrorInfo.from_exception(result.exception)
            fields["error"] = self._error(error)
            if self.tracebacks:
                fields["exception"] = shorten(error.traceback, self._max_traceback)
        message = {
            Status.ERROR: "lifecycle.handler_failed",
            Status.TIMEOUT: "lifecycle.handler_timed_out",
        }.get(result.status, "lifecycle.handler_cancelled")
        log = self.logger.warning if result.status is Status.CANCELLED else self.logger.error
        log(message, **self._named(message, fields))

    def _named(self, name: str, fields: dict[str, Any]) -> dict[str, Any]:
        if not self.ecs:
            return fields
        ecs = dict(to_ecs(fields))
        ecs["event.action"] = name
        return ecs

    def _error(self, error: ErrorInfo) -> dict[str, str]:
        return {"type": error.type, "message": self._fit(error.message)}

    def _fit(self, value: Any) -> Any:
        """``value``, or its text cut to ``max_value`` characters when it is longer."""
        if self.max_value is None:
            return value
        if isinstance(value, str):
            return shorten(value, self.max_value)
        if isinstance(value, (dict, list)):
            text = json.dumps(value, ensure_ascii=False, default=str)
            if len(text) > self.max_value:
                return shorten(text, self.max_value)
        return value


class _OpenedFile:
    """A file named in the options, opened for appending, closed at detach."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        where = Path(path).expanduser()
        try:
            # Line-buffered appends: every line reaches the file as it is logged, and
            # several jobs may share one file (each line is one write).
            self.stream: TextIO = open(where, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        except OSError as exc:
            raise _unopenable(path, exc.strerror or str(exc)) from None

    @staticmethod
    def check(path: str | os.PathLike[str]) -> None:
        """Raise as opening would, without creating the file (``lifecycle check``)."""
        where = Path(path).expanduser()
        if where.exists():
            if where.is_dir():
                raise _unopenable(path, "Is a directory")
            if not os.access(where, os.W_OK):
                raise _unopenable(path, "Permission denied")
        elif not where.parent.is_dir():
            raise _unopenable(path, "No such file or directory")
        elif not os.access(where.parent, os.W_OK | os.X_OK):
            raise _unopenable(path, "Permission denied")

    def close(self) -> None:
        self.stream.close()


def _unopenable(path: str | os.PathLike[str], reason: str) -> OSError:
    # Worded from the option's name: the configuration's error names the key from it.
    return OSError(f"file {os.fspath(path)!r} cannot be opened for appending: {reason}")


def attach(
    bus: EventBus,
    *,
    render: Literal["console", "json"] | None = None,
    file: TextIO | str | os.PathLike[str] | None = None,
    level: str = "info",
    logger: Any = None,
    signals: Iterable[str] = (STARTING, EXITED),
    handler_failures: bool = True,
    levels: Mapping[str, str] | None = None,
    tracebacks: bool = True,
    attributes: bool = True,
    labels: Iterable[str] = (),
    fields: Fields = "lifecycle",
    max_value: int | None = VALUE_LIMIT,
) -> StructlogAdapter:
    """Log lifecycle events and handler failures of ``bus`` with structlog.

    Args:
        bus: the bus to observe.
        render: ``None`` (default) logs through your structlog configuration, as
            ``structlog.get_logger("lifecycle.events")``; ``"console"`` or ``"json"`` render
            the adapter's lines to ``file`` themselves, for programs with no configuration.
            While attached, the library's own lines (a handler thread given up on, a
            command past its time limit, ``lifecycle run``'s errors) go there too, in the
            same shape: a log is one stream.
        file: where ``render`` writes: a text stream, or a path (``~`` expanded) opened
            for appending and closed at detach (default stderr).
        level: the least level ``render`` writes.
        logger: a structlog logger of your own to log to (overrides ``render``).
        signals: the signals to log; any signal may be added, such as
            ``"environment.heartbeat"``.
        handler_failures: also log handlers that failed, timed out or were cancelled.
        levels: outcome name to level, over :data:`DEFAULT_LEVELS`.
        tracebacks: add the traceback of a failed run or a failed handler as the
            ``exception`` field.
        attributes: add the event's attributes as the ``attributes`` field.
        labels: only log environments that carry all these labels.
        fields: ``"lifecycle"`` (default) names fields as the table in the README does;
            ``"ecs"`` names them as the Elastic Common Schema does (``host.name``,
            ``error.type``, ``event.outcome``, ``event.duration`` in nanoseconds, the rest
            under ``lifecycle.``), for Elastic's ``ecs-logging`` formatter or, with
            ``render="json"``, as ECS documents of the adapter's own.
        max_value: the most characters a line shows of one value (an attribute, a
            message; a traceback at least 16384), cut in the middle with a marker that
            says how much; ``None`` for no bound. The event itself keeps everything.

    The subscriptions are ``inline``: a log call is cheap and must not wait for a worker
    thread, and the line is written before the emit returns.

    Raises:
        ValueError: ``render``, ``fields`` or a level is not one of the known names, or
            ``max_value`` is below 64.
        TypeError: ``file`` is neither a path nor a text stream.
        OSError: ``file`` is a path that cannot be opened for appending.

    .. versionchanged:: 0.2 ``fields``, ``max_value``; ``file`` may be a path; ``error``
       is an object (``type``, ``message``); ``event_id``; handler failures carry their
       traceback; the library's own lines follow ``render``.
    """
    if render not in (None, "console", "json"):
        raise ValueError(f"render must be 'console', 'json' or None, not {render!r}")
    if fields not in ("lifecycle", "ecs"):
        raise ValueError(f"fields must be 'lifecycle' or 'ecs', not {fields!r}")
    if max_value is not None and (
        isinstance(max_value, bool)
        or not isinstance(max_value, int)
        or max_value < _LEAST_MAX_VALUE
    ):
        raise ValueError(
            f"max_value must be a whole number of characters >= {_LEAST_MAX_VALUE}, or "
            f"None for no bound, not {max_value!r}"
        )
    merged = {**DEFAULT_LEVELS, **(levels or {})}
    for name in (level, *merged.values()):
        if name not in _LEVELS:
            raise ValueError(f"unknown log level {name!r}; use one of {', '.join(sorted(_LEVELS))}")
    if isinstance(signals, str):
        raise TypeError(f"signals must be a list of signal names, not the string {signals!r}")
    if file is not None and not isinstance(file, (str, os.PathLike)) and not hasattr(file, "write"):
        raise TypeError(
            f"file must be a path or a text stream, not {type(file).__name__} ({file!r})"
        )
    opened = _OpenedFile(file) if isinstance(file, (str, os.PathLike)) else None
    stream = opened.stream if opened is not None else cast("TextIO | None", file)
    routed = logger is None and render is not None
    if logger is None:
        if render == "console":
            logger = console_logger(stream, level=level)
        elif render == "json":
            logger = json_logger(stream, level=level, fields=fields)
        else:
            logger = structlog.get_logger("lifecycle.events")
    adapter = StructlogAdapter(
        logger, merged, tracebacks, attributes, fields=fields, max_value=max_value
    )
    try:
        if opened is not None:
            adapter.add(opened.close)
        if routed:
            # Until detached, or until its bus is closed (lines of the closing included).
            adapter.add(route(logger, lambda: bus.state is not BusState.CLOSED))
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


def _check(bus: EventBus, *, file: Any = None, **options: Any) -> None:
    """``lifecycle check``: refuse what :func:`attach` refuses, without creating ``file``."""
    if isinstance(file, (str, os.PathLike)):
        _OpenedFile.check(file)
        file = None
    attach(bus, file=file, **options).detach()


adapter(attach, check=_check)
