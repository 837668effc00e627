"""lifecycle-nats against raw nats-py JetStream: publish throughput, end-to-end latency, scale.

    uv run python -m benchmarks.nats_bench            # throughput and latency, ~1 minute
    uv run python -m benchmarks.nats_bench --quick    # smoke run, seconds
    uv run python -m benchmarks.nats_bench --scale    # also 10,000 runs heartbeating, 30 s

It starts its own ``nats-server -js`` (file storage) in a temporary directory with the
tests' harness (``lifecycle_testing.NatsServer``: the server picks its port), so nothing
else on the machine's NATS is touched. Every comparison runs in one process and one
asyncio loop, the alternatives alternating round by round:

- publish throughput (events/s, each acknowledged by JetStream): ``bus.emit`` with the
  ``nats`` adapter attached, until every event is acknowledged; against raw nats-py
  ``js.publish`` awaited one by one, and raw ``js.publish_async`` with the same window of
  acknowledgements in flight as the adapter (256). Same payload (the event's JSON), same
  ``Nats-Msg-Id`` header.
- consume throughput (events/s): ``lifecycle_nats.source`` emitting each stored event on a
  bus with one inline handler, acking each; with the shared record of handled ids (the
  default: a KV read and a KV write per message) and without it (``handled_bucket=False``:
  the listener's own record only); against a raw pull subscriber that fetches 256 at a
  time, parses each into an ``Event`` and acks it.
- end-to-end latency, one event at a time, alternating between the two paths (both set
  up side by side): ``bus.emit`` on one bus to the handler on the bus of
  ``lifecycle_nats.source``; against raw ``js.publish`` to a raw pull subscriber's
  ``fetch`` (acking each message).
- listener lag behind a hanging handler (issue 19): 6 ``exited`` events of 6 runs sent at
  once to a running ``source``, whose bus has a quick handler and one that hangs to its
  2 s timeout on every event; the lag of the last event (when the quick handler saw it,
  when its handlers were done), handling one message at a time (``concurrency=1``, as
  before) and with the default ``concurrency=16``.
- a broker restart (issue 15): 100 publishers in this process lose the broker together
  (SIGKILL), it is back 3 s later; when each stores an event again, with the reconnect
  waits of before (doubling, no jitter) and the jittered ones.
- ``--scale``: 10,000 simulated runs, each a heartbeat a second, published through the
  adapter by child processes (4, each with its share of the runs), consumed by one
  ``source`` here for a bounded time;
  reports the rate, the lag (handler time - event timestamp, median and p99) and the CPU
  of the listener, the publisher and the server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import anyio
import nats
import structlog
from lifecycle_testing import NatsServer, poll
from nats.js.api import ConsumerConfig, DeliverPolicy

from lifecycle import EXITED, HEARTBEAT, EnvironmentInfo, Event, EventBus

if TYPE_CHECKING:
    from collections.abc import Iterator

WINDOW = 256


@contextlib.contextmanager
def nats_server() -> Iterator[NatsServer]:
    """The tests' harness: ``nats-server -js`` on a port it picks, in a temporary directory."""
    with tempfile.TemporaryDirectory() as directory:
        server = NatsServer(Path(directory))
        server.start()
        try:
            yield server
        finally:
            server.stop(signal.SIGTERM)


def events(count: int, env: str = "bench") -> list[Event]:
    info = EnvironmentInfo.current(env, ["bench"])
    return [
        Event(name=HEARTBEAT, run_id="run", environment=info, attributes={"sequence": i})
        for i in range(count)
    ]


