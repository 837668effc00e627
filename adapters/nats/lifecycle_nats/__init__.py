"""lifecycle-nats: lifecycle events across hosts, on NATS JetStream.

Publish every ``environment.*`` event a bus emits to a JetStream stream, on a subject that
encodes the signal and the environment (see :func:`subject_for`); consume the stream in one
place into a local :class:`lifecycle.EventBus` with the usual adapters and handlers.

.. versionadded:: 0.2
"""

from ._subject import decode_token, subject_for

__all__ = ["decode_token", "subject_for"]

__version__ = "0.1.0"
