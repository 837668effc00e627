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
        routed = _routed()
        if routed is not None:
            return getattr(routed, name)
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
# (logger, still wanted?): the last one still wanted takes the library's lines.
_routes: list[tuple[Any, Callable[[], bool]]] = []
_lock = threading.Lock()

logger: Any = _LazyLogger()


def before_first_use(hook: Callable[[], None]) -> None:
    """Call ``hook`` just before the first line is logged (at once if one was already)."""
    with _lock:
        if logger._logger is None:
            _before_first_use.append(hook)
            return
    hook()


def route(target: Any, alive: Callable[[], bool] = lambda: True) -> Callable[[], None]:
    """Send the library's own lines to the structlog logger ``target`` until undone.

    Returns the function that undoes it. ``alive`` ends the route too once it returns false
    (an adapter attached to a bus that closed without detaching it). Routes stack: the
    latest one that is not undone gets the lines.
    """
    entry = (target, alive)
    with _lock:
        _routes.append(entry)

    def undo() -> None:
        with _lock:
            _drop(entry)

    return undo


def _drop(entry: tuple[Any, Callable[[], bool]]) -> None:
    for i in range(len(_routes) - 1, -1, -1):
        if _routes[i] is entry:
            del _routes[i]
            return


def _routed() -> Any:
    """The logger the library's lines go to now, or ``None`` for its own."""
    while _routes:
        entry = _routes[-1]
        if entry[1]():
            return entry[0]
        with _lock:
            _drop(entry)
    return None


def say(message: str) -> bool:
    """Log one of the wrapper's messages to the routed logger; False when there is none.

    ``lifecycle run`` writes its messages (``error: ...``) as console text, unless a route
    asks for lines in its shape.
    """
    routed = _routed()
    if routed is None:
        return False
    routed.error(message.removeprefix("error: "))
    return True


def result_fields(result: HandlerResult) -> dict[str, Any]:
    """The fields every log line about one handler result has (lifecycle-structlog's too)."""
    fields: dict[str, Any] = {
        "handler": result.handler,
        "signal": result.signal,
        "run_id": result.run_id,
        "status": result.status.value,
        "duration": round(result.duration, 6),
    }
    if result.background:
        fields["background"] = True
    return fields


def log_failure(result: HandlerResult, **context: Any) -> None:
    """Log a handler result that is not ``ok``, with its traceback where there is one."""
    fields = {**result_fields(result), **context}
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