def say(text: str) -> None:
    print(f"nats_bench: {text}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- publish throughput ---------------------------------------------------------------


async def ours_publish(url: str, batch: list[Event], spool: Path) -> float:
    import lifecycle_nats

    bus = EventBus(name="bench", max_background=WINDOW * 4)
    adapter = lifecycle_nats.attach(bus, servers=url, spool_dir=spool, stream="BENCH")
    # Connect (and check the stream) before the clock starts, as the raw clients do.
    await adapter.publisher.publish(events(1, "warm")[0])
    started = time.perf_counter()
    for event in batch:
        await bus.emit(event)
    # Heartbeats are queued inline, in order: wait for the last acknowledgement.
    await adapter.publisher.flush()
    elapsed = time.perf_counter() - started
    await bus.aclose()
    assert adapter.publisher.published == len(batch) + 1
    await adapter.aclose()
    return len(batch) / elapsed


async def raw_publish(url: str, batch: list[Event], pipelined: bool) -> float:
    client = await nats.connect(url)
    js = client.jetstream()
    subject = f"lifecycle.heartbeat.{batch[0].environment.name}"
    # The event's JSON is made in the loop, as any client of raw nats-py would have to.
    started = time.perf_counter()
    if pipelined:
        pending: list[asyncio.Future[Any]] = []
        for e in batch:
            pending.append(
                await js.publish_async(
                    subject, e.to_json().encode(), headers={"Nats-Msg-Id": e.event_id}
                )
            )
            if len(pending) >= WINDOW:
                await pending.pop(0)
        await asyncio.gather(*pending)
    else:
        for e in batch:
            await js.publish(subject, e.to_json().encode(), headers={"Nats-Msg-Id": e.event_id})
    elapsed = time.perf_counter() - started
    await client.close()
    return len(batch) / elapsed


# -- consume throughput ------------------------------------------------------------------


async def fill(url: str, env: str, count: int) -> None:
    """Store ``count`` heartbeats of environment ``env`` in the stream (not timed)."""
    client = await nats.connect(url)
    js = client.jetstream()
    pending = [
        await js.publish_async(
            f"lifecycle.heartbeat.{env}", e.to_json().encode(), headers={"Nats-Msg-Id": e.event_id}
        )
        for e in events(count, env)
    ]
    await asyncio.gather(*pending)
    await client.close()


async def ours_consume(url: str, count: int, env: str, state: Path, shared: bool = True) -> float:
    import lifecycle_nats

    await fill(url, env, count)
    got = 0
    done = asyncio.Event()

    def handler(event: Event) -> None:
        nonlocal got
        got += 1
        if got >= count:
            done.set()

    bus = EventBus(name="consume")
    bus.subscribe(HEARTBEAT, handler, inline=True)
    source = lifecycle_nats.source(
        bus, servers=url, stream="BENCH", durable=env, environments=[env], batch=256,
        state_dir=state, handled_bucket="bench_handled" if shared else False,
    )  # fmt: skip
    async with anyio.create_task_group() as group:
        # The clock starts once connected and subscribed, as for the raw subscriber.
        await group.start(source.run)
        started = time.perf_counter()
        await asyncio.wait_for(done.wait(), 120)
        elapsed = time.perf_counter() - started
        source.stop()
    await bus.aclose()
    return count / elapsed


async def raw_consume(url: str, count: int, env: str) -> float:
    await fill(url, env, count)
    client = await nats.connect(url)
    js = client.jetstream()
    sub = await js.pull_subscribe(f"lifecycle.heartbeat.{env}", durable=env, stream="BENCH")
    started = time.perf_counter()
    got = 0
    while got < count:
        try:
            messages = await sub.fetch(256, timeout=0.5)
        except (nats.errors.TimeoutError, asyncio.TimeoutError):
            continue
        for message in messages:
            Event.from_json(message.data)  # the same parsing the listener does
            await message.ack()
            got += 1
    elapsed = time.perf_counter() - started
    await client.close()
    return count / elapsed


# -- end-to-end latency ---------------------------------------------------------------


async def latency(
    url: str, count: int, spool: Path, state: Path
) -> tuple[list[float], list[float]]:
    """Both paths set up side by side; events alternate between them, one at a time."""
    import lifecycle_nats

    ours: list[float] = []
    raw: list[float] = []
    arrived = asyncio.Event()
    sent_at = 0.0

    def handler(event: Event) -> None:
        ours.append(time.perf_counter() - sent_at)
        arrived.set()

    listen_bus = EventBus(name="listener")
    listen_bus.subscribe(HEARTBEAT, handler, inline=True)
    source = lifecycle_nats.source(
        listen_bus, servers=url, stream="BENCH", durable=f"lat{time.time_ns()}",
        environments=["latency"], deliver="new", state_dir=state,
    )  # fmt: skip
    bus = EventBus(name="emitter")
    adapter = lifecycle_nats.attach(bus, servers=url, spool_dir=spool, stream="BENCH")
    await adapter.publisher.publish(events(1, "warm")[0])

    client = await nats.connect(url)
    js = client.jetstream()
    sub = await js.pull_subscribe(
        "lifecycle.heartbeat.rawlat",
        durable=f"raw{time.time_ns()}",
        stream="BENCH",
        config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW),
    )
    stop = False

    async def consume() -> None:
        while not stop:
            try:
                messages = await sub.fetch(64, timeout=0.5)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                continue
            for message in messages:
                Event.from_json(message.data)  # the same parsing the listener does
                raw.append(time.perf_counter() - sent_at)
                await message.ack()
                arrived.set()

    async with anyio.create_task_group() as group:
        await group.start(source.run)
        group.start_soon(consume)
        await asyncio.sleep(0.5)  # the raw consumer's first fetch is waiting
        ours_events, raw_events = events(count, "latency"), events(count, "rawlat")
        for index in range(count):
            for which in ("ours", "raw") if index % 2 else ("raw", "ours"):
                arrived.clear()
                sent_at = time.perf_counter()
                if which == "ours":
                    await bus.emit(ours_events[index])
                else:
                    event = raw_events[index]
                    await js.publish(
                        "lifecycle.heartbeat.rawlat", event.to_json().encode(),
                        headers={"Nats-Msg-Id": event.event_id},
                    )  # fmt: skip
                await asyncio.wait_for(arrived.wait(), 10)
        stop = True
        source.stop()
    await client.close()
    await bus.aclose()
    await adapter.aclose()
    await listen_bus.aclose()
    return ours, raw


