from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest
from lifecycle_testing import Recorder
from structlog.testing import capture_logs

from lifecycle import (
    EXITED,
    HEARTBEAT,
    STARTING,
    Environment,
    Event,
    EventBus,
    Outcome,
    RunTimeoutError,
    StartAborted,
    Status,
)

pytestmark = pytest.mark.anyio

FOREVER = 60.0


async def test_on_start_and_on_exit_receive_their_environments_events() -> None:
    seen: list[tuple[str, str]] = []

    async def on_start(event: Event) -> None:
        seen.append((event.name, event.environment.name))

    env = Environment(
        "train",
        labels=["gpu"],
        on_start=on_start,
        on_exit=lambda e: seen.append((e.name, str(e.outcome))),
    )
    async with env.running(run_id="r1") as run:
        assert run.run_id == "r1"
    assert seen == [(STARTING, "train"), (EXITED, "succeeded")]


async def test_zero_argument_callbacks_from_the_design_note_keep_working() -> None:
    calls: list[str] = []
    env = Environment(on_start=lambda: calls.append("start"), on_exit=lambda: calls.append("exit"))
    await env.run(lambda: None)
    assert calls == ["start", "exit"]


async def test_callbacks_only_hear_their_own_environment() -> None:
    bus = EventBus()
    calls: list[str] = []
    mine = Environment("mine", on_exit=lambda e: calls.append(e.environment.name), bus=bus)
    other = Environment("other", bus=bus)
    async with other.running():
        pass
    async with mine.running():
        pass
    assert calls == ["mine"]


async def test_other_subscribers_listen_alongside_the_callbacks() -> None:
    bus = EventBus()
    recorder = Recorder(bus)
    calls: list[str] = []
    env = Environment(on_exit=lambda: calls.append("callback"), bus=bus)
    async with env.running():
        pass
    assert calls == ["callback"]
    assert [e.name for e in recorder.events] == [STARTING, EXITED]


async def test_success_emits_exited_once_with_outcome_and_duration() -> None:
    bus = EventBus()
    recorder = Recorder(bus)
    env = Environment("job", labels=["nightly"], bus=bus)
    async with env.running(attributes={"dataset": "a"}) as run:
        run.attributes["rows"] = 10
    event = recorder.only_exit
    assert event.outcome is Outcome.SUCCEEDED
    assert event.duration is not None
    assert event.duration >= 0
    assert event.error is None
    assert event.run_id == run.run_id == recorder.events[0].run_id
    assert dict(event.attributes) == {"dataset": "a", "rows": 10}
    assert event.environment.labels == {"nightly"}
    assert run.exit_report is not None
    assert run.exit_report.event is event


async def test_failure_emits_failed_with_the_error_and_reraises() -> None:
    bus = EventBus()
    recorder = Recorder(bus)
    env = Environment(bus=bus)
    with pytest.raises(ZeroDivisionError):
        async with env.running():
            1 / 0  # noqa: B018 - the failure under test
    event = recorder.only_exit
    assert event.outcome is Outcome.FAILED
    assert event.error is not None
    assert event.error.type == "ZeroDivisionError"
    assert "1 / 0" in event.error.traceback


async def test_cancellation_emits_cancelled_and_propagates() -> None:
    bus = EventBus()
    recorder = Recorder(bus)
    env = Environment(bus=bus)
    entered = anyio.Event()

    async def body() -> None:
        async with env.running():
            entered.set()
            await anyio.sleep(FOREVER)

    with anyio.fail_after(FOREVER / 4):
        async with anyio.create_task_group() as tg:
            tg.start_soon(body)
            await entered.wait()
            tg.cancel_scope.cancel()
    assert recorder.only_exit.outcome is Outcome.CANCELLED
    assert recorder.only_exit.error is None


async def test_exited_handlers_run_in_full_although_the_body_was_cancelled() -> None:
    bus = EventBus()
    finished: list[bool] = []

    async def on_exit(event: Event) -> None:
        await anyio.lowlevel.checkpoint()  # a real suspension inside the shielded exit
        await anyio.lowlevel.checkpoint()
        finished.append(True)

    env = Environment(on_exit=on_exit, bus=bus)
    with anyio.move_on_after(FOREVER / 4) as outer:
        async with anyio.create_task_group() as tg:
            tg.cancel_scope.cancel()
            async with env.running():
                await anyio.sleep(FOREVER)
    assert not outer.cancelled_caught
    assert finished == [True]


async def test_run_timeout_cancels_the_body_and_says_timeout() -> None:
    bus = EventBus()
    recorder = Recorder(bus)
    env = Environment("slow", bus=bus)
    with pytest.raises(RunTimeoutError, match=r"'slow' exceeded its time limit of 0\.05 s"):
        async with env.running(timeout=0.05):
            await anyio.sleep(FOREVER)
    assert recorder.only_exit.outcome is Outcome.TIMEOUT


async def test_system_exit_carries_its_code() -> None:
    bus = EventBus()
    recorder = Recorder(bus)
    env = Environment(bus=bus)
    with pytest.raises(SystemExit):
        async with env.running():
            raise SystemExit(3)
    assert (recorder.only_exit.outcome, recorder.only_exit.exit_code) == (Outcome.FAILED, 3)


async def test_exit_code_set_by_the_body_fails_the_run() -> None:
    bus = EventBus()
    recorder = Recorder(bus)
    async with Environment(bus=bus).running() as run:
        run.exit_code = 4
    assert (recorder.only_exit.outcome, recorder.only_exit.exit_code) == (Outcome.FAILED, 4)


