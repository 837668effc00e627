"""Consuming: a durable JetStream pull consumer that re-emits events on a local bus.

Each message is parsed back into an :class:`~lifecycle.Event` and emitted on the bus; it is
acknowledged once ``bus.emit`` returned its report (every blocking handler finished, the
background ones started). Delivery is at-least-once: a listener that dies before its ack
gets the message again after ``ack_wait``. So that a redelivered event is not handled
twice, the listener remembers the ids of the last ``idempotency_window`` events it handled,
in memory and in an append-only file in its state directory (``<stream>-<durable>.ids``),
and, unless ``handled_bucket`` is false, in a JetStream KV bucket that every listener
consults (see :mod:`._shared`): a message redelivered to another listener sharing the
durable consumer is recognised there too. An id is written to both after the emit and
before the ack, so a listener killed between the two does not make any listener handle
that event again. The gaps (the adapter's README lists them): a kill before the bucket
stored the id, a handler outliving ``ack_wait``, an event stored twice in the stream
(first deliveries are not looked up in the bucket).

Up to ``concurrency`` messages are handled at once: the messages of one run go through one
lane, in stream order, and each message is acknowledged when it is done, so one hanging
handler holds up its own run's events only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import OrderedDict, deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import nats.errors
import nats.js.errors
import platformdirs
import structlog
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from lifecycle import Event

from ._exceptions import NatsError, StreamConfigError
from ._options import NatsOptions, _seconds
from ._publisher import TRACE_HEADERS, reconnect_waits, require_asyncio
from ._shared import DEFAULT_BUCKET, SharedRecord, check_bucket, record_key
from ._stream import ensure_stream
from ._subject import encode_token, signal_kind

if TYPE_CHECKING:
    from collections.abc import Iterable

    from anyio.abc import TaskStatus
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

    from lifecycle import EventBus

__all__ = ["STATE_ENV", "Source", "source"]

logger = structlog.get_logger("lifecycle.nats")

STATE_ENV = "LIFECYCLE_NATS_STATE"
"""Environment variable naming the listener's state directory (the handled-ids file)."""

_FETCH_WAIT = 0.5  # seconds one fetch waits for messages; also how soon stop() is noticed
_DELIVER = ("all", "new")


def _default_state_dir() -> Path:
    env = os.environ.get(STATE_ENV)
    if env:
        return Path(env)
    return Path(platformdirs.user_state_dir("lifecycle")) / "listen"


def _names(option: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple, set, frozenset)):
        raise TypeError(f"{option} must be a list of strings, not {value!r}")
    if not all(isinstance(item, str) and item for item in value):
        raise TypeError(f"{option} must be a list of non-empty strings, not {value!r}")
    return tuple(value)


