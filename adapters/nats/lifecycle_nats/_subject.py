"""NATS subjects for lifecycle events: one safe token for the signal, one for the environment."""

from __future__ import annotations

import re

__all__ = ["decode_token", "encode_token", "subject_for"]

_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_ENVIRONMENT_PREFIX = "environment."
_TOKEN = re.compile(r"(?:[A-Za-z0-9_-]|~[0-9A-F]{2})+")


def encode_token(text: str) -> str:
    """Encode ``text`` as one NATS subject token.

    Every UTF-8 byte outside ``[A-Za-z0-9_-]`` becomes ``~XX`` (two upper-case hex digits),
    so ``.``, ``*``, ``>``, spaces and ``~`` itself never reach the subject; the empty string
    becomes ``~``. :func:`decode_token` reverses it.

    .. versionadded:: 0.2
    """
    if not text:
        return "~"
    if text.isascii() and all(byte in _SAFE for byte in text.encode()):
        return text
    return "".join(chr(byte) if byte in _SAFE else f"~{byte:02X}" for byte in text.encode())


def decode_token(token: str) -> str:
    """Decode one subject token made by :func:`subject_for` back to the original text.

    Raises:
        ValueError: ``token`` is not a token this encoding makes (a bad escape, a byte that
            should have been escaped, or bytes that are not UTF-8).

    .. versionadded:: 0.2
    """
    if token == "~":
        return ""
    if not _TOKEN.fullmatch(token):
        raise ValueError(
            f"subject token {token!r} is not encoded: only [A-Za-z0-9_-] and ~XX escapes "
            "(upper-case hex) may appear, or a lone ~ for the empty string"
        )
    if "~" not in token:
        return token
    out = bytearray()
    index = 0
    while index < len(token):
        if token[index] == "~":
            out.append(int(token[index + 1 : index + 3], 16))
            index += 3
        else:
            out.append(ord(token[index]))
            index += 1
    try:
        return out.decode()
    except UnicodeDecodeError:
        raise ValueError(f"subject token {token!r} does not decode to UTF-8 text") from None


def signal_kind(signal: str) -> str:
    """The signal name without its leading ``environment.`` (other names are kept whole)."""
    if signal.startswith(_ENVIRONMENT_PREFIX):
        return signal[len(_ENVIRONMENT_PREFIX) :]
    return signal


def subject_for(signal: str, environment: str, prefix: str = "lifecycle") -> str:
    """The NATS subject an event of ``signal`` in ``environment`` is published on.

    It is ``{prefix}.{kind}.{env}``: ``kind`` is the signal name without its leading
    ``environment.`` and ``env`` the environment's name, each encoded as one token by
    :func:`encode_token`. So ``subject_for("environment.exited", "nightly-etl")`` is
    ``lifecycle.exited.nightly-etl`` and ``subject_for("environment.heartbeat", "web.01")``
    is ``lifecycle.heartbeat.web~2E01``; subscribe to ``lifecycle.exited.*`` for every
    environment's exits, or ``lifecycle.*.nightly-etl`` for everything about one environment.

    Args:
        signal: The event's signal name, e.g. ``environment.exited``.
        environment: The environment's name (any text).
        prefix: The subject prefix, one or more dot-separated tokens, no wildcards.

    Raises:
        ValueError: ``prefix`` is empty, has an empty token, a wildcard or whitespace.

    .. versionadded:: 0.2
    """
    check_prefix(prefix)
    return f"{prefix}.{encode_token(signal_kind(signal))}.{encode_token(environment)}"


def check_prefix(prefix: str, option: str = "subject_prefix") -> str:
    """Return ``prefix`` if it is a valid literal subject prefix, else raise naming ``option``."""
    if not isinstance(prefix, str) or not prefix:
        raise ValueError(f"{option} must be a non-empty string such as 'lifecycle', not {prefix!r}")
    for token in prefix.split("."):
        if not token or token in ("*", ">") or any(ch.isspace() for ch in token):
            raise ValueError(
                f"{option} {prefix!r} is not a literal NATS subject: dot-separated, non-empty "
                "tokens without '*', '>' or whitespace, e.g. 'lifecycle' or 'acme.lifecycle'"
            )
    return prefix
