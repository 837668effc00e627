"""Webhook notifications for lifecycle-bus runs, with httpx.

``attach(bus, url=...)`` POSTs chosen events (by default every ``environment.exited``;
``outcomes=[...]`` narrows it, say to runs that did not succeed) as the event's JSON form
or as a Slack-compatible ``{"text": ...}`` message made from a template. Delivery runs
in the background, retries what is worth retrying (connection errors, timeouts, 429 and
5xx) with exponential backoff and jitter, honours ``Retry-After``, and gives up at a total
deadline; a delivery that failed for good is the handler's error result on the bus and a
log line, never lost silently. Secrets in the URL or the headers appear in no log line
and no error message.

.. versionadded:: 0.1
"""

from __future__ import annotations

import functools
import json
import logging
import random
import ssl
import weakref
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Literal

import anyio
import certifi
import httpx
import structlog

from lifecycle import EXITED, Attachment, EnvironmentInfo, ErrorInfo, Event, Outcome, redact_url

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from lifecycle import EventBus

__all__ = [
    "DEFAULT_TEMPLATE",
    "NOT_SUCCEEDED",
    "WebhookAdapter",
    "WebhookDeliveryError",
    "attach",
    "template_fields",
]

__version__ = "0.1.0"

DEFAULT_TEMPLATE = "{summary}"
"""The default chat message: a one-line summary of the event."""

NOT_SUCCEEDED: tuple[str, ...] = tuple(o.value for o in Outcome if o is not Outcome.SUCCEEDED)
"""Every outcome but ``succeeded``: ``outcomes=NOT_SUCCEEDED`` notifies only on trouble."""

logger = structlog.get_logger("lifecycle.webhook")

# Secrets shorter than this are not scrubbed from free text: replacing "1" or "ok"
# everywhere would garble messages, and such a value protects nothing.
_MIN_SECRET = 4
_MASK = "***"


class WebhookDeliveryError(Exception):
    """Raised by the webhook handler when a notification was not delivered after retrying.

    It becomes the handler's ``error`` result on the bus. The message names the endpoint
    (scheme, host and port only), the attempt count and the last status or error.
    """

    def __init__(self, target: str, attempts: int, reason: str, status: int | None = None) -> None:
        plural = "" if attempts == 1 else "s"
        super().__init__(
            f"webhook POST to {target} failed after {attempts} attempt{plural}: {reason}"
        )
        self.target = target
        self.attempts = attempts
        self.reason = reason
        self.status = status


class _Redactor:
    """Knows one webhook's secrets and scrubs them from text."""

    def __init__(self, url: httpx.URL, headers: Mapping[str, str]) -> None:
        # Only the origin is ever shown: a Slack-style URL carries its token in the path.
        self.target = redact_url(str(url))
        secrets = {str(url), url.raw_path.decode("ascii", "replace"), url.path}
        secrets.update((url.userinfo.decode("ascii", "replace"), url.username, url.password or ""))
        secrets.update(url.path.split("/"))
        secrets.add(url.query.decode("ascii", "replace"))
        for name, value in url.params.multi_items():
            secrets.update((value, httpx.QueryParams({name: value}).__str__().partition("=")[2]))
        for value in headers.values():
            secrets.add(value)
            secrets.update(value.split())  # "Bearer abc": the token alone, too
        self.replacements = {s: _MASK for s in secrets if len(s) >= _MIN_SECRET and s != "/"}
        # The whole URL reads better as the target than as a bare mask.
        self.replacements[str(url)] = self.target

    def scrub(self, text: str) -> str:
        return _scrub(text, self.replacements)


def _scrub(text: str, replacements: Mapping[str, str]) -> str:
    # Longest first: a URL goes whole before any of its parts can break it up.
    for secret in sorted(replacements, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, replacements[secret])
    return text


class _LogFilter(logging.Filter):
    """Scrubs the secrets of every attached webhook from the ``httpx`` logger's records.

    httpx logs every request's full URL at INFO, query tokens and all. One filter for all
    webhooks, so that the longest secret is always replaced first.
    """

    def __init__(self) -> None:
        super().__init__()
        self.redactors: weakref.WeakSet[_Redactor] = weakref.WeakSet()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.redactors:
            replacements: dict[str, str] = {}
            for redactor in list(self.redactors):
                replacements.update(redactor.replacements)
            message = record.getMessage()
            scrubbed = _scrub(message, replacements)
            if scrubbed != message:
                record.msg, record.args = scrubbed, None
        return True


_log_filter = _LogFilter()
logging.getLogger("httpx").addFilter(_log_filter)


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


def template_fields(event: Event) -> dict[str, Any]:
    """The fields a template may use, for one event.

    ``signal``, ``environment``, ``labels`` (comma-separated), ``host``, ``pid``,
    ``run_id``, ``timestamp`` (ISO 8601), ``outcome`` (empty before exit), ``duration``
    (seconds, 0 before exit), ``exit_code`` (empty if none), ``error``, ``error_type``,
    ``error_message`` (empty if none), ``attributes`` (a dict: ``{attributes[key]}``) and
    ``summary``, a one-line description.
    """
    info = event.environment
    error = event.error
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
        "attributes": event.to_dict()["attributes"],
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


