"""The adapter's own loggers: console or JSON lines, written whole, in plain or ECS fields."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any, Literal, TextIO

import structlog

from lifecycle import escape_fields
from lifecycle._console import bound_fields

if TYPE_CHECKING:
    from collections.abc import MutableMapping

Fields = Literal["lifecycle", "ecs"]

ECS_VERSION = "1.6.0"
"""The ECS version the ``ecs`` fields follow, as Elastic's ``ecs-logging`` formatter says it."""


def _own_logger(file: TextIO | None, level: str, renderers: list[Any]) -> Any:
    return structlog.wrap_logger(
        # One write per line (PrintLogger writes the newline apart): no other output
        # written at the same time, a callback's print say, can land inside a line.
        structlog.WriteLogger(file if file is not None else sys.stderr),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            # The library's own lines routed here may carry exc_info (logger.exception).
            structlog.processors.format_exc_info,
            *renderers,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
    )


def console_logger(file: TextIO | None = None, *, level: str = "info", colors: bool = False) -> Any:
    """A structlog logger that renders readable console lines to ``file`` (default stderr).

    Control characters in the values are escaped, and no value shows more than 4096
    characters. It does not change structlog's global configuration.
    """
    return _own_logger(
        file,
        level,
        [bound_fields, escape_fields, structlog.dev.ConsoleRenderer(colors=colors)],
    )


def json_logger(
    file: TextIO | None = None, *, level: str = "info", fields: Fields = "lifecycle"
) -> Any:
    """A structlog logger that writes one JSON object per line to ``file`` (default stderr).

    ``fields="ecs"`` writes Elastic Common Schema documents (``@timestamp``, ``log.level``,
    ``message``, ``error.stack_trace``, other dotted names as nested objects), as Elastic's
    ``ecs-logging`` formatter writes them. It does not change structlog's global configuration.

    .. versionchanged:: 0.2 ``fields``.
    """
    # The library's own lines routed here come with lifecycle's names: renamed too.
    shape = [ecs_fields, ecs_document] if fields == "ecs" else []
    return _own_logger(
        file, level, [*shape, structlog.processors.JSONRenderer(sort_keys=True, default=repr)]
    )


_ECS_NAMES = {
    "attributes": "lifecycle.attributes",
    "background": "lifecycle.background",
    "bus": "lifecycle.bus",
    "environment": "lifecycle.environment",
    "event_id": "event.id",
    "exception": "error.stack_trace",
    "exit_code": "process.exit_code",
    "handler": "lifecycle.handler",
    "host": "host.name",
    "labels": "tags",
    "outcome": "lifecycle.outcome",
    "pid": "process.pid",
    "run_id": "lifecycle.run_id",
    "signal": "lifecycle.signal",
    "status": "lifecycle.status",
}
"""The lifecycle field names and their ECS names: ECS's own where it has one, else under
``lifecycle.`` (ECS's advice for custom fields)."""


def ecs_fields(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """A structlog processor: lifecycle's field names as ECS names (see :func:`to_ecs`)."""
    return to_ecs(event_dict)


def to_ecs(fields: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """``fields`` renamed in place to ECS: ``host.name``, ``error.type``, ``event.outcome``...

    ``duration`` (seconds) becomes ``event.duration`` in nanoseconds, as ECS counts it;
    ``outcome`` is kept as ``lifecycle.outcome`` and summed up as ``event.outcome``
    (``success`` or ``failure``). Names already in ECS form are left as they are.
    """
    for name, ecs_name in _ECS_NAMES.items():
        if name in fields:
            fields[ecs_name] = fields.pop(name)
    outcome = fields.get("lifecycle.outcome")
    if isinstance(outcome, str):
        fields["event.outcome"] = "success" if outcome == "succeeded" else "failure"
    duration = fields.pop("duration", None)
    if isinstance(duration, (int, float)):
        fields["event.duration"] = round(duration * 1e9)
    error = fields.get("error")
    if isinstance(error, dict):
        del fields["error"]
        for key, value in error.items():
            fields[f"error.{key}"] = value
    return fields


def ecs_document(_logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """A structlog processor: the line as an ECS document, nested at the dots."""
    event_dict["message"] = str(event_dict.pop("event", ""))
    event_dict["log.level"] = event_dict.pop("level", method)
    timestamp = event_dict.pop("timestamp", None)
    if timestamp is not None:
        event_dict["@timestamp"] = timestamp
    stack_trace = event_dict.pop("exception", None)
    if stack_trace is not None:
        event_dict["error.stack_trace"] = stack_trace
    event_dict.setdefault("ecs.version", ECS_VERSION)
    document: dict[str, Any] = {}
    for key, value in event_dict.items():
        # Elastic's formatter keeps these two dotted; both forms mean the same to ECS.
        if key.startswith("@") or "." not in key or key in ("log.level", "ecs.version"):
            _merge(document, key, value)
            continue
        *parents, last = key.split(".")
        node = document
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):  # a plain value of that name: keep the dots
                node, last = document, key
                break
            node = child
        _merge(node, last, value)
    return document


def _merge(node: dict[str, Any], key: str, value: Any) -> None:
    # ``error`` as an object and ``error.stack_trace`` land in one object, in either order.
    present = node.get(key)
    if isinstance(present, dict) and isinstance(value, dict):
        node[key] = {**value, **present}
    else:
        node[key] = value
