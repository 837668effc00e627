"""bus.wrap_handlers: every handler call runs inside the wrapper, whatever kind it is."""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from lifecycle import STARTING, EventBus, HandlerWrap, Status

from .helpers import starting

if TYPE_CHECKING:
    from collections.abc import Callable

    from lifecycle import Event, Subscription

pytestmark = pytest.mark.anyio

inside: contextvars.ContextVar[str] = contextvars.ContextVar("inside", default="-")


def wrapper(sub: Subscription, call: Callable[[Event], Any]) -> Callable[[Event], Any]:
    """Set ``inside`` to the handler's name around its call, where the call runs."""
    if sub.is_async:

        async def async_call(event: Event) -> Any:
            token = inside.set(sub.name)
            try:
                return await call(event)
            finally:
                inside.reset(token)

        return async_call

    def plain_call(event: Event) -> Any:
        token = inside.set(sub.name)
        try:
            return call(event)
        finally:
            inside.reset(token)

    return plain_call


async def test_every_kind_of_handler_runs_inside_the_wrapper() -> None:
    seen: dict[str, str] = {}

    async def in_loop() -> None:
        seen["in_loop"] = inside.get()

    def in_thread() -> None:
        seen["in_thread"] = inside.get()

    def in_emitter() -> None:
        seen["in_emitter"] = inside.get()

    async def in_background() -> None:
        seen["in_background"] = inside.get()

    async with EventBus() as bus:
        bus.subscribe(STARTING, in_loop, name="in_loop")
        with bus.wrap_handlers(wrapper) as handle:  # after this one subscribed, before others
            assert isinstance(handle, HandlerWrap)
            bus.subscribe(STARTING, in_thread, name="in_thread")
            bus.subscribe(STARTING, in_emitter, inline=True, name="in_emitter")
            bus.subscribe(STARTING, in_background, background=True, name="in_background")
            report = await bus.emit(starting())
            await bus.drain()
    assert all(result.ok for result in report.results)
    assert seen == {name: name for name in seen}
    assert len(seen) == 4


async def test_a_removed_wrapper_wraps_no_more_calls() -> None:
    seen: list[str] = []

    def handler() -> None:
        seen.append(inside.get())

    async with EventBus() as bus:
        bus.subscribe(STARTING, handler, inline=True, name="h")
        with bus.wrap_handlers(wrapper):
            await bus.emit(starting())
        await bus.emit(starting())  # the plan built while wrapped is not reused
    assert seen == ["h", "-"]


async def test_a_wrapped_handler_keeps_its_result_and_its_timeout() -> None:
    def broken() -> None:
        raise KeyError("x")

    async def slow() -> None:
        await anyio.sleep(10)

    async with EventBus() as bus:
        bus.wrap_handlers(wrapper)
        bus.subscribe(STARTING, broken, name="broken")
        bus.subscribe(STARTING, slow, name="slow", timeout=0.05)
        report = await bus.emit(starting())
    statuses = {result.handler: result.status for result in report.results}
    assert statuses == {"broken": Status.ERROR, "slow": Status.TIMEOUT}
    (error,) = [result.exception for result in report.results if result.handler == "broken"]
    assert isinstance(error, KeyError)