# -- listener lag behind a hanging handler (issue 19) -------------------------------------

HANG_EVENTS = 6
HANG_TIMEOUT = 2.0


async def hanging_lag(url: str, concurrency: int, spool: Path, state: Path) -> dict[str, float]:
    """Issue 19's scenario: 6 ``exited`` events of 6 runs, sent at once to a running listener
    whose bus has a quick handler and one that hangs to its 2 s timeout on every event.

    Returns the lag of the last event (seconds after it was sent): when the quick handler
    saw it, and when its handlers were all done (the hanging one timed out).
    """
    import lifecycle_nats

    tag = f"lag{concurrency}x{time.time_ns()}"
    seen: dict[str, float] = {}

    def quick(event: Event) -> None:
        seen[event.event_id] = time.perf_counter()

    async def hang(event: Event) -> None:
        await anyio.sleep(3600)

    bus = EventBus(name="lag")
    bus.subscribe(EXITED, quick, inline=True)
    bus.subscribe(EXITED, hang, timeout=HANG_TIMEOUT)
    source = lifecycle_nats.source(
        bus, servers=url, stream=tag.upper(), subject_prefix=tag, durable=tag,
        state_dir=state, concurrency=concurrency,
    )  # fmt: skip
    sent = [
        Event(name=EXITED, run_id=f"run{i}", environment=EnvironmentInfo.current(f"job{i}"))
        for i in range(HANG_EVENTS)
    ]
    sent_at: dict[str, float] = {}
    async with anyio.create_task_group() as group:
        await group.start(source.run)
        async with lifecycle_nats.Publisher(
            servers=url, stream=tag.upper(), subject_prefix=tag, spool_dir=spool
        ) as publisher:
            for event in sent:
                sent_at[event.event_id] = time.perf_counter()
                await publisher.publish(event)
        # The source's counter, raised after each emit: nothing else to wait on.
        await poll(
            lambda: source.handled >= HANG_EVENTS,
            "the listener to handle every event",
            limit=HANG_EVENTS * HANG_TIMEOUT * 3,
        )
        done = time.perf_counter()
        source.stop()
    await bus.aclose()
    last = sent[-1].event_id
    return {
        "last_seen_s": round(seen[last] - sent_at[last], 3),
        "last_done_s": round(done - sent_at[last], 3),
    }


