"""What a message template may say about an event, and rendering it safely."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from lifecycle import EXITED, EnvironmentInfo, ErrorInfo, Event, Outcome

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

__all__ = [
    "DEFAULT_TEMPLATE",
    "NOT_SUCCEEDED",
    "Selection",
    "check_template",
    "escaped",
    "render_template",
    "template_fields",
]

DEFAULT_TEMPLATE = "{summary}"
"""The default chat message: a one-line summary of the event."""

NOT_SUCCEEDED: tuple[str, ...] = tuple(o.value for o in Outcome if o is not Outcome.SUCCEEDED)
"""Every outcome but ``succeeded``: ``outcomes=NOT_SUCCEEDED`` notifies only on trouble."""

logger = structlog.get_logger("lifecycle.webhook")

_TEMPLATE_ERRORS = (KeyError, IndexError, AttributeError, ValueError, TypeError)


@dataclass(frozen=True)
class Selection:
    """Which events to notify about: these signals, runs that ended in these outcomes.

    Shared by adapters that notify like this one (``lifecycle_apprise``).

    .. versionadded:: 0.2
    """

    signals: tuple[str, ...]
    outcomes: frozenset[Outcome] | None = None
    """None for every outcome; events without one (``starting``) always pass."""

    @classmethod
    def checked(cls, signals: Iterable[str], outcomes: Iterable[str] | None) -> Selection:
        """A selection from options as a user wrote them.

        Raises:
            TypeError, ValueError: a bare string where a list belongs, or an unknown
                outcome; the message names the option and lists the outcomes.
        """
        if isinstance(signals, str):
            raise TypeError(f"signals must be a list of signal names, not the string {signals!r}")
        if isinstance(outcomes, str):
            raise TypeError(
                f"outcomes must be a list of outcome names, not the string {outcomes!r}"
            )
        wanted: frozenset[Outcome] | None = None
        if outcomes is not None:
            known = ", ".join(o.value for o in Outcome)
            try:
                wanted = frozenset(Outcome(o) for o in outcomes)
            except ValueError as exc:
                raise ValueError(f"{exc}; outcomes are {known}") from None
        return cls(tuple(dict.fromkeys(signals)), wanted)

    def wants(self, event: Event) -> bool:
        """Whether ``event`` is one to notify about."""
        if event.name not in self.signals:
            return False
        return self.outcomes is None or event.outcome is None or event.outcome in self.outcomes


def template_fields(event: Event) -> dict[str, Any]:
    """The fields a template may use, for one event.

    ``signal``, ``environment``, ``labels`` (comma-separated), ``host``, ``pid``,
    ``run_id``, ``timestamp`` (ISO 8601), ``outcome`` (empty before exit), ``duration``
    (seconds, 0 before exit), ``exit_code`` (empty if none), ``error``, ``error_type``,
    ``error_message`` (empty if none), ``output_tail`` (the end of a command's output,
    empty if none), ``attributes`` (a dict: ``{attributes[key]}``) and ``summary``, a
    one-line description.

    .. versionchanged:: 0.2 ``output_tail``.
    """
    info = event.environment
    error = event.error
    attributes = event.to_dict()["attributes"]
    tail = attributes.get("output_tail")
    fields: dict[str, Any] = {
        "signal": event.name,
        "environment": info.name,
        "labels": ", ".join(sorted(info.labels)),
        "host": info.host,
        "pid": info.pid,
        "run_id": event.run_id,
        "timestamp": event.timestamp.isoformat(),
        "outcome": "" if event.outcome is None else event.outcome.value,
        "duration": event.duration or 0.0,
        "exit_code": "" if event.exit_code is None else event.exit_code,
        "error": "" if error is None else f"{error.type}: {error.message}",
        "error_type": "" if error is None else error.type,
        "error_message": "" if error is None else error.message,
        "output_tail": tail if isinstance(tail, str) else "",
        "attributes": attributes,
    }
    if event.outcome is None:
        summary = f"{info.name}: {event.name} on {info.host} (run {event.run_id})"
    else:
        summary = f"{info.name} {event.outcome.value} on {info.host}"
        if event.duration is not None:
            summary += f" after {event.duration:.1f} s"
        if event.exit_code is not None:
            summary += f" with exit code {event.exit_code}"
        if error is not None:
            summary += f": {error.type}: {error.message}"
        summary += f" (run {event.run_id})"
    fields["summary"] = summary
    return fields


def escaped(fields: Mapping[str, Any], escape: Callable[[str], str]) -> dict[str, Any]:
    """``fields`` with every string in them (attributes too, however deep) escaped.

    The template itself is the user's and stays as written (a deliberate ``<!here>`` in a
    Slack template still pings); only what comes from the run is made inert.
    """
    return {name: _escape_value(value, escape) for name, value in fields.items()}


def _escape_value(value: Any, escape: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return escape(value)
    if isinstance(value, dict):
        return {key: _escape_value(item, escape) for key, item in value.items()}
    if isinstance(value, list):
        return [_escape_value(item, escape) for item in value]
    return value


def _sample_event() -> Event:
    return Event(
        name=EXITED,
        run_id="0" * 32,
        environment=EnvironmentInfo("example", frozenset({"label"}), "host", 1),
        outcome=Outcome.FAILED,
        duration=1.5,
        exit_code=1,
        error=ErrorInfo("ValueError", "example"),
    )


class _AnyKey(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return ""


def check_template(template: str, option: str = "template") -> None:
    """Raise ``ValueError`` naming ``option`` if ``template`` cannot render an event.

    Its fields are :func:`template_fields`; any ``{attributes[key]}`` passes (attributes
    differ from run to run). For adapters that word their messages the same way.

    .. versionadded:: 0.2
    """
    if not isinstance(template, str):
        raise TypeError(f"{option} must be a string, not {template!r}")
    sample = template_fields(_sample_event())
    # Attributes differ from run to run: any key passes here (render_template copes at run time).
    sample["attributes"] = _AnyKey()
    try:
        template.format_map(sample)
    except _TEMPLATE_ERRORS as exc:
        names = ", ".join(sample)
        raise ValueError(
            f"{option} {template!r} cannot be rendered ({type(exc).__name__}: {exc}); "
            f"its fields are {names}"
        ) from None


def render_template(template: str, fields: Mapping[str, Any], *, target: str, run_id: str) -> str:
    """``template`` over ``fields``; the summary, with a warning, if it fails on this event.

    A template that fails on one event (``{attributes[rows]}`` on a run without ``rows``,
    say) must not cost the notification: it is worth more than its formatting.
    """
    try:
        return template.format_map(fields)
    except _TEMPLATE_ERRORS as exc:
        logger.warning(
            "webhook template failed; sending the summary instead",
            webhook=target,
            run_id=run_id,
            error=f"{type(exc).__name__}: {exc}",
        )
        summary: str = fields["summary"]
        return summary
