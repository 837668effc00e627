"""Consuming: source() into a local bus, idempotency, filters, bad input, the listener process."""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import nats
import pytest
from lifecycle_nats import Publisher, StreamConfigError, ensure_stream, source, subject_for
from lifecycle_testing import Recorder

from lifecycle import EXITED, HEARTBEAT, STARTING, EnvironmentInfo, Event, EventBus

from .conftest import Listener  # type: ignore[import-not-found,unused-ignore]

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from lifecycle_nats import Source
    from lifecycle_testing import NatsServer

pytestmark = [pytest.mark.anyio, pytest.mark.asyncio_only]  # nats-py runs on asyncio only


def event(name: str = EXITED, env: str = "job", labels: tuple[str, ...] = ()) -> Event:
    return Event(name=name, run_id="run-1", environment=EnvironmentInfo.current(env, labels))


async def make_stream(url: str, stream: str, prefix: str) -> None:
    client = await nats.connect(url)
    try:
        await ensure_stream(client.jetstream(), stream=stream, subject_prefix=prefix)
    finally:
        await client.close()


async def publish_raw(url: str, subject: str, data: bytes, msg_id: str | None = None) -> None:
    client = await nats.connect(url)
    try:
        headers = {"Nats-Msg-Id": msg_id} if msg_id else None
        await client.jetstream().publish(subject, data, headers=headers)
    finally:
        await client.close()


class Consuming:
    def __init__(self, consumer: Source, received: Recorder) -> None:
        self.source = consumer
        self.received = received


@asynccontextmanager
async def consuming(
    server: NatsServer, stream: str, tmp_path: Path, **options: Any
) -> AsyncIterator[Consuming]:
    async with EventBus() as bus, anyio.create_task_group() as group:
        received = Recorder(bus)
        consumer = source(
            bus, servers=server.url, stream=stream, subject_prefix=stream.lower(),
            state_dir=tmp_path / "state", **options,
        )  # fmt: skip
        await group.start(consumer.run)
        try:
            yield Consuming(consumer, received)
        finally:
            consumer.stop()


async def test_events_come_back_whole_on_the_local_bus(
    shared_nats: NatsServer, tmp_path: Path
) -> None:
    sent = [event(STARTING, "a.b"), event(HEARTBEAT, "a.b"), event(EXITED, "a.b")]
    async with Publisher(
        servers=shared_nats.url, stream="BACK", subject_prefix="back", spool_dir=tmp_path
    ) as p:
        for e in sent:
            await p.publish(e)
    async with consuming(shared_nats, "BACK", tmp_path) as running:
        await running.received.wait(3)
        assert running.received.events == sent
        assert running.source.handled == 3


async def test_a_redelivered_event_id_is_handled_once(
    shared_nats: NatsServer, tmp_path: Path
) -> None:
    once = event()
    subject = subject_for(once.name, "job", prefix="twice")
    await make_stream(shared_nats.url, "TWICE", "twice")
    # The same event stored twice (past the duplicate window, under other message ids).
    await publish_raw(shared_nats.url, subject, once.to_json().encode(), "first")
    await publish_raw(shared_nats.url, subject, once.to_json().encode(), "second")
    after = event(STARTING)
    await publish_raw(shared_nats.url, subject, after.to_json().encode())
    async with consuming(shared_nats, "TWICE", tmp_path) as running:
        await running.received.wait(2)
        assert running.received.events == [once, after]
        assert running.source.duplicates == 1


async def ack_pending(server: NatsServer, stream: str, durable: str) -> int:
    client = await nats.connect(server.url)
    try:
        info = await client.jetstream().consumer_info(stream, durable)
        return int(info.num_ack_pending)
    finally:
        await client.close()