# -- a broker restart: do the publishers come back together? (issue 15) ------------------


def _lock_step_waits(longest: float, rng: Any = None) -> Iterator[float]:
    """The reconnect waits before issue 15: doubling from 50 ms, no jitter."""
    wait = 0.05
    while True:
        yield wait
        wait = min(wait * 2, longest)


async def reconnect_burst(count: int, jitter: bool, down: float, work: Path) -> dict[str, Any]:
    """``count`` publishers (one process, each its own connection) lose the broker at once
    (SIGKILL); it is back ``down`` seconds later. When does each store an event again?

    Returns the spread of those times after the server is back, and the most that fell
    within one 100 ms window; ``jitter=False`` runs the waits of before (lock-step).
    """
    import lifecycle_nats
    from lifecycle_nats import _publisher

    jittered = _publisher.reconnect_waits
    if not jitter:
        _publisher.reconnect_waits = _lock_step_waits
    server = NatsServer(Path(tempfile.mkdtemp(dir=work)))
    server.start()
    url = server.url
    publishers = [
        lifecycle_nats.Publisher(
            servers=url, stream="BURST", subject_prefix="burst", spool_dir=work / "spool-burst"
        )
        for _ in range(count)
    ]
    try:
        for publisher in publishers:
            publisher.start()
        await asyncio.gather(*(p.publish(events(1, "burst")[0]) for p in publishers))
        server.stop()  # SIGKILL, as a crash would
        stored: list[float] = []
        entries = []
        for publisher in publishers:
            message = _publisher.message_for(events(1, "burst")[0], "burst")
            entry = publisher.submit(message)
            publisher.waiter(entry).add_done_callback(lambda _: stored.append(time.perf_counter()))
            entries.append((publisher, entry))
        await asyncio.sleep(down)
        await asyncio.to_thread(server.start)  # the same port and store
        back = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(p.wait(entry) for p, entry in entries)), down + 30)
    finally:
        _publisher.reconnect_waits = jittered
        for publisher in publishers:
            await publisher.aclose()
        server.stop()
    after = sorted(t - back for t in stored)
    busiest = max(sum(1 for u in after if t <= u < t + 0.1) for t in after)
    return {
        "publishers": count,
        "first_s": round(after[0], 3),
        "median_s": round(statistics.median(after), 3),
        "last_s": round(after[-1], 3),
        "most_within_100ms": busiest,
    }


# -- scale -----------------------------------------------------------------------------

