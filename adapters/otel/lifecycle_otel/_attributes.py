"""The span and metric attributes of lifecycle events, in OpenTelemetry's naming style.

Where a semantic convention exists it is used (``host.name``, ``process.pid``,
``process.exit.code``, ``process.command_args``, ``error.type``); what is lifecycle's own
lives under ``lifecycle.*``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.util.types import AttributeValue

    from lifecycle import Event

ENVIRONMENT = "lifecycle.environment.name"
LABELS = "lifecycle.environment.labels"
RUN_ID = "lifecycle.run.id"
EVENT_ID = "lifecycle.event.id"
EXITED_EVENT_ID = "lifecycle.exited.event.id"
OUTCOME = "lifecycle.run.outcome"
HEARTBEATS = "lifecycle.run.heartbeats"
RUN_ATTRIBUTE = "lifecycle.run.attributes."
HOST = "host.name"
PID = "process.pid"
EXIT_CODE = "process.exit.code"
COMMAND_ARGS = "process.command_args"
ERROR_TYPE = "error.type"
HANDLER = "lifecycle.handler.name"
SIGNAL = "lifecycle.signal"
HANDLER_STATUS = "lifecycle.handler.status"
BACKGROUND = "lifecycle.handler.background"
CRITICAL = "lifecycle.handler.critical"
VERDICT = "lifecycle.verdict.kind"
VERDICT_PREFIX = "lifecycle.verdict."
LINK_KIND = "lifecycle.link"
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

UNKNOWN = "unknown"
"""The outcome of a run span ended without its ``exited`` event (see ``max_open_runs``)."""

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def nanoseconds(when: datetime) -> int:
    """``when`` as nanoseconds since the epoch, exactly (a float would lose the microseconds)."""
    delta = when - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def run_attributes(event: Event) -> dict[str, AttributeValue]:
    """What every span and metric of a run may say about where it ran (no secrets)."""
    environment = event.environment
    return {
        ENVIRONMENT: environment.name,
        LABELS: tuple(sorted(environment.labels)),
        RUN_ID: event.run_id,
        HOST: environment.host,
        PID: environment.pid,
    }


def attribute_value(value: Any) -> AttributeValue:
    """A JSON value as an OTel attribute: scalars and uniform lists as they are, else JSON."""
    if isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (list, tuple)) and value:
        kinds = {type(item) for item in value}
        if len(kinds) == 1 and kinds <= {str, bool, int, float}:
            return tuple(value)
    return json.dumps(_plain(value), separators=(",", ":"), sort_keys=True)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value
