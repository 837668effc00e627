"""What each format sends for an event: the URL, the body and its media type.

Every format decides per event: a chat message for each event it is given, an alert that
fires or resolves (PagerDuty, Alertmanager), a ping that says started, succeeded or failed
(healthchecks.io, Cronitor), or nothing at all (``None``) for an event it has no word for.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from lifecycle import EXITED, MISSED, OVERDUE, RECOVERED, STARTING, Outcome

from ._delivery import Request
from ._fields import escaped, render_template, template_fields

if TYPE_CHECKING:
    from collections.abc import Mapping

    import httpx

    from lifecycle import Event

__all__ = [
    "FORMATS",
    "LABEL_NAME",
    "SEVERITIES",
    "Format",
    "FormatOptions",
    "slack_escape",
    "teams_escape",
]

SEVERITIES = ("critical", "error", "warning", "info")
"""PagerDuty's severities (Events API v2), also the ``severity`` label of Alertmanager alerts."""

LABEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
"""What Alertmanager (like Prometheus) accepts as a label name."""

PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"

_ALERTS_PATH = "/api/v2/alerts"
# PagerDuty's documented limits: summary 1024 characters, dedup_key 255.
_PD_SUMMARY_MAX = 1024
_PD_DEDUP_MAX = 255
# Cronitor keeps up to 2000 characters of a telemetry event's message.
_CRONITOR_MESSAGE_MAX = 2000


@dataclass(frozen=True)
class FormatOptions:
    """The options of :func:`~lifecycle_webhook.attach` that formats read."""

    template: str
    severity: str = "error"
    dedup_key: str = "lifecycle/{environment}"
    routing_key: str | None = None
    alert_labels: Mapping[str, str] = field(default_factory=dict)
    expires: float = 7 * 86400.0


class Format:
    """One way of telling an endpoint about events."""

    name: ClassVar[str]
    signals: ClassVar[tuple[str, ...]] = (EXITED,)
    """The signals notified about when ``signals`` is not given."""
    needs_url: ClassVar[bool] = True

    def __init__(self, url: httpx.URL, options: FormatOptions, target: str) -> None:
        self.url = url
        self.options = options
        self.target = target

    def request(self, event: Event) -> Request | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _text(self, fields: Mapping[str, Any], event: Event) -> str:
        return render_template(
            self.options.template, fields, target=self.target, run_id=event.run_id
        )

    def _json(self, body: Any, url: httpx.URL | None = None) -> Request:
        return Request(url or self.url, json.dumps(body, ensure_ascii=False).encode())


def slack_escape(text: str) -> str:
    """``text`` made inert for Slack: ``&``, ``<`` and ``>`` as the entities Slack asks for.

    Without it, ``<!channel>`` in a job's output pings the whole channel and
    ``<https://x|click>`` shows a link whose target is hidden.
    """
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_TEAMS_MARKDOWN = re.compile(r"([\\`*_\[\]~])")


def teams_escape(text: str) -> str:
    """``text`` with the Markdown an Adaptive Card's TextBlock or FactSet reads backslashed.

    A ``[click](https://x)`` in a run's error would otherwise render as a disguised link.
    """
    return _TEAMS_MARKDOWN.sub(r"\\\1", text)


class Json(Format):
    """The event's own JSON form (``Event.from_json`` reads it back)."""

    name = "json"

    def request(self, event: Event) -> Request:
        return Request(self.url, event.to_json().encode())


class Slack(Format):
    """``{"text": template}`` with every value from the run escaped; Slack, Mattermost and others."""

    name = "slack"

    def request(self, event: Event) -> Request:
        fields = escaped(template_fields(event), slack_escape)
        return self._json({"text": self._text(fields, event)})


def _trouble(event: Event) -> bool:
    return event.outcome is not None and event.outcome is not Outcome.SUCCEEDED


