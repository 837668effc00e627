"""Options shared by the publisher and the source: servers, credentials, the stream."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import nats.errors
import platformdirs
from nats.aio.client import Client as NATS

from lifecycle import redact_url

from ._exceptions import NatsConnectError
from ._subject import check_prefix

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from nats.aio.client import Client

__all__ = ["DEFAULT_SERVERS", "SPOOL_ENV", "NatsOptions", "default_spool_dir", "show_server"]

DEFAULT_SERVERS = "nats://127.0.0.1:4222"
"""Where lifecycle-nats looks for NATS unless told otherwise."""

SPOOL_ENV = "LIFECYCLE_NATS_SPOOL"
"""Environment variable naming the spool directory (wins over the default, not the option)."""

_SCHEMES = ("nats", "tls", "ws", "wss")
_STORAGE = ("file", "memory")
_RETENTION = ("limits", "interest", "workqueue")


def default_spool_dir() -> Path:
    """``$LIFECYCLE_NATS_SPOOL``, else ``spool`` in the user's state directory for lifecycle."""
    env = os.environ.get(SPOOL_ENV)
    if env:
        return Path(env)
    return Path(platformdirs.user_state_dir("lifecycle")) / "spool"


def show_server(url: str) -> str:
    """A server URL as messages show it: ``scheme://host:port``, nothing else.

    Credentials, path and query are never shown, and neither is ``redact_url``'s ``/***``
    marker for them, which after a server's address reads like a path.
    """
    return redact_url(url).removesuffix("/***")


