"""Publishing: every event kind to JetStream with its id, the stream, the outbox, the spool."""

from __future__ import annotations

import bisect
import json
import os
import random
from typing import TYPE_CHECKING, Any

import anyio
import nats
import pytest
import structlog.testing
from lifecycle_nats import (
    NatsConnectError,
    NatsOptions,
    Publisher,
    StreamConfigError,
    attach,
    ensure_stream,
    subject_for,
)
from lifecycle_nats._publisher import reconnect_waits
from nats.js.api import DiscardPolicy

from lifecycle import EXITED, HEARTBEAT, STARTING, Environment, EnvironmentInfo, Event, EventBus

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

    from lifecycle_testing import NatsServer
    from nats.aio.msg import Msg

pytestmark = [pytest.mark.anyio, pytest.mark.asyncio_only]  # nats-py runs on asyncio only


async def stored(url: str, stream: str, subjects: str = ">") -> list[Msg]:
    """Every message in ``stream``, oldest first (an ephemeral ordered read)."""
    client = await nats.connect(url)
    try:
        js = client.jetstream()
        info = await js.stream_info(stream)
        count = info.state.messages
        if not count:
            return []
        sub = await js.pull_subscribe(subjects, stream=stream)
        messages: list[Msg] = []
        while len(messages) < count:
            messages.extend(await sub.fetch(count - len(messages), timeout=5))
        return messages
    finally:
        await client.close()


def spooled(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.endswith(".json"))


def event(name: str = STARTING, env: str = "job", **kwargs: Any) -> Event:
    return Event(name=name, run_id="run-1", environment=EnvironmentInfo.current(env), **kwargs)


async def test_every_event_of_a_run_is_stored_with_its_id_and_subject(
    shared_nats: NatsServer, tmp_path: Path
) -> None:
    seen: list[Event] = []
    beat = anyio.Event()
    async with EventBus() as bus:
        adapter = attach(
            bus,
            servers=shared_nats.url,
            stream="ROUNDTRIP",
            subject_prefix="rt",
            spool_dir=tmp_path,
        )
        for signal in (STARTING, HEARTBEAT, EXITED, "environment.missed"):
            bus.subscribe(signal, seen.append, inline=True)
        bus.subscribe(HEARTBEAT, beat.set, inline=True)
        env = Environment("web.01 *>", ["etl"], bus=bus)
        with anyio.fail_after(20):
            async with env.running(heartbeat=0.01) as run:
                await beat.wait()
            await env.emit(env.event("environment.missed", run.run_id))
    await adapter.aclose()
    messages = await stored(shared_nats.url, "ROUNDTRIP")
    assert [m.data.decode() for m in messages] == [e.to_json() for e in seen]
    assert [m.headers and m.headers["Nats-Msg-Id"] for m in messages] == [e.event_id for e in seen]
    assert [m.subject for m in messages] == [
        subject_for(e.name, "web.01 *>", prefix="rt") for e in seen
    ]
    assert {m.subject.split(".")[1] for m in messages} == {
        "starting",
        "heartbeat",
        "exited",
        "missed",
    }


async def test_the_stream_is_created_with_the_options(shared_nats: NatsServer) -> None:
    client = await nats.connect(shared_nats.url)
    try:
        options = NatsOptions.build(
            stream="MADE",
            subject_prefix="acme.life",
            storage="memory",
            max_age=60,
            duplicate_window=5,
        )
        info = await ensure_stream(client.jetstream(), options)
        config = info.config
        assert config.subjects == ["acme.life.>"]
        assert str(getattr(config.storage, "value", config.storage)) == "memory"
        assert (config.max_age, config.duplicate_window) == (60, 5)
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("existing", "problem"),
    [
        ({"subjects": ["other.>"]}, "do not take 'misfit.>'"),
        ({"subjects": ["misfit.>"], "storage": "memory"}, "storage is 'memory'"),
        ({"subjects": ["misfit.>"], "retention": "workqueue"}, "retention is 'workqueue'"),
    ],
)
async def test_an_existing_stream_that_does_not_fit_is_a_clear_error(
    shared_nats: NatsServer, existing: dict[str, Any], problem: str
) -> None:
    client = await nats.connect(shared_nats.url)
    js = client.jetstream()
    name = f"MISFIT{abs(hash(problem))}"
    try:
        await js.add_stream(name=name, **existing)
        with pytest.raises(StreamConfigError, match=f"stream '{name}'.*{problem}"):
            await ensure_stream(js, stream=name, subject_prefix="misfit")
    finally:
        await js.delete_stream(name)
        await client.close()


