"""lifecycle-nats: lifecycle events across hosts, on NATS JetStream.

Publish every ``environment.*`` event a bus emits to a JetStream stream, on a subject that
encodes the signal and the environment (see :func:`subject_for`); consume the stream in one
place into a local :class:`lifecycle.EventBus` with the usual adapters and handlers.

nats-py, the NATS client, runs on asyncio only: everything here needs anyio's asyncio
backend (the default) and raises a ``RuntimeError`` saying so under trio.

.. versionadded:: 0.2
"""

from lifecycle.plugins import claim_exports as _claim_exports

from ._adapter import DEFAULT_SIGNALS, NatsAdapter, attach
from ._exceptions import NatsConnectError, NatsError, StreamConfigError
from ._options import DEFAULT_SERVERS, SPOOL_ENV, NatsOptions, default_spool_dir, show_server
from ._publisher import Publisher, PublisherState
from ._source import STATE_ENV, Source, source
from ._stream import ensure_stream, jetstream_required
from ._subject import decode_token, subject_for

__all__ = [
    "DEFAULT_SERVERS",
    "DEFAULT_SIGNALS",
    "SPOOL_ENV",
    "STATE_ENV",
    "NatsAdapter",
    "NatsConnectError",
    "NatsError",
    "NatsOptions",
    "Publisher",
    "PublisherState",
    "Source",
    "StreamConfigError",
    "attach",
    "decode_token",
    "default_spool_dir",
    "ensure_stream",
    "jetstream_required",
    "show_server",
    "source",
    "subject_for",
]

__version__ = "0.1.0"

_claim_exports(globals())
