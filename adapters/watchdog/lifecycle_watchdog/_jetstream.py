"""The watchdog on NATS JetStream: rebuild from the stream and the bucket, then watch.

Why an *ordered* consumer, one per watchdog, and not a durable consumer shared by all:
judging a run needs every one of its heartbeats. A durable consumer shared by several
watchdogs hands each message to one of them, so each would see a fraction of a run's
beats and call it lost. So each watchdog reads the whole stream through its own ordered
consumer (ephemeral, flow-controlled, recreated by nats-py at the right sequence after a
gap or a reconnect), and the watchdogs agree through the key-value bucket: every verdict
is a compare-and-set there, and carries a deterministic ``Nats-Msg-Id``. Nothing needs
acking, and a watchdog that dies loses nothing the next one cannot rebuild.

Where a watchdog starts reading: the bucket keeps a checkpoint (the stream sequence and
time up to which the shared table is written). A restarted watchdog loads the table,
replays the stream from ``checkpoint time - lookback`` (the longest allowance of a live
run, or the longest expected slot), then judges: a run that went silent while no watchdog
was running is declared lost once, on restart. With no checkpoint (the very first start)
it replays ``rebuild_window`` seconds.

Time: a run's last sign of life is the time the *server* stored its event (from the
message metadata), so watchdogs on different hosts agree; ``now`` is the watchdog's own
clock, which must be roughly in sync with the server's (NTP; skew adds to the allowance).
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, TypeAlias

import anyio
import nats
import nats.aio.client
import nats.errors
import structlog
from lifecycle_nats import NatsOptions, show_server, subject_for
from lifecycle_nats import ensure_stream as _ensure_stream
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from ._service import Publish, Watchdog
from ._store import JetStreamStore

if TYPE_CHECKING:
    from collections.abc import Callable

    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

    from lifecycle import Event, EventBus

    from ._judge import Judge

__all__ = ["Settings", "connect", "run_watchdog", "status_subject"]

logger = structlog.get_logger("lifecycle.watchdog")

_IDLE_HEARTBEAT = 1.0
"""Seconds between the server's idle heartbeats on the watchdog's consumer."""

_NATS_ERRORS = (nats.errors.Error, TimeoutError, OSError)
"""What a request to a server that is away (or just back) raises."""

Pending: TypeAlias = "tuple[int, float] | None"
"""A judgement waiting for the reading: (stream sequence to read up to, as of when)."""


@dataclass(frozen=True)
class Settings:
    """Where the events are and how the watchdog reads them.

    Args:
        servers: NATS server URLs.
        stream: the JetStream stream that ``lifecycle-nats`` publishes to.
        subject_prefix: the first token of the event subjects.
        bucket: the key-value bucket of the run table.
        tick: seconds between two judgements (verdicts come at most this late).
        rebuild_window: seconds of stream read on a first start (no checkpoint yet).
        checkpoint_every: seconds between two checkpoints written to the bucket.
        connect_timeout: seconds to reach the server at start.
        create_stream: create the stream when it is missing (``lifecycle-nats`` does it
            too, with the same defaults).
        report_every: seconds between two log lines on how far the watchdog has read.
        resume_grace: seconds after the watchdog gets the server back (a restart, a
            network cut) before a run's silence counts again: while the server was away
            no run could store a heartbeat, and publishers take a moment to reconnect
            (lifecycle-nats' ``reconnect_wait`` is 2 s).
        user, password, token, creds: credentials, as lifecycle-nats takes them
            (``creds`` is the path of a ``.creds`` file); never shown.

    .. versionadded:: 0.2
    """

    servers: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    stream: str = "LIFECYCLE"
    subject_prefix: str = "lifecycle"
    bucket: str = "lifecycle_runs"
    tick: float = 0.1
    rebuild_window: float = 3600.0
    checkpoint_every: float = 2.0
    connect_timeout: float = 5.0
    create_stream: bool = True
    report_every: float = 60.0
    resume_grace: float = 5.0
    name: str = field(default="lifecycle-watchdog")
    user: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    creds: str | None = None

    @property
    def shown_servers(self) -> str:
        """The servers as messages show them: ``nats://host:port``, nothing else."""
        return ", ".join(show_server(url) for url in self.servers)

    def nats_options(self) -> NatsOptions:
        """These settings as lifecycle-nats' options (servers, stream, credentials)."""
        return NatsOptions.build(
            servers=self.servers,
            stream=self.stream,
            subject_prefix=self.subject_prefix,
            create_stream=self.create_stream,
            user=self.user,
            password=self.password,
            token=self.token,
            creds=self.creds,
            name=self.name,
            connect_timeout=self.connect_timeout,
        )


def status_subject(settings: Settings) -> str:
    """Where a running watchdog answers ``lifecycle runs`` with its table (core NATS).

    Outside the stream's subjects on purpose: a request must not be stored as an event.
    """
    return f"lifecycle_watchdog.{settings.stream}.runs"


# Stay well below NATS' default 1 MB max_payload.
_STATUS_LIMIT = 900_000


def status_payload(dog: Watchdog) -> bytes:
    """The live runs and those that ended recently as JSON; cut if it must be, ended runs
    first, then the live runs seen longest ago."""
    rows = [record.to_dict() for record in (*dog.ended(), *dog.live())]
    for row in rows:
        row.pop("lost_event", None)
    truncated = 0
    data = json.dumps({"source": "watchdog", "runs": rows, "truncated": 0}).encode()
    while len(data) > _STATUS_LIMIT and rows:
        cut = max(1, len(rows) // 4)
        del rows[:cut]
        truncated += cut
        data = json.dumps({"source": "watchdog", "runs": rows, "truncated": truncated}).encode()
    return data


async def connect(settings: Settings, on_reconnect: Callable[[], object] | None = None) -> Client:
    """Connect to NATS within ``connect_timeout``.

    Raises:
        lifecycle_nats.NatsConnectError: no server answered in time (the message names
            the servers), or one refused the credentials (at once; the message names the
            credential option and says what the server said).

    Once connected, the client reconnects forever (calling ``on_reconnect`` each time):
    a watchdog outlives server restarts.
    """

    options = settings.nats_options()
    errors: list[BaseException] = []  # of the first connection, for its error message
    connected = False
    refused = anyio.CancelScope()

    async def on_error(exc: Exception) -> None:
        if connected:
            logger.warning("watchdog: NATS connection error", error=str(exc) or type(exc).__name__)
            return
        errors.append(exc)
        if options.refuses_credentials(exc):
            # nats-py would try again forever: the answer will not change, say it now.
            refused.cancel()

    client = nats.aio.client.Client()

    async def on_disconnected() -> None:
        if not client.is_closed:  # a close of our own is no loss
            logger.warning("watchdog: lost the NATS server; nothing is judged until it is back")

    async def on_reconnected() -> None:
        logger.info(
            "watchdog: the NATS server is back; silence counts again after resume_grace",
            resume_grace=settings.resume_grace,
        )
        if on_reconnect is not None:
            on_reconnect()

    try:
        # nats-py retries the first connection forever too when reconnects are unbounded,
        # so the bound on the first one is ours.
        with anyio.fail_after(settings.connect_timeout), refused:
            await client.connect(
                list(settings.servers),
                name=settings.name,
                # Annotated int in nats-py, used as asyncio.wait_for's float timeout.
                connect_timeout=settings.connect_timeout,  # type: ignore[arg-type]
                max_reconnect_attempts=-1,
                allow_reconnect=True,
                error_cb=on_error,
                disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected,
                **options.credentials(),
            )
            connected = True
            return client
        failure = options.connect_error(errors)  # refused: the scope was cancelled
    except TimeoutError:
        failure = options.connect_error(errors, waited=settings.connect_timeout)
    except Exception as exc:
        failure = options.connect_error([*errors, exc])
    with anyio.move_on_after(2, shield=True):
        await client.close()  # stops nats-py's own attempts
    raise failure


async def ensure_stream(js: JetStreamContext, settings: Settings) -> None:
    """The stream, created with lifecycle-nats' defaults if missing, checked if present."""
    await _ensure_stream(js, settings.nats_options())


def publisher(js: JetStreamContext, settings: Settings) -> Publish:
    async def publish(event: Event, msg_id: str) -> None:
        subject = subject_for(event.name, event.environment.name, settings.subject_prefix)
        await js.publish(
            subject,
            event.to_json().encode(),
            stream=settings.stream,
            headers={"Nats-Msg-Id": msg_id},
        )

    return publish


async def run_watchdog(
    settings: Settings,
    judge: Judge,
    bus: EventBus | None = None,
    *,
    ready: Callable[[Watchdog], object] | None = None,
    clock: Callable[[], float] = time.time,
) -> None:
    """Rebuild the table, then watch the stream until cancelled (asyncio only: nats-py).

    Args:
        settings: where the events and the table are.
        judge: the policy and expectations, with an empty table.
        bus: where the verdicts are emitted for the notifying adapters.
        ready: called with the watchdog once it has caught up with the stream and
            judges (tests and ``lifecycle watch`` use it to say so).
        clock: POSIX seconds now.

    .. versionadded:: 0.2
    """

    def regained() -> None:
        # While the server was away no run could store a heartbeat: that silence is not
        # theirs (see Settings.resume_grace).
        judge.silence_from = max(judge.silence_from, clock() + settings.resume_grace)

    nc = await connect(settings, on_reconnect=regained)
    try:
        js = nc.jetstream()
        await ensure_stream(js, settings)
        store = await JetStreamStore.open(js, settings.bucket)
        publish = publisher(js, settings)
        dog = Watchdog(judge, store, publish=publish, bus=bus, clock=clock)
        checkpoint = await dog.restore()
        now = clock()
        if checkpoint is None:
            start = now - settings.rebuild_window
            judge.slots_from = now
        else:
            start = checkpoint[1] - judge.lookback() - 2 * settings.tick - 1.0
            judge.slots_from = min(checkpoint[1], now)
        async with anyio.create_task_group() as background:
            dog.background = background
            await _watch(nc, js, settings, dog, start, ready, clock)
            background.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            try:
                await nc.drain()
            except _NATS_ERRORS:
                # Stopped while the server is away: nothing in flight can be drained.
                await nc.close()


async def _first_sequence(js: JetStreamContext, settings: Settings, start: float) -> int:
    """The stream sequence to read from so as to see every event stored since ``start``.

    Asked of a short-lived consumer that starts by time, so that the watchdog's ordered
    consumer starts by sequence. nats-py (2.16) recreates an ordered consumer (after a gap,
    or once a server restart lost it) by sequence but keeps the first request's start
    time, which the server refuses ("deliver by start sequence, but optional start time is
    also set"): a watchdog that started by time went deaf at the first server restart
    (nats.go fixed the same bug in its PR 1341).
    """
    info = await js.add_consumer(
        settings.stream,
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_TIME,
            opt_start_time=datetime.fromtimestamp(max(start, 0.0), timezone.utc),
            filter_subject=f"{settings.subject_prefix}.>",
            ack_policy=AckPolicy.NONE,
            inactive_threshold=60.0,  # gone by itself should the delete below not happen
            mem_storage=True,
        ),
    )
    await js.delete_consumer(settings.stream, info.name)
    # Before it delivered anything, its position is one short of the first match.
    return (info.delivered.stream_seq if info.delivered else 0) + 1


async def _watch(
    nc: Client,
    js: JetStreamContext,
    settings: Settings,
    dog: Watchdog,
    start: float,
    ready: Callable[[Watchdog], object] | None,
    clock: Callable[[], float],
) -> None:
    # A plain deque between nats-py's delivery task and ours: both run on the one asyncio
    # loop, and an anyio memory stream cost as much per message as judging it.
    inbox: deque[Msg] = deque()

    async def deliver(msg: Msg) -> None:
        inbox.append(msg)

    sub = await js.subscribe(
        f"{settings.subject_prefix}.>",
        stream=settings.stream,
        cb=deliver,
        ordered_consumer=True,
        # A consumer lost with a server restart is noticed after two missed beats.
        idle_heartbeat=_IDLE_HEARTBEAT,
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=await _first_sequence(js, settings, start),
        ),
    )
    judge = dog.judge
    last_time = 0.0
    saved = 0
    next_checkpoint = clock() + settings.checkpoint_every
    caught_up_once = False
    status = None

    async def answer(msg: Msg) -> None:
        if msg.reply:
            await msg.respond(status_payload(dog))

    async def stream_end() -> int:
        # When the stream holds `prefix.>` alone, its last sequence now is one we will
        # read; when it holds other subjects too, read_everything settles it.
        return (await js.stream_info(settings.stream)).state.last_seq

    # The consumer and its own sequence of the last message read: what it delivered is
    # counted in its sequence, not the stream's (see read_everything).
    read_to = ("", 0)

    async def read_everything() -> bool:
        # For a stream that also holds other subjects (whose last message we never
        # read): the consumer has nothing more for us, and we have read what it sent.
        # Its *stream* position is no measure of that: the server moves it past the
        # other subjects' messages it skips, so it may be ahead of anything delivered.
        info = await sub.consumer_info()
        if inbox or info.num_pending:
            return False
        delivered = (info.delivered.consumer_seq if info.delivered else 0) or 0
        # An ordered consumer that was recreated restarts its count under a new name.
        consumer, count = read_to
        return not delivered or (consumer == info.name and count >= delivered)

    # A judgement waits until everything stored before it was read: at a time T, note the
    # stream's last sequence; once read up to it, judge *as of T*. A watchdog that lags
    # behind the stream thus never calls a live run lost, even under a steady flow where
    # it is never fully idle.
    pending: Pending = None
    next_judge = clock()
    next_report = next_judge + settings.report_every

    async def judge_step(now: float) -> None:
        nonlocal pending, next_judge, next_report, caught_up_once, status, saved, next_checkpoint
        if now >= next_judge:
            # Always move on: a judgement still waiting for the reading to catch up
            # must not turn the sleep below into a busy loop.
            next_judge = now + settings.tick
            if pending is None:
                if not caught_up_once or dog.has_due(now):
                    pending = (await stream_end(), now)
                else:
                    dog._round_done()  # nothing was due
        if now >= next_report:
            next_report = now + settings.report_every
            logger.info(
                "watchdog: reading",
                read_up_to=judge.consumed,
                buffered=len(inbox),
                waiting_for=None if pending is None else pending[0],
                runs=len(judge.table),
                verdicts=dict(dog.verdicts),
            )
        if (
            pending is not None
            and judge.consumed < pending[0]
            and not inbox
            and now - pending[1] > 1.0
            and await read_everything()
        ):
            pending = (judge.consumed, pending[1])
        if pending is not None and judge.consumed >= pending[0]:
            await dog.judge_now(now=pending[1])
            pending = None
            if not caught_up_once:
                caught_up_once = True
                status = await nc.subscribe(status_subject(settings), cb=answer)
                if ready is not None:
                    ready(dog)
        if now >= next_checkpoint and caught_up_once and judge.consumed > saved:
            await dog.flush()  # the table holds everything up to `consumed`
            await dog.store.save_checkpoint(judge.consumed, last_time)
            saved = judge.consumed
            next_checkpoint = now + settings.checkpoint_every

    failing = False
    try:
        while True:
            # Take what has arrived (bounded, so judging keeps its pace under load).
            for _ in range(50_000):
                if not inbox:
                    break
                msg = inbox.popleft()
                meta = msg.metadata
                seq = meta.sequence.stream
                read_to = (meta.consumer or "", meta.sequence.consumer or 0)
                seen_at = meta.timestamp.timestamp()
                last_time = seen_at
                try:
                    await dog.feed_json(msg.data, seen_at, seq)
                except (ValueError, TypeError, KeyError) as exc:
                    judge.consumed = max(judge.consumed, seq)
                    logger.warning(
                        "watchdog: not a lifecycle event, skipped",
                        subject=msg.subject,
                        seq=seq,
                        error=str(exc),
                    )
                except _NATS_ERRORS as exc:
                    # The server went away while this event's table write was in flight:
                    # the event is read all the same (a restarted watchdog learns it again).
                    logger.error(
                        "watchdog: a run-table write failed",
                        subject=msg.subject,
                        seq=seq,
                        error=str(exc) or type(exc).__name__,
                    )
            now = clock()
            try:
                await judge_step(now)
            except _NATS_ERRORS as exc:
                # The server is away (or back, with JetStream not ready yet): nothing is
                # judged without it; the next tick tries again.
                pending = None
                if not failing:
                    logger.warning(
                        "watchdog: NATS did not answer; judging again once it does",
                        error=str(exc) or type(exc).__name__,
                    )
                failing = True
            else:
                failing = False
            # Sleep until the next judgement and read in batches (waking per message would
            # cost more than reading it); while a judgement waits for the reading, look
            # every 10 ms so the verdict is not a whole tick late.
            wake = next_judge if pending is None else min(next_judge, now + 0.01)
            await anyio.sleep(max(0.0, wake - clock()))
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(2):
            if caught_up_once and judge.consumed > saved and nc.is_connected:
                await dog.flush()
                await dog.store.save_checkpoint(judge.consumed, last_time)
            await sub.unsubscribe()
            if status is not None:
                await status.unsubscribe()
            inbox.clear()