SCALE_CHILD = """
import asyncio, sys, time
import structlog
import lifecycle_nats
structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
from lifecycle import EventBus, EnvironmentInfo, Event, HEARTBEAT

async def main(url, runs, seconds, spool, name):
    bus = EventBus(name="scale", max_background=runs + 100)
    adapter = lifecycle_nats.attach(bus, servers=url, spool_dir=spool, stream="BENCH",
                                    delivery_timeout=5, max_pending=runs * 3)
    infos = [EnvironmentInfo.current(f"{name}run{i}") for i in range(runs)]
    start = time.monotonic()
    tick = 0
    while time.monotonic() - start < seconds:
        for i, info in enumerate(infos):
            await bus.emit(Event(name=HEARTBEAT, run_id=f"r{i}", environment=info,
                                 attributes={"sequence": tick, "interval": 1.0}))
        tick += 1
        await asyncio.sleep(max(0.0, start + tick - time.monotonic()))
    emitted = tick * runs
    await bus.aclose()
    await adapter.aclose(timeout=30)
    p = adapter.publisher
    print(emitted, p.published, p.dropped, p.spooled, flush=True)

asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]))
"""


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as file:
        fields = file.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def scale(
    url: str,
    server_pid: int,
    runs: int,
    publishers: int,
    seconds: float,
    spool: Path,
    state: Path,
) -> dict[str, Any]:
    import lifecycle_nats

    lags: list[float] = []
    received = 0
    want = float("inf")
    all_in = asyncio.Event()

    def handler(event: Event) -> None:
        nonlocal received
        received += 1
        lags.append((datetime.now(timezone.utc) - event.timestamp).total_seconds())
        if received >= want:
            all_in.set()

    bus = EventBus(name="scale-listener")
    bus.subscribe(HEARTBEAT, handler, inline=True)
    source = lifecycle_nats.source(
        bus, servers=url, stream="BENCH", durable=f"scale{time.time_ns()}", deliver="new",
        batch=256, state_dir=state, environments=(),
    )  # fmt: skip
    task = asyncio.ensure_future(source.run())
    await asyncio.sleep(0.5)
    server_cpu = cpu_seconds(server_pid)
    own_cpu = time.process_time()
    share = runs // publishers
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            SCALE_CHILD,
            url,
            str(share),
            str(seconds),
            str(spool / str(index)),
            f"p{index}-",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for index in range(publishers)
    ]
    started = time.monotonic()
    outputs = await asyncio.gather(*(child.communicate() for child in children))
    wall = time.monotonic() - started
    child_usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    warnings = [
        line
        for _, err in outputs
        for line in err.decode().splitlines()
        if "warning" in line or "error" in line
    ]
    emitted = published = dropped = spooled = 0
    for out, _ in outputs:
        counts = [int(x) for x in out.split()[-4:]]
        emitted, published = emitted + counts[0], published + counts[1]
        dropped, spooled = dropped + counts[2], spooled + counts[3]
    # Let the listener drain what is left (bounded).
    want = published
    if received < want:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(all_in.wait(), 60)
    drain = time.monotonic() - started - wall
    listener_cpu = time.process_time() - own_cpu
    server_cpu = cpu_seconds(server_pid) - server_cpu
    source.stop()
    await task
    await bus.aclose()
    return {
        "runs": runs,
        "publisher_processes": publishers,
        "seconds": seconds,
        "emitted": emitted,
        "emitted_per_s": round(emitted / seconds, 1),
        "published": published,
        "dropped": dropped,
        "spooled": spooled,
        "publisher_log_warnings": len(warnings),
        "first_warning": warnings[0][:300] if warnings else None,
        "received": received,
        "rate_per_s": round(received / (wall + drain), 1),
        "lag_median_s": round(statistics.median(lags), 3) if lags else None,
        "lag_p99_s": round(percentile(lags, 0.99), 3) if lags else None,
        "lag_max_s": round(max(lags), 3) if lags else None,
        "drain_after_s": round(drain, 2),
        "listener_cpu_pct": round(100 * listener_cpu / (wall + drain), 1),
        "publishers_cpu_pct": round(100 * (child_usage.ru_utime + child_usage.ru_stime) / wall, 1),
        "server_cpu_pct": round(100 * server_cpu / (wall + drain), 1),
    }


# -- main --------------------------------------------------------------------------------


