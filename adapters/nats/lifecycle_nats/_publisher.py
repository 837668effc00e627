"""Publishing to JetStream: an in-order outbox, one pump task, acks awaited, a spool at exit.

Every message goes into the outbox (a deque, oldest first). One pump task per publisher
owns the connection: it connects (one attempt per server, then waits and tries again,
doubling the wait up to ``reconnect_wait``, each wait drawn between half and all of it so
that publishers cut off together do not come back together), makes sure the stream fits, and sends the
outbox from its head, up to ``max_in_flight`` messages ahead of the oldest unacknowledged
one; a message leaves the outbox only when the server acknowledged it. When the
connection is lost (or an acknowledgement does not come within ``ack_timeout``) every
unacknowledged message is sent again, in order, after reconnecting: TCP keeps the order
of one connection, so what the server stored is a prefix of what was sent, and the
``Nats-Msg-Id`` header makes the stream drop the copies of that prefix.

Past ``max_pending`` queued messages the oldest heartbeat is dropped (then the oldest
message of another signal), never a ``starting`` or an ``exited``; drops are counted and
logged. Closing writes whatever is still unacknowledged to the spool (see ``_spool.py``),
and the next publisher sends the spool first.

nats-py runs on asyncio only, so a publisher needs a running asyncio event loop (anyio's
default backend); under trio it raises a ``RuntimeError`` that says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import json
import random
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.errors
import structlog

from lifecycle import EXITED, STARTING

from ._exceptions import NatsError, StreamConfigError
from ._options import NatsOptions, default_spool_dir
from ._spool import Spool, SpooledMessage
from ._stream import ensure_stream
from ._subject import subject_for

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from types import TracebackType

    from nats.aio.client import Client
    from nats.js import JetStreamContext
    from typing_extensions import Self

    from lifecycle import Event, EventBus

__all__ = [
    "TRACE_HEADERS",
    "Publisher",
    "PublisherState",
    "message_for",
    "reconnect_waits",
    "require_asyncio",
    "trace_context",
]

logger = structlog.get_logger("lifecycle.nats")

_KEPT = frozenset({STARTING, EXITED})
_FIRST_WAIT = 0.05
# Closing the client of a lost connection must not hold up shutting down.
_CLOSE_TIMEOUT = 2.0

ACKED_NOT = 0
"""Entry result: dropped (outbox bound) or rejected by the server."""
SPOOLED = -1
"""Entry result: still unacknowledged at close, written to the spool."""

# Client-closing tasks started from a synchronous close: kept referenced until done.
_closing: set[asyncio.Task[Any]] = set()


def require_asyncio(what: str) -> asyncio.AbstractEventLoop:
    """The running asyncio loop, or a ``RuntimeError`` saying that nats-py needs one."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        pass
    try:
        import sniffio

        library = sniffio.current_async_library()
    except Exception:
        library = None
    if library is not None:
        raise RuntimeError(
            f"{what} needs asyncio: nats-py, the NATS client, runs on asyncio only, and this "
            f"is {library}. Run it under asyncio (anyio.run(..., backend='asyncio'), the "
            "default), for instance in its own thread or process."
        )
    raise RuntimeError(f"{what} needs a running asyncio event loop (call it from async code)")


def reconnect_waits(longest: float, rng: random.Random | None = None) -> Iterator[float]:
    """The waits between connection attempts, without end.

    The wait doubles from 50 ms up to ``longest``, and each one is drawn at random between
    half of it and all of it ("equal jitter"): publishers cut off together by a broker
    restart then come back spread over the wait, not in lock-step bursts, and none tries
    sooner than half the wait.
    """
    draw = (rng or random.Random()).uniform
    wait = _FIRST_WAIT
    while True:
        yield draw(wait / 2, wait)
        wait = min(wait * 2, longest)


TRACE_HEADERS = ("traceparent", "tracestate")
"""The W3C trace context a message carries, as headers and as attributes of its event."""


def message_for(
    event: Event,
    prefix: str = "lifecycle",
    msg_id: str | None = None,
    trace: Mapping[str, str] | None = None,
) -> SpooledMessage:
    """The message that carries ``event``: its subject, ``Nats-Msg-Id`` and JSON payload.

    ``trace`` (``traceparent``, ``tracestate``: the run's trace context) goes both into
    the message's headers and into the event's attributes, which the spool keeps and a
    listener reads whatever route the message took.
    """
    headers: tuple[tuple[str, str], ...] = ()
    if trace:
        headers = tuple((name, trace[name]) for name in TRACE_HEADERS if trace.get(name))
    if headers:
        # The event's JSON with two more attributes (str: nothing to validate), built
        # directly rather than through a new Event, which would freeze them all again.
        data = event.to_dict()
        data["attributes"] = {**data["attributes"], **dict(headers)}
        payload = json.dumps(data, separators=(",", ":"), allow_nan=False)
    else:
        payload = event.to_json()
    return SpooledMessage(
        subject=_subject(event.name, event.environment.name, prefix),
        msg_id=event.event_id if msg_id is None else msg_id,
        payload=payload.encode(),
        signal=event.name,
        headers=headers,
    )