async def test_a_missing_stream_is_an_error_when_create_stream_is_false(
    shared_nats: NatsServer,
) -> None:
    client = await nats.connect(shared_nats.url)
    try:
        with pytest.raises(StreamConfigError, match="create_stream is false"):
            await ensure_stream(client.jetstream(), stream="NOPE", create_stream=False)
    finally:
        await client.close()


async def test_events_wait_while_the_server_is_down_and_go_out_in_order(
    own_nats: NatsServer, tmp_path: Path
) -> None:
    own_nats.pick_port()
    events = [event(STARTING), *(event(HEARTBEAT) for _ in range(5)), event(EXITED)]
    async with Publisher(servers=own_nats.url, spool_dir=tmp_path, reconnect_wait=0.1) as publisher:
        entries = [publisher.submit(_message(e)) for e in events]
        await anyio.wait_all_tasks_blocked()
        assert publisher.pending == len(events)
        own_nats.start()
        with anyio.fail_after(20):
            assert await publisher.flush()
        assert [await publisher.wait(entry) for entry in entries] == list(range(1, 8))
    messages = await stored(own_nats.url, "LIFECYCLE")
    assert [m.headers and m.headers["Nats-Msg-Id"] for m in messages] == [
        e.event_id for e in events
    ]


async def test_past_the_bound_the_oldest_heartbeats_go_never_starting_or_exited(
    tmp_path: Path, nowhere: str
) -> None:
    publisher = Publisher(servers=nowhere, spool_dir=tmp_path, max_pending=3)
    start, beats, end = event(STARTING), [event(HEARTBEAT) for _ in range(3)], event(EXITED)
    for e in (start, *beats, end):
        publisher.submit(_message(e))
    assert publisher.dropped == 2
    assert [entry.message.msg_id for entry in publisher._outbox] == [
        start.event_id,
        beats[2].event_id,
        end.event_id,
    ]
    publisher.submit(_message(event(EXITED)))
    publisher.submit(_message(event(EXITED)))
    assert publisher.dropped == 3
    assert publisher.pending == 4  # past the bound: starting and exited are never dropped
    assert await publisher.aclose() == 4


async def test_what_is_unsent_at_close_is_spooled_and_sent_first_next_time(
    own_nats: NatsServer, tmp_path: Path
) -> None:
    own_nats.pick_port()
    first = [event(STARTING), event(EXITED)]
    async with EventBus() as bus:
        adapter = attach(bus, servers=own_nats.url, spool_dir=tmp_path, delivery_timeout=0.05)
        for e in first:
            await bus.emit(e)
    adapter.detach()
    assert adapter.publisher.spooled == 2
    assert len(spooled(tmp_path)) == 2
    own_nats.start()
    later = event(STARTING, "later")
    async with EventBus() as bus:
        adapter = attach(bus, servers=own_nats.url, spool_dir=tmp_path)
        await bus.emit(later)
    assert await adapter.aclose(timeout=20) == 0
    messages = await stored(own_nats.url, "LIFECYCLE")
    assert [json.loads(m.data)["event_id"] for m in messages] == [
        *(e.event_id for e in first),
        later.event_id,
    ]
    assert spooled(tmp_path) == []


