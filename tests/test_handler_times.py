"""Every result says when its handler started and ended, on every dispatch path."""

from __future__ import annotations

import time

import anyio
import pytest

from lifecycle import STARTING, EnvironmentInfo, Event, EventBus, HandlerResult, Status

pytestmark = pytest.mark.anyio


def event() -> Event:
    return Event(STARTING, "run-1", EnvironmentInfo.current("job"))


async def slow_async(event: Event) -> None:
    await anyio.sleep(0.02)


def slow_sync(event: Event) -> None:
    time.sleep(0.02)


async def hangs(event: Event) -> None:
    await anyio.sleep(60)


def check(result: HandlerResult, before: float, after: float) -> None:
    assert result.started is not None
    assert result.ended == result.started + result.duration
    start, end = result.start_time, result.end_time
    assert start is not None
    assert end is not None
    # A wall-clock reading converted from the perf_counter clock: within a millisecond.
    assert before - 0.001 <= start <= end <= after + 0.001
    assert end - start == pytest.approx(result.duration, abs=1e-6)  # float epoch seconds


async def test_blocking_handlers_of_every_kind_report_their_times() -> None:
    async with EventBus() as bus:
        bus.subscribe(STARTING, slow_async, name="async")
        bus.subscribe(STARTING, slow_sync, name="thread")
        bus.subscribe(STARTING, lambda event: None, inline=True, name="inline")
        bus.subscribe(STARTING, hangs, timeout=0.05, name="timeout")
        before = time.time()
        report = await bus.emit(event())
        after = time.time()
    by_name = {result.handler: result for result in report.results}
    assert set(by_name) == {"async", "thread", "inline", "timeout"}
    assert by_name["timeout"].status is Status.TIMEOUT
    for result in report.results:
        check(result, before, after)
    assert by_name["async"].duration >= 0.02


async def test_a_group_of_inline_handlers_reports_one_after_the_other() -> None:
    async with EventBus() as bus:
        for name in ("first", "second"):
            bus.subscribe(STARTING, lambda event: time.sleep(0.005), inline=True, name=name)
        before = time.time()
        report = await bus.emit(event())
        after = time.time()
    first, second = report.results
    for result in (first, second):
        check(result, before, after)
    assert first.ended == second.started


async def test_background_handlers_report_their_times() -> None:
    results: list[HandlerResult] = []
    before = time.time()
    async with EventBus() as bus:
        bus.on_result(lambda bus, *, result: results.append(result))
        bus.subscribe(STARTING, slow_async, background=True, name="background")
        await bus.emit(event())
    after = time.time()
    [result] = results
    check(result, before, after)


def test_a_result_built_by_hand_has_no_times() -> None:
    result = HandlerResult("h", STARTING, Status.OK, 0.5)
    assert (result.started, result.ended, result.start_time, result.end_time) == (None,) * 4
