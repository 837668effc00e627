"""The asyncio dispatch path leaves no cyclic garbage (the benchmark's p99 depends on it).

asyncio-only, so these run under pytest-asyncio rather than anyio's backend matrix.
"""

from __future__ import annotations

import gc

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


@pytest.mark.asyncio
async def test_blocking_emits_leave_no_cyclic_garbage() -> None:
    bus = EventBus()
    for index in range(5):
        bus.subscribe(STARTING, _quick, name=f"quick-{index}")
        bus.subscribe(STARTING, _suspends, name=f"suspends-{index}")
    bus.subscribe(STARTING, lambda e: None, inline=True)
    event = starting()
    await bus.emit(event)  # warm up caches
    gc.collect()
    gc.disable()
    try:
        for _ in range(200):
            report = await bus.emit(event)
        found = gc.collect()
    finally:
        gc.enable()
    assert report.ok
    assert found == 0


@pytest.mark.asyncio
async def test_a_failing_handler_is_still_reported_when_the_others_finish_eagerly() -> None:
    bus = EventBus()
    bus.subscribe(STARTING, _quick)
    bus.subscribe(STARTING, _boom)
    report = await bus.emit(starting())
    assert [r.status for r in report.results] == [Status.OK, Status.ERROR]