class Teams(Format):
    """A Microsoft Teams Workflows message: one Adaptive Card (schema 1.4).

    The title is the template, shown as a plain text run (no Markdown, so nothing in it
    can become a link); the facts are Markdown-escaped; the output tail is monospace text.
    """

    name = "teams"

    def request(self, event: Event) -> Request:
        fields = template_fields(event)
        title = self._text(fields, event)
        if event.name in (MISSED, OVERDUE):
            color = "Warning"
        elif _trouble(event):
            color = "Attention"
        elif event.outcome is Outcome.SUCCEEDED:
            color = "Good"
        else:
            color = "Default"
        facts = [
            ("Environment", fields["environment"]),
            ("Outcome", fields["outcome"] or fields["signal"]),
            ("Host", fields["host"]),
            ("Duration", f"{event.duration:.1f} s" if event.duration is not None else ""),
            ("Exit code", str(fields["exit_code"])),
            ("Error", fields["error"]),
            ("Labels", fields["labels"]),
            ("Run", fields["run_id"]),
        ]
        body: list[dict[str, Any]] = [
            {
                "type": "RichTextBlock",
                "inlines": [
                    {
                        "type": "TextRun",
                        "text": title,
                        "weight": "Bolder",
                        "size": "Medium",
                        "color": color,
                    }
                ],
            },
            {
                "type": "FactSet",
                "facts": [
                    {"title": name, "value": teams_escape(value)} for name, value in facts if value
                ],
            },
        ]
        if fields["output_tail"]:
            body.append(
                {
                    "type": "RichTextBlock",
                    "inlines": [
                        {"type": "TextRun", "text": fields["output_tail"], "fontType": "Monospace"}
                    ],
                }
            )
        card = {
            "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
            "type": "AdaptiveCard",
            "version": "1.4",
            "msteams": {"width": "Full"},
            "body": body,
        }
        return self._json(
            {
                "type": "message",
                "attachments": [
                    {
                        "contentType": "application/vnd.microsoft.card.adaptive",
                        "contentUrl": None,
                        "content": card,
                    }
                ],
            }
        )


Action = Literal["trigger", "resolve"]

_ALERTS = ("failed", "missed", "overdue")


def _alert_states(event: Event) -> dict[str, Action]:
    """What ``event`` says about a run's three alerts: failed, missed, overdue.

    A run that ended is no longer overdue and was not missed; it fires ``failed`` unless it
    succeeded. ``recovered`` takes back the ``lost`` verdict, so it resolves ``failed``.
    """
    if event.name == EXITED:
        return {
            "failed": "trigger" if _trouble(event) else "resolve",
            "missed": "resolve",
            "overdue": "resolve",
        }
    if event.name == MISSED:
        return {"missed": "trigger"}
    if event.name == OVERDUE:
        return {"overdue": "trigger"}
    if event.name == RECOVERED:
        return {"failed": "resolve"}
    if event.name == STARTING:
        return {"missed": "resolve"}
    return {}


def _details(fields: Mapping[str, Any]) -> dict[str, Any]:
    names = ("signal", "environment", "labels", "host", "run_id", "outcome", "duration")
    details = {name: fields[name] for name in names if fields[name] not in ("", None)}
    for name in ("exit_code", "error", "output_tail"):
        if fields[name] != "":
            details[name] = fields[name]
    return details


class PagerDuty(Format):
    """PagerDuty Events API v2: trigger on trouble, resolve on the next success.

    One alert per environment (``dedup_key``, by default ``lifecycle/{environment}``):
    a failed, timed-out, lost or missed run triggers it (repeats only add to it), a
    succeeded run or ``environment.recovered`` resolves it.
    """

    name = "pagerduty"
    signals = (EXITED, MISSED, OVERDUE, RECOVERED)
    needs_url = False

    def request(self, event: Event) -> Request | None:
        states = _alert_states(event)
        action: Action | None
        if "trigger" in states.values():
            action = "trigger"
        elif event.name in (EXITED, RECOVERED):
            action = "resolve"
        else:
            action = None  # a start or a heartbeat says nothing about the incident
        if action is None:
            return None
        fields = template_fields(event)
        dedup_key = render_template(
            self.options.dedup_key, fields, target=self.target, run_id=event.run_id
        )[:_PD_DEDUP_MAX]
        body: dict[str, Any] = {
            "routing_key": self.options.routing_key,
            "event_action": action,
            "dedup_key": dedup_key,
        }
        if action == "trigger":
            severity = "warning" if event.name == OVERDUE else self.options.severity
            payload: dict[str, Any] = {
                "summary": self._text(fields, event)[:_PD_SUMMARY_MAX] or fields["summary"],
                "source": fields["host"],
                "severity": severity,
                "timestamp": fields["timestamp"],
                "component": fields["environment"],
                "class": fields["outcome"] or event.name.rpartition(".")[2],
                "custom_details": _details(fields),
            }
            if fields["labels"]:
                payload["group"] = fields["labels"]
            body["payload"] = payload
            body["client"] = "lifecycle-bus"
        return self._json(body)


