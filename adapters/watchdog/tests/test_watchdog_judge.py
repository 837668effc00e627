"""The watchdog's judgement on an injected clock: no sleeps, no server, any time we like."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import pytest
from lifecycle_watchdog import (
    MISSED,
    OVERDUE,
    RECOVERED,
    Expectation,
    Judge,
    MemoryStore,
    Policy,
    RunState,
    Watchdog,
    verdict_id,
)

from lifecycle import EXITED, HEARTBEAT, STARTING, EnvironmentInfo, Event, EventBus, Outcome

T0 = 1_800_000_000.0  # a fixed "now" far from any slot edge


@dataclass
class Clock:
    now: float = T0

    def __call__(self) -> float:
        return self.now


@dataclass
class Stream:
    """What the watchdogs publish (event, msg id), deduplicated by msg id like JetStream."""

    stored: list[tuple[Event, str]] = field(default_factory=list)
    seq: int = 0

    async def publish(self, event: Event, msg_id: str) -> None:
        if all(msg_id != seen for _, seen in self.stored):
            self.stored.append((event, msg_id))

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def named(self, name: str) -> list[Event]:
        return [event for event, _ in self.stored if event.name == name]


def event(
    name: str,
    run_id: str = "run-1",
    *,
    env: str = "nightly-etl",
    labels: tuple[str, ...] = (),
    outcome: Outcome | None = None,
    **attributes: Any,
) -> Event:
    return Event(
        name=name,
        run_id=run_id,
        environment=EnvironmentInfo(name=env, labels=frozenset(labels), host="box-7", pid=42),
        attributes=attributes,
        outcome=outcome,
    )


class Rig:
    """One watchdog (or several on one store) fed by hand, judged at clock times."""

    def __init__(
        self,
        policy: Policy | None = None,
        expectations: tuple[Expectation, ...] = (),
        *,
        store: MemoryStore | None = None,
        stream: Stream | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.clock = clock or Clock()
        self.store = store or MemoryStore()
        self.stream = stream or Stream()
        self.bus = EventBus()
        self.emitted: list[Event] = []
        for name in (EXITED, HEARTBEAT, MISSED, OVERDUE, RECOVERED):
            self.bus.subscribe(name, self.emitted.append, inline=True)
        judge = Judge(policy, expectations, slots_from=self.clock.now)
        self.dog = Watchdog(
            judge, self.store, publish=self.stream.publish, bus=self.bus, clock=self.clock
        )

    async def feed(self, ev: Event, at: float | None = None) -> None:
        seen = self.clock.now if at is None else at
        await self.dog.feed(ev, seen, self.stream.next_seq())

    async def judge(self, at: float) -> None:
        self.clock.now = at
        await self.dog.judge_now()

    def lost(self) -> list[Event]:
        return [e for e in self.stream.named(EXITED) if e.outcome is Outcome.LOST]


async def start_beating(rig: Rig, interval: float = 1.0, beats: int = 3) -> None:
    await rig.feed(event(STARTING, heartbeat_interval=interval), T0)
    for n in range(1, beats + 1):
        await rig.feed(event(HEARTBEAT, sequence=n, interval=interval), T0 + n * interval)


@pytest.mark.anyio
async def test_a_run_beating_within_the_allowance_is_never_lost() -> None:
    rig = Rig()
    await start_beating(rig, beats=3)  # last beat at T0 + 3
    await rig.judge(T0 + 3 + 2.99)  # 3 misses x 1 s after the last beat is T0 + 6
    assert rig.lost() == []
    assert rig.dog.judge.table["run-1"].state is RunState.RUNNING


@pytest.mark.anyio
async def test_silence_for_misses_times_interval_declares_the_run_lost_once() -> None:
    rig = Rig()
    await start_beating(rig, beats=3)
    await rig.judge(T0 + 6)
    await rig.judge(T0 + 60)
    [lost] = rig.lost()
    assert lost.run_id == "run-1"
    assert lost.environment.host == "box-7"
    assert (
        lost.attributes["last_heartbeat"]
        == datetime.fromtimestamp(T0 + 3, timezone.utc).isoformat()
    )
    assert lost.attributes["misses"] == 3
    assert lost.event_id == verdict_id("lost", "run-1")
    assert rig.stream.stored[0][1] == "lost:run-1"
    assert [e.event_id for e in rig.emitted] == [lost.event_id]  # the local bus saw it too


@pytest.mark.anyio
async def test_silence_while_the_watchdog_had_no_server_is_not_held_against_a_run() -> None:
    rig = Rig()
    await start_beating(rig, beats=3)  # last beat at T0 + 3: lost at T0 + 6, normally
    rig.dog.judge.silence_from = T0 + 20  # the server was away until then (and a grace)
    await rig.judge(T0 + 22.99)
    assert rig.lost() == []
    await rig.judge(T0 + 23)  # the allowance, counted from silence_from
    [lost] = rig.lost()
    assert (
        lost.attributes["last_heartbeat"]
        == datetime.fromtimestamp(T0 + 3, timezone.utc).isoformat()
    )  # the truth about the run is unchanged


@pytest.mark.anyio
async def test_the_interval_on_starting_is_enough_to_judge_a_run_that_never_beat() -> None:
    rig = Rig()
    await rig.feed(event(STARTING, heartbeat_interval=2.0), T0)
    await rig.judge(T0 + 5.9)
    assert rig.lost() == []
    await rig.judge(T0 + 6)
    assert len(rig.lost()) == 1


@pytest.mark.anyio
async def test_a_run_that_never_said_its_interval_is_not_judged_without_a_default() -> None:
    rig = Rig()
    await rig.feed(event(STARTING), T0)
    await rig.judge(T0 + 10_000)
    assert rig.lost() == []
    patient = Rig(Policy(default_interval=30))
    await patient.feed(event(STARTING), T0)
    await patient.judge(T0 + 90)
    assert len(patient.lost()) == 1


@pytest.mark.anyio
async def test_misses_are_configurable_per_environment_and_per_label() -> None:
    policy = Policy(misses=3, environments={"slow": 10}, labels={"gpu": 5})
    rig = Rig(policy)
    await rig.feed(event(STARTING, "a", env="slow", heartbeat_interval=1.0), T0)
    await rig.feed(event(STARTING, "b", env="x", labels=("gpu",), heartbeat_interval=1.0), T0)
    await rig.feed(event(STARTING, "c", env="x", heartbeat_interval=1.0), T0)
    await rig.judge(T0 + 4)
    assert [e.run_id for e in rig.lost()] == ["c"]
    await rig.judge(T0 + 6)
    assert [e.run_id for e in rig.lost()] == ["c", "b"]
    await rig.judge(T0 + 10)
    assert [e.run_id for e in rig.lost()] == ["c", "b", "a"]


@pytest.mark.anyio
async def test_a_run_that_exited_is_never_lost() -> None:
    rig = Rig()
    await start_beating(rig)
    await rig.feed(event(EXITED, outcome=Outcome.SUCCEEDED), T0 + 3.5)
    await rig.judge(T0 + 1000)
    assert rig.lost() == []
    assert rig.dog.live() == []


@pytest.mark.anyio
async def test_the_late_exited_is_delivered_marked_then_recovered() -> None:
    rig = Rig()
    await start_beating(rig)
    await rig.judge(T0 + 6)
    truth = event(EXITED, outcome=Outcome.FAILED)
    await rig.feed(truth, T0 + 7)
    names = [(e.name, e.outcome) for e in rig.emitted]
    assert names == [
        (EXITED, Outcome.LOST),
        (EXITED, Outcome.FAILED),
        (RECOVERED, None),
    ]
    late = rig.emitted[1]
    assert late.event_id == truth.event_id  # delivered as it is ...
    assert late.attributes["after_lost"] is True  # ... and marked
    assert late.attributes["lost_event_id"] == verdict_id("lost", "run-1")
    [recovered] = rig.stream.named(RECOVERED)
    assert recovered.attributes["truth_event_id"] == truth.event_id
    assert recovered.attributes["outcome"] == "failed"
    assert rig.dog.judge.table["run-1"].state is RunState.EXITED


@pytest.mark.anyio
async def test_a_late_heartbeat_recovers_the_run_and_a_second_silence_is_a_second_lost() -> None:
    rig = Rig()
    await start_beating(rig)
    await rig.judge(T0 + 6)
    await rig.feed(event(HEARTBEAT, sequence=9, interval=1.0), T0 + 9)
    assert [e.name for e in rig.emitted] == [EXITED, HEARTBEAT, RECOVERED]
    assert rig.dog.judge.table["run-1"].state is RunState.RUNNING
    await rig.judge(T0 + 11.9)
    assert len(rig.lost()) == 1
    await rig.judge(T0 + 12)
    assert [msg for e, msg in rig.stream.stored if e.outcome is Outcome.LOST] == [
        "lost:run-1",
        "lost:run-1:2",
    ]


@pytest.mark.anyio
async def test_two_watchdogs_on_one_store_declare_a_run_lost_once() -> None:
    store, stream, clock = MemoryStore(), Stream(), Clock()
    one = Rig(store=store, stream=stream, clock=clock)
    two = Rig(store=store, stream=stream, clock=clock)
    for rig in (one, two):  # both read the same stream
        await rig.dog.feed(event(STARTING, heartbeat_interval=1.0), T0, 1)
    await one.judge(T0 + 3)
    await two.judge(T0 + 3)
    assert len(one.emitted) == 1
    assert two.emitted == []  # it found the verdict in the store and stood down
    assert two.dog.judge.table["run-1"].state is RunState.LOST
    assert len(one.lost()) == 1


@pytest.mark.anyio
async def test_the_loser_of_a_race_still_delivers_the_late_truth_once() -> None:
    store, stream, clock = MemoryStore(), Stream(), Clock()
    one = Rig(store=store, stream=stream, clock=clock)
    two = Rig(store=store, stream=stream, clock=clock)
    for rig in (one, two):
        await rig.dog.feed(event(STARTING, heartbeat_interval=1.0), T0, 1)
    await one.judge(T0 + 3)  # `two` has not judged yet: its table still says running
    truth = event(EXITED, outcome=Outcome.SUCCEEDED)
    await one.dog.feed(truth, T0 + 4, 2)
    await two.dog.feed(truth, T0 + 4, 2)
    assert len(stream.named(RECOVERED)) == 1
    assert [e.name for e in one.emitted + two.emitted].count(RECOVERED) == 1


@pytest.mark.anyio
async def test_a_restarted_watchdog_does_not_declare_a_lost_run_again() -> None:
    store, stream, clock = MemoryStore(), Stream(), Clock()
    first = Rig(store=store, stream=stream, clock=clock)
    await first.feed(event(STARTING, heartbeat_interval=1.0), T0)
    await first.judge(T0 + 3)
    second = Rig(store=store, stream=stream, clock=clock)  # the same store, after a restart
    await second.dog.restore()
    await second.dog.feed(event(STARTING, heartbeat_interval=1.0), T0, 1)  # the replay
    await second.judge(T0 + 100)
    assert len(stream.named(EXITED)) == 1
    assert second.emitted == []


@pytest.mark.anyio
async def test_a_run_that_stopped_while_the_watchdog_was_down_is_lost_on_restart_once() -> None:
    store, stream, clock = MemoryStore(), Stream(), Clock()
    first = Rig(store=store, stream=stream, clock=clock)
    await first.feed(event(STARTING, heartbeat_interval=1.0), T0)
    await first.dog.store.save_checkpoint(stream.seq, T0)
    # Down; the run beats twice more, then dies. The restarted watchdog replays from the
    # checkpoint minus the lookback, then judges.
    replay = [(event(HEARTBEAT, sequence=n, interval=1.0), T0 + n) for n in (1, 2)]
    for _ in range(2):  # two restarts in a row: still one verdict
        again = Rig(store=store, stream=stream, clock=clock)
        await again.dog.restore()
        for n, (ev, at) in enumerate(replay, start=2):
            await again.dog.feed(ev, at, n)
        await again.judge(T0 + 30)
    assert len(stream.named(EXITED)) == 1
    [lost] = stream.named(EXITED)
    assert (
        lost.attributes["last_heartbeat"]
        == datetime.fromtimestamp(T0 + 2, timezone.utc).isoformat()
    )


@pytest.mark.anyio
async def test_beats_replayed_from_before_the_verdict_are_not_late_truth() -> None:
    store, stream, clock = MemoryStore(), Stream(), Clock()
    first = Rig(store=store, stream=stream, clock=clock)
    beats = [(event(HEARTBEAT, sequence=n, interval=1.0), T0 + n, n) for n in (1, 2)]
    for ev, at, seq in beats:
        await first.dog.feed(ev, at, seq)
    await first.judge(T0 + 5)
    again = Rig(store=store, stream=stream, clock=clock)
    await again.dog.restore()
    for ev, at, seq in beats:
        await again.dog.feed(ev, at, seq)
    assert again.emitted == []
    assert stream.named(RECOVERED) == []


@pytest.mark.anyio
async def test_a_lagging_watchdog_declares_nothing() -> None:
    rig = Rig()
    await rig.feed(event(STARTING, heartbeat_interval=1.0), T0)
    rig.clock.now = T0 + 100

    async def behind() -> bool:
        return False

    assert await rig.dog.judge_now(caught_up=behind) == []
    assert rig.lost() == []


@pytest.mark.anyio
async def test_a_waiter_for_a_judgement_wakes_once_its_verdict_is_out() -> None:
    rig = Rig()
    await start_beating(rig)
    woke: list[int] = []

    async def wait() -> None:
        await rig.dog.wait_judged()
        woke.append(len(rig.lost()))

    async with anyio.create_task_group() as group:
        group.start_soon(wait)
        await anyio.wait_all_tasks_blocked()
        assert woke == []  # nothing judged yet
        await rig.judge(T0 + 10)
    assert woke == [1]


@pytest.mark.anyio
async def test_a_round_held_back_by_a_lagging_reader_still_counts_as_judged() -> None:
    rig = Rig()
    rig.clock.now = T0 + 100

    async def behind() -> bool:
        return False

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(rig.dog.wait_judged, 2)
            await anyio.wait_all_tasks_blocked()
            await rig.dog.judge_now()
            await rig.dog.judge_now(caught_up=behind)
    assert rig.dog.rounds == 2


@pytest.mark.anyio
async def test_an_interval_schedule_gives_one_missed_per_empty_slot() -> None:
    rig = Rig(expectations=(Expectation("backup", every=10, grace=2),))
    # Slots are aligned on the epoch: T0 is a multiple of 10.
    await rig.judge(T0 + 11.9)  # the period [T0-10, T0) closed before we began watching
    assert rig.stream.named(MISSED) == []
    await rig.judge(T0 + 12)  # [T0, T0+10) + 2 s grace closed empty
    await rig.judge(T0 + 12.5)
    await rig.judge(T0 + 42)  # three more periods closed empty
    missed = rig.stream.named(MISSED)
    assert len(missed) == 4
    assert [e.attributes["due"] for e in missed] == [
        datetime.fromtimestamp(T0 + 10 * k, timezone.utc).isoformat() for k in (1, 2, 3, 4)
    ]
    assert len({e.event_id for e in missed}) == 4


@pytest.mark.anyio
async def test_no_missed_for_a_slot_the_job_started_in() -> None:
    rig = Rig(expectations=(Expectation("backup", every=10, grace=2),))
    await rig.feed(event(STARTING, "r1", env="backup"), T0 + 3)
    await rig.feed(event(STARTING, "r2", env="backup"), T0 + 11.5)  # within the grace
    await rig.judge(T0 + 22)
    assert rig.stream.named(MISSED) == []
    await rig.judge(T0 + 32)
    assert len(rig.stream.named(MISSED)) == 1


@pytest.mark.anyio
async def test_two_watchdogs_report_a_missed_slot_once() -> None:
    store, stream, clock = MemoryStore(), Stream(), Clock()
    expect = (Expectation("backup", every=10, grace=2),)
    one = Rig(expectations=expect, store=store, stream=stream, clock=clock)
    two = Rig(expectations=expect, store=store, stream=stream, clock=clock)
    await one.judge(T0 + 12)
    await two.judge(T0 + 12)
    assert len(stream.named(MISSED)) == 1
    assert len(one.emitted) + len(two.emitted) == 1


def test_a_cron_schedule_is_read_in_its_time_zone() -> None:
    paris = ZoneInfo("Europe/Paris")
    expect = Expectation("etl", cron="0 2 * * *", timezone=paris, grace=600)
    after = datetime(2026, 1, 10, 12, 0, tzinfo=timezone.utc).timestamp()
    slot = next(expect.slots(after))
    assert datetime.fromtimestamp(slot.due, timezone.utc) == datetime(
        2026, 1, 11, 1, 0, tzinfo=timezone.utc
    )
    assert slot.closes - slot.due == 600
    assert slot.due - slot.opens == 600


def test_a_bad_cron_expression_is_an_error_that_shows_it() -> None:
    with pytest.raises(ValueError, match="'61 \\* \\* \\* \\*'"):
        Expectation("etl", cron="61 * * * *")


@pytest.mark.anyio
async def test_a_run_past_its_max_duration_is_overdue_once() -> None:
    rig = Rig(expectations=(Expectation("etl", max_duration=60),))
    await rig.feed(event(STARTING, env="etl", heartbeat_interval=1.0), T0)
    for n in range(1, 121):
        await rig.feed(event(HEARTBEAT, env="etl", sequence=n, interval=1.0), T0 + n)
        await rig.judge(T0 + n)
    overdue = rig.stream.named(OVERDUE)
    assert len(overdue) == 1
    assert overdue[0].attributes["max_duration"] == 60
    assert rig.lost() == []


@pytest.mark.anyio
async def test_a_verdict_won_but_never_announced_is_announced_once_on_restart() -> None:
    store, stream, clock = MemoryStore(), Stream(), Clock()
    first = Rig(store=store, stream=stream, clock=clock)
    first.dog.publish = _broken  # it wins the verdict, cannot publish it, and stops
    await first.feed(event(STARTING, heartbeat_interval=1.0), T0)
    await first.judge(T0 + 3)
    assert first.emitted == []
    assert stream.stored == []
    restarted = [Rig(store=store, stream=stream, clock=clock) for _ in range(2)]
    for rig in restarted:
        await rig.dog.restore()
    assert [e.outcome for e, _ in stream.stored] == [Outcome.LOST]
    assert [len(rig.emitted) for rig in restarted] == [1, 0]  # the notification, once


async def _broken(event: Event, msg_id: str) -> None:
    raise ConnectionError("the server went away between the verdict and its announcement")


@pytest.mark.anyio
async def test_a_verdict_that_could_not_be_published_is_retried_at_the_next_judgement() -> None:
    rig = Rig()
    rig.dog.publish = _broken
    await rig.feed(event(STARTING, heartbeat_interval=1.0), T0)
    await rig.judge(T0 + 3)
    assert (rig.lost(), rig.emitted) == ([], [])
    rig.dog.publish = rig.stream.publish  # the server is back
    await rig.judge(T0 + 3.1)
    await rig.judge(T0 + 3.2)
    assert len(rig.lost()) == 1
    assert [e.outcome for e in rig.emitted] == [Outcome.LOST]


class ReplyLostStore(MemoryStore):
    """A store whose next write lands but whose reply is lost, as in a network cut."""

    def __init__(self) -> None:
        super().__init__()
        self.lose_next_reply = False

    async def transition(self, key: str, merge: Any, *, create_first: bool = False) -> Any:
        result = await super().transition(key, merge, create_first=create_first)
        if self.lose_next_reply:
            self.lose_next_reply = False
            raise TimeoutError("nats: timeout")
        return result


@pytest.mark.anyio
async def test_a_verdict_written_whose_reply_was_lost_is_still_announced_once() -> None:
    store = ReplyLostStore()
    rig = Rig(store=store)
    await rig.feed(event(STARTING, heartbeat_interval=1.0), T0)
    store.lose_next_reply = True
    with pytest.raises(TimeoutError):
        await rig.judge(T0 + 3)  # the service logs this and judges again at the next tick
    assert rig.lost() == []
    await rig.judge(T0 + 3.1)  # its own stored verdict, seen as a lost race
    await rig.judge(T0 + 3.2)
    assert len(rig.lost()) == 1
    assert [e.outcome for e in rig.emitted] == [Outcome.LOST]


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.anyio
async def test_lost_and_overdue_verdicts_are_spans_linked_to_the_runs_trace() -> None:
    import lifecycle_otel
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    rig = Rig(expectations=(Expectation("nightly-etl", max_duration=2),))
    traced: dict[str, Any] = {"traceparent": TRACEPARENT, "tracestate": "vendor=1"}
    with lifecycle_otel.attach(rig.bus, tracer_provider=provider, metrics=False):
        # The run's events, as the NATS publisher sends them, carry its trace context.
        await rig.feed(event(STARTING, heartbeat_interval=1.0, **traced), T0)
        await rig.judge(T0 + 2.5)  # overdue (past 2 s), and lost (3 misses of 1 s) later
        await rig.judge(T0 + 3)
    [lost] = rig.lost()
    [overdue] = rig.stream.named(OVERDUE)
    assert (lost.attributes["traceparent"], overdue.attributes["tracestate"]) == (
        TRACEPARENT,
        "vendor=1",
    )
    spans = {
        span.name: span
        for span in exporter.get_finished_spans()
        if not span.name.startswith("lifecycle.handler ")
    }
    assert set(spans) == {"lifecycle.run nightly-etl", "lifecycle.overdue nightly-etl"}
    for span in spans.values():
        [link] = span.links
        assert (link.context.trace_id, link.context.span_id) == (
            0x0AF7651916CD43DD8448EB211C80319C,
            0xB7AD6B7169203331,
        )
        # A verdict is another process's, later: its own trace, linked to the run's.
        assert span.context is not None
        assert span.context.trace_id != link.context.trace_id
    lost_span = spans["lifecycle.run nightly-etl"]
    assert dict(lost_span.attributes or {})["lifecycle.run.outcome"] == "lost"
    assert spans["lifecycle.overdue nightly-etl"].status.description == (
        "overdue: running past max_duration 2 s"
    )


@pytest.mark.anyio
async def test_a_verdict_on_an_untraced_run_carries_no_trace_context() -> None:
    rig = Rig()
    await start_beating(rig, beats=1)
    await rig.judge(T0 + 60)
    [lost] = rig.lost()
    assert "traceparent" not in lost.attributes
