"""Listeners sharing a durable consumer: the shared record of handled ids in a KV bucket.

A listener that "crashes" after handling a message and before its ack is played by a NATS
user whose acknowledgements the server refuses (publishing to ``$JS.ACK.>`` denied): from
the server's side exactly a listener that died at that moment, so the message is delivered
again after ``ack_wait``, here to the other listener.
"""

from __future__ import annotations

import signal
from collections import Counter
from typing import TYPE_CHECKING, Any

import anyio
import nats
import pytest
from lifecycle_nats import Publisher, StreamConfigError, source
from lifecycle_nats._shared import record_key
from lifecycle_testing import NatsServer, poll

from lifecycle import EXITED, HEARTBEAT, STARTING, EnvironmentInfo, Event, EventBus

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from lifecycle_nats import Source

pytestmark = [pytest.mark.anyio, pytest.mark.asyncio_only]  # nats-py runs on asyncio only

USERS = """
authorization {
  users = [
    {user: ok, password: pw}
    {user: lost, password: pw, permissions: {publish: {deny: ["$JS.ACK.>"]}}}
    {user: nokv, password: pw, permissions: {publish: {deny: ["$KV.>"]}}}
  ]
}
"""


@pytest.fixture(scope="module")
def users_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A server where the user ``lost`` cannot acknowledge and ``nokv`` cannot write KV."""
    directory = tmp_path_factory.mktemp("nats-users")
    (directory / "users.conf").write_text(USERS)
    server = NatsServer(directory, "-c", str(directory / "users.conf"))
    server.start()
    yield server
    server.stop(signal.SIGTERM)


def event(name: str) -> Event:
    return Event(name=name, run_id="run-1", environment=EnvironmentInfo.current("job"))


async def publish(server: NatsServer, stream: str, events: list[Event], spool: Path) -> None:
    async with Publisher(
        servers=server.url, user="ok", password="pw", stream=stream,
        subject_prefix=stream.lower(), spool_dir=spool,
    ) as publisher:  # fmt: skip
        for item in events:
            await publisher.publish(item)


def listener(
    bus: EventBus, server: NatsServer, stream: str, state: Path, user: str, **options: Any
) -> Source:
    return source(
        bus, servers=server.url, user=user, password="pw", stream=stream,
        subject_prefix=stream.lower(), durable="split", ack_wait=1, state_dir=state,
        **options,
    )  # fmt: skip


def count_into(
    bus: EventBus, counts: Counter[str], then: Callable[[], None] = lambda: None
) -> None:
    def handler(received: Event) -> None:
        counts[received.event_id] += 1
        then()

    for name in (STARTING, HEARTBEAT, EXITED):
        bus.subscribe(name, handler, inline=True)


@pytest.mark.parametrize(("bucket", "times"), [("lifecycle_handled", 1), (False, 2)])
async def test_a_redelivery_to_another_listener_is_not_handled_again(
    users_nats: NatsServer, tmp_path: Path, bucket: str | bool, times: int
) -> None:
    stream = "SPLIT" if bucket else "SPLITLOCAL"
    sent = [event(STARTING), event(HEARTBEAT), event(EXITED)]
    await publish(users_nats, stream, sent, tmp_path / "spool")
    counts: Counter[str] = Counter()
    # Listener A handles the first message, then "crashes": its ack never reaches the server.
    async with EventBus() as bus_a:
        lost = listener(
            bus_a, users_nats, stream, tmp_path / "a", "lost", batch=1, handled_bucket=bucket
        )
        count_into(bus_a, counts, lost.stop)
        with anyio.fail_after(20):
            await lost.run()
    assert lost.handled == 1
    # Listener B, same durable: gets the two others, and the first again after ack_wait.
    async with EventBus() as bus_b, anyio.create_task_group() as group:
        other = listener(bus_b, users_nats, stream, tmp_path / "b", "ok", handled_bucket=bucket)
        count_into(bus_b, counts)
        await group.start(other.run)
        # Wait for what B must do, not for a count of deliveries: on a loaded machine a slow
        # ack brings a message back to B itself, which its own record turns away, and the
        # count was reached before the first message's redelivery arrived.
        expected = {sent[0].event_id: times, sent[1].event_id: 1, sent[2].event_id: 1}
        await poll(
            lambda: counts == expected and other.shared_duplicates >= (1 if bucket else 0),
            "listener B's deliveries and its duplicates turned away",
            context=counts,
        )
        other.stop()
    assert counts == expected
    assert other.shared_duplicates == (1 if bucket else 0)


async def test_when_the_shared_record_cannot_be_written_the_message_is_not_acknowledged(
    users_nats: NatsServer, tmp_path: Path
) -> None:
    sent = event(EXITED)
    await publish(users_nats, "NOKV", [sent], tmp_path / "spool")
    counts: Counter[str] = Counter()
    async with EventBus() as bus, anyio.create_task_group() as group:
        consumer = listener(
            bus, users_nats, "NOKV", tmp_path / "a", "nokv",
            handled_bucket="nokv_handled", ack_timeout=0.5, reconnect_wait=0.1,
        )  # fmt: skip
        count_into(bus, counts)
        await group.start(consumer.run)
        # Delivered again (so never acknowledged), and known to this listener's own record.
        await poll(lambda: consumer.duplicates >= 1, "a redelivery")
        consumer.stop()
    assert counts == {sent.event_id: 1}
    assert consumer.handled == 1


async def test_the_bucket_is_created_with_the_ttl_and_one_value_per_key(
    users_nats: NatsServer, tmp_path: Path
) -> None:
    sent = event(EXITED)
    await publish(users_nats, "TTL", [sent], tmp_path / "spool")
    async with EventBus() as bus, anyio.create_task_group() as group:
        consumer = listener(
            bus, users_nats, "TTL", tmp_path / "a", "ok", handled_bucket="ttl_handled",
            handled_ttl=90,
        )  # fmt: skip
        await group.start(consumer.run)
        await poll(lambda: consumer.handled == 1, "the event handled")
        consumer.stop()
    client = await nats.connect(users_nats.url, user="ok", password="pw")
    try:
        js = client.jetstream()
        info = await js.stream_info("KV_ttl_handled")
        assert (info.config.max_age, info.config.max_msgs_per_subject) == (90, 1)
        kv = await js.key_value("ttl_handled")
        assert await kv.get(record_key("TTL", "split", sent.event_id))
    finally:
        await client.close()


def test_record_keys_encode_what_kv_keys_do_not_allow() -> None:
    assert record_key("LIFECYCLE", "notify", "a1-b_2") == "LIFECYCLE.notify.a1-b_2"
    assert record_key("S", "nötify", "x.y/z=") == "S.n=C3=B6tify.x=2Ey=2Fz=3D"
    assert record_key("S", "d", "") == "S.d.="


@pytest.mark.parametrize("bucket", ["a.b", "", "spaces no", 3])
async def test_a_bad_handled_bucket_names_the_option(bucket: Any) -> None:
    async with EventBus() as bus:
        with pytest.raises(ValueError, match="handled_bucket"):
            source(bus, handled_bucket=bucket)


async def test_a_handled_bucket_that_is_no_kv_bucket_is_a_clear_error(
    users_nats: NatsServer, tmp_path: Path
) -> None:
    client = await nats.connect(users_nats.url, user="ok", password="pw")
    try:
        await client.jetstream().add_stream(name="KV_notkv", subjects=["elsewhere.>"])
    finally:
        await client.close()
    async with EventBus() as bus:
        consumer = listener(bus, users_nats, "NOTKV", tmp_path / "a", "ok", handled_bucket="notkv")
        with pytest.raises(StreamConfigError, match=r"'KV_notkv'.*not a KV bucket.*handled_bucket"):
            await consumer.run()
