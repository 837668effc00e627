"""The immutable lifecycle event and its JSON form."""

from __future__ import annotations

import math
import os
import socket
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from enum import Enum
from types import MappingProxyType
from typing import Any

__all__ = [
    "EXITED",
    "HEARTBEAT",
    "MISSED",
    "OVERDUE",
    "RECOVERED",
    "SCHEMA_VERSION",
    "STARTING",
    "EnvironmentInfo",
    "ErrorInfo",
    "Event",
    "Outcome",
]

STARTING = "environment.starting"
"""Signal name emitted before a run's body starts."""
EXITED = "environment.exited"
"""Signal name emitted exactly once after a run ends, however it ends."""
HEARTBEAT = "environment.heartbeat"
"""Signal name emitted periodically while a run is alive."""
MISSED = "environment.missed"
"""Signal name a watchdog emits for a scheduled start that did not come (one per missed slot)."""
OVERDUE = "environment.overdue"
"""Signal name a watchdog emits for a run still going past its declared ``max_duration``."""
RECOVERED = "environment.recovered"
"""Signal name a watchdog emits when a run it declared ``lost`` speaks again."""

SCHEMA_VERSION = 1
"""Version of the JSON form of :class:`Event`; bumped on incompatible changes."""

JsonValue = Any
"""A value that survives ``json.dumps``: str, int, float (finite), bool, None, lists, str-keyed maps."""


class Outcome(str, Enum):
    """How a run ended."""

    SUCCEEDED = "succeeded"
    """The body returned normally."""
    FAILED = "failed"
    """The body raised, or the command exited non-zero."""
    CANCELLED = "cancelled"
    """The body was cancelled from outside."""
    ABORTED = "aborted"
    """A critical ``starting`` handler failed, so the body never ran."""
    TERMINATED = "terminated"
    """SIGTERM or SIGINT asked the run to stop."""
    KILLED = "killed"
    """The process died of a signal it did not handle."""
    TIMEOUT = "timeout"
    """The run outlived its time limit."""
    LOST = "lost"
    """The run stopped sending heartbeats; a watchdog gave it up."""

    def __str__(self) -> str:
        return self.value

    @property
    def is_success(self) -> bool:
        return self is Outcome.SUCCEEDED


def _freeze(value: Any, path: str) -> JsonValue:
    """Return an immutable, JSON-safe copy of ``value``, or raise naming the bad ``path``."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"event attribute {path} is {value!r}, which JSON cannot carry")
        return value
    if isinstance(value, Mapping):
        frozen: dict[str, JsonValue] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(
                    f"event attribute {path} has key {key!r} of type {type(key).__name__}; "
                    "keys must be strings"
                )
            frozen[key] = _freeze(item, f"{path}.{key}")
        return MappingProxyType(frozen)
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(item, f"{path}[{index}]") for index, item in enumerate(value))
    raise TypeError(
        f"event attribute {path} is of type {type(value).__name__} ({value!r}); attributes must be "
        "JSON-safe: str, int, float, bool, None, lists or str-keyed mappings"
    )


def _thaw(value: JsonValue) -> Any:
    if isinstance(value, Mapping):
        return {key: _thaw(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return [_thaw(item) for item in value]
    return value


def freeze_attributes(attributes: Mapping[str, Any] | None) -> Mapping[str, JsonValue]:
    """Validate and freeze an attribute mapping (used by :class:`Event` and callers)."""
    if not attributes:
        return _EMPTY
    if not isinstance(attributes, Mapping):
        raise TypeError(f"event attributes must be a mapping, not {type(attributes).__name__}")
    frozen: Mapping[str, JsonValue] = _freeze(attributes, "attributes")
    return frozen


_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class EnvironmentInfo:
    """Where a run happens: the environment's name and labels, the host and the process."""

    name: str
    labels: frozenset[str] = frozenset()
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)

    @classmethod
    def current(cls, name: str, labels: Iterable[str] = ()) -> EnvironmentInfo:
        """Describe an environment named ``name`` running in this process."""
        return cls(name=name, labels=frozenset(labels))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "labels": sorted(self.labels),
            "host": self.host,
            "pid": self.pid,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EnvironmentInfo:
        return cls(
            name=data["name"],
            labels=frozenset(data.get("labels", ())),
            host=data["host"],
            pid=data["pid"],
        )


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """An exception as data: its type, message and formatted traceback."""

    type: str
    message: str
    traceback: str = ""

    @classmethod
    def from_exception(cls, exc: BaseException) -> ErrorInfo:
        exc_type = type(exc)
        qualified = exc_type.__qualname__
        if exc_type.__module__ not in ("builtins", "__main__"):
            qualified = f"{exc_type.__module__}.{qualified}"
        return cls(
            type=qualified,
            message=str(exc),
            traceback="".join(traceback.format_exception(exc_type, exc, exc.__traceback__)),
        )

    def to_dict(self) -> dict[str, str]:
        return {"type": self.type, "message": self.message, "traceback": self.traceback}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ErrorInfo:
        return cls(type=data["type"], message=data["message"], traceback=data.get("traceback", ""))


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_id() -> str:
    """A random id, as ``uuid.uuid4().hex`` writes it.

    Without ``uuid``, whose import (it brings ``platform``) cost a wrapped job's start-up
    more than making ids ever will.
    """
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # the RFC 4122 variant
    return raw.hex()


