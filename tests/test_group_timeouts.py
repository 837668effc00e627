"""Handlers of one group share a deadline per timeout, yet each is given up on its own.

On trio a group runs under one cancel scope per distinct timeout rather than one per
handler; these pin down that the results are the same as with a scope each.
"""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from lifecycle import STARTING, Event, EventBus, Status

from .helpers import starting

pytestmark = pytest.mark.anyio

SHORT = 0.1
FOREVER = 60.0


async def test_handlers_sharing_a_timeout_are_each_judged_on_their_own() -> None:
    bus = EventBus(default_timeout=SHORT)

    async def hang(event: Event) -> None:
        await anyio.sleep(FOREVER)

    async def quick(event: Event) -> None:
        await anyio.lowlevel.checkpoint()

    def boom(event: Event) -> None:
        raise ValueError("boom")

    bus.subscribe(STARTING, quick, name="quick")
    bus.subscribe(STARTING, hang, name="hang")
    bus.subscribe(STARTING, boom, name="boom")
    bus.subscribe(STARTING, lambda e: None, inline=True, name="inline")
    with anyio.fail_after(FOREVER / 4):
        report = await bus.emit(starting())
    assert [(r.handler, r.status) for r in report.results] == [
        ("quick", Status.OK),
        ("hang", Status.TIMEOUT),
        ("boom", Status.ERROR),
        ("inline", Status.OK),
    ]
    assert report.results[1].duration >= SHORT
    assert report.results[0].duration < SHORT


async def test_a_short_timeout_does_not_cut_short_a_handler_with_a_longer_one() -> None:
    bus = EventBus()
    short_given_up = anyio.Event()

    async def hang(event: Event) -> None:
        try:
            await anyio.sleep(FOREVER)
        finally:
            short_given_up.set()

    async def outlives_the_short_timeout(event: Event) -> None:
        await short_given_up.wait()
        await anyio.lowlevel.checkpoint()

    bus.subscribe(STARTING, hang, timeout=SHORT, name="short")
    bus.subscribe(STARTING, outlives_the_short_timeout, timeout=FOREVER, name="long")
    bus.subscribe(STARTING, lambda e: None, timeout=None, name="no limit")
    with anyio.fail_after(FOREVER / 4):
        report = await bus.emit(starting())
    assert [(r.handler, r.status) for r in report.results] == [
        ("short", Status.TIMEOUT),
        ("long", Status.OK),
        ("no limit", Status.OK),
    ]
    assert report.results[1].duration >= report.results[0].duration


async def test_cancelling_the_emitter_is_not_mistaken_for_a_timeout() -> None:
    bus = EventBus(default_timeout=FOREVER)
    entered = anyio.Event()
    reports = []

    async def hang(event: Event) -> None:
        entered.set()
        await anyio.sleep(FOREVER)

    bus.subscribe(STARTING, hang)
    bus.subscribe(STARTING, hang, timeout=FOREVER / 2)
    with anyio.fail_after(FOREVER / 4):
        async with anyio.create_task_group() as tg:

            async def emit() -> None:
                reports.append(await bus.emit(starting()))

            tg.start_soon(emit)
            await entered.wait()
            tg.cancel_scope.cancel()
    assert reports == []