async def test_failing_start_handler_is_reported_and_the_run_goes_on() -> None:
    bus = EventBus()
    recorder = Recorder(bus)

    async def broken(event: Event) -> None:
        raise RuntimeError("optional setup failed")

    env = Environment(on_start=broken, bus=bus)
    body_ran = False
    async with env.running() as run:
        body_ran = True
    assert body_ran
    assert run.start_report is not None
    assert [r.status for r in run.start_report.failures] == [Status.ERROR]
    assert recorder.only_exit.outcome is Outcome.SUCCEEDED


async def test_critical_start_failure_aborts_before_the_body() -> None:
    bus = EventBus()
    recorder = Recorder(bus)
    env = Environment("etl", bus=bus)

    async def must_work(event: Event) -> None:
        raise ConnectionError("cluster unreachable")

    bus.subscribe(STARTING, must_work, critical=True, sender=env, name="connect")
    body_ran = False
    with pytest.raises(StartAborted, match="connect") as raised:
        async with env.running():
            body_ran = True
    assert not body_ran
    assert raised.value.report.critical_failures[0].handler == "connect"
    event = recorder.only_exit
    assert event.outcome is Outcome.ABORTED
    assert event.error is not None
    assert "cluster unreachable" in event.error.message


async def test_critical_start_timeout_also_aborts() -> None:
    bus = EventBus()
    recorder = Recorder(bus)
    env = Environment(bus=bus)

    async def hang(event: Event) -> None:
        await anyio.sleep(FOREVER)

    bus.subscribe(STARTING, hang, critical=True, timeout=0.05)
    with pytest.raises(StartAborted, match="timeout"):
        async with env.running():
            pass
    assert recorder.only_exit.outcome is Outcome.ABORTED


async def test_failing_exit_handler_never_changes_the_outcome() -> None:
    bus = EventBus()
    recorder = Recorder(bus)

    async def broken(event: Event) -> None:
        raise RuntimeError("notification failed")

    env = Environment(on_exit=broken, bus=bus)
    async with env.running() as run:
        pass
    assert recorder.only_exit.outcome is Outcome.SUCCEEDED
    assert run.exit_report is not None
    assert [r.status for r in run.exit_report.failures] == [Status.ERROR]


async def test_run_calls_async_and_sync_functions_and_returns_their_result() -> None:
    env = Environment()

    async def compute(x: int) -> int:
        return x * 2

    assert await env.run(compute, 21) == 42
    assert await env.run(sum, [1, 2, 3]) == 6


async def test_run_reraises_the_functions_exception_after_exited() -> None:
    bus = EventBus()
    recorder = Recorder(bus)

    def fail() -> None:
        raise LookupError("nope")

    with pytest.raises(LookupError):
        await Environment(bus=bus).run(fail)
    assert recorder.only_exit.outcome is Outcome.FAILED


async def test_environment_without_a_bus_drains_its_background_handlers_each_run() -> None:
    delivered: list[str] = []

    async def notify(event: Event) -> None:
        await anyio.lowlevel.checkpoint()
        delivered.append(event.run_id)

    env = Environment()
    env.bus.subscribe(EXITED, notify, background=True, sender=env)
    async with env.running(run_id="r9"):
        pass
    assert delivered == ["r9"]


def test_labels_must_be_an_iterable_of_strings() -> None:
    with pytest.raises(TypeError, match="not the string 'gpu'"):
        Environment(labels="gpu")


def test_callbacks_must_be_callable() -> None:
    with pytest.raises(TypeError, match="must be callable"):
        Environment(on_exit=[42])  # type: ignore[list-item]


async def test_exited_on_a_closed_bus_is_logged_as_not_delivered() -> None:
    bus = EventBus()
    env = Environment("job", bus=bus)
    with capture_logs() as logs, pytest.raises(LookupError):  # noqa: PT012 - the body is the setup
        async with env.running() as run:
            await bus.aclose()
            raise LookupError("the body's own error still reaches the caller")
    assert run.exit_report is None
    (entry,) = [log for log in logs if log["event"] == "exited event not delivered"]
    assert entry["outcome"] == "failed"
    assert "closed" in entry["reason"]


async def test_body_may_settle_the_outcome_of_a_run_that_ended_normally() -> None:
    bus = EventBus()
    recorder = Recorder(bus)
    async with Environment(bus=bus).running() as run:
        run.outcome = Outcome.KILLED
        run.error = ChildProcessError("worker died of SIGKILL")
        run.exit_code = 137
    event = recorder.only_exit
    assert (event.outcome, event.exit_code) == (Outcome.KILLED, 137)
    assert event.error is not None
    assert event.error.message == "worker died of SIGKILL"


async def test_running_with_a_heartbeat_emits_heartbeats_while_the_body_runs() -> None:
    bus = EventBus()
    beats: list[Event] = []
    got_two = anyio.Event()

    def on_beat(event: Event) -> None:
        beats.append(event)
        if len(beats) == 2:
            got_two.set()

    bus.subscribe(HEARTBEAT, on_beat, inline=True)
    with anyio.fail_after(FOREVER / 4):
        async with Environment(bus=bus).running(heartbeat=0.01) as run:
            await got_two.wait()
    assert [b.run_id for b in beats[:2]] == [run.run_id, run.run_id]
    # Under load a late beat is skipped, not sent in a burst: sequences rise, maybe by more than 1.
    first, second = (b.attributes["sequence"] for b in beats[:2])
    assert 1 <= first < second
