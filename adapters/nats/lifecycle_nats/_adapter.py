"""The ``nats`` adapter: publish a bus's lifecycle events to JetStream."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import structlog

from lifecycle import EXITED, HEARTBEAT, MISSED, OVERDUE, RECOVERED, STARTING, Attachment

from ._options import DEFAULT_SERVERS, NatsOptions
from ._publisher import Publisher, PublisherState, message_for, require_asyncio, trace_context

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

    from lifecycle import Event, EventBus

    from ._spool import SpooledMessage

__all__ = ["DEFAULT_SIGNALS", "NatsAdapter", "attach"]

logger = structlog.get_logger("lifecycle.nats")

DEFAULT_SIGNALS: tuple[str, ...] = (
    STARTING,
    HEARTBEAT,
    EXITED,
    MISSED,
    OVERDUE,
    RECOVERED,
)
"""The signals the adapter publishes unless told otherwise: the run's and the watchdog's."""


class NatsAdapter(Attachment):
    """The handle :func:`attach` returns; ``detach()`` unsubscribes and spools the unsent.

    Attributes:
        publisher: the :class:`Publisher` (its ``published``, ``dropped``, ``spooled``
            and ``pending`` counters tell how delivery goes).
        delivery_timeout: seconds a handler waits for its event's acknowledgement.
    """

    def __init__(
        self,
        publisher: Publisher,
        delivery_timeout: float,
        wait_for: frozenset[str],
        bus: EventBus | None = None,
    ) -> None:
        super().__init__()
        self.publisher = publisher
        self.bus = bus
        self.delivery_timeout = delivery_timeout
        self.wait_for = wait_for
        self._prefix = publisher.options.subject_prefix
        # Events of wait_for signals queued by one of their two handlers, for the other.
        self._queued: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"<NatsAdapter {self.publisher!r}>"

    def enqueue(self, event: Event) -> None:
        """Queue ``event`` now, while it is emitted, so the outbox keeps the emit order.

        An inline handler: no task, no waiting.
        """
        publisher = self.publisher
        if publisher.state is PublisherState.CLOSED:
            return
        if event.name in self.wait_for:
            if self._queued.pop(event.event_id, None) is not None:
                return  # deliver() started first (an eagerly started task) and queued it
            self._queued[event.event_id] = publisher.submit(self._message(event))
            return
        publisher.submit(self._message(event))

    def _message(self, event: Event) -> SpooledMessage:
        trace = trace_context(self.bus, event) if self.bus is not None else None
        return message_for(event, self._prefix, trace=trace)

    async def deliver(self, event: Event) -> None:
        """Wait for the acknowledgement of a ``wait_for`` event (an ``exited``).

        The bus runs this in the background, so a run never waits for it; ``bus.aclose()``
        does, which is what lets a short-lived process hand its last events over, and as
        the outbox is sent in order, every earlier event of the run too. The subscription's
        timeout is ``delivery_timeout``: an event not acknowledged by then is a ``timeout``
        result on the bus and stays queued (and is spooled at detach).
        """
        publisher = self.publisher
        entry = self._queued.pop(event.event_id, None)
        if entry is None:
            if publisher.state is PublisherState.CLOSED:
                return
            entry = publisher.submit(self._message(event))
            self._queued[event.event_id] = entry  # tells enqueue() it is queued
        # Awaited bare: a cancellation at the timeout cancels only this waiter, never
        # the entry, which stays in the outbox.
        await publisher.waiter(entry)

    async def aclose(self, timeout: float | None = 0) -> int:
        """Detach, wait up to ``timeout`` s for the outbox, spool the rest; return how many."""
        self._unsubscribe()
        return await self.publisher.aclose(timeout)

    def _unsubscribe(self) -> None:
        if not self.detached:
            Attachment.detach(self)

    def detach(self) -> None:
        """Unsubscribe and close the publisher: the unacknowledged events go to the spool."""
        self._unsubscribe()
        self.publisher.close_nowait()


def attach(
    bus: EventBus,
    *,
    servers: str | Iterable[str] = DEFAULT_SERVERS,
    stream: str = "LIFECYCLE",
    subject_prefix: str = "lifecycle",
    signals: Iterable[str] = DEFAULT_SIGNALS,
    labels: Iterable[str] = (),
    storage: str = "file",
    retention: str = "limits",
    max_age: float = 7 * 24 * 3600.0,
    duplicate_window: float = 120.0,
    create_stream: bool = True,
    user: str | None = None,
    password: str | None = None,
    token: str | None = None,
    creds: str | None = None,
    name: str | None = None,
    connect_timeout: float = 2.0,
    ack_timeout: float = 5.0,
    delivery_timeout: float = 5.0,
    wait_for: Iterable[str] = (EXITED,),
    max_pending: int = 10_000,
    max_in_flight: int = 256,
    reconnect_wait: float = 2.0,
    spool_dir: str | Path | None = None,
) -> NatsAdapter:
    """Publish the lifecycle events of ``bus`` to a NATS JetStream stream.

    Each event goes, as its JSON, to :func:`subject_for` its signal and environment, with
    ``Nats-Msg-Id`` set to its id. The stream is created if missing; an existing one that
    cannot hold the events is an error at the first connection (logged; events wait). A
    server that is down never fails or delays a run past ``delivery_timeout``: events wait
    in an outbox and, when the adapter is detached (``lifecycle run`` does at the end),
    in the on-disk spool that the next attached adapter or ``lifecycle flush`` sends first.
    The spool already on disk is queued ahead of everything at attach.

    Args:
        bus: the bus whose events to publish.
        servers: NATS URL(s), ``nats://host:port``; credentials in them are never logged.
        stream, subject_prefix, storage, retention, max_age, duplicate_window,
            create_stream, user, password, token, creds, name, connect_timeout,
            ack_timeout: see :class:`NatsOptions`.
        signals: the signals to publish.
        labels: only environments that carry all these labels.
        wait_for: the signals whose acknowledgement a background handler awaits, so that
            ``bus.aclose()`` waits for it (and, the outbox being in order, for every event
            before it). Every event is queued inline, in emit order, with no task.
        delivery_timeout: seconds such a handler waits (its bus timeout: an event not
            acknowledged by then is a ``timeout`` result and stays queued); this bounds
            how long ``bus.aclose()`` waits for NATS.
        max_pending, max_in_flight, reconnect_wait, spool_dir: see :class:`Publisher`.

    Raises:
        TypeError, ValueError: an option is wrong; the message names it.
        RuntimeError: called under trio (nats-py needs asyncio).

    .. versionadded:: 0.2
    """
    options = NatsOptions.build(
        servers=servers,
        stream=stream,
        subject_prefix=subject_prefix,
        storage=storage,
        retention=retention,
        max_age=max_age,
        duplicate_window=duplicate_window,
        create_stream=create_stream,
        user=user,
        password=password,
        token=token,
        creds=creds,
        name=name,
        connect_timeout=connect_timeout,
        ack_timeout=ack_timeout,
    )
    if isinstance(signals, str):
        raise TypeError(f"signals must be a list of signal names, not the string {signals!r}")
    wanted = tuple(dict.fromkeys(signals))
    if not wanted or not all(isinstance(s, str) and s for s in wanted):
        raise ValueError(f"signals must be a non-empty list of signal names, not {signals!r}")
    if isinstance(labels, str):
        raise TypeError(f"labels must be a list of labels, not the string {labels!r}")
    if isinstance(delivery_timeout, bool) or not isinstance(delivery_timeout, (int, float)):
        raise TypeError(f"delivery_timeout must be a number of seconds, not {delivery_timeout!r}")
    if not 0 < delivery_timeout < float("inf"):
        raise ValueError(
            f"delivery_timeout must be a finite number of seconds > 0, not {delivery_timeout!r}"
        )
    try:
        asyncio.get_running_loop()
        in_asyncio = True
    except RuntimeError:
        in_asyncio = False
    if not in_asyncio:
        try:
            import sniffio

            library: str | None = sniffio.current_async_library()
        except Exception:
            library = None
        if library is not None:
            require_asyncio("the nats adapter")  # raises, naming the library
    publisher = Publisher(
        options,
        max_pending=max_pending,
        max_in_flight=max_in_flight,
        spool_dir=spool_dir,
        reconnect_wait=reconnect_wait,
    )
    if isinstance(wait_for, str):
        raise TypeError(f"wait_for must be a list of signal names, not the string {wait_for!r}")
    waiting = frozenset(wait_for) & frozenset(wanted)
    adapter = NatsAdapter(publisher, float(delivery_timeout), waiting, bus)
    name = f"lifecycle_nats:{options.stream}"
    try:
        for signal in wanted:
            if signal in waiting:
                adapter.add(
                    bus.subscribe(
                        signal,
                        adapter.deliver,
                        background=True,
                        timeout=delivery_timeout,
                        labels=labels,
                        name=f"{name}:ack",
                    )
                )
            adapter.add(
                bus.subscribe(signal, adapter.enqueue, inline=True, labels=labels, name=name)
            )
        # What an earlier process spooled goes first, even if this one emits nothing.
        publisher.load_spool()
        if in_asyncio and publisher.pending:
            publisher.start()
    except BaseException:
        adapter.detach()
        raise
    return adapter
