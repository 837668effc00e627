"""The library's own log: structlog, never configured by us, imported at the first line logged.

Importing structlog is a good part of a short command's start-up (``lifecycle run -- true``
logs nothing of its own), so ``logger`` is a stand-in that imports it when a line is
first logged.

An adapter that renders lines of its own (lifecycle-structlog's ``render="json"``) may
:func:`route` the library's lines to its logger, so that a log is one stream in one shape:
a JSON log shipper would drop exactly the warnings an operator needs if they stayed console
text.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._results import HandlerResult


class _LazyLogger:
    """``structlog.get_logger("lifecycle")``, created when it is first used."""

    __slots__ = ("_logger",)

    def __init__(self) -> None:
        self._logger: Any = None

    def __getattr__(self, name: str) -> Any:
        if _routes:
            return getattr(_routes[-1], name)
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
_routes: list[Any] = []  # the last routed logger takes the library's lines
_lock = threading.Lock()

logger: Any = _LazyLogger()


def before_first_use(hook: Callable[[], None]) -> None:
    """Call ``hook`` just before the first line is logged (at once if one was already)."""
    with _lock:
        if logger._logger is None:
            _before_first_use.append(hook)
            return
    hook()


def route(target: Any) -> Callable[[], None]:
    """Send the library's own lines to the structlog logger ``target`` until undone.

    Returns the function that undoes it. Routes stack: the latest one that is not undone
    gets the lines.
    """
    with _lock:
        _routes.append(target)

    def undo() -> None:
        with _lock:
            for i in range(len(_routes) - 1, -1, -1):
                if _routes[i] is target:
                    del _routes[i]
                    return

    return undo


def say(message: str) -> bool:
    """Log one of the wrapper's messages to the routed logger; False when there is none.

    ``lifecycle run`` writes its messages (``error: ...``) as console text, unless a route
    asks for lines in its shape.
    """
    if not _routes:
        return False
    text = message.removeprefix("error: ")
    _routes[-1].error(text)
    return True


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
        # An object, as in the adapters' lines and as ECS and OpenTelemetry expect it.
        fields["error"] = {
            "type": type(result.exception).__name__,
            "message": str(result.exception),
        }
    message = {
        "error": "handler failed",
        "timeout": "handler timed out",
        "cancelled": "handler cancelled",
    }.get(result.status.value, "handler failed")
    logger.error(message, **fields)