def refusals(logs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [line for line in logs if str(line.get("reason", "")).startswith("JetStream refused")]


async def test_a_stream_that_refuses_events_is_told_with_its_reason_and_nothing_is_lost(
    shared_nats: NatsServer, tmp_path: Path
) -> None:
    # nats-py leaves an async publish pending forever when the server answers an error:
    # a full stream (discard new) must not pass for a slow acknowledgement.
    client = await nats.connect(shared_nats.url)
    try:
        await client.jetstream().add_stream(
            name="FULL", subjects=["full.>"], max_msgs=1, discard=DiscardPolicy.NEW
        )
    finally:
        await client.close()
    first, refused = event(STARTING), event(EXITED)
    with structlog.testing.capture_logs() as logs:
        async with Publisher(
            servers=shared_nats.url, stream="FULL", subject_prefix="full", spool_dir=tmp_path
        ) as publisher:
            entries = [publisher.submit(_message(e, "full")) for e in (first, refused)]
            assert await publisher.wait(entries[0]) == 1
            with anyio.fail_after(10):
                while not refusals(logs):  # noqa: ASYNC110  # no event but the log line itself
                    await anyio.sleep(0.01)
            assert publisher.pending == 1
            assert await publisher.aclose() == 1  # kept: spooled, sent once there is room
    [told] = refusals(logs)
    assert told["reason"] == (
        "JetStream refused to store an event: maximum messages exceeded (code 503, err_code 10077)"
    )
    assert len(spooled(tmp_path)) == 1


async def test_a_resent_event_is_stored_once(shared_nats: NatsServer, tmp_path: Path) -> None:
    once = event(EXITED)
    async with Publisher(
        servers=shared_nats.url, stream="DEDUPE", subject_prefix="dedupe", spool_dir=tmp_path
    ) as publisher:
        first = await publisher.publish(once)
        again = await publisher.publish(once)
    assert first == again
    assert len(await stored(shared_nats.url, "DEDUPE")) == 1


async def test_a_server_that_is_down_never_fails_the_run(tmp_path: Path, nowhere: str) -> None:
    results: list[Any] = []
    async with EventBus() as bus:
        adapter = attach(bus, servers=nowhere, spool_dir=tmp_path, delivery_timeout=0.1)
        bus.on_result(lambda _bus, result: results.append(result))
        with anyio.fail_after(10):
            async with Environment("job", bus=bus).running():
                pass
    # Queued (ok); exited not acknowledged in time: a timeout result, nothing raised.
    assert sorted(r.status.value for r in results) == ["ok", "ok", "timeout"]
    adapter.detach()
    assert adapter.publisher.spooled == 2


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"servers": "http://127.0.0.1:4222"}, "servers"),
        ({"servers": "nats://127.0.0.1:notaport"}, "servers"),
        ({"servers": ""}, "servers"),
        ({"stream": "a.b"}, "stream"),
        ({"subject_prefix": "a.*"}, "subject_prefix"),
        ({"storage": "disk"}, "storage"),
        ({"retention": "forever"}, "retention"),
        ({"max_age": -1}, "max_age"),
        ({"duplicate_window": "2m"}, "duplicate_window"),
        ({"delivery_timeout": 0}, "delivery_timeout"),
        ({"max_pending": 0}, "max_pending"),
        ({"signals": "environment.exited"}, "signals"),
        ({"creds": "/no/such.creds"}, "creds"),
    ],
)
async def test_a_bad_option_is_an_error_naming_it(options: dict[str, Any], named: str) -> None:
    async with EventBus() as bus:
        with pytest.raises((TypeError, ValueError), match=named):
            attach(bus, **options)


async def test_wrong_credentials_name_the_option(own_nats: NatsServer) -> None:
    own_nats.args = ("--user", "alice", "--pass", "right")
    own_nats.start()
    with pytest.raises(NatsConnectError, match=r"check the option user/password.*refused"):
        await NatsOptions.build(servers=own_nats.url, user="alice", password="wrong").connect()


async def test_an_unreachable_server_names_the_servers_option(nowhere: str) -> None:
    url = nowhere.replace("//", "//someone:secret@")
    with pytest.raises(NatsConnectError, match="check the option servers") as info:
        await NatsOptions.build(servers=url).connect()
    assert "secret" not in str(info.value)


def test_servers_are_shown_as_scheme_host_and_port_only() -> None:
    """A websocket URL may carry a token in its path or query (issue 8, item 4)."""
    options = NatsOptions.build(servers=["ws://127.0.0.1:8080/nats?token=SECRET", "nats://h:4222"])
    assert options.shown_servers == "ws://127.0.0.1:8080, nats://h:4222"


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_under_trio_attach_says_nats_needs_asyncio() -> None:
    async with EventBus() as bus:
        with pytest.raises(RuntimeError, match=r"needs asyncio.*trio"):
            attach(bus)


def _message(e: Event, prefix: str = "lifecycle") -> Any:
    from lifecycle_nats._publisher import message_for

    return message_for(e, prefix)


def test_each_reconnect_wait_is_between_half_and_all_of_the_doubling_one() -> None:
    waits = reconnect_waits(2.0, random.Random(1))
    nominal = [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0]
    drawn = [next(waits) for _ in nominal]
    assert all(n / 2 <= w <= n for w, n in zip(drawn, nominal, strict=True)), drawn
    assert len(set(drawn[-3:])) == 3  # drawn anew each time at the cap too


def test_a_hundred_publishers_cut_off_together_do_not_reconnect_in_one_burst() -> None:
    """A broker restart cuts a hundred publishers off at t=0; it is back at t=10 s."""
    back = 10.0
    first_after: list[float] = []
    for seed in range(100):  # each publisher its own random draws, as each process has
        waits, t = reconnect_waits(2.0, random.Random(seed)), 0.0
        while t < back:
            t += next(waits)
        first_after.append(t)
    first_after.sort()
    # In lock-step (no jitter) all 100 attempts land at the same instant; spread, no
    # 100 ms holds more than a sixth of them, and every one comes within the longest wait.
    busiest = max(
        bisect.bisect_right(first_after, t + 0.1) - bisect.bisect_left(first_after, t)
        for t in first_after
    )
    assert busiest <= 100 // 6, busiest
    assert first_after[-1] <= back + 2.0
