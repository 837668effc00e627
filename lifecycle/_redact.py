"""What lifecycle shows of a URL: its scheme, host and port, never its secrets.

Every line that quotes a URL (``lifecycle check``, an adapter's error, a configuration
message) shows it through :func:`redact_url`, so a webhook's token or a broker's password
never reaches a terminal or a log.
"""

from __future__ import annotations

import re

__all__ = ["redact_url", "redact_urls"]


def redact_url(url: str) -> str:
    """``url`` as it may be shown: its scheme, host and port only.

    Anything past them (credentials, path, query, fragment) becomes ``/***``: a Slack-style
    webhook carries its secret in the path, others in the query or the userinfo. An
    adapter that shows where it sends to uses it, so every URL is shown the same way.

    .. versionadded:: 0.2
    """
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return "***"
    if not parts.scheme or not host:
        return "***"
    shown = f"{parts.scheme}://" + (f"[{host}]" if ":" in host else host)
    if port is not None:
        shown += f":{port}"
    hidden = "@" in parts.netloc or parts.path not in ("", "/") or parts.query or parts.fragment
    return shown + ("/***" if hidden else "")


_OPENING = {")": "(", "]": "[", "}": "{"}
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def redact_urls(text: str) -> str:
    """``text`` with every URL in it reduced by :func:`redact_url`."""

    def redact(match: re.Match[str]) -> str:
        url = match.group()
        kept = url  # less the sentence's punctuation, or the brace of ${NAME:-url}
        while kept and kept[-1] in ".,:;!?)]}":
            opening = _OPENING.get(kept[-1])
            if opening is not None and kept.count(opening) >= kept.count(kept[-1]):
                break  # its own bracket: ${TOKEN} in the path, say
            kept = kept[:-1]
        return redact_url(kept) + url[len(kept) :]

    return _URL.sub(redact, text)