@functools.cache
def _tls_context() -> ssl.SSLContext:
    # Built once per process: a new httpx client would otherwise load the CA bundle (tens
    # of milliseconds, blocking the event loop) on every delivery.
    return ssl.create_default_context(cafile=certifi.where())


class _AnyKey(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return ""


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


class WebhookAdapter(Attachment):
    """The handle :func:`attach` returns; ``detach()`` unsubscribes.

    Attributes:
        target: the endpoint as shown in logs and errors (secrets masked).
    """

    def __init__(
        self,
        url: str,
        *,
        format: Literal["json", "slack"],
        template: str,
        headers: Mapping[str, str],
        signals: tuple[str, ...],
        outcomes: frozenset[Outcome] | None,
        attempts: int,
        timeout: float,
        deadline: float,
        backoff: float,
        backoff_max: float,
        jitter: bool,
    ) -> None:
        super().__init__()
        self._url = httpx.URL(url)
        self._headers = {
            "User-Agent": f"lifecycle-webhook/{__version__}",
            "Content-Type": "application/json",
            **headers,
        }
        self._redactor = _Redactor(self._url, headers)
        self.target = self._redactor.target
        self.format = format
        self.template = template
        self.signals = signals
        self.outcomes = outcomes
        self.attempts = attempts
        self.timeout = timeout
        self.deadline = deadline
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.jitter = jitter

    def __repr__(self) -> str:
        return f"<WebhookAdapter {self.target} format={self.format!r}>"

    def wants(self, event: Event) -> bool:
        """Whether ``event`` is one to notify about."""
        if event.name not in self.signals:
            return False
        return self.outcomes is None or event.outcome is None or event.outcome in self.outcomes

    def render(self, event: Event) -> bytes:
        """The request body for ``event``.

        A template that fails on this event (``{attributes[rows]}`` on a run without
        ``rows``, say) falls back to the summary, with a warning: a notification is worth
        more than its formatting.
        """
        if self.format == "json":
            return event.to_json().encode()
        fields = template_fields(event)
        try:
            text = self.template.format_map(fields)
        except (KeyError, IndexError, AttributeError, ValueError, TypeError) as exc:
            logger.warning(
                "webhook template failed; sending the summary instead",
                webhook=self.target,
                run_id=event.run_id,
                error=f"{type(exc).__name__}: {exc}",
            )
            text = fields["summary"]
        return json.dumps({"text": text}).encode()

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (from 1)."""
        delay: float = min(self.backoff_max, self.backoff * 2 ** (attempt - 1))
        if self.jitter:
            # Spread retries of many senders apart, but never below half the backoff.
            delay *= random.uniform(0.5, 1.0)
        return delay

    async def deliver(self, event: Event) -> None:
        """POST ``event`` if it is wanted, retrying; the bus calls this in the background.

        Raises:
            WebhookDeliveryError: the last attempt failed, a non-retryable status came
                back, or the deadline left no time for another attempt.
        """
        if not self.wants(event):
            return
        body = self.render(event)
        failure = await self._post(body, event)
        if failure is not None:
            attempts, reason, status = failure
            logger.error(
                "webhook delivery failed",
                webhook=self.target,
                run_id=event.run_id,
                signal=event.name,
                attempts=attempts,
                status=status,
                reason=reason,
            )
            # Raised outside any ``except``: no httpx exception (whose text and frames may
            # hold the URL) travels along as context.
            raise WebhookDeliveryError(self.target, attempts, reason, status)

    async def _post(self, body: bytes, event: Event) -> tuple[int, str, int | None] | None:
        """Try to deliver ``body``; None when delivered, else (attempts, reason, status)."""
        deadline = anyio.current_time() + self.deadline
        async with httpx.AsyncClient(
            timeout=self.timeout, follow_redirects=False, verify=_tls_context()
        ) as client:
            attempt = 0
            while True:
                attempt += 1
                status: int | None = None
                retry_after: float | None = None
                retryable = True
                left = deadline - anyio.current_time()
                if left < self.timeout:
                    limit, reason = (
                        max(0.0, left),
                        f"no response before the deadline ({self.deadline:g} s)",
                    )
                else:
                    limit, reason = self.timeout, f"no response within {self.timeout:g} s"
                with anyio.move_on_after(limit):
                    try:
                        response = await client.post(self._url, content=body, headers=self._headers)
                    except httpx.TimeoutException:
                        pass  # the reason set above says it
                    except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                        reason = self._redactor.scrub(f"{type(exc).__name__}: {exc}")
                    except httpx.HTTPError as exc:
                        retryable = False
                        reason = self._redactor.scrub(f"{type(exc).__name__}: {exc}")
                    else:
                        status = response.status_code
                        reason = f"HTTP {status} {response.reason_phrase}".rstrip()
                        if response.is_success:
                            logger.info(
                                "webhook delivered",
                                webhook=self.target,
                                run_id=event.run_id,
                                signal=event.name,
                                attempt=attempt,
                                status=status,
                            )
                            return None
                        retryable = status == 429 or status >= 500
                        if status in (429, 503):
                            retry_after = _retry_after(response.headers.get("Retry-After"))
                if not retryable or attempt >= self.attempts:
                    return attempt, reason, status
                wait = self.delay(attempt) if retry_after is None else retry_after
                left = deadline - anyio.current_time()
                if wait >= left:
                    return attempt, f"{reason}; the next attempt would pass the deadline", status
                logger.warning(
                    "webhook attempt failed",
                    webhook=self.target,
                    run_id=event.run_id,
                    attempt=attempt,
                    attempts=self.attempts,
                    status=status,
                    reason=reason,
                    retry_in=round(wait, 3),
                )
                await anyio.sleep(wait)


def _positive(name: str, value: Any, *, zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {value!r}")
    if value < 0 or (value == 0 and not zero):
        raise ValueError(f"{name} must be greater than 0 seconds, not {value!r}")
    return float(value)


def attach(
    bus: EventBus,
    *,
    url: str,
    format: Literal["json", "slack"] = "json",
    template: str = DEFAULT_TEMPLATE,
    headers: Mapping[str, str] | None = None,
    signals: Iterable[str] = (EXITED,),
    outcomes: Iterable[str] | None = None,
    labels: Iterable[str] = (),
    attempts: int = 5,
    timeout: float = 10.0,
    deadline: float = 25.0,
    backoff: float = 0.5,
    backoff_max: float = 30.0,
    jitter: bool = True,
) -> WebhookAdapter:
    """POST lifecycle events of ``bus`` to a webhook.

    Args:
        bus: the bus to observe.
        url: the endpoint; credentials and tokens in it are never logged.
        format: ``"json"`` posts ``event.to_json()``; ``"slack"`` posts
            ``{"text": template}``, which Slack, Mattermost and others accept.
        template: a ``str.format`` template over :func:`template_fields`, for ``"slack"``.
        headers: extra request headers (an ``Authorization``, say); never logged.
        signals: the signals to notify about.
        outcomes: notify only about runs that ended so (``NOT_SUCCEEDED`` for trouble);
            events without an outcome (``starting``) always pass.
        labels: only environments that carry all these labels.
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
        ValueError, TypeError: an option is out of range, the URL is not http(s), or
            the template uses an unknown field.
    """
    if not isinstance(url, str) or not url:
        raise TypeError("url must be a non-empty string")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        raise ValueError("url is not a valid URL") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(
            f"url must be an http:// or https:// URL with a host, not a {parsed.scheme or 'relative'} URL"
        )
    if format not in ("json", "slack"):
        raise ValueError(f"format must be 'json' or 'slack', not {format!r}")
    if isinstance(signals, str):
        raise TypeError(f"signals must be a list of signal names, not the string {signals!r}")
    if isinstance(outcomes, str):
        raise TypeError(f"outcomes must be a list of outcome names, not the string {outcomes!r}")
    wanted: frozenset[Outcome] | None = None
    if outcomes is not None:
        known = ", ".join(o.value for o in Outcome)
        try:
            wanted = frozenset(Outcome(o) for o in outcomes)
        except ValueError as exc:
            raise ValueError(f"{exc}; outcomes are {known}") from None
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise ValueError(f"attempts must be an int of at least 1, not {attempts!r}")
    sample = template_fields(_sample_event())
    # Attributes differ from run to run: any key passes here (render() copes at run time).
    sample["attributes"] = _AnyKey()
    try:
        template.format_map(sample)
    except (KeyError, IndexError, AttributeError, ValueError, TypeError) as exc:
        fields = ", ".join(sample)
        raise ValueError(
            f"template {template!r} cannot be rendered ({type(exc).__name__}: {exc}); "
            f"its fields are {fields}"
        ) from None
    header_map = dict(headers or {})
    for name, value in header_map.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(f"headers must map strings to strings; header {name!r} does not")
    adapter = WebhookAdapter(
        url,
        format=format,
        template=template,
        headers=header_map,
        signals=tuple(dict.fromkeys(signals)),
        outcomes=wanted,
        attempts=attempts,
        timeout=_positive("timeout", timeout),
        deadline=_positive("deadline", deadline),
        backoff=_positive("backoff", backoff, zero=True),
        backoff_max=_positive("backoff_max", backoff_max, zero=True),
        jitter=bool(jitter),
    )
    redactor = adapter._redactor
    _log_filter.redactors.add(redactor)
    adapter.add(lambda: _log_filter.redactors.discard(redactor))
    try:
        for signal in adapter.signals:
            adapter.add(
                bus.subscribe(
                    signal,
                    adapter.deliver,
                    background=True,
                    timeout=adapter.deadline + adapter.timeout,
                    labels=labels,
                    name=f"lifecycle_webhook:{adapter.target}",
                )
            )
    except BaseException:
        adapter.detach()
        raise
    return adapter
