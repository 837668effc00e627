"""One request delivered with retries, backoff, ``Retry-After`` and a total deadline."""

from __future__ import annotations

import functools
import math
import random
import ssl
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import anyio
import certifi
import httpx
import structlog

if TYPE_CHECKING:
    from collections.abc import Mapping

    from lifecycle import Event

    from ._redact import Redactor

__all__ = ["Failure", "Policy", "Request", "post", "seconds"]

logger = structlog.get_logger("lifecycle.webhook")


@dataclass(frozen=True)
class Request:
    """What one notification sends: where, and which body."""

    url: httpx.URL
    body: bytes
    content_type: str = "application/json"


def seconds(name: str, value: Any, *, zero: bool = False) -> float:
    """``value`` as seconds, or a ``TypeError``/``ValueError`` naming option ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {value!r}")
    if value < 0 or (value == 0 and not zero) or not math.isfinite(value):
        raise ValueError(f"{name} must be greater than 0 seconds, not {value!r}")
    return float(value)


@dataclass(frozen=True)
class Policy:
    """How hard to try: attempts, per-attempt timeout, total deadline and backoff.

    Shared by adapters that deliver like this one (``lifecycle_apprise``).

    .. versionadded:: 0.2
    """

    attempts: int
    timeout: float
    deadline: float
    backoff: float
    backoff_max: float
    jitter: bool

    @classmethod
    def checked(
        cls,
        *,
        attempts: Any,
        timeout: Any,
        deadline: Any,
        backoff: Any,
        backoff_max: Any,
        jitter: Any,
    ) -> Policy:
        """A policy from options as a user wrote them.

        Raises:
            TypeError, ValueError: an option is out of range; the message names it.
        """
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ValueError(f"attempts must be an int of at least 1, not {attempts!r}")
        return cls(
            attempts=attempts,
            timeout=seconds("timeout", timeout),
            deadline=seconds("deadline", deadline),
            backoff=seconds("backoff", backoff, zero=True),
            backoff_max=seconds("backoff_max", backoff_max, zero=True),
            jitter=bool(jitter),
        )

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (from 1)."""
        delay: float = min(self.backoff_max, self.backoff * 2 ** (attempt - 1))
        if self.jitter:
            # Spread retries of many senders apart, but never below half the backoff.
            delay *= random.uniform(0.5, 1.0)
        return delay


@dataclass(frozen=True)
class Failure:
    """A delivery that failed for good."""

    attempts: int
    reason: str
    status: int | None


@functools.cache
def _tls_context() -> ssl.SSLContext:
    # Built once per process: a new httpx client would otherwise load the CA bundle (tens
    # of milliseconds, blocking the event loop) on every delivery.
    return ssl.create_default_context(cafile=certifi.where())


def retry_after(value: str | None) -> float | None:
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


async def post(
    request: Request,
    event: Event,
    *,
    policy: Policy,
    headers: Mapping[str, str],
    redactor: Redactor,
    deadline: float | None = None,
) -> Failure | None:
    """Try to deliver ``request`` before ``deadline`` (``anyio.current_time()`` based;
    ``policy.deadline`` from now by default); None when delivered, else why not."""
    target = redactor.target
    if deadline is None:
        deadline = anyio.current_time() + policy.deadline
    headers = {**headers, "Content-Type": request.content_type}
    async with httpx.AsyncClient(
        timeout=policy.timeout, follow_redirects=False, verify=_tls_context()
    ) as client:
        attempt = 0
        while True:
            attempt += 1
            status: int | None = None
            wait_for: float | None = None
            retryable = True
            left = deadline - anyio.current_time()
            if left < policy.timeout:
                limit = max(0.0, left)
                reason = f"no response before the deadline ({policy.deadline:g} s)"
            else:
                limit, reason = policy.timeout, f"no response within {policy.timeout:g} s"
            with anyio.move_on_after(limit):
                try:
                    response = await client.post(request.url, content=request.body, headers=headers)
                except httpx.TimeoutException:
                    pass  # the reason set above says it
                except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                    reason = redactor.scrub(f"{type(exc).__name__}: {exc}")
                except httpx.HTTPError as exc:
                    retryable = False
                    reason = redactor.scrub(f"{type(exc).__name__}: {exc}")
                else:
                    status = response.status_code
                    reason = f"HTTP {status} {response.reason_phrase}".rstrip()
                    if response.is_success:
                        logger.info(
                            "webhook delivered",
                            webhook=target,
                            run_id=event.run_id,
                            signal=event.name,
                            attempt=attempt,
                            status=status,
                        )
                        return None
                    retryable = status == 429 or status >= 500
                    if status in (429, 503):
                        wait_for = retry_after(response.headers.get("Retry-After"))
            if not retryable or attempt >= policy.attempts:
                return Failure(attempt, reason, status)
            wait = policy.delay(attempt) if wait_for is None else wait_for
            left = deadline - anyio.current_time()
            if wait >= left:
                return Failure(
                    attempt, f"{reason}; the next attempt would pass the deadline", status
                )
            logger.warning(
                "webhook attempt failed",
                webhook=target,
                run_id=event.run_id,
                attempt=attempt,
                attempts=policy.attempts,
                status=status,
                reason=reason,
                retry_in=round(wait, 3),
            )
            await anyio.sleep(wait)