@dataclass(frozen=True, slots=True, eq=True)
class Event:
    """One lifecycle event, immutable and JSON-safe.

    ``environment.exited`` events also carry ``outcome`` and ``duration``, and where there
    is one, the ``exit_code`` and the ``error``.

    Raises:
        TypeError, ValueError: an attribute is not JSON-safe; the message names its path.
    """

    name: str
    run_id: str
    environment: EnvironmentInfo
    attributes: Mapping[str, JsonValue] = field(default_factory=lambda: _EMPTY)
    event_id: str = field(default_factory=new_id)
    timestamp: datetime = field(default_factory=_utcnow)
    outcome: Outcome | None = None
    duration: float | None = None
    exit_code: int | None = None
    error: ErrorInfo | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"event name must be a non-empty string, not {self.name!r}")
        if self.timestamp.tzinfo is None:
            raise ValueError(
                f"event timestamp {self.timestamp.isoformat()} has no time zone; use a UTC datetime"
            )
        if self.attributes is not _EMPTY:
            object.__setattr__(self, "attributes", freeze_attributes(self.attributes))
        if self.outcome is not None and not isinstance(self.outcome, Outcome):
            object.__setattr__(self, "outcome", Outcome(self.outcome))

    def __hash__(self) -> int:
        return hash(self.event_id)

    def evolve(self, **changes: Any) -> Event:
        """Return a copy with ``changes`` applied (a new event keeps its own id unless given)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The event as plain JSON-safe data, tagged with :data:`SCHEMA_VERSION`."""
        return {
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "event_id": self.event_id,
            "run_id": self.run_id,
            "environment": self.environment.to_dict(),
            "timestamp": self.timestamp.isoformat(),
            "attributes": _thaw(self.attributes),
            "outcome": None if self.outcome is None else self.outcome.value,
            "duration": self.duration,
            "exit_code": self.exit_code,
            "error": None if self.error is None else self.error.to_dict(),
        }

    def to_json(self) -> str:
        import json  # here: a wrapped job's start-up never needs it

        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Event:
        """Rebuild an event from :meth:`to_dict` output.

        Raises:
            ValueError: the data has another schema version or misses a field.
        """
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(
                f"event schema_version {version!r} is not supported (this is version "
                f"{SCHEMA_VERSION})"
            )
        try:
            error = data.get("error")
            outcome = data.get("outcome")
            return cls(
                name=data["name"],
                event_id=data["event_id"],
                run_id=data["run_id"],
                environment=EnvironmentInfo.from_dict(data["environment"]),
                timestamp=datetime.fromisoformat(data["timestamp"]),
                attributes=data.get("attributes") or _EMPTY,
                outcome=None if outcome is None else Outcome(outcome),
                duration=data.get("duration"),
                exit_code=data.get("exit_code"),
                error=None if error is None else ErrorInfo.from_dict(error),
            )
        except KeyError as exc:
            raise ValueError(f"event data misses the field {exc.args[0]!r}") from None

    @classmethod
    def from_json(cls, text: str | bytes) -> Event:
        import json

        return cls.from_dict(json.loads(text))
