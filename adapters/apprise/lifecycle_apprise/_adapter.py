"""Apprise services notified of lifecycle events, bounded, in the background, reported."""

from __future__ import annotations

import functools
import inspect
import logging
import threading
import urllib.parse
import weakref
from typing import TYPE_CHECKING, Any, NamedTuple

import anyio
import anyio.to_thread
import structlog
from lifecycle_webhook import DEFAULT_TEMPLATE, Policy, Selection, check_template, template_fields

from lifecycle import EXITED, STARTING, Attachment, Outcome, redact_url
from lifecycle.plugins import adapter

from ._exceptions import AppriseDeliveryError

if TYPE_CHECKING:
    from collections.abc import Iterable

    from lifecycle import Event, EventBus

__all__ = ["AppriseAdapter", "attach"]

logger = structlog.get_logger("lifecycle.apprise")

DEFAULT_TITLE = "{environment} {outcome}"

# Secrets shorter than this are not scrubbed from free text (see lifecycle_webhook).
_MIN_SECRET = 4
_MASK = "***"


def _secrets(url: str, shown: str) -> set[str]:
    """The parts of an Apprise URL that may be tokens.

    Userinfo, path segments and query values always; the host only when Apprise's own
    privacy form hides it (``slack://TokenA/...`` has its first token there, while
    ``mmost://chat.example/token`` has a real host).
    """
    parts = urllib.parse.urlsplit(url)
    secrets = {url, parts.path, parts.query, parts.username or "", parts.password or ""}
    secrets.update(parts.path.split("/"))
    secrets.update(value for _name, value in urllib.parse.parse_qsl(parts.query))
    if parts.hostname and parts.hostname not in shown:
        secrets.update((parts.netloc, parts.hostname))
    return {s for s in secrets if len(s) >= _MIN_SECRET}


class _Service:
    """One Apprise URL: its own ``Apprise`` object, how it is shown, and its secrets."""

    def __init__(self, index: int, url: str, timeout: float) -> None:
        import apprise  # here, not at import: it takes over half a second (see _Loader)

        plugin = apprise.Apprise.instantiate(url)
        scheme = url.partition("://")[0]
        if plugin is None:
            raise ValueError(
                f"urls[{index}]: Apprise does not understand this {scheme}:// URL (unknown "
                "service, or a token missing); see https://github.com/caronc/apprise/wiki"
            )
        # Each attempt ends on its own within our timeout: a thread cannot be cancelled.
        plugin.socket_connect_timeout = timeout
        plugin.socket_read_timeout = timeout
        self.notifier = apprise.Apprise()
        self.notifier.add(plugin)
        self.takes_timeout = "timeout" in inspect.signature(self.notifier.notify).parameters
        shown: str = plugin.url(privacy=True)  # type: ignore[no-untyped-call]  # untyped in Apprise
        self.target = redact_url(shown)
        self.replacements = dict.fromkeys(_secrets(url, shown), _MASK)
        self.replacements[url] = self.target

    def scrub(self, text: str) -> str:
        for secret in sorted(self.replacements, key=len, reverse=True):
            text = text.replace(secret, self.replacements[secret])
        return text


class _LogFilter(logging.Filter):
    """Scrubs attached services' secrets from the loggers that show URLs at DEBUG.

    Apprise logs each service's full URL; urllib3 (under requests) its request lines.
    """

    def __init__(self) -> None:
        super().__init__()
        self.services: weakref.WeakSet[_Service] = weakref.WeakSet()

    def filter(self, record: logging.LogRecord) -> bool:
        services = list(self.services)
        if services:
            message = record.getMessage()
            scrubbed = message
            for service in services:
                scrubbed = service.scrub(scrubbed)
            if scrubbed != message:
                record.msg, record.args = scrubbed, None
        return True


_log_filter = _LogFilter()
for _logger in ("apprise", "urllib3.connectionpool"):
    logging.getLogger(_logger).addFilter(_log_filter)


def _notify_type(event: Event) -> str:
    """Apprise's notification type (``info``, ``success``, ``warning``, ``failure``)."""
    if event.outcome is None:
        return "info" if event.name == STARTING else "warning"
    return "success" if event.outcome is Outcome.SUCCEEDED else "failure"


def _check_urls(urls: str | Iterable[str]) -> list[str]:
    url_list = [urls] if isinstance(urls, str) else list(urls)
    if not url_list:
        raise ValueError("urls must name at least one Apprise URL")
    for index, url in enumerate(url_list):
        if not isinstance(url, str):
            raise TypeError(
                f"urls[{index}] must be an Apprise URL string, not {type(url).__name__}"
            )
        if "://" not in url:
            raise ValueError(
                f"urls[{index}] must be an Apprise URL such as slack://... (no :// in it)"
            )
    return url_list