async def test_a_hanging_handler_holds_up_only_its_own_run(
    shared_nats: NatsServer, tmp_path: Path
) -> None:
    stuck = [event(STARTING, "stuck"), event(EXITED, "stuck")]
    others = [event(EXITED, f"job{i}") for i in range(5)]
    async with Publisher(
        servers=shared_nats.url, stream="HANG", subject_prefix="hang", spool_dir=tmp_path
    ) as publisher:
        for e in [*stuck, *others]:
            await publisher.publish(e)
    release = anyio.Event()

    async def hang(e: Event) -> None:
        if e.environment.name == "stuck":
            await release.wait()

    async with EventBus() as bus, anyio.create_task_group() as group:
        received = Recorder(bus)
        bus.subscribe(STARTING, hang, timeout=60)
        consumer = source(
            bus, servers=shared_nats.url, stream="HANG", subject_prefix="hang",
            durable="hang", state_dir=tmp_path / "state",
        )  # fmt: skip
        await group.start(consumer.run)
        try:
            # stuck's starting (recorded as its emit begins) and every other run's exited,
            # while stuck's starting still hangs: stuck's exited waits behind it.
            await received.wait(1 + len(others))
            handled_ids = {e.event_id for e in received.events}
            assert handled_ids == {e.event_id for e in (stuck[0], *others)}
            assert stuck[1] not in received.events
            # The others are acknowledged as they finish: only stuck's two stay pending.
            with anyio.fail_after(10):
                while await ack_pending(shared_nats, "HANG", "hang") != len(stuck):  # noqa: ASYNC110
                    await anyio.sleep(0.01)  # the server's count: nothing to wait on but it
        finally:
            release.set()
        await received.wait(len(stuck) + len(others))
        assert received.events[-1] == stuck[1]
        consumer.stop()  # returns once every message in hand is acknowledged
    client = await nats.connect(shared_nats.url)
    try:
        info = await client.jetstream().consumer_info("HANG", "hang")
    finally:
        await client.close()
    assert (info.num_ack_pending, info.num_pending) == (0, 0)
    assert consumer.handled == len(stuck) + len(others)


async def test_concurrent_handling_keeps_each_runs_events_in_order(
    shared_nats: NatsServer, tmp_path: Path
) -> None:
    runs = [EnvironmentInfo.current(name) for name in ("a", "b", "c")]
    sent = [
        Event(name=HEARTBEAT, run_id=f"run-{info.name}", environment=info, attributes={"n": n})
        for n in range(8)
        for info in runs
    ]
    async with Publisher(
        servers=shared_nats.url, stream="LANES", subject_prefix="lanes", spool_dir=tmp_path
    ) as publisher:
        for e in sent:
            await publisher.publish(e)
    order: list[Event] = []
    all_handled = anyio.Event()

    async def slow_on_even(e: Event) -> None:
        # Run a's even events take longer: without per-run order, its odd ones would
        # overtake them; the other runs' events overtake run a's.
        slow = e.environment.name == "a" and e.attributes["n"] % 2 == 0
        await anyio.sleep(0.01 if slow else 0)
        order.append(e)
        if len(order) == len(sent):
            all_handled.set()

    async with EventBus() as bus, anyio.create_task_group() as group:
        bus.subscribe(HEARTBEAT, slow_on_even)
        consumer = source(
            bus, servers=shared_nats.url, stream="LANES", subject_prefix="lanes",
            durable="lanes", state_dir=tmp_path / "state", concurrency=4,
        )  # fmt: skip
        await group.start(consumer.run)
        with anyio.fail_after(20):
            await all_handled.wait()
        consumer.stop()
    for info in runs:
        assert [e for e in order if e.environment.name == info.name] == [
            e for e in sent if e.environment.name == info.name
        ]
    assert [e.environment.name for e in order] != [e.environment.name for e in sent]


async def test_stop_gives_back_the_messages_in_hand_for_the_next_listener(
    shared_nats: NatsServer, tmp_path: Path
) -> None:
    sent = [event(EXITED, f"job{i}") for i in range(6)]  # six runs: six lanes
    async with Publisher(
        servers=shared_nats.url, stream="GIVE", subject_prefix="give", spool_dir=tmp_path
    ) as publisher:
        for e in sent:
            await publisher.publish(e)
    entered, release = anyio.Event(), anyio.Event()

    async def hold_the_first(e: Event) -> None:
        if e.environment.name == "job0":
            entered.set()
            await release.wait()

    # One message handled at a time: the first holds the others in hand until the stop.
    options: dict[str, Any] = {
        "servers": shared_nats.url, "stream": "GIVE", "subject_prefix": "give",
        "durable": "give", "state_dir": tmp_path / "state", "ack_wait": 60, "concurrency": 1,
    }  # fmt: skip
    async with EventBus() as bus, anyio.create_task_group() as group:
        first = Recorder(bus)
        bus.subscribe(EXITED, hold_the_first, timeout=60)
        consumer = source(bus, **options)
        await group.start(consumer.run)
        with anyio.fail_after(10):
            await entered.wait()
        consumer.stop()
        release.set()
    assert [e.event_id for e in first.events] == [sent[0].event_id]
    # Given back, not left to ack_wait (a minute): the next listener handles them now.
    async with EventBus() as bus, anyio.create_task_group() as group:
        second = Recorder(bus)
        consumer = source(bus, **options)
        await group.start(consumer.run)
        await second.wait(len(sent) - 1, limit=20)
        consumer.stop()
    assert sorted(e.event_id for e in second.events) == sorted(e.event_id for e in sent[1:])


