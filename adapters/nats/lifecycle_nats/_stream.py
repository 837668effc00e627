"""The JetStream stream lifecycle events are stored in: created if missing, checked if not."""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.errors
import structlog
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from ._exceptions import NatsError, StreamConfigError
from ._options import NatsOptions

if TYPE_CHECKING:
    from collections.abc import Iterator

    from nats.js import JetStreamContext
    from nats.js.api import StreamInfo

__all__ = ["ensure_stream", "subject_covers"]

logger = structlog.get_logger("lifecycle.nats")


def subject_covers(pattern: str, subject: str) -> bool:
    """Whether the NATS subject ``pattern`` (with ``*`` and ``>``) matches all of ``subject``.

    ``subject`` may itself hold wildcards: ``lifecycle.>`` covers ``lifecycle.>`` and
    ``lifecycle.exited.*``; ``lifecycle.*.*`` does not cover ``lifecycle.>``.
    """
    wanted = pattern.split(".")
    given = subject.split(".")
    for index, token in enumerate(wanted):
        if token == ">":
            return len(given) > index
        if index >= len(given):
            return False
        if given[index] == ">":
            return False
        if token != "*" and token != given[index]:
            return False
        if token == "*" and given[index] == ">":
            return False
    return len(given) == len(wanted)


async def ensure_stream(
    js: JetStreamContext, options: NatsOptions | None = None, **kwargs: Any
) -> StreamInfo:
    """Make sure the stream for lifecycle events exists and can hold them.

    A missing stream is created (subjects ``{subject_prefix}.>``, the storage, retention,
    max age and duplicate window of the options) unless ``create_stream`` is false. An
    existing stream must take every subject under the prefix and use the same storage and
    retention; a different max age or a shorter duplicate window is logged as a warning
    (an operator may have tuned them) and kept.

    Args:
        js: a JetStream context (``client.jetstream()``).
        options: the options; or pass them as keyword arguments.

    Raises:
        StreamConfigError: the stream is missing and ``create_stream`` is false, or it
            exists with subjects, storage or retention that do not fit.
        NatsError: the server does not run JetStream (or has not started it yet).

    .. versionadded:: 0.2
    """
    if options is None:
        options = NatsOptions.build(**kwargs)
    elif kwargs:
        raise TypeError("pass either options or keyword options to ensure_stream, not both")
    with jetstream_required(options.shown_servers):
        return await _ensure_stream(js, options)


@contextmanager
def jetstream_required(servers: str) -> Iterator[None]:
    """Turn a server's "no JetStream here" answer into a :exc:`NatsError` that says so.

    Args:
        servers: the servers as a message may show them (``NatsOptions.shown_servers``).

    .. versionadded:: 0.2
    """
    try:
        yield
    except (nats.js.errors.ServiceUnavailableError, nats.errors.NoRespondersError):
        # What a server without JetStream (or one still starting it) answers: the bare
        # exception says "code=None description='None'".
        raise NatsError(
            f"JetStream does not answer at {servers}: is it enabled "
            "(nats-server -js, or jetstream {} in its configuration) and ready?"
        ) from None


async def _ensure_stream(js: JetStreamContext, options: NatsOptions) -> StreamInfo:
    subjects = f"{options.subject_prefix}.>"
    try:
        info = await js.stream_info(options.stream)
    except nats.js.errors.NotFoundError:
        if not options.create_stream:
            raise StreamConfigError(
                options.stream, "it does not exist, and create_stream is false"
            ) from None
        config = StreamConfig(
            name=options.stream,
            subjects=[subjects],
            storage=StorageType(options.storage),
            retention=RetentionPolicy(options.retention),
            max_age=options.max_age,
            duplicate_window=options.duplicate_window,
        )
        try:
            created: StreamInfo = await js.add_stream(config)
        except nats.js.errors.BadRequestError as exc:
            # Another process may have created it in the meantime; else it overlaps.
            try:
                info = await js.stream_info(options.stream)
            except nats.js.errors.NotFoundError:
                raise StreamConfigError(
                    options.stream, f"the server refused to create it: {exc.description}"
                ) from None
        else:
            logger.info("created the JetStream stream", stream=options.stream, subjects=[subjects])
            return created
    check_stream(info, options)
    return info


def check_stream(info: StreamInfo, options: NatsOptions) -> None:
    """Raise :exc:`StreamConfigError` if ``info`` cannot hold the options' events."""
    config = info.config
    subjects = f"{options.subject_prefix}.>"
    have = list(config.subjects or [])
    if not any(subject_covers(pattern, subjects) for pattern in have):
        raise StreamConfigError(
            options.stream,
            f"its subjects {have} do not take {subjects!r} (subject_prefix "
            f"{options.subject_prefix!r}); add {subjects!r} to the stream or choose another "
            "stream",
        )
    storage = _value(config.storage)
    if storage is not None and storage != options.storage:
        raise StreamConfigError(
            options.stream,
            f"its storage is {storage!r}, the storage option asks for {options.storage!r}",
        )
    retention = _value(config.retention)
    if retention is not None and retention != options.retention:
        raise StreamConfigError(
            options.stream,
            f"its retention is {retention!r}, the retention option asks for {options.retention!r}",
        )
    if config.max_age is not None and abs(config.max_age - options.max_age) > 1e-3:
        logger.warning(
            "the stream keeps messages for another time than the max_age option asks; "
            "the stream's own setting stays",
            stream=options.stream,
            stream_max_age=config.max_age or "forever",
            max_age=options.max_age,
        )
    if config.duplicate_window and config.duplicate_window + 1e-3 < options.duplicate_window:
        logger.warning(
            "the stream's duplicate window is shorter than duplicate_window asks; re-sent events "
            "older than it are stored twice (listeners still drop them by event id)",
            stream=options.stream,
            stream_duplicate_window=config.duplicate_window,
            duplicate_window=options.duplicate_window,
        )


def _value(item: Any) -> str | None:
    if item is None:
        return None
    return str(getattr(item, "value", item))