class _Loader:
    """Apprise imported and the URLs read in a thread, started at attach.

    Apprise takes over a second to import and load its plugins: done inline, every
    ``lifecycle run`` with this adapter would start that much later. The first delivery
    waits for it (within its deadline); ``lifecycle check`` (``attach.check``) loads
    inline and so refuses a URL Apprise does not understand.
    """

    def __init__(self, urls: list[str], timeout: float) -> None:
        self.services: list[_Service] = []
        self.error: str | None = None
        self.done = threading.Event()
        self._urls = urls
        self._timeout = timeout
        threading.Thread(target=self._load, name="lifecycle-apprise-load", daemon=True).start()

    def _load(self) -> None:
        try:
            services = [_Service(i, url, self._timeout) for i, url in enumerate(self._urls)]
        except ValueError as exc:
            self.error = str(exc)
            logger.error("apprise URL not understood; nothing will be sent", error=self.error)
        except Exception as exc:  # a broken Apprise install: said with every event too
            self.error = f"Apprise could not be loaded: {type(exc).__name__}: {exc}"
            logger.error("apprise could not be loaded", error=self.error)
        else:
            for service in services:
                _log_filter.services.add(service)
            self.services = services
        finally:
            self.done.set()

    async def wait(self, limit: float) -> list[_Service] | str:
        """The services, or why there are none; waits for the loading thread ``limit`` at most."""
        if not self.done.is_set():
            await anyio.to_thread.run_sync(self.done.wait, limit, abandon_on_cancel=True)
        if self.error is not None:
            return self.error
        if not self.done.is_set():
            return f"Apprise was still loading after {limit:g} s"
        return self.services

    def close(self) -> None:
        for service in self.services:
            _log_filter.services.discard(service)


class AppriseAdapter(Attachment):
    """The handle :func:`attach` returns; ``detach()`` unsubscribes.

    Attributes:
        targets: the services as shown in logs and errors (secrets masked).
    """

    def __init__(
        self,
        loader: _Loader,
        targets: tuple[str, ...],
        *,
        template: str,
        title: str,
        selection: Selection,
        policy: Policy,
    ) -> None:
        super().__init__()
        self._loader = loader
        self.targets = targets
        self.template = template
        self.title = title
        self.selection = selection
        self.signals = selection.signals
        self.policy = policy

    def __repr__(self) -> str:
        return f"<AppriseAdapter {', '.join(self.targets)}>"

    def wants(self, event: Event) -> bool:
        """Whether ``event`` is one to notify about."""
        return self.selection.wants(event)

    def render(self, event: Event) -> tuple[str, str]:
        """The title and body for ``event``; the summary where a template fails on it."""
        fields = template_fields(event)
        texts = []
        for template in (self.title, self.template):
            try:
                texts.append(template.format_map(fields))
            except (KeyError, IndexError, AttributeError, ValueError, TypeError) as exc:
                logger.warning(
                    "apprise template failed; sending the summary instead",
                    run_id=event.run_id,
                    error=f"{type(exc).__name__}: {exc}",
                )
                texts.append(fields["summary"])
        return texts[0], texts[1]

    async def deliver(self, event: Event) -> None:
        """Notify every service of ``event`` if it is wanted; the bus calls this in the background.

        Raises:
            AppriseDeliveryError: some service was not notified by the last attempt or
                the deadline.
        """
        if not self.wants(event):
            return
        title, body = self.render(event)
        kind = _notify_type(event)
        deadline = anyio.current_time() + self.policy.deadline
        services = await self._loader.wait(self.policy.deadline)
        if isinstance(services, str):
            raise AppriseDeliveryError({", ".join(self.targets): services}, 0)
        failures: dict[str, str] = {}
        attempts: dict[str, int] = {}

        async def one(service: _Service) -> None:
            reason, count = await self._notify(service, title, body, kind, deadline, event)
            attempts[service.target] = count
            if reason is not None:
                failures[service.target] = reason

        async with anyio.create_task_group() as group:
            for service in services:
                group.start_soon(one, service)
        if failures:
            logger.error(
                "apprise delivery failed",
                run_id=event.run_id,
                signal=event.name,
                failures=failures,
            )
            raise AppriseDeliveryError(failures, max(attempts[t] for t in failures))

    async def _notify(
        self,
        service: _Service,
        title: str,
        body: str,
        kind: str,
        deadline: float,
        event: Event,
    ) -> tuple[str | None, int]:
        """Notify one service, retrying; (None, attempts) when done, else (reason, attempts)."""
        attempt = 0
        while True:
            attempt += 1
            left = deadline - anyio.current_time()
            limit = min(self.policy.timeout, max(0.0, left))
            reason = f"no answer within {limit:g} s"
            # Apprise 2 ends the call itself at ``limit``; Apprise 1 (the one Prefect allows
            # on Python 3.10) has only the plugin's socket timeouts, set at attach. The margin
            # covers a service that ignores them, whose thread is left to finish on its own.
            call = functools.partial(_send, service, body, title, kind, limit)
            with anyio.move_on_after(limit + 1.0):
                result = await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
                if result:
                    logger.info(
                        "apprise delivered",
                        service=service.target,
                        run_id=event.run_id,
                        signal=event.name,
                        attempt=attempt,
                    )
                    return None, attempt
                reason = _reason(result, service)
            wait = self.policy.delay(attempt)
            if attempt >= self.policy.attempts:
                return reason, attempt
            if wait >= deadline - anyio.current_time():
                return f"{reason}; the next attempt would pass the deadline", attempt
            logger.warning(
                "apprise attempt failed",
                service=service.target,
                run_id=event.run_id,
                attempt=attempt,
                attempts=self.policy.attempts,
                reason=reason,
                retry_in=round(wait, 3),
            )
            await anyio.sleep(wait)