async def test_malformed_and_foreign_messages_are_terminated_and_the_listener_goes_on(
    shared_nats: NatsServer, tmp_path: Path
) -> None:
    await make_stream(shared_nats.url, "BAD", "bad")
    good = event()
    for data in (
        b"{not json",
        b'{"hello": "world"}',
        b"[1, 2]",
        b"\xff\xfe",
        good.to_json().encode(),
    ):
        await publish_raw(shared_nats.url, "bad.exited.job", data)
    async with consuming(shared_nats, "BAD", tmp_path) as running:
        await running.received.wait(1)
        assert running.received.events == [good]
        assert running.source.terminated == 4


async def test_filters_by_signal_environment_and_labels(
    shared_nats: NatsServer, tmp_path: Path
) -> None:
    wanted = event(EXITED, "etl", ("nightly", "x"))
    others = [
        event(STARTING, "etl", ("nightly",)),
        event(EXITED, "web", ("nightly",)),
        event(EXITED, "etl"),
    ]
    async with Publisher(
        servers=shared_nats.url, stream="FILTER", subject_prefix="filter", spool_dir=tmp_path
    ) as p:
        for e in [*others, wanted]:
            await p.publish(e)
    async with consuming(
        shared_nats, "FILTER", tmp_path,
        signals=[EXITED, STARTING], environments=["etl"], labels=["nightly", "x"],
    ) as running:  # fmt: skip
        await running.received.wait(1)
        assert running.received.events == [wanted]
        # web fell to the consumer's subject filter; the rest was filtered here.
        assert running.source.filter_subject == "filter.*.etl"


async def test_one_signal_and_environment_narrow_the_consumer_subject(
    shared_nats: NatsServer,
) -> None:
    async with EventBus() as bus:
        consumer = source(bus, servers=shared_nats.url, signals=[EXITED], environments=["web.01"])
        assert consumer.filter_subject == "lifecycle.exited.web~2E01"


async def test_a_durable_with_other_filters_is_a_clear_error(
    shared_nats: NatsServer, tmp_path: Path
) -> None:
    async with consuming(shared_nats, "DURABLE", tmp_path, durable="shared"):
        pass
    async with EventBus() as bus:
        consumer = source(
            bus, servers=shared_nats.url, stream="DURABLE", subject_prefix="durable",
            durable="shared", signals=[EXITED], state_dir=False,
        )  # fmt: skip
        with pytest.raises(
            StreamConfigError, match=r"durable consumer 'shared' filters 'durable\.>'"
        ):
            await consumer.run()


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"durable": "a.b"}, "durable"),
        ({"signals": EXITED}, "signals"),
        ({"idempotency_window": 0}, "idempotency_window"),
        ({"deliver": "last"}, "deliver"),
        ({"concurrency": 0}, "concurrency"),
        ({"ack_wait": 0}, "ack_wait"),
        ({"servers": "nats://"}, "servers"),
        ({"state_dir": 3}, "state_dir"),
    ],
)
async def test_a_bad_listen_option_names_it(options: dict[str, Any], named: str) -> None:
    async with EventBus() as bus:
        with pytest.raises((TypeError, ValueError), match=named):
            source(bus, **options)


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_under_trio_consuming_says_nats_needs_asyncio() -> None:
    async with EventBus() as bus:
        with pytest.raises(RuntimeError, match=r"needs asyncio.*trio"):
            await source(bus).run()


def cli(*argv: str) -> int:
    from lifecycle._cli import main

    return main(list(argv))


