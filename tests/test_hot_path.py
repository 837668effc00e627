"""The asyncio dispatch path leaves no cyclic garbage (the benchmark's p99 depends on it).

asyncio-only, so these run under pytest-asyncio rather than anyio's backend matrix.
"""

from __future__ import annotations

import subprocess
import sys

import anyio
import anyio.lowlevel
import pytest

from lifecycle import STARTING, Event, EventBus, Status

from .helpers import starting


async def _quick(event: Event) -> None:
    pass


async def _suspends(event: Event) -> None:
    await anyio.lowlevel.checkpoint()


async def _boom(event: Event) -> None:
    raise RuntimeError("boom")


_GARBAGE_PROBE = """
import asyncio, gc
import anyio.lowlevel
from lifecycle import STARTING, EnvironmentInfo, Event, EventBus

async def quick(event): pass
async def suspends(event): await anyio.lowlevel.checkpoint()

async def main():
    bus = EventBus()
    for index in range(5):
        bus.subscribe(STARTING, quick, name=f"quick-{index}")
        bus.subscribe(STARTING, suspends, name=f"suspends-{index}")
    bus.subscribe(STARTING, lambda e: None, inline=True)
    event = Event(name=STARTING, run_id="r", environment=EnvironmentInfo.current("test"))
    await bus.emit(event)  # warm up caches
    gc.collect()
    gc.disable()
    for _ in range(200):
        report = await bus.emit(event)
    print(report.ok, gc.collect())

asyncio.run(main())
"""


def test_blocking_emits_leave_no_cyclic_garbage() -> None:
    """Counted in a fresh interpreter: worker threads that earlier tests leave behind retire
    whenever they do, and a thread's end leaves cycles that are not the bus's."""
    done = subprocess.run(
        [sys.executable, "-c", _GARBAGE_PROBE],
        check=False,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "0"]


@pytest.mark.asyncio
async def test_a_failing_handler_is_still_reported_when_the_others_finish_eagerly() -> None:
    bus = EventBus()
    bus.subscribe(STARTING, _quick)
    bus.subscribe(STARTING, _boom)
    report = await bus.emit(starting())
    assert [r.status for r in report.results] == [Status.OK, Status.ERROR]


async def _slow(event: Event) -> None:
    # Still running after the bus's first yields: the bus waits with callbacks and deadlines.
    for _ in range(5):
        await anyio.lowlevel.checkpoint()


@pytest.mark.asyncio
async def test_deadlines_of_finished_groups_do_not_pile_up() -> None:
    bus = EventBus(default_timeout=60.0)
    bus.subscribe(STARTING, _slow)
    bus.subscribe(STARTING, _slow, timeout=30.0)
    event = starting()
    for _ in range(500):
        report = await bus.emit(event)
        assert report.ok
    deadlines = bus._backend.deadlines  # type: ignore[union-attr]
    assert deadlines is not None
    assert deadlines.live == 0
    assert len(deadlines.entries) <= 2 * 64


@pytest.mark.asyncio
async def test_a_short_timeout_fires_while_a_longer_deadline_holds_the_timer() -> None:
    bus = EventBus()
    long_started = anyio.Event()

    async def hangs_long(event: Event) -> None:
        long_started.set()
        await anyio.sleep(3600)

    async def hangs(event: Event) -> None:
        await anyio.sleep(3600)

    bus.subscribe(STARTING, hangs_long, timeout=3000.0)
    bus.subscribe("other", hangs, timeout=0.1)
    with anyio.fail_after(15):
        async with anyio.create_task_group() as tg:
            tg.start_soon(bus.emit, starting())
            await long_started.wait()
            await anyio.wait_all_tasks_blocked()
            other = starting().evolve(name="other")
            report = await bus.emit(other)
            tg.cancel_scope.cancel()
    assert [r.status for r in report.results] == [Status.TIMEOUT]


@pytest.mark.asyncio
async def test_a_group_skipping_its_yields_reports_like_one_that_yields() -> None:
    bus = EventBus()
    slow = True

    async def sometimes_slow(event: Event) -> None:
        for _ in range(5 if slow else 1):
            await anyio.lowlevel.checkpoint()

    async def fails_slowly(event: Event) -> None:
        await _slow(event)
        raise RuntimeError("late")

    bus.subscribe(STARTING, sometimes_slow)
    bus.subscribe(STARTING, fails_slowly)
    bus.subscribe(STARTING, lambda e: None, inline=True)
    event = starting()
    for round_ in range(40):
        slow = round_ % 7 < 4
        report = await bus.emit(event)
        assert [r.status for r in report.results] == [Status.OK, Status.ERROR, Status.OK]
        assert isinstance(report.results[1].exception, RuntimeError)


@pytest.mark.asyncio
async def test_finished_background_handlers_leave_nothing_in_the_deadlines() -> None:
    """Their deadline entries wait in the heap a while: they must not hold the futures."""
    bus = EventBus(default_timeout=60.0)
    bus.subscribe(STARTING, _suspends, background=True)
    bus.subscribe(STARTING, _suspends, background=True, timeout=30.0)
    event = starting()
    for _ in range(200):
        await bus.emit(event)
    with anyio.fail_after(5):
        report = await bus.drain()
    assert report.cancelled == ()
    deadlines = bus._backend.deadlines  # type: ignore[union-attr]
    assert deadlines.live == 0
    assert len(deadlines.entries) <= 2 * 64
    assert [entry for entry in deadlines.entries if entry[3]] == []
