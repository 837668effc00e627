"""Errors of lifecycle-nats.

::

    Exception
     └── NatsError                 any failure to talk to NATS the way lifecycle-nats needs
          ├── NatsConnectError     no server could be reached, or it refused the credentials
          └── StreamConfigError    the stream exists with a configuration that does not fit

Option mistakes are ``TypeError``/``ValueError`` naming the option, raised when the adapter,
the publisher or the source is built.
"""

from __future__ import annotations

__all__ = ["NatsConnectError", "NatsError", "StreamConfigError"]


class NatsError(Exception):
    """Base class of the errors lifecycle-nats raises about the NATS server.

    .. versionadded:: 0.2
    """


class NatsConnectError(NatsError):
    """Raised when no server in ``servers`` can be reached, or one refuses the credentials.

    The message names the option to check (``servers``, or ``user``/``password``,
    ``token``, ``creds``), the servers (credentials masked) and the last error seen.

    .. versionadded:: 0.2
    """

    def __init__(self, option: str, servers: str, reason: str) -> None:
        super().__init__(
            f"cannot connect to NATS at {servers} (check the option {option}): {reason}"
        )
        self.option = option
        self.servers = servers
        self.reason = reason


class StreamConfigError(NatsError):
    """Raised when the stream exists but its configuration cannot hold lifecycle events.

    The message names the stream, the setting that differs, what it is and what the
    options ask for.

    .. versionadded:: 0.2
    """

    def __init__(self, stream: str, problem: str) -> None:
        super().__init__(f"JetStream stream {stream!r} does not fit: {problem}")
        self.stream = stream
        self.problem = problem