def test_listen_with_no_server_names_the_servers_option(
    tmp_path: Path, nowhere: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "notify.toml"
    config.write_text(f'[listen]\nservers = "{nowhere}"\n')
    assert cli("listen", "--config", str(config)) == 1
    error = capsys.readouterr().err
    assert f"{config}: listen: cannot connect to NATS at {nowhere}" in error
    assert "check the option servers" in error


def test_listen_on_a_server_without_jetstream_says_so(
    tmp_path: Path, no_jetstream: NatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "notify.toml"
    config.write_text(f'[listen]\nservers = "{no_jetstream.url}"\n')
    assert cli("listen", "--config", str(config)) == 1
    assert (
        f"{config}: listen: JetStream does not answer at {no_jetstream.url}: is it enabled"
    ) in capsys.readouterr().err


def test_listen_with_a_bad_option_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "notify.toml"
    config.write_text("[listen]\nbatch = 0\n")
    assert cli("listen", "--config", str(config)) == 2
    assert f"{config}: listen: batch must be a positive int" in capsys.readouterr().err


def test_listen_with_an_unknown_option_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "notify.toml"
    config.write_text('[listen]\nserver = "nats://x:4222"\n')
    assert cli("listen", "--config", str(config)) == 2
    error = capsys.readouterr().err
    assert f"{config}: listen: unknown option 'server'; the options are " in error
    assert "durable" in error  # the listener's own options are listed with the NATS ones
    assert "servers" in error


def test_check_describes_what_a_listen_table_would_consume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "notify.toml"
    config.write_text(
        '[listen]\nservers = "nats://ops:s3cret@nats.internal:4222"\ndurable = "notify"\n'
        'signals = ["environment.exited"]\nstate_dir = false\n'
    )
    assert cli("check", "--config", str(config)) == 0  # nothing is connected to
    out = capsys.readouterr().out
    assert "  [listen]: ok:\n" in out
    assert (
        "servers nats://nats.internal:4222, stream LIFECYCLE, consumer 'notify' on "
        "'lifecycle.exited.*' (deliver all)"
    ) in out
    assert "only signals: environment.exited" in out
    assert "kept in bucket lifecycle_handled for 3600 s and in memory" in out
    assert "s3cret" not in out


def test_check_names_a_bad_listen_option_with_status_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "pyproject.toml"
    config.write_text("[tool.lifecycle.listen]\nbatch = 0\n")
    assert cli("check", "--config", str(config)) == 1
    out, err = capsys.readouterr()
    assert f"{config}: tool.lifecycle.listen: batch must be a positive int, not 0" in err
    assert out == ""


def test_flush_with_an_empty_spool_says_so(
    spool_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli("flush") == 0
    assert "nothing to send" in capsys.readouterr().out


@pytest.fixture
def spooled_config(tmp_path: Path, nowhere: str) -> Path:
    """A configuration whose nats adapter has one event spooled and no server to send it to."""
    from lifecycle_nats._publisher import message_for
    from lifecycle_nats._spool import Spool

    Spool(tmp_path / "spool").write([message_for(event())])
    config = tmp_path / "cfg.toml"
    config.write_text(
        f'[[adapters]]\nname = "nats"\noptions = {{ servers = "{nowhere}", spool_dir = "{tmp_path / "spool"}" }}\n'
    )
    return config


def test_check_of_a_nats_adapter_sends_nothing_and_leaves_the_spool(
    tmp_path: Path, spooled_config: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    config = spooled_config
    assert cli("check", "--config", str(config)) == 0
    out, err = capfd.readouterr()
    assert "adapter nats" in out
    assert "sending spooled" not in out + err  # check sends nothing
    assert len(os.listdir(tmp_path / "spool")) == 1


def test_flush_with_no_server_keeps_the_spool(
    tmp_path: Path, spooled_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = spooled_config
    assert cli("flush", "--config", str(config)) == 1
    assert "check the option servers" in capsys.readouterr().err
    assert len(os.listdir(tmp_path / "spool")) == 1


def test_a_listen_table_reaches_the_command_with_variables_expanded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lifecycle import load_config

    monkeypatch.setenv("NATS_URL", "nats://nats.internal:4222")
    config = tmp_path / "notify.toml"
    config.write_text('[listen]\nservers = "${NATS_URL}"\ndurable = "notify"\n')
    assert load_config(config).tables["listen"] == {
        "servers": "nats://nats.internal:4222",
        "durable": "notify",
    }


def test_a_listen_key_that_is_not_a_table_is_a_config_error(tmp_path: Path) -> None:
    from lifecycle import ConfigError, load_config

    config = tmp_path / "notify.toml"
    config.write_text('listen = "nats://x"\n')
    with pytest.raises(ConfigError, match=r"listen: must be a table"):
        load_config(config)


def test_listen_escapes_control_characters_in_its_messages(
    tmp_path: Path, nowhere: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # The file name (like any value a message quotes) must not drive the terminal.
    config = tmp_path / "a\x1b]0;HIJACKED\x07b.toml"
    config.write_text(f'[listen]\nservers = "{nowhere}"\n')
    assert cli("listen", "--config", str(config)) == 1
    error = capsys.readouterr().err
    assert "\x1b" not in error
    assert "a\\x1b]0;HIJACKED\\x07b.toml" in error


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_flush_refuses_a_timeout_that_is_not_a_positive_number(
    value: str, spool_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli("flush", "--timeout", value) == 2
    assert "--timeout" in capsys.readouterr().err


def test_listen_with_an_unusable_state_directory_keeps_the_ids_in_memory(
    shared_nats: NatsServer, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    listener = Listener(tmp_path, shared_nats, stream="NOSTATE", subject_prefix="nostate")
    listener.start(LIFECYCLE_NATS_STATE=str(blocker / "state"))  # listens all the same
    assert listener.stop() == 0
    log = listener.log.read_text()
    assert "state directory cannot be used" in log
    assert "NotADirectoryError" in log
    assert "Traceback" not in log
