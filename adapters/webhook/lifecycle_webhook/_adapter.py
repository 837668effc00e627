"""The webhook handle and ``attach``: options checked once, events filtered and delivered."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import httpx
import structlog

from lifecycle import Attachment

from ._delivery import Policy, Request, post, seconds
from ._exceptions import WebhookDeliveryError
from ._fields import DEFAULT_TEMPLATE, Selection, check_template
from ._formats import FORMATS, LABEL_NAME, PAGERDUTY_URL, SEVERITIES, FormatOptions
from ._order import Sequencer
from ._redact import Redactor, log_filter

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from lifecycle import Event, EventBus

    from ._formats import Format

__all__ = ["VERSION", "WebhookAdapter", "attach"]

VERSION = "0.1.0"

logger = structlog.get_logger("lifecycle.webhook")


class WebhookAdapter(Attachment):
    """The handle :func:`attach` returns; ``detach()`` unsubscribes.

    Attributes:
        target: the endpoint as shown in logs and errors (secrets masked).
        format: the format's name.
    """

    def __init__(
        self,
        format: Format,
        *,
        headers: Mapping[str, str],
        redactor: Redactor,
        selection: Selection,
        policy: Policy,
    ) -> None:
        super().__init__()
        self._format = format
        self._headers = {"User-Agent": f"lifecycle-webhook/{VERSION}", **headers}
        self._redactor = redactor
        self.target = redactor.target
        self.format = format.name
        self.selection = selection
        self.signals = selection.signals
        self.outcomes = selection.outcomes
        self.policy = policy
        self._sequencer = Sequencer(patience=policy.deadline)

    def __repr__(self) -> str:
        return f"<WebhookAdapter {self.target} format={self.format!r}>"

    def wants(self, event: Event) -> bool:
        """Whether ``event`` is one to notify about."""
        return self.selection.wants(event)

    def render(self, event: Event) -> bytes | None:
        """The request body for ``event``, or None when the format sends nothing for it.

        A template that fails on this event (``{attributes[rows]}`` on a run without
        ``rows``, say) falls back to the summary, with a warning.

        .. versionchanged:: 0.2 None for an event the format has no word for.
        """
        request = self._format.request(event)
        return None if request is None else request.body

    async def deliver(self, event: Event, *, deadline: float | None = None) -> None:
        """POST ``event`` if it is wanted, retrying.

        Args:
            deadline: when to give up, on ``anyio.current_time()``'s clock; by default
                the ``deadline`` option's seconds from now.

        Raises:
            WebhookDeliveryError: the last attempt failed, a non-retryable status came
                back, or the deadline left no time for another attempt.
        """
        if not self.wants(event):
            return
        request: Request | None = self._format.request(event)
        if request is None:
            return
        failure = await post(
            request,
            event,
            policy=self.policy,
            headers=self._headers,
            redactor=self._redactor,
            deadline=deadline,
        )
        if failure is not None:
            logger.error(
                "webhook delivery failed",
                webhook=self.target,
                run_id=event.run_id,
                signal=event.name,
                attempts=failure.attempts,
                status=failure.status,
                reason=failure.reason,
            )
            # Raised outside any ``except``: no httpx exception (whose text and frames may
            # hold the URL) travels along as context.
            raise WebhookDeliveryError(
                self.target, failure.attempts, failure.reason, failure.status
            )

    async def _deliver_in_order(self, event: Event) -> None:
        # The bus's background handler: after the deliveries of this environment's earlier
        # events, within one deadline counted from now, waiting included.
        deadline = anyio.current_time() + self.policy.deadline
        async with self._sequencer.turn(event):
            await self.deliver(event, deadline=deadline)


def _parse_url(url: str | None, format: type[Format]) -> httpx.URL:
    if url is None and not format.needs_url:
        url = PAGERDUTY_URL
    if not isinstance(url, str) or not url:
        raise TypeError(f"url must be a non-empty string (format {format.name!r} needs one)")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        raise ValueError("url is not a valid URL") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(
            f"url must be an http:// or https:// URL with a host, not a {parsed.scheme or 'relative'} URL"
        )
    return parsed


def _format_options(
    format: type[Format],
    *,
    template: str,
    routing_key: str | None,
    severity: str,
    dedup_key: str,
    alert_labels: Mapping[str, str] | None,
    expires: float,
) -> FormatOptions:
    check_template(template)
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}, not {severity!r}")
    if format.name == "pagerduty":
        if not isinstance(routing_key, str) or not routing_key:
            raise ValueError(
                "format 'pagerduty' needs routing_key: the integration key of an Events API v2 "
                "integration of the PagerDuty service to alert"
            )
        check_template(dedup_key, "dedup_key")
    elif routing_key is not None:
        raise ValueError(f"routing_key is for format 'pagerduty', not {format.name!r}")
    labels = dict(alert_labels or {})
    for name, value in labels.items():
        if not isinstance(name, str) or not LABEL_NAME.match(name):
            raise ValueError(f"alert_labels: {name!r} is not a label name ([A-Za-z_][A-Za-z0-9_]*)")
        if not isinstance(value, str):
            raise TypeError(f"alert_labels: the value of {name!r} must be a string, not {value!r}")
    return FormatOptions(
        template=template,
        severity=severity,
        dedup_key=dedup_key,
        routing_key=routing_key,
        alert_labels=labels,
        expires=seconds("expires", expires),
    )


def attach(
    bus: EventBus,
    *,
    url: str | None = None,
    format: str = "json",
    template: str = DEFAULT_TEMPLATE,
    headers: Mapping[str, str] | None = None,
    signals: Iterable[str] | None = None,
    outcomes: Iterable[str] | None = None,
    labels: Iterable[str] = (),
    routing_key: str | None = None,
    severity: str = "error",
    dedup_key: str = "lifecycle/{environment}",
    alert_labels: Mapping[str, str] | None = None,
    expires: float = 7 * 86400.0,
    attempts: int = 5,
    timeout: float = 10.0,
    deadline: float = 25.0,
    backoff: float = 0.5,
    backoff_max: float = 30.0,
    jitter: bool = True,
) -> WebhookAdapter:
    """Notify an endpoint of lifecycle events of ``bus``.

    Args:
        bus: the bus to observe.
        url: the endpoint; credentials and tokens in it are never logged. Optional for
            ``"pagerduty"`` (PagerDuty's Events API v2 endpoint).
        format: ``"json"`` posts ``event.to_json()``; ``"slack"`` posts
            ``{"text": template}`` (Slack, Mattermost and others), its values escaped;
            ``"teams"`` an Adaptive Card for a Teams Workflows webhook; ``"pagerduty"``
            an Events API v2 trigger or resolve; ``"alertmanager"`` alerts for
            Alertmanager's ``/api/v2/alerts``; ``"healthchecks"`` and ``"cronitor"`` the
            pings of those cron monitors.
        template: a ``str.format`` template over :func:`template_fields`: the message of
            ``"slack"``, the title of ``"teams"``, the summary of the alert formats.
        headers: extra request headers (an ``Authorization``, say); never logged.
        signals: the signals to notify about; by default the format's own (``exited``
            for messages, the watchdog's verdicts too for alerts, ``starting`` too for pings).
        outcomes: notify only about runs that ended so (``NOT_SUCCEEDED`` for trouble);
            events without an outcome (``starting``) always pass. Alerts need ``succeeded``
            to resolve.
        labels: only environments that carry all these labels.
        routing_key: ``"pagerduty"``: the integration key; secret, never logged.
        severity: ``"pagerduty"`` and ``"alertmanager"``: the severity of a failure
            (``critical``, ``error``, ``warning``, ``info``); an overdue run is a warning.
        dedup_key: ``"pagerduty"``: a template naming the alert that a success resolves.
        alert_labels: ``"alertmanager"``: labels added to every alert (``team``, say).
        expires: ``"alertmanager"``: seconds a firing alert lasts without a success.
        attempts: attempts at most, the first included.
        timeout: seconds one attempt may take, response included.
        deadline: seconds all attempts and waits may take together. The default fits
            inside the 30 s an environment's blocking runner waits for background handlers
            at exit (``exit_grace``); raise both together.
        backoff: seconds to wait after the first failed attempt; doubled after each,
            up to ``backoff_max``, and jittered down by up to half. A ``Retry-After``
            from a 429 or 503 answer is honoured instead.

    The subscription is ``background`` (the run never waits for a webhook) with a bus
    timeout a little past ``deadline``.

    Raises:
        ValueError, TypeError: an option is out of range, the URL is not http(s), a
            template uses an unknown field, or the format lacks what it needs.

    .. versionchanged:: 0.2 formats ``teams``, ``pagerduty``, ``alertmanager``,
       ``healthchecks`` and ``cronitor``; Slack text escaped.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(map(repr, FORMATS))}, not {format!r}")
    kind = FORMATS[format]
    parsed = _parse_url(url, kind)
    selection = Selection.checked(kind.signals if signals is None else signals, outcomes)
    options = _format_options(
        kind,
        template=template,
        routing_key=routing_key,
        severity=severity,
        dedup_key=dedup_key,
        alert_labels=alert_labels,
        expires=expires,
    )
    header_map = dict(headers or {})
    for name, value in header_map.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(f"headers must map strings to strings; header {name!r} does not")
    redactor = Redactor(parsed, header_map, [routing_key] if routing_key else [])
    policy = Policy.checked(
        attempts=attempts,
        timeout=timeout,
        deadline=deadline,
        backoff=backoff,
        backoff_max=backoff_max,
        jitter=jitter,
    )
    adapter = WebhookAdapter(
        kind(parsed, options, redactor.target),
        headers=header_map,
        redactor=redactor,
        selection=selection,
        policy=policy,
    )
    log_filter.redactors.add(redactor)
    adapter.add(lambda: log_filter.redactors.discard(redactor))
    labels = tuple(labels)
    try:
        for signal in adapter.signals:
            # Inline, so in emit order: the ticket that keeps one environment's deliveries
            # in that order.
            adapter.add(
                bus.subscribe(
                    signal,
                    adapter._sequencer.issue,
                    inline=True,
                    labels=labels,
                    name=f"lifecycle_webhook:{adapter.target} (order)",
                )
            )
            adapter.add(
                bus.subscribe(
                    signal,
                    adapter._deliver_in_order,
                    background=True,
                    timeout=policy.deadline + policy.timeout,
                    labels=labels,
                    name=f"lifecycle_webhook:{adapter.target}",
                )
            )
    except BaseException:
        adapter.detach()
        raise
    return adapter