async def run(args: argparse.Namespace, url: str, server_pid: int, work: Path) -> dict[str, Any]:
    count = 1000 if args.quick else args.events
    rounds = 1 if args.quick else args.rounds
    latency_count = 100 if args.quick else args.latency_events
    results: dict[str, Any] = {"events": count, "rounds": rounds}
    ours: list[float] = []
    raw_seq: list[float] = []
    raw_async: list[float] = []
    for round_ in range(rounds):
        order = ["ours", "raw", "raw_async"]
        order = order[round_ % 3 :] + order[: round_ % 3]
        for name in order:
            say(f"throughput round {round_ + 1}/{rounds}: {name}")
            batch = events(count)
            if name == "ours":
                ours.append(await ours_publish(url, batch, work / f"spool{round_}"))
            elif name == "raw":
                raw_seq.append(await raw_publish(url, batch, pipelined=False))
            else:
                raw_async.append(await raw_publish(url, batch, pipelined=True))
    results["throughput"] = {
        "ours_per_s": round(statistics.median(ours)),
        "raw_publish_per_s": round(statistics.median(raw_seq)),
        "raw_publish_async_per_s": round(statistics.median(raw_async)),
        "ratio_vs_raw_publish": round(statistics.median(ours) / statistics.median(raw_seq), 2),
        "ratio_vs_raw_publish_async": round(
            statistics.median(ours) / statistics.median(raw_async), 2
        ),
    }
    consume_ours: list[float] = []
    consume_local: list[float] = []
    consume_raw: list[float] = []
    state = work / "state"
    for round_ in range(rounds):
        say(f"consume round {round_ + 1}/{rounds}")
        order = ["ours", "local", "raw"]
        for name in order[round_ % 3 :] + order[: round_ % 3]:
            if name == "ours":
                consume_ours.append(await ours_consume(url, count, f"oursc{round_}", state))
            elif name == "local":
                consume_local.append(
                    await ours_consume(url, count, f"localc{round_}", state, shared=False)
                )
            else:
                consume_raw.append(await raw_consume(url, count, f"rawc{round_}"))
    ours_c, local_c, raw_c = (
        statistics.median(consume_ours),
        statistics.median(consume_local),
        statistics.median(consume_raw),
    )
    results["consume"] = {
        "ours_per_s": round(ours_c),
        "ours_local_record_only_per_s": round(local_c),
        "raw_fetch_per_s": round(raw_c),
        "ratio": round(ours_c / raw_c, 2),
        "ratio_local_record_only": round(local_c / raw_c, 2),
        "shared_vs_local_record_only": round(ours_c / local_c, 2),
    }
    say("latency")
    ours_all, raw_all = await latency(url, latency_count, work / "spool-lat", work / "state")
    results["latency"] = {
        "events": len(ours_all),
        "ours_median_ms": round(1000 * statistics.median(ours_all), 3),
        "ours_p99_ms": round(1000 * percentile(ours_all, 0.99), 3),
        "raw_median_ms": round(1000 * statistics.median(raw_all), 3),
        "raw_p99_ms": round(1000 * percentile(raw_all, 0.99), 3),
        "p99_ratio": round(percentile(ours_all, 0.99) / percentile(raw_all, 0.99), 2),
        "median_ratio": round(statistics.median(ours_all) / statistics.median(raw_all), 2),
    }
    say("listener lag behind a hanging handler")
    results["hanging_handler_lag"] = {
        f"concurrency_{n}": await hanging_lag(url, n, work / "spool-lag", work / "state")
        for n in (1, 16)
    }
    say("a broker restart with 100 publishers")
    results["reconnect_after_restart"] = {
        "lock_step_before": await reconnect_burst(100, False, 3.0, work),
        "jittered": await reconnect_burst(100, True, 3.0, work),
    }
    if args.scale:
        say(f"scale: {args.scale_runs} runs for {args.scale_seconds:g} s")
        results["scale"] = await scale(
            url, server_pid, args.scale_runs, args.scale_publishers, args.scale_seconds,
            work / "spool-scale",
            work / "state",
        )  # fmt: skip
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.nats_bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run (1000 events, 1 round)")
    parser.add_argument("--events", type=int, default=5000, help="events per throughput round")
    parser.add_argument("--rounds", type=int, default=5, help="throughput rounds")
    parser.add_argument(
        "--latency-events", type=int, default=1000, help="events per path in the latency run"
    )
    parser.add_argument("--scale", action="store_true", help="also the scale run")
    parser.add_argument("--scale-runs", type=int, default=10_000)
    parser.add_argument("--scale-seconds", type=float, default=30.0)
    parser.add_argument(
        "--scale-publishers", type=int, default=4, help="processes sharing the simulated runs"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    # The adapter's log lines are not what is measured.
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(40),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    with nats_server() as server, tempfile.TemporaryDirectory() as work:
        assert server.process is not None
        results = asyncio.run(run(args, server.url, server.process.pid, Path(work)))
    results["python"] = sys.version.split()[0]
    results["cpus"] = os.cpu_count()
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
