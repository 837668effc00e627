"""Keeping a webhook's secrets (URL tokens, header values, routing keys) out of every log line."""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING

import httpx

from lifecycle import redact_url

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = ["Redactor", "log_filter"]

# Secrets shorter than this are not scrubbed from free text: replacing "1" or "ok"
# everywhere would garble messages, and such a value protects nothing.
_MIN_SECRET = 4
_MASK = "***"


class Redactor:
    """Knows one webhook's secrets and scrubs them from text."""

    def __init__(
        self, url: httpx.URL, headers: Mapping[str, str], extra: Iterable[str] = ()
    ) -> None:
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
        secrets.update(extra)
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
        self.redactors: weakref.WeakSet[Redactor] = weakref.WeakSet()

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


log_filter = _LogFilter()
logging.getLogger("httpx").addFilter(log_filter)