def _seconds(option: str, value: Any, *, zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{option} must be a number of seconds, not {value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        raise ValueError(f"{option} must be a finite number of seconds > 0, not {value!r}")
    return float(value)


def _servers(value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, Iterable) or isinstance(items, (bytes, dict)):
        raise TypeError(f"servers must be a URL or a list of URLs, not {value!r}")
    servers: list[str] = []
    for item in items:
        if not isinstance(item, str) or not item:
            raise TypeError(f"servers must be a URL or a list of URLs, not {value!r}")
        for url in item.split(","):
            url = url.strip()
            if "://" not in url:
                url = f"nats://{url}"
            try:
                parts = urlsplit(url)
                port = parts.port
            except ValueError as exc:
                raise ValueError(
                    f"servers: {redact_url(url)!r} is not a valid URL ({exc})"
                ) from None
            if parts.scheme not in _SCHEMES or not parts.hostname:
                raise ValueError(
                    f"servers: {redact_url(url)!r} is not a NATS URL; expected "
                    f"nats://HOST:PORT (or {', '.join(s + '://' for s in _SCHEMES[1:])})"
                )
            del port
            servers.append(url)
    if not servers:
        raise ValueError("servers must name at least one NATS server URL")
    return tuple(servers)


def _choice(option: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{option} must be one of {', '.join(choices)}, not {value!r}")
    return str(value)


def _optional_string(option: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise TypeError(f"{option} must be a non-empty string, not {value!r}")
    return value


@dataclass(frozen=True)
class NatsOptions:
    """Where NATS is, how to log in, and the JetStream stream lifecycle events live in.

    Every field is an option of :func:`~lifecycle_nats.attach`, :class:`Publisher` and
    :func:`source` (and of ``[[adapters]] name = "nats"`` and ``[listen]`` in a
    configuration file). :meth:`build` validates them.

    Attributes:
        servers: NATS server URLs (``nats://host:port``; several for a cluster).
        stream: the JetStream stream's name.
        subject_prefix: the first token(s) of every subject (see :func:`subject_for`).
        storage: ``file`` or ``memory``, for a stream created here.
        retention: ``limits``, ``interest`` or ``workqueue``, for a stream created here.
        max_age: seconds a message is kept, for a stream created here (default 7 days).
        duplicate_window: seconds during which a re-sent ``Nats-Msg-Id`` is dropped.
        create_stream: create the stream if it is missing (else it must exist).
        user, password, token: credentials; never logged.
        creds: the path of a ``.creds`` file (JWT and NKey seed).
        name: the connection's name, as the server shows it.
        connect_timeout: seconds one connection attempt may take.
        ack_timeout: seconds to wait for one JetStream acknowledgement.

    .. versionadded:: 0.2
    """

    servers: tuple[str, ...] = (DEFAULT_SERVERS,)
    stream: str = "LIFECYCLE"
    subject_prefix: str = "lifecycle"
    storage: str = "file"
    retention: str = "limits"
    max_age: float = 7 * 24 * 3600.0
    duplicate_window: float = 120.0
    create_stream: bool = True
    user: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    creds: str | None = None
    name: str | None = None
    connect_timeout: float = 2.0
    ack_timeout: float = 5.0

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def build(cls, **options: Any) -> NatsOptions:
        """Validate ``options`` (unknown names and bad values raise, naming the option)."""
        known = cls.names()
        for key in options:
            if key not in known:
                raise TypeError(f"unknown NATS option {key!r}; the options are {', '.join(known)}")
        get = options.get
        stream = get("stream", "LIFECYCLE")
        if not isinstance(stream, str) or not stream or any(c in stream for c in ".*> \t/\\"):
            raise ValueError(
                f"stream must be a JetStream stream name (no '.', '*', '>', '/', '\\' or "
                f"spaces), not {stream!r}"
            )
        create = get("create_stream", True)
        if not isinstance(create, bool):
            raise TypeError(f"create_stream must be true or false, not {create!r}")
        creds = get("creds")
        if creds is not None:
            creds = os.fspath(creds)
            if not Path(creds).is_file():
                raise ValueError(f"creds: the credentials file {creds!r} does not exist")
        return cls(
            servers=_servers(get("servers", DEFAULT_SERVERS)),
            stream=stream,
            subject_prefix=check_prefix(get("subject_prefix", "lifecycle")),
            storage=_choice("storage", get("storage", "file"), _STORAGE),
            retention=_choice("retention", get("retention", "limits"), _RETENTION),
            max_age=_seconds("max_age", get("max_age", 7 * 24 * 3600.0)),
            duplicate_window=_seconds("duplicate_window", get("duplicate_window", 120.0)),
            create_stream=create,
            user=_optional_string("user", get("user")),
            password=_optional_string("password", get("password")),
            token=_optional_string("token", get("token")),
            creds=creds,
            name=_optional_string("name", get("name")),
            connect_timeout=_seconds("connect_timeout", get("connect_timeout", 2.0)),
            ack_timeout=_seconds("ack_timeout", get("ack_timeout", 5.0)),
        )

    @property
    def shown_servers(self) -> str:
        return ", ".join(show_server(url) for url in self.servers)

    def credentials_option(self) -> str:
        """The option(s) that carry the credentials, to name in an error."""
        if self.creds:
            return "creds"
        if self.token:
            return "token"
        if self.user or self.password:
            return "user/password"
        if any("@" in urlsplit(url).netloc for url in self.servers):
            return "servers (the credentials in the URL)"
        return "user/password, token or creds (the server wants credentials)"

    async def connect(
        self,
        *,
        on_async_error: Callable[[Exception], Awaitable[None]] | None = None,
        **callbacks: Any,
    ) -> Client:
        """One connection attempt to each server (no reconnecting: callers own that).

        ``callbacks`` (``disconnected_cb``, ``closed_cb``, ...) go to ``nats.connect``;
        ``on_async_error`` gets the errors nats-py reports once connected.

        Raises:
            NatsConnectError: no server answered, or the credentials were refused.
        """
        errors: list[BaseException] = []
        connected = False

        async def on_error(exc: Exception) -> None:
            if not connected:
                errors.append(exc)  # for the message of a failed connection
            elif on_async_error is not None:
                await on_async_error(exc)

        client = NATS()
        try:
            await client.connect(
                list(self.servers),
                name=self.name,
                error_cb=on_error,
                allow_reconnect=False,
                # nats-py retries a server until it was tried more than this many times
                # (0 would mean forever): one retry, without waiting.
                max_reconnect_attempts=1,
                reconnect_time_wait=0,
                connect_timeout=self.connect_timeout,  # type: ignore[arg-type,unused-ignore]
                dont_randomize=True,
                **self.credentials(),
                **callbacks,
            )
        except BaseException as exc:
            # nats-py leaves the socket of a refused connection open when it does not
            # reconnect: close it, or it leaks (a ResourceWarning).
            with contextlib.suppress(Exception):
                await client.close()
            if isinstance(exc, nats.errors.NoServersError):
                raise self.connect_error(errors) from None
            if isinstance(exc, (OSError, nats.errors.Error, asyncio.TimeoutError)):
                errors.append(exc)
                raise self.connect_error(errors) from None
            raise
        connected = True
        return client

    def credentials(self) -> dict[str, Any]:
        """The credentials as keyword arguments of nats-py's ``connect``."""
        kwargs: dict[str, Any] = {}
        if self.user is not None:
            kwargs["user"] = self.user
        if self.password is not None:
            kwargs["password"] = self.password
        if self.token is not None:
            kwargs["token"] = self.token
        if self.creds is not None:
            kwargs["user_credentials"] = self.creds
        return kwargs

    def connect_error(
        self, errors: list[BaseException], *, waited: float | None = None
    ) -> NatsConnectError:
        """The error for a first connection that failed with ``errors`` (nats-py's, in order).

        Refused credentials name the credential option and say what the server said;
        anything else names ``servers`` (and ``waited``, the seconds tried, if given).
        """
        auth = [e for e in errors if self.refuses_credentials(e)]
        if auth:
            return NatsConnectError(
                self.credentials_option(),
                self.shown_servers,
                f"the server refused the credentials ({_describe(auth[-1])})",
            )
        reason = _describe(errors[-1]) if errors else "no server answered"
        if waited is not None:
            reason += f" (tried for {waited:g} s)"
        return NatsConnectError("servers", self.shown_servers, reason)

    @staticmethod
    def refuses_credentials(exc: BaseException) -> bool:
        """Whether an error nats-py reported is the server refusing the credentials."""
        if isinstance(exc, nats.errors.AuthorizationError):
            return True
        text = str(exc).lower()
        return "authorization" in text or "authentication" in text


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    return text