class _Answer(NamedTuple):
    """What Apprise 1 says of a call: True or False, and the warnings it logged meanwhile."""

    ok: bool
    reason: str

    def __bool__(self) -> bool:
        return self.ok


def _send(service: _Service, body: str, title: str, kind: str, limit: float) -> Any:
    """One attempt, in a worker thread: Apprise 2's result, or an :class:`_Answer`."""
    notify: Any = service.notifier.notify  # its signature differs across Apprise versions
    if service.takes_timeout:
        return notify(body=body, title=title, notify_type=kind, timeout=limit)
    import apprise

    # Apprise 1 returns a bare bool; the reason is in its log (captured for this call, but
    # the capture is process-wide: a concurrent failure may lend its words).
    with apprise.LogCapture(level=logging.WARNING, fmt="%(message)s") as captured:  # type: ignore[no-untyped-call]
        ok = bool(notify(body=body, title=title, notify_type=kind))
    lines = [line for line in captured.getvalue().splitlines() if line.strip()]
    return _Answer(ok, lines[-1] if lines else "")


def _reason(result: Any, service: _Service) -> str:
    """The last warning or error Apprise logged for this call, scrubbed, or its status."""
    if isinstance(result, _Answer):
        return service.scrub(result.reason or "the service did not take the notification")
    messages = [
        entry.message for entry in result.logs() if entry.level in ("WARNING", "ERROR", "CRITICAL")
    ]
    if messages:
        return service.scrub(str(messages[-1]))
    return f"Apprise status {result.status.name}"


def attach(
    bus: EventBus,
    *,
    urls: str | Iterable[str],
    template: str = DEFAULT_TEMPLATE,
    title: str = DEFAULT_TITLE,
    signals: Iterable[str] = (EXITED,),
    outcomes: Iterable[str] | None = None,
    labels: Iterable[str] = (),
    attempts: int = 3,
    timeout: float = 10.0,
    deadline: float = 25.0,
    backoff: float = 0.5,
    backoff_max: float = 30.0,
    jitter: bool = True,
) -> AppriseAdapter:
    """Notify Apprise services (``slack://``, ``tgram://``, ``mailto://``...) of ``bus``'s events.

    Args:
        bus: the bus to observe.
        urls: one Apprise URL or several; tokens in them are never logged.
        template: the body, a ``str.format`` template over
            :func:`lifecycle_webhook.template_fields`.
        title: the title, likewise.
        signals: the signals to notify about.
        outcomes: only runs that ended so (``NOT_SUCCEEDED`` for trouble).
        labels: only environments that carry all these labels.
        attempts: attempts per service at most, the first included.
        timeout: seconds one attempt may take.
        deadline: seconds all attempts and waits may take together (the default fits
            the 30 s a blocking runner gives background handlers at exit).
        backoff, backoff_max, jitter: the wait after a failed attempt, doubled each time.

    The subscription is ``background`` with a bus timeout a little past ``deadline``.

    Raises:
        ValueError, TypeError: a URL Apprise does not understand (named by position, never
            quoted), a template with an unknown field, or an option out of range.
    """
    url_list = _check_urls(urls)
    selection = Selection.checked(signals, outcomes)
    check_template(template)
    check_template(title, "title")
    policy = Policy.checked(
        attempts=attempts,
        timeout=timeout,
        deadline=deadline,
        backoff=backoff,
        backoff_max=backoff_max,
        jitter=jitter,
    )
    loader = _Loader(url_list, policy.timeout)
    # Until Apprise has read the URLs, only the scheme is safe to show (a slack:// URL
    # has a token where a host would be).
    targets = tuple(f"{url.partition('://')[0]}://***" for url in url_list)
    adapter = AppriseAdapter(
        loader,
        targets,
        template=template,
        title=title,
        selection=selection,
        policy=policy,
    )
    adapter.add(loader.close)
    try:
        for signal in adapter.signals:
            adapter.add(
                bus.subscribe(
                    signal,
                    adapter.deliver,
                    background=True,
                    timeout=policy.deadline + policy.timeout + 1.0,
                    labels=labels,
                    name=f"lifecycle_apprise:{', '.join(adapter.targets)}",
                )
            )
    except BaseException:
        adapter.detach()
        raise
    return adapter


def _check(bus: EventBus, *, urls: str | Iterable[str], **options: Any) -> None:
    """What ``lifecycle check`` runs instead of :func:`attach`: every URL read by Apprise now.

    Raises:
        ValueError: a URL Apprise does not understand, named by its position.
    """
    url_list = _check_urls(urls)
    # The URLs first: attaching starts a loader that would log the same refusal again.
    for index, url in enumerate(url_list):
        _Service(index, url, 1.0)
    attach(bus, urls=url_list, **options).detach()


adapter(attach, check=_check)