class _Handled:
    """The ids of the last ``size`` handled events: an LRU in memory, a journal on disk."""

    def __init__(self, size: int, path: Path | None) -> None:
        self.size = size
        self.path = path
        self.ids: OrderedDict[str, None] = OrderedDict()
        self._fd: int | None = None
        self._written = 0
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                with contextlib.suppress(FileNotFoundError):
                    text = path.read_text(encoding="utf-8", errors="replace")
                    for line in text.splitlines()[-size:]:
                        if line:
                            self.ids[line] = None
                self._compact()
            except OSError as exc:
                self._unusable(exc)

    def __contains__(self, event_id: str) -> bool:
        if event_id in self.ids:
            self.ids.move_to_end(event_id)
            return True
        return False

    def add(self, event_id: str) -> None:
        self.ids[event_id] = None
        if len(self.ids) > self.size:
            self.ids.popitem(last=False)
        if self._fd is not None:
            try:
                # One write() of a short line to an O_APPEND file: whole, and it survives
                # the process being killed (the kernel has it), the case that matters.
                os.write(self._fd, f"{event_id}\n".encode())
                self._written += 1
                if self._written > 2 * self.size:
                    self._compact()
            except OSError as exc:
                self._unusable(exc)

    def _unusable(self, exc: OSError) -> None:
        """Go on with the ids in memory only: a state directory that cannot be written (no
        home, a read-only file system, a full disk) must not stop the listener."""
        logger.warning(
            "the listener's state directory cannot be used; the ids of handled events are "
            "kept in memory only (set state_dir or $LIFECYCLE_NATS_STATE)",
            path=str(self.path),
            error=f"{type(exc).__name__}: {exc}",
        )
        self.close()
        self.path = None

    def _compact(self) -> None:
        assert self.path is not None
        self.close()
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        temporary.write_text("".join(f"{i}\n" for i in self.ids), encoding="utf-8")
        os.replace(temporary, self.path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._written = 0

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


class _Room:
    """How many more messages the listener may hold (fetched, not yet acknowledged)."""

    def __init__(self, capacity: int) -> None:
        self.free = capacity
        self._changed = anyio.Event()

    def take(self, count: int) -> None:
        self.free -= count

    def release(self) -> None:
        self.free += 1
        self._changed.set()

    async def wait_for(self, count: int) -> None:
        while self.free < count:
            self._changed = anyio.Event()
            await self._changed.wait()


class _Storing:
    """Handled messages whose ids are on their way to the shared record, oldest first."""

    def __init__(self) -> None:
        self.queue: deque[tuple[Msg, asyncio.Future[Any]]] = deque()
        self.closed = False
        self._wake = anyio.Event()

    def put(self, message: Msg, sent: asyncio.Future[Any]) -> None:
        self.queue.append((message, sent))
        self._wake.set()

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    async def wait(self) -> bool:
        """Wait for a message to acknowledge; False once closed with none left."""
        while not self.queue and not self.closed:
            self._wake = anyio.Event()
            await self._wake.wait()
        return bool(self.queue)


class Source:
    """A durable JetStream consumer that turns the stream back into events on ``bus``.

    Build it with :func:`source`; run it with ``await source.run()`` (or
    ``await task_group.start(source.run)``); :meth:`stop` makes :meth:`run` finish the
    messages being handled, give back the others in hand, and return.

    Attributes:
        handled: events emitted on the bus.
        duplicates: redelivered events already handled, acknowledged without emitting.
        shared_duplicates: of those, the ones only the shared record knew (another
            listener handled them).
        skipped: events the filters left out (acknowledged).
        terminated: malformed or foreign messages, logged and terminated.

    .. versionadded:: 0.2
    """

    def __init__(
        self,
        bus: EventBus,
        options: NatsOptions,
        *,
        durable: str,
        signals: tuple[str, ...],
        environments: tuple[str, ...],
        labels: frozenset[str],
        idempotency_window: int,
        state_dir: Path | None,
        handled_bucket: str | None,
        handled_ttl: float,
        ack_wait: float,
        batch: int,
        deliver: str,
        reconnect_wait: float,
        concurrency: int = 16,
    ) -> None:
        self.bus = bus
        self.options = options
        self.durable = durable
        self.signals = frozenset(signals)
        self.environments = frozenset(environments)
        self.labels = labels
        self.idempotency_window = idempotency_window
        self.state_dir = state_dir
        self.handled_bucket = handled_bucket
        self.handled_ttl = handled_ttl
        self.ack_wait = ack_wait
        self.batch = batch
        self.concurrency = concurrency
        self.deliver = deliver
        self.reconnect_wait = reconnect_wait
        self.handled = 0
        self.duplicates = 0
        self.shared_duplicates = 0
        self.skipped = 0
        self.terminated = 0
        self._stopping = False
        self._client: Client | None = None
        self._shared: SharedRecord | None = None

    def __repr__(self) -> str:
        return f"<Source {self.options.stream}/{self.durable} on {self.options.shown_servers}>"

    @property
    def filter_subject(self) -> str:
        """The consumer's subject filter: as narrow as one subject can express the filters."""
        prefix = self.options.subject_prefix
        kind = (
            encode_token(signal_kind(next(iter(self.signals)))) if len(self.signals) == 1 else "*"
        )
        env = encode_token(next(iter(self.environments))) if len(self.environments) == 1 else "*"
        if kind == "*" and env == "*":
            return f"{prefix}.>"
        return f"{prefix}.{kind}.{env}"

    def wants(self, event: Event) -> bool:
        """Whether ``event`` passes the signal, environment and label filters."""
        if self.signals and event.name not in self.signals:
            return False
        if self.environments and event.environment.name not in self.environments:
            return False
        return self.labels <= event.environment.labels

    def stop(self) -> None:
        """Finish the messages being handled, give back the others in hand, return from run()."""
        self._stopping = True

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Consume until :meth:`stop`; reconnects by itself after the first connection.

        Raises:
            NatsConnectError: the first connection failed (the message names the option).
            StreamConfigError: the stream or the durable consumer does not fit.
            RuntimeError: not running on asyncio (nats-py needs it).
        """
        require_asyncio("lifecycle-nats consuming")
        path = None
        if self.state_dir is not None:
            path = self.state_dir / f"{self.options.stream}-{self.durable}.ids"
        handled = _Handled(self.idempotency_window, path)
        try:
            sub: JetStreamContext.PullSubscription | None = await self._subscribe()
            logger.info(
                "listening",
                servers=self.options.shown_servers,
                stream=self.options.stream,
                durable=self.durable,
                filter=self.filter_subject,
            )
            task_status.started()
            waits = reconnect_waits(self.reconnect_wait)
            outage: str | None = None  # the reason last logged for the current outage
            while not self._stopping:
                try:
                    if sub is None:
                        sub = await self._subscribe()
                        logger.info("listening again", servers=self.options.shown_servers)
                        waits, outage = reconnect_waits(self.reconnect_wait), None
                    await self._consume(sub, handled)
                except (NatsError, nats.errors.Error, OSError) as exc:
                    if isinstance(exc, StreamConfigError):
                        raise
                    reason = f"{type(exc).__name__}: {exc}"
                    if reason != outage:  # once per outage and reason, not per attempt
                        logger.warning(
                            "NATS is unreachable; listening again when it is back",
                            reason=reason,
                        )
                        outage = reason
                    sub = None
                    await self._close()
                    await anyio.sleep(next(waits))
        finally:
            handled.close()
            with anyio.CancelScope(shield=True):
                await self._close()

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        client = await self.options.connect()
        self._client = client
        js = client.jetstream(timeout=self.options.ack_timeout)
        await ensure_stream(js, self.options)
        if self.handled_bucket is not None:
            self._shared = await SharedRecord.open(
                js,
                self.handled_bucket,
                self.handled_ttl,
                write_timeout=self.options.ack_timeout,
                memory=self.options.storage == "memory",
            )
        await self._ensure_consumer(js)
        return await js.pull_subscribe_bind(self.durable, stream=self.options.stream)

    async def _ensure_consumer(self, js: JetStreamContext) -> None:
        wanted = self.filter_subject
        try:
            info = await js.consumer_info(self.options.stream, self.durable)
        except nats.js.errors.NotFoundError:
            await js.add_consumer(
                self.options.stream,
                ConsumerConfig(
                    durable_name=self.durable,
                    ack_policy=AckPolicy.EXPLICIT,
                    ack_wait=self.ack_wait,
                    deliver_policy=DeliverPolicy.ALL
                    if self.deliver == "all"
                    else DeliverPolicy.NEW,
                    filter_subject=wanted,
                    max_ack_pending=max(1000, self.batch * 4),
                ),
            )
            return
        have = info.config.filter_subject or ">"
        if have != wanted:
            raise StreamConfigError(
                self.options.stream,
                f"the durable consumer {self.durable!r} filters {have!r}, but these filters "
                f"need {wanted!r}; give the listener another durable name, or delete the "
                f"consumer (nats consumer rm {self.options.stream} {self.durable})",
            )

    async def _parse(self, message: Msg) -> Event | None:
        try:
            return _with_trace(Event.from_json(message.data), message.headers)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            self.terminated += 1
            logger.error(
                "not a lifecycle event; terminated",
                subject=message.subject,
                error=f"{type(exc).__name__}: {exc}",
                data=message.data[:200].decode("utf-8", "replace"),
            )
            await message.term()
            return None

    async def _consume(self, sub: JetStreamContext.PullSubscription, handled: _Handled) -> None:
        """Fetch and handle messages until :meth:`stop` or a failure.

        The messages of one run (environment and run id) go through one lane, in the
        order the stream delivered them; up to ``concurrency`` lanes are handled at once,
        so that a handler hanging to its timeout holds up only the events of its own run.
        A handled message goes to the acknowledging task, which acknowledges it once its
        id is stored (the writes are in flight while the next messages are handled): in
        order of completion, never before its own handlers finished. At most ``2 x batch +
        concurrency`` messages are in hand (fetched, not yet acknowledged); the next
        batch is fetched once there is room for a whole one.

        Returns once every message in hand is done (acknowledged, or handed back when
        stopping or after a failure).

        Raises:
            NatsError, nats.errors.Error, OSError: the connection or the shared record
                failed; what was not recorded is not acknowledged (it comes again after
                ``ack_wait``).
        """
        held = _Room(2 * self.batch + self.concurrency)
        running = anyio.Semaphore(self.concurrency)
        lanes: dict[tuple[str, str], deque[tuple[Msg, Event]]] = {}
        failures: list[Exception] = []
        storing = _Storing()
        async with anyio.create_task_group() as group:
            group.start_soon(self._acknowledge, storing, held, failures)
            try:
                async with anyio.create_task_group() as lane_group:
                    while not self._stopping and not failures:
                        # Whole batches: a fetch costs a round trip, whatever its size.
                        await held.wait_for(self.batch)
                        try:
                            messages = await sub.fetch(self.batch, timeout=_FETCH_WAIT)
                        except (nats.errors.TimeoutError, asyncio.TimeoutError):
                            # No message within the wait (nats-py raises either kind).
                            if self._client is None or not self._client.is_connected:
                                failures.append(NatsError("the connection to NATS was lost"))
                            continue
                        except (nats.errors.Error, OSError) as exc:
                            failures.append(exc)
                            break
                        held.take(len(messages))
                        for message in messages:
                            event = await self._parse(message)
                            if event is None:
                                held.release()
                                continue
                            lane = (event.environment.name, event.run_id)
                            queue = lanes.get(lane)
                            if queue is not None:
                                queue.append((message, event))
                                continue
                            lanes[lane] = deque([(message, event)])
                            lane_group.start_soon(
                                self._lane, lane, lanes, handled, running, held, storing,
                                failures,
                            )  # fmt: skip
            finally:
                storing.close()
        if failures:
            raise failures[0]

    async def _lane(
        self,
        lane: tuple[str, str],
        lanes: dict[tuple[str, str], deque[tuple[Msg, Event]]],
        handled: _Handled,
        running: anyio.Semaphore,
        held: _Room,
        storing: _Storing,
        failures: list[Exception],
    ) -> None:
        """Handle the messages of one run in order, while any come; then end."""
        queue = lanes[lane]
        async with running:
            while queue:
                message, event = queue.popleft()
                if self._stopping or failures:
                    await _give_back(message)
                    held.release()
                    continue
                try:
                    sent = await self._settle(message, event, handled)
                    if sent is None:
                        await message.ack()
                        held.release()
                        continue
                except (NatsError, nats.errors.Error, OSError) as exc:
                    failures.append(exc)
                    held.release()
                    continue
                storing.put(message, sent)
            # No await since the queue was seen empty: nothing was added meanwhile.
            del lanes[lane]

    async def _settle(
        self, message: Msg, event: Event, handled: _Handled
    ) -> asyncio.Future[Any] | None:
        """Handle ``event`` unless known; the shared record's write to await, if any."""
        shared = self._shared
        if shared is None:
            await self._handle_one(event, handled)
            return None
        key = record_key(self.options.stream, self.durable, event.event_id)
        if (
            message.metadata.num_delivered > 1
            and event.event_id not in handled.ids
            and self.wants(event)
            and await shared.contains(key)
        ):
            self.duplicates += 1
            self.shared_duplicates += 1
            logger.debug("handled by another listener; acknowledged", event_id=event.event_id)
            handled.add(event.event_id)
            return None
        if (await self._handle_one(event, handled)) is None:
            return None
        # Handled now, or (rare, a redelivery to this listener) before: in case writing
        # the shared record failed then, write it (again).
        return await shared.send(key)

    async def _acknowledge(self, storing: _Storing, held: _Room, failures: list[Exception]) -> None:
        """Acknowledge each handled message once its id is stored, in order of completion."""
        shared = self._shared

        async def drain() -> None:
            # Shielded: a handled message is acknowledged even when the listener is
            # cancelled, so that it is not delivered again needlessly.
            with anyio.CancelScope(shield=True):
                while storing.queue:
                    message, sent = storing.queue.popleft()
                    try:
                        assert shared is not None
                        await shared.stored(sent)
                        await message.ack()
                    except (NatsError, nats.errors.Error, OSError) as exc:
                        failures.append(exc)  # not acknowledged: it comes after ack_wait
                    finally:
                        held.release()

        try:
            while await storing.wait():
                await drain()
        finally:
            await drain()

    async def _handle_one(self, event: Event, handled: _Handled) -> bool | None:
        """Emit ``event`` unless known or filtered; ``None`` if filtered, else whether emitted.

        The emitted event's id is recorded here (memory and file) before returning.
        """
        if event.event_id in handled:
            self.duplicates += 1
            logger.debug("already handled; acknowledged again", event_id=event.event_id)
            return False
        if not self.wants(event):
            self.skipped += 1
            return None
        await self.bus.emit(event)
        handled.add(event.event_id)
        self.handled += 1
        return True

    async def _close(self) -> None:
        client, self._client = self._client, None
        self._shared = None
        if client is not None:
            with contextlib.suppress(Exception):
                with anyio.move_on_after(2):
                    await client.close()


def _with_trace(event: Event, headers: dict[str, str] | None) -> Event:
    """``event`` with the trace context of the message's headers, if it does not carry one
    (a publisher that sets only the headers): a tracing adapter on the bus finds it there."""
    if not headers or event.attributes.get("traceparent") or not headers.get("traceparent"):
        return event
    trace = {name: headers[name] for name in TRACE_HEADERS if headers.get(name)}
    return event.evolve(attributes={**event.attributes, **trace})


async def _give_back(message: Msg) -> None:
    with contextlib.suppress(Exception):
        await message.nak()


_SOURCE_OPTIONS = (
    "durable",
    "signals",
    "environments",
    "labels",
    "idempotency_window",
    "state_dir",
    "handled_bucket",
    "handled_ttl",
    "ack_wait",
    "batch",
    "concurrency",
    "deliver",
    "reconnect_wait",
)
"""The options of :func:`source` besides the NATS connection's."""


def source(
    bus: EventBus,
    *,
    durable: str = "lifecycle-listen",
    signals: Iterable[str] = (),
    environments: Iterable[str] = (),
    labels: Iterable[str] = (),
    idempotency_window: int = 10_000,
    state_dir: str | os.PathLike[str] | bool | None = None,
    handled_bucket: str | bool = DEFAULT_BUCKET,
    handled_ttl: float = 3600.0,
    ack_wait: float = 30.0,
    batch: int = 64,
    concurrency: int = 16,
    deliver: str = "all",
    reconnect_wait: float = 2.0,
    **nats_options: Any,
) -> Source:
    """A :class:`Source` that consumes lifecycle events from JetStream into ``bus``.

    Args:
        bus: where the events are emitted again, with whatever is subscribed to it.
        durable: the durable consumer's name; listeners sharing it split the work.
        signals: only these signals (``environment.exited``, ...); default all.
        environments: only these environment names; default all.
        labels: only environments that carry all these labels.
        idempotency_window: how many handled event ids are remembered, so that a
            redelivered one is acknowledged without being handled again.
        state_dir: where the handled ids are kept across restarts (default:
            ``$LIFECYCLE_NATS_STATE``, else ``listen`` in the user's state directory);
            ``False`` keeps them in memory only.
        handled_bucket: the JetStream KV bucket where every listener records the events
            it handled (created if missing), so that a message redelivered to another
            listener sharing ``durable`` is not handled again; ``False`` to do without
            (one write and, for an id not in memory, one read per message less).
        handled_ttl: seconds an id stays in ``handled_bucket`` (its TTL, for a bucket
            created here); keep it well above ``ack_wait``.
        ack_wait: seconds the server waits for an acknowledgement before redelivering;
            keep it above your handlers' timeouts.
        batch: messages fetched at once.
        concurrency: messages handled at once (each run's events still one after the
            other, in order): a handler that hangs to its timeout holds up only the
            events of its own run. 1 handles one message at a time.
        deliver: ``all`` (a new consumer starts at the stream's first message) or ``new``.
        reconnect_wait: the longest wait between reconnection attempts, in seconds.
        nats_options: see :class:`NatsOptions` (``servers``, ``stream``, ...).

    A single signal and/or environment filter narrows the consumer's subject filter;
    the rest is filtered here (those messages are acknowledged and skipped).

    Raises:
        TypeError, ValueError: an option is wrong; the message names it.

    .. versionadded:: 0.2
    """
    unknown = sorted(set(nats_options) - set(NatsOptions.names()))
    if unknown:
        # Not NatsOptions.build's message: it would list the NATS options alone.
        known = sorted((*_SOURCE_OPTIONS, *NatsOptions.names()))
        raise TypeError(f"unknown option {unknown[0]!r}; the options are {', '.join(known)}")
    options = NatsOptions.build(**nats_options)
    if not isinstance(durable, str) or not durable or any(c in durable for c in ".*> \t/\\"):
        raise ValueError(
            f"durable must be a consumer name (no '.', '*', '>', '/', '\\' or spaces), not {durable!r}"
        )
    for name, value in (
        ("idempotency_window", idempotency_window),
        ("batch", batch),
        ("concurrency", concurrency),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, not {value!r}")
    if deliver not in _DELIVER:
        raise ValueError(f"deliver must be one of {', '.join(_DELIVER)}, not {deliver!r}")
    directory: Path | None
    if state_dir is False:
        directory = None
    elif state_dir is None or state_dir is True:
        directory = _default_state_dir()
    elif isinstance(state_dir, (str, os.PathLike)):
        directory = Path(state_dir)
    else:
        raise TypeError(f"state_dir must be a path or false, not {state_dir!r}")
    bucket: str | None
    if handled_bucket is False:
        bucket = None
    elif handled_bucket is True:
        bucket = DEFAULT_BUCKET
    else:
        bucket = check_bucket(handled_bucket)
    return Source(
        bus,
        options,
        durable=durable,
        signals=_names("signals", signals),
        environments=_names("environments", environments),
        labels=frozenset(_names("labels", labels)),
        idempotency_window=idempotency_window,
        state_dir=directory,
        handled_bucket=bucket,
        handled_ttl=_seconds("handled_ttl", handled_ttl),
        ack_wait=_seconds("ack_wait", ack_wait),
        batch=batch,
        concurrency=concurrency,
        deliver=deliver,
        reconnect_wait=_seconds("reconnect_wait", reconnect_wait),
    )