def trace_context(bus: EventBus, event: Event) -> dict[str, str] | None:
    """The run's ``traceparent``/``tracestate`` as a tracing adapter on ``bus`` gives them
    to the run's children (``bus.child_env``), or ``None``."""
    given = bus.child_env(event)
    if not given:
        return None
    found = {name: given[name.upper()] for name in TRACE_HEADERS if given.get(name.upper())}
    return found or None


@functools.lru_cache(maxsize=4096)
def _subject(signal: str, environment: str, prefix: str) -> str:
    # The same few (signal, environment) pairs again and again: encode each once.
    return subject_for(signal, environment, prefix)


class PublisherState(enum.Enum):
    NEW = "new"
    """Built; the spool is read and the pump started on first use."""
    OPEN = "open"
    """The pump runs: messages are sent as soon as the server takes them."""
    CLOSED = "closed"
    """Closed for good; what was not acknowledged is in the spool."""


class _Entry:
    __slots__ = ("future", "message", "path", "result")

    def __init__(self, message: SpooledMessage, path: Path | None = None) -> None:
        self.message = message
        self.path = path
        self.future: asyncio.Future[int] | None = None
        self.result: int | None = None

    def resolve(self, result: int) -> None:
        if self.result is None:
            self.result = result
        if self.future is not None and not self.future.done():
            self.future.set_result(result)


class _Lost(Exception):
    """The connection is gone or stuck; reconnect and send the unacknowledged again."""


