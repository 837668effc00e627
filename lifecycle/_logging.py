"""The library's own log: structlog, never configured by us, imported at the first line logged.

Importing structlog is a good part of a short command's start-up (``lifecycle run -- true``
logs nothing of its own), so ``logger`` is a stand-in that imports it when a line is
first logged.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from ._exceptions import AbandonedThreadsError

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._results import HandlerResult


class _LazyLogger:
    """``structlog.get_logger("lifecycle")``, created when it is first used."""

    __slots__ = ("_logger",)

    def __init__(self) -> None:
        self._logger: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._logger is None:
            with _lock:  # worker threads log too
                if self._logger is None:
                    import structlog

                    for hook in _before_first_use:
                        hook()
                    _before_first_use.clear()
                    self._logger = structlog.get_logger("lifecycle")
        return getattr(self._logger, name)


_before_first_use: list[Callable[[], None]] = []
_lock = threading.Lock()

logger: Any = _LazyLogger()


def before_first_use(hook: Callable[[], None]) -> None:
    """Call ``hook`` just before the first line is logged (at once if one was already)."""
    with _lock:
        if logger._logger is None:
            _before_first_use.append(hook)
            return
    hook()


def log_failure(result: HandlerResult, **context: Any) -> None:
    """Log a handler result that is not ``ok``, with its traceback where there is one."""
    if isinstance(result.exception, AbandonedThreadsError):
        return  # refused, not run: the worker pool logs that once per handler, not per call
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
