"""The library's own log: structlog, never configured by us."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from ._results import HandlerResult

logger = structlog.get_logger("lifecycle")


def log_failure(result: HandlerResult, **context: Any) -> None:
    """Log a handler result that is not ``ok``, with its traceback where there is one."""
    fields: dict[str, Any] = {
        "handler": result.handler,
        "signal": result.signal,
        "run_id": result.run_id,
        "status": result.status.value,
        "duration": round(result.duration, 6),
        **context,
    }
    if result.background:
        fields["background"] = True
    if result.exception is not None:
        fields["exc_info"] = result.exception
        fields["error"] = f"{type(result.exception).__name__}: {result.exception}"
    message = {
        "error": "handler failed",
        "timeout": "handler timed out",
        "cancelled": "handler cancelled",
    }.get(result.status.value, "handler failed")
    logger.error(message, **fields)