class Publisher:
    """Publishes events to JetStream in order, waiting for each acknowledgement.

    ``async with Publisher(servers=...) as publisher: await publisher.publish(event)``.
    Nothing is lost while the server is away: messages wait in the outbox and, at close,
    in the spool, which the next publisher (or ``lifecycle flush``) sends first.

    Args:
        options: the connection and stream options; or give them as keyword arguments
            (see :class:`NatsOptions`).
        max_pending: messages the outbox holds before dropping the oldest heartbeat.
        max_in_flight: messages sent ahead of the oldest unacknowledged one.
        spool_dir: where unsent messages go at close (default: ``$LIFECYCLE_NATS_SPOOL``,
            else ``spool`` in the user's state directory, from platformdirs).
        reconnect_wait: the longest wait between connection attempts, in seconds.
        spool_first: read the spool and send it before anything else.

    .. versionadded:: 0.2
    """

    def __init__(
        self,
        options: NatsOptions | None = None,
        *,
        max_pending: int = 10_000,
        max_in_flight: int = 256,
        spool_dir: str | Path | None = None,
        reconnect_wait: float = 2.0,
        spool_first: bool = True,
        **nats_options: Any,
    ) -> None:
        if options is None:
            options = NatsOptions.build(**nats_options)
        elif nats_options:
            raise TypeError("pass either options or keyword NATS options, not both")
        for name, value in (("max_pending", max_pending), ("max_in_flight", max_in_flight)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, not {value!r}")
        if isinstance(reconnect_wait, bool) or not isinstance(reconnect_wait, (int, float)):
            raise TypeError(f"reconnect_wait must be a number of seconds, not {reconnect_wait!r}")
        if not reconnect_wait > 0:
            raise ValueError(f"reconnect_wait must be greater than 0, not {reconnect_wait!r}")
        if (
            spool_dir is not None
            and not isinstance(spool_dir, (str, bytes))
            and not hasattr(spool_dir, "__fspath__")
        ):
            raise TypeError(f"spool_dir must be a path, not {spool_dir!r}")
        self.options = options
        self.max_pending = max_pending
        self.max_in_flight = max_in_flight
        self.reconnect_wait = float(reconnect_wait)
        self.spool = Spool(default_spool_dir() if spool_dir is None else Path(spool_dir))
        self.state = PublisherState.NEW
        self.published = 0
        """Messages the server acknowledged."""
        self.dropped = 0
        """Messages dropped because the outbox was full."""
        self.rejected = 0
        """Messages the server refused for good (too large, say)."""
        self.spooled = 0
        """Messages written to the spool at close."""
        self.lost = 0
        """Messages neither acknowledged nor spooled: the spool could not be written at close."""
        self._outbox: deque[_Entry] = deque()
        self._in_flight = 0
        self._spool_loaded = not spool_first
        self._from_spool = 0  # messages the spool put at the head of the outbox
        self._pump_task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._client: Client | None = None
        self._js: JetStreamContext | None = None
        self._lost: asyncio.Future[str] | None = None
        self._outage: str | None = None
        self._over_bound_logged = False

    def __repr__(self) -> str:
        return (
            f"<Publisher {self.options.shown_servers} stream={self.options.stream!r} "
            f"{self.state.value} pending={len(self._outbox)}>"
        )

    @property
    def pending(self) -> int:
        """Messages not yet acknowledged (in flight included)."""
        return len(self._outbox)

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.is_connected

    # -- the outbox ------------------------------------------------------------------

    def load_spool(self) -> int:
        """Put the spooled messages at the head of the outbox (once); return how many."""
        if self._spool_loaded:
            return 0
        self._spool_loaded = True
        loaded = [_Entry(message, path) for path, message in self.spool.load()]
        if loaded:
            self._outbox.extendleft(reversed(loaded))
        self._from_spool = len(loaded)
        return len(loaded)

    def start(self) -> None:
        """Read the spool and start the pump (done on first use; needs asyncio).

        Raises:
            RuntimeError: the publisher is closed, or no asyncio loop is running.
        """
        if self.state is PublisherState.CLOSED:
            raise RuntimeError(f"{self!r} is closed; make a new Publisher")
        if self._pump_task is not None:
            return
        loop = require_asyncio("lifecycle-nats publishing")
        self.load_spool()
        self._wake = asyncio.Event()
        self._wake.set()
        self._idle = asyncio.Event()
        self.state = PublisherState.OPEN
        self._pump_task = loop.create_task(self._pump(), name=f"lifecycle-nats pump {id(self):x}")

    def submit(self, message: SpooledMessage) -> _Entry:
        """Queue ``message``; it is sent in order, as soon as the server takes it."""
        if self.state is PublisherState.CLOSED:
            raise RuntimeError(f"{self!r} is closed; make a new Publisher")
        if self._pump_task is None:
            self.start()
        entry = _Entry(message)
        self._outbox.append(entry)
        if len(self._outbox) > self.max_pending:
            self._trim()
        assert self._wake is not None
        self._wake.set()
        if self._idle is not None and self._idle.is_set():
            self._idle.clear()
        return entry

    async def publish(self, event: Event, msg_id: str | None = None) -> int:
        """Publish ``event`` and wait for the server's acknowledgement.

        Args:
            event: the event; its JSON goes on :func:`subject_for` its signal and environment.
            msg_id: the ``Nats-Msg-Id`` (default: the event's id).

        Returns:
            The event's sequence number in the stream.

        Raises:
            NatsError: the publisher was closed first (the event is in the spool), or the
                event was dropped (outbox full) or refused by the server.
        """
        entry = self.submit(message_for(event, self.options.subject_prefix, msg_id))
        result = await self.wait(entry)
        assert result is not None  # no timeout
        if result > 0:
            return result
        if result == SPOOLED:
            raise NatsError(f"event {event.event_id} was not acknowledged before close; spooled")
        raise NatsError(f"event {event.event_id} was dropped or refused; see the log")

    def waiter(self, entry: _Entry) -> asyncio.Future[int]:
        if entry.future is None:
            entry.future = asyncio.get_running_loop().create_future()
            if entry.result is not None:
                entry.future.set_result(entry.result)
        return entry.future

    async def wait(self, entry: _Entry, timeout: float | None = None) -> int | None:
        """The entry's result (sequence, 0 dropped, -1 spooled), or None if ``timeout`` passed."""
        future = self.waiter(entry)
        if not future.done():
            await asyncio.wait((future,), timeout=timeout)
            if not future.done():
                return None
        return future.result()

    def _trim(self) -> None:
        """Drop the oldest heartbeat (else the oldest non-starting/exited) past the bound."""
        outbox = self._outbox
        victim: int | None = None
        fallback: int | None = None
        for index in range(self._in_flight, len(outbox)):
            signal = outbox[index].message.signal
            if signal.endswith(".heartbeat"):
                victim = index
                break
            if fallback is None and signal not in _KEPT:
                fallback = index
        if victim is None:
            victim = fallback
        if victim is None:
            if not self._over_bound_logged:
                self._over_bound_logged = True
                logger.warning(
                    "outbox past max_pending with only starting and exited events, which are "
                    "never dropped; keeping them",
                    pending=len(outbox),
                    max_pending=self.max_pending,
                )
            return
        entry = outbox[victim]
        del outbox[victim]
        self.dropped += 1
        entry.resolve(ACKED_NOT)
        if entry.path is not None:
            Spool.remove(entry.path)
        if self.dropped & (self.dropped - 1) == 0 or self.dropped % 1000 == 0:
            logger.warning(
                "outbox full: dropped the oldest droppable event",
                signal=entry.message.signal,
                msg_id=entry.message.msg_id,
                dropped_total=self.dropped,
                max_pending=self.max_pending,
            )

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued message is acknowledged; False if ``timeout`` passed first."""
        if not self._outbox:
            return True
        if self._pump_task is None:
            self.start()
        assert self._idle is not None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        return not self._outbox

    # -- the pump --------------------------------------------------------------------

    async def _pump(self) -> None:
        assert self._wake is not None
        assert self._idle is not None
        if self._from_spool:
            # Said here, not when the spool is read: `lifecycle check` attaches and
            # detaches at once, and sends nothing.
            logger.info(
                "sending spooled events first",
                count=self._from_spool,
                spool=str(self.spool.directory),
            )
        waits = reconnect_waits(self.reconnect_wait)
        while True:
            if not self._outbox:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            if self._client is None:
                try:
                    await self._open()
                except NatsError as exc:
                    self._report_outage(str(exc), error=isinstance(exc, StreamConfigError))
                    await asyncio.sleep(next(waits))
                    continue
            try:
                await self._send()
            except _Lost as exc:
                await self._drop_connection()
                self._report_outage(str(exc))
                await asyncio.sleep(next(waits))
                continue
            waits = reconnect_waits(self.reconnect_wait)

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        lost: asyncio.Future[str] = loop.create_future()

        async def on_lost() -> None:
            if not lost.done():
                lost.set_result("the connection to NATS was lost")

        async def on_async_error(exc: Exception) -> None:
            # nats-py (2.16) reports an error answer to js.publish_async here and leaves
            # its future pending for good: without this, a full stream looked like an
            # acknowledgement that never came, and its reason was never told.
            if isinstance(exc, nats.js.errors.APIError) and not lost.done():
                lost.set_result(f"JetStream refused to store an event: {_describe_api_error(exc)}")

        client = await self.options.connect(
            disconnected_cb=on_lost, closed_cb=on_lost, on_async_error=on_async_error
        )
        try:
            js = client.jetstream(timeout=self.options.ack_timeout)
            try:
                await ensure_stream(js, self.options)
            except (nats.errors.Error, OSError, asyncio.TimeoutError) as exc:
                # Not ready yet (JetStream starting up after a restart, say): try again.
                raise NatsError(
                    f"JetStream is not answering: {type(exc).__name__}: {exc}"
                ) from None
        except BaseException:
            await self._close_client(client)
            raise
        self._client, self._js, self._lost = client, js, lost

    def _report_outage(self, reason: str, *, error: bool = False) -> None:
        if self._outage != reason:
            (logger.error if error else logger.warning)(
                "the JetStream stream does not fit; events wait in the outbox"
                if error
                else "NATS is not storing events (unreachable or refusing); they wait in "
                "the outbox",
                reason=reason,
                pending=len(self._outbox),
            )
            self._outage = reason

    async def _send(self) -> None:
        """Send the outbox from its head until it is empty, keeping a window in flight."""
        js, lost, outbox = self._js, self._lost, self._outbox
        assert js is not None
        assert lost is not None
        in_flight: deque[asyncio.Future[Any]] = deque()
        try:
            while True:
                while len(in_flight) < self.max_in_flight and len(in_flight) < len(outbox):
                    message = outbox[len(in_flight)].message
                    if lost.done():
                        raise _Lost(lost.result())
                    try:
                        future = await js.publish_async(
                            message.subject,
                            message.payload,
                            headers={"Nats-Msg-Id": message.msg_id, **dict(message.headers)},
                        )
                    except (nats.errors.Error, OSError) as exc:
                        raise _Lost(f"publishing failed: {type(exc).__name__}: {exc}") from None
                    in_flight.append(future)
                    self._in_flight = len(in_flight)
                if not in_flight:
                    return
                future = in_flight[0]
                if not future.done() and len(in_flight) < min(self.max_in_flight, len(outbox)):
                    # More to send: let the others run (the read loop may be settling
                    # acknowledgements) rather than arm a timer for this one.
                    await asyncio.sleep(0)
                    continue
                if not future.done():
                    await asyncio.wait(
                        (future, lost),
                        timeout=self.options.ack_timeout,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    if not future.done():
                        if lost.done():
                            raise _Lost(lost.result())
                        raise _Lost(
                            f"no acknowledgement within ack_timeout ({self.options.ack_timeout:g} s)"
                        )
                in_flight.popleft()
                self._in_flight = len(in_flight)
                entry = outbox.popleft()
                error = future.exception()
                if error is None:
                    self.published += 1
                    entry.resolve(int(future.result().seq))
                    if self._outage is not None:
                        # Said at the first event stored, not at the connection: a server
                        # that accepts us but refuses events (a full stream) is no recovery.
                        logger.info(
                            "NATS stores events again; sending the waiting ones",
                            servers=self.options.shown_servers,
                            pending=len(outbox),
                        )
                        self._outage = None
                elif _retryable(error):
                    outbox.appendleft(entry)
                    raise _Lost(
                        f"JetStream did not store an event: {type(error).__name__}: {error}"
                    )
                else:
                    self.rejected += 1
                    logger.error(
                        "JetStream refused an event; it is dropped",
                        subject=entry.message.subject,
                        msg_id=entry.message.msg_id,
                        error=f"{type(error).__name__}: {error}",
                    )
                    entry.resolve(ACKED_NOT)
                if entry.path is not None:
                    Spool.remove(entry.path)
        finally:
            for future in in_flight:
                future.cancel()
            self._in_flight = 0

    async def _drop_connection(self) -> None:
        client, self._client, self._js, self._lost = self._client, None, None, None
        if client is not None:
            await self._close_client(client)

    @staticmethod
    async def _close_client(client: Client) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), _CLOSE_TIMEOUT)

    # -- closing ---------------------------------------------------------------------

    def close_nowait(self) -> int:
        """Stop now: spool every unacknowledged message; return how many were spooled.

        For synchronous code (an adapter's ``detach``); the connection is closed in the
        background. :meth:`aclose` is the async form.
        """
        if self.state is PublisherState.CLOSED:
            return 0
        self.state = PublisherState.CLOSED
        if self._pump_task is not None:
            self._pump_task.cancel()
        client, self._client, self._js = self._client, None, None
        spooled = self._spool_rest()
        if client is not None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                pass
            else:
                task = loop.create_task(self._close_client(client))
                _closing.add(task)
                task.add_done_callback(_closing.discard)
        return spooled

    async def aclose(self, timeout: float | None = 0) -> int:
        """Wait up to ``timeout`` seconds for the outbox to empty, then stop.

        Whatever is still unacknowledged is spooled; returns how many messages were.
        Closing twice is harmless.
        """
        if self.state is PublisherState.CLOSED:
            return 0
        if timeout is None or timeout > 0:
            await self.flush(timeout)
        self.state = PublisherState.CLOSED
        task, self._pump_task = self._pump_task, None
        if task is not None:
            task.cancel()
            await asyncio.wait((task,))
        spooled = self._spool_rest()
        await self._drop_connection()
        return spooled

    def _spool_rest(self) -> int:
        entries = list(self._outbox)
        self._outbox.clear()
        fresh = [entry for entry in entries if entry.path is None]
        try:
            self.spool.write([entry.message for entry in fresh])
        except OSError as exc:
            self.lost += len(fresh)
            logger.error(
                "events neither sent to NATS nor spooled (the spool cannot be written): lost",
                spool=str(self.spool.directory),
                count=len(fresh),
                msg_ids=[entry.message.msg_id for entry in fresh],
                error=f"{type(exc).__name__}: {exc}",
                reason=self._outage or "not acknowledged before close",
            )
        else:
            self.spooled += len(fresh)
            if fresh:
                logger.warning(
                    "NATS did not acknowledge every event before close; spooled them",
                    count=len(fresh),
                    spool=str(self.spool.directory),
                )
        for entry in entries:
            entry.resolve(SPOOLED)
        return len(fresh)

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose(timeout=self.options.ack_timeout if exc_type is None else 0)


def _describe_api_error(error: nats.js.errors.APIError) -> str:
    detail = ", ".join(
        f"{name} {value}"
        for name, value in (("code", error.code), ("err_code", error.err_code))
        if value is not None
    )
    text = error.description or type(error).__name__
    return f"{text} ({detail})" if detail else text


def _retryable(error: BaseException) -> bool:
    if isinstance(
        error,
        (
            nats.js.errors.ServiceUnavailableError,
            nats.js.errors.NoStreamResponseError,
            asyncio.TimeoutError,
        ),
    ):
        return True
    if isinstance(error, nats.js.errors.APIError):
        return error.code is not None and error.code >= 500
    return not isinstance(error, (nats.errors.MaxPayloadError, nats.js.errors.Error))
