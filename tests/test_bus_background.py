from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest
from structlog.testing import capture_logs

from lifecycle import STARTING, BusClosedError, BusState, Event, EventBus, HandlerResult, Status

from .helpers import starting

pytestmark = pytest.mark.anyio

FOREVER = 60.0


async def test_emit_does_not_wait_for_background_handlers() -> None:
    bus = EventBus()
    release, done = anyio.Event(), anyio.Event()

    async def slow(event: Event) -> None:
        await release.wait()
        done.set()

    bus.subscribe(STARTING, slow, background=True, name="slow")
    report = await bus.emit(starting())
    assert report.results == ()
    assert report.background == ("slow",)
    assert bus.background_in_flight == 1
    release.set()
    with anyio.fail_after(FOREVER / 4):
        await done.wait()
        close = await bus.aclose()
    assert close.ok
    assert bus.background_in_flight == 0


async def test_background_results_reach_the_result_hook() -> None:
    bus = EventBus()
    seen: list[HandlerResult] = []
    bus.on_result(lambda sender, result: seen.append(result))

    async def boom(event: Event) -> None:
        raise RuntimeError("late failure")

    bus.subscribe(STARTING, boom, background=True)
    with capture_logs() as logs:
        await bus.emit(starting())
        await bus.drain()
    (result,) = seen
    assert result.status is Status.ERROR
    assert result.background
    assert any(log["event"] == "handler failed" and log.get("background") for log in logs)


async def test_background_handler_times_out() -> None:
    bus = EventBus()
    seen: list[HandlerResult] = []
    bus.on_result(lambda sender, result: seen.append(result))

    async def hang(event: Event) -> None:
        await anyio.sleep(FOREVER)

    bus.subscribe(STARTING, hang, background=True, timeout=0.1)
    await bus.emit(starting())
    with anyio.fail_after(FOREVER / 4):
        report = await bus.drain()
    assert report.ok  # it ended at its own timeout, before the drain had to cancel it
    assert [r.status for r in seen] == [Status.TIMEOUT]


async def test_background_sync_handlers_are_drained() -> None:
    bus = EventBus()
    calls: list[str] = []
    bus.subscribe(STARTING, lambda e: calls.append(e.run_id), background=True)
    for run in ("a", "b", "c"):
        await bus.emit(starting(run))
    with anyio.fail_after(FOREVER / 4):
        await bus.aclose()
    assert sorted(calls) == ["a", "b", "c"]


async def test_emit_waits_when_background_handlers_reach_the_bound() -> None:
    bus = EventBus(max_background=1)
    release = anyio.Event()
    started: list[str] = []

    async def held(event: Event) -> None:
        started.append(event.run_id)
        await release.wait()

    bus.subscribe(STARTING, held, background=True)
    await bus.emit(starting("first"))
    second_returned = anyio.Event()

    async def emit_second() -> None:
        await bus.emit(starting("second"))
        second_returned.set()

    with anyio.fail_after(FOREVER / 4):
        async with anyio.create_task_group() as tg:
            tg.start_soon(emit_second)
            await anyio.wait_all_tasks_blocked()
            assert not second_returned.is_set()  # waiting for room, not dropping the event
            assert started == ["first"]
            release.set()
            await second_returned.wait()
        await bus.aclose()
    assert started == ["first", "second"]


async def test_aclose_cancels_and_reports_handlers_still_running_after_the_grace() -> None:
    bus = EventBus()
    entered = anyio.Event()

    async def stuck(event: Event) -> None:
        entered.set()
        await anyio.sleep(FOREVER)

    bus.subscribe(STARTING, stuck, background=True, timeout=None, name="stuck")
    await bus.emit(starting("r-1"))
    await entered.wait()
    with capture_logs() as logs, anyio.fail_after(FOREVER / 4):
        report = await bus.aclose(grace=0.05)
    (result,) = report.cancelled
    assert (result.handler, result.status, result.run_id) == ("stuck", Status.CANCELLED, "r-1")
    assert "stuck" in str(report)
    (entry,) = [log for log in logs if "grace" in log["event"]]
    assert entry["handlers"] == ["stuck (environment.starting, run r-1)"]


async def test_emit_on_a_closed_bus_is_a_clear_error() -> None:
    bus = EventBus(name="jobs")
    await bus.aclose()
    assert bus.state is BusState.CLOSED
    with pytest.raises(BusClosedError, match=r"'jobs'.*closed"):
        await bus.emit(starting())
    with pytest.raises(BusClosedError):
        bus.subscribe(STARTING, lambda e: None)


async def test_closing_twice_is_harmless() -> None:
    bus = EventBus()
    await bus.aclose()
    assert (await bus.aclose()).ok


async def test_async_with_closes_the_bus_and_refuses_reopening() -> None:
    async with EventBus() as bus:
        assert not bus.closed
    assert bus.closed
    with pytest.raises(BusClosedError, match="reopen"):
        async with bus:
            pass


async def test_background_handlers_sharing_a_timeout_end_each_on_their_own() -> None:
    bus = EventBus()
    seen: list[HandlerResult] = []
    bus.on_result(lambda sender, result: seen.append(result))

    async def quick(event: Event) -> None:
        await anyio.lowlevel.checkpoint()

    async def hang(event: Event) -> None:
        await anyio.sleep(FOREVER)

    bus.subscribe(STARTING, quick, background=True, timeout=0.1, name="quick")
    bus.subscribe(STARTING, hang, background=True, timeout=0.1, name="hang")
    await bus.emit(starting())
    with anyio.fail_after(FOREVER / 4):
        report = await bus.drain()
    assert report.ok
    assert sorted((r.handler, r.status) for r in seen) == [
        ("hang", Status.TIMEOUT),
        ("quick", Status.OK),
    ]


async def test_one_emit_with_more_background_handlers_than_the_bound_loses_none() -> None:
    bus = EventBus(max_background=2)
    done: list[int] = []
    for index in range(5):

        async def handler(event: Event, index: int = index) -> None:
            await anyio.lowlevel.checkpoint()
            done.append(index)

        bus.subscribe(STARTING, handler, background=True)
    with anyio.fail_after(FOREVER / 4):
        report = await bus.emit(starting())
        assert bus.background_in_flight <= 2
        await bus.aclose()
    assert len(report.background) == 5
    assert sorted(done) == [0, 1, 2, 3, 4]