class Alertmanager(Format):
    """Prometheus Alertmanager's ``POST /api/v2/alerts``.

    Three alerts per environment, ``LifecycleRunFailed``, ``LifecycleRunMissed`` and
    ``LifecycleRunOverdue``, labelled ``lifecycle_environment`` and ``severity`` (plus
    ``alert_labels``). Firing, an alert's ``endsAt`` is ``expires`` after the event, so a
    failure stays firing until the next success (not Alertmanager's 5 minute default);
    resolving, ``endsAt`` is the event's time.
    """

    name = "alertmanager"
    signals = (EXITED, MISSED, OVERDUE, RECOVERED)

    def __init__(self, url: httpx.URL, options: FormatOptions, target: str) -> None:
        if not url.path.rstrip("/").endswith(_ALERTS_PATH):
            url = url.copy_with(path=url.path.rstrip("/") + _ALERTS_PATH)
        super().__init__(url, options, target)

    def request(self, event: Event) -> Request | None:
        states = _alert_states(event)
        if not states:
            return None
        fields = template_fields(event)
        text = self._text(fields, event)
        when = event.timestamp
        alerts = []
        for alert, action in states.items():
            severity = "warning" if alert == "overdue" else self.options.severity
            labels = {
                **self.options.alert_labels,
                "alertname": f"LifecycleRun{alert.capitalize()}",
                "lifecycle_environment": fields["environment"],
                "severity": severity,
            }
            annotations = {name: str(value) for name, value in _details(fields).items()}
            annotations["summary"] = text
            ends = when + timedelta(seconds=self.options.expires) if action == "trigger" else when
            alerts.append(
                {
                    "labels": labels,
                    "annotations": annotations,
                    "startsAt": when.isoformat(),
                    "endsAt": ends.isoformat(),
                }
            )
        return self._json(alerts)


def run_uuid(run_id: str) -> str:
    """A run id as the canonical UUID healthchecks.io asks for (``rid``).

    lifecycle's run ids are UUIDs already; any other id maps to a stable UUID of its own.
    """
    try:
        return str(uuid.UUID(run_id))
    except ValueError:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"lifecycle-run:{run_id}"))


def _exit_status(event: Event) -> int | None:
    """The exit status to report, when it agrees with the outcome (0 only on success)."""
    code = event.exit_code
    if code is None or not 0 <= code <= 255:
        return None
    if (code == 0) != (event.outcome is Outcome.SUCCEEDED):
        return None
    return code


class Healthchecks(Format):
    """healthchecks.io's ping URLs: ``/start``, then ``/<exit status>`` (or ``/fail``).

    ``?rid=`` carries the run (as a UUID) so that overlapping runs are told apart, and the
    body of the end ping is the run's output tail (the summary if there is none).
    """

    name = "healthchecks"
    signals = (STARTING, EXITED)

    def request(self, event: Event) -> Request | None:
        fields = template_fields(event)
        if event.name == STARTING:
            suffix, body = "/start", ""
        elif event.name == EXITED:
            status = _exit_status(event)
            if status is not None:
                suffix = f"/{status}"
            else:
                suffix = "" if event.outcome is Outcome.SUCCEEDED else "/fail"
            body = fields["output_tail"] or self._text(fields, event)
        else:
            return None
        path = self.url.path.rstrip("/") + suffix
        url = self.url.copy_with(path=path).copy_set_param("rid", run_uuid(event.run_id))
        return Request(url, body.encode(), "text/plain; charset=utf-8")


class Cronitor(Format):
    """Cronitor's telemetry URL: ``?state=run``, then ``complete`` or ``fail``.

    ``series`` carries the run, ``status_code`` the exit status, ``host`` the host, and
    ``message`` the template's text followed by the output tail (its end, when long).
    """

    name = "cronitor"
    signals = (STARTING, EXITED)

    def request(self, event: Event) -> Request | None:
        fields = template_fields(event)
        params: dict[str, str] = {"series": event.run_id, "host": fields["host"]}
        if event.name == STARTING:
            params["state"] = "run"
        elif event.name == EXITED:
            params["state"] = "fail" if _trouble(event) else "complete"
            if event.exit_code is not None:
                params["status_code"] = str(event.exit_code)
            message = self._text(fields, event)
            if fields["output_tail"]:
                message = f"{message}\n{fields['output_tail']}"
            if len(message) > _CRONITOR_MESSAGE_MAX:
                message = "…" + message[-(_CRONITOR_MESSAGE_MAX - 1) :]
            params["message"] = message
        else:
            return None
        url = self.url
        for name, value in params.items():
            url = url.copy_set_param(name, value)
        return Request(url, b"", "text/plain; charset=utf-8")


FORMATS: dict[str, type[Format]] = {
    format.name: format
    for format in (Json, Slack, Teams, PagerDuty, Alertmanager, Healthchecks, Cronitor)
}
"""Every format by its name, as ``attach(format=...)`` takes it."""
