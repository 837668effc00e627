"""Console lines that are safe on a terminal: untrusted text escaped, one write per line.

A job's name, its labels, an error message or a configuration value can carry control
characters (``lifecycle run --name $'\\e]0;title\\a'``); written raw, they would retitle,
recolour or rewrite the user's terminal. Every line ``lifecycle`` renders for a console goes
through :func:`escape`, which spells such characters as Python escapes (``\\x1b``); JSON
lines are escaped by the encoder already.
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from collections.abc import Mapping, MutableMapping

LEVEL_WIDTH = 9
"""Levels are padded as structlog's console renderer pads them (``[info     ]``)."""

EVENT_WIDTH = 30
"""The event name's column width, as structlog's console renderer pads it."""

MULTILINE_KEYS = frozenset({"exception", "stack"})
"""Fields that are tracebacks: their line breaks are kept, other control characters escaped."""

VALUE_LIMIT = 4096
"""The most characters a log line shows of one value; an event's attribute can be megabytes."""

TRACEBACK_LIMIT = 16384
"""The most characters a log line shows of a traceback (chained ones run to a few pages)."""


def escape(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with every unprintable character spelled as its Python escape.

    Control characters (C0, DEL, C1), bidirectional overrides, line and paragraph separators
    become ``\\x1b``, ``\\u202e``..., so text from a job, a file or the network cannot
    drive the terminal. ``keep_newlines`` keeps ``\\n`` and ``\\t`` (for tracebacks).

    Adapters and commands that write console lines use it too (``lifecycle runs``,
    ``lifecycle listen``, lifecycle-structlog's console rendering).

    .. versionadded:: 0.2
    """
    if text.isprintable():
        return text
    return "".join(
        ch
        if ch.isprintable() or (keep_newlines and ch in "\n\t")
        else ch.encode("unicode_escape").decode("ascii")
        for ch in text
    )


def shorten(text: str, limit: int | None = VALUE_LIMIT) -> str:
    """``text`` cut to at most ``limit`` characters, its middle replaced by a marker.

    The marker says how much was cut (``...[895904 characters cut]...``); the head and the
    tail are kept, where a traceback has its first frames and its message, and an output
    tail its last lines. Shortening a shortened text changes nothing. ``None``: no limit.

    .. versionadded:: 0.2
    """
    if limit is None or len(text) <= limit:
        return text
    cut = len(text) - limit
    while True:  # the marker's own length depends on the number it shows
        marker = f"...[{cut} characters cut]..."
        kept = max(limit - len(marker), 0)
        if len(text) - kept == cut:
            break
        cut = len(text) - kept
    head = (kept + 1) // 2
    return text[:head] + marker + text[len(text) - (kept - head) :]


def bound_fields(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """A structlog processor: no value of a line longer than :data:`VALUE_LIMIT` characters.

    Longer strings are shortened (tracebacks to :data:`TRACEBACK_LIMIT`), and other values
    whose ``repr`` is longer become their shortened ``repr``. Place it before a console
    renderer; the event itself keeps everything.
    """
    for key, value in event_dict.items():
        limit = TRACEBACK_LIMIT if key in MULTILINE_KEYS else VALUE_LIMIT
        if isinstance(value, str):
            if len(value) > limit:
                event_dict[key] = shorten(value, limit)
        elif isinstance(value, (dict, list, tuple, set, frozenset, bytes)):
            # Only containers and bytes can be long: numbers and the like are left alone.
            text = repr(value)
            if len(text) > limit:
                event_dict[key] = shorten(text, limit)
    return event_dict


def timestamp() -> str:
    """Now, as the console lines show it: ISO 8601 in UTC (``2026-11-29T11:12:57.216401Z``)."""
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _value(value: Any) -> str:
    return escape(shorten(value if isinstance(value, str) else repr(value)))


def render(level: str, event: str, fields: Mapping[str, Any]) -> str:
    """One console line in structlog's console layout, every part escaped."""
    pairs = " ".join(f"{key}={_value(fields[key])}" for key in sorted(fields))
    return f"{timestamp()} [{level:<{LEVEL_WIDTH}}] {escape(event):<{EVENT_WIDTH}} {pairs}".rstrip()


def write_line(line: str, file: TextIO | None = None) -> None:
    """Write ``line`` and its newline in one write, so that no other output splits it."""
    stream = sys.stderr if file is None else file
    stream.write(line + "\n")
    stream.flush()


def escape_fields(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """A structlog processor: escape every string field (tracebacks keep their line breaks).

    Place it after the processors that add fields and before a console renderer.
    Non-string values are rendered with ``repr``, which escapes already; JSON needs none.

    .. versionadded:: 0.2
    """
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = escape(value, keep_newlines=key in MULTILINE_KEYS)
    return event_dict


def log_to_stderr() -> None:
    """Configure structlog to write the console lines ``lifecycle run`` writes, on stderr.

    ISO 8601 UTC timestamps (one format for every line of a command), every string value
    escaped (:func:`escape_fields`), tracebacks escaped with their line breaks kept, one write
    per line; written to whatever ``sys.stderr`` is when a line is logged. Nothing changes if
    structlog is configured already (by a handler module, say): that configuration wins.
    Commands that packages add (``lifecycle listen``, ``lifecycle watch``) call it too, so
    that every ``lifecycle`` command logs alike.

    .. versionadded:: 0.2
    """
    from io import StringIO

    import structlog

    if structlog.is_configured():
        return

    def plain_traceback(sio: Any, exc_info: Any) -> None:
        # An exception's message is text from anywhere: escaped, line breaks kept.
        buffer = StringIO()
        structlog.dev.plain_traceback(buffer, exc_info)
        sio.write(escape(shorten(buffer.getvalue(), TRACEBACK_LIMIT), keep_newlines=True))

    def stderr_logger(*_args: Any) -> Any:
        # Looked up at each logger's creation, not once: tests and callers swap sys.stderr.
        return structlog.WriteLogger(sys.stderr)

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.StackInfoRenderer(),
            structlog.dev.set_exc_info,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            bound_fields,
            escape_fields,
            structlog.dev.ConsoleRenderer(colors=False, exception_formatter=plain_traceback),
        ],
        # One write per line: a line is never split by a command's own output.
        logger_factory=stderr_logger,
    )
