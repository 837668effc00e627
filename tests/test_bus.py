from __future__ import annotations

import threading
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from structlog.testing import capture_logs

from lifecycle import (
    STARTING,
    EmitDepthError,
    Environment,
    Event,
    EventBus,
    HandlerResult,
    Status,
)

from .helpers import starting

pytestmark = pytest.mark.anyio

# Timeouts are tested with wide margins: a short limit against a handler that would
# otherwise wait far longer than any test runs.
SHORT = 0.1
FOREVER = 60.0


async def test_subscribed_handler_receives_the_event() -> None:
    seen: list[Event] = []

    async def handler(event: Event) -> None:
        seen.append(event)

    bus = EventBus()
    bus.subscribe(STARTING, handler)
    event = starting()
    report = await bus.emit(event)
    assert seen == [event]
    assert [r.status for r in report.results] == [Status.OK]
    assert report.results[0].handler.endswith("handler")


async def test_decorator_form_subscribes_and_returns_the_function() -> None:
    bus = EventBus()
    calls: list[str] = []

    @bus.on(STARTING)
    async def handler(event: Event) -> None:
        calls.append(event.run_id)

    await bus.emit(starting("a"))
    assert callable(handler)
    assert calls == ["a"]
    assert bus.unsubscribe(handler) == 1
    await bus.emit(starting("b"))
    assert calls == ["a"]


async def test_unsubscribe_handle_stops_delivery() -> None:
    bus = EventBus()
    calls: list[str] = []
    handle = bus.subscribe(STARTING, lambda e: calls.append(e.run_id), inline=True)
    await bus.emit(starting("a"))
    handle.unsubscribe()
    handle.unsubscribe()  # twice is harmless
    await bus.emit(starting("b"))
    assert calls == ["a"]


async def test_subscription_handle_is_a_context_manager() -> None:
    bus = EventBus()
    calls: list[str] = []
    with bus.subscribe(STARTING, lambda e: calls.append(e.run_id), inline=True):
        await bus.emit(starting("inside"))
    await bus.emit(starting("outside"))
    assert calls == ["inside"]


async def test_zero_argument_handlers_are_called_without_the_event() -> None:
    bus = EventBus()
    calls: list[str] = []

    async def no_args() -> None:
        calls.append("async")

    bus.subscribe(STARTING, no_args)
    bus.subscribe(STARTING, lambda: calls.append("sync"))
    report = await bus.emit(starting())
    assert report.ok
    assert sorted(calls) == ["async", "sync"]


async def test_plain_functions_run_in_a_worker_thread() -> None:
    bus = EventBus()
    threads: list[int] = []
    bus.subscribe(STARTING, lambda e: threads.append(threading.get_ident()))
    await bus.emit(starting())
    assert threads
    assert threads != [threading.get_ident()]


async def test_inline_plain_functions_run_in_the_event_loop_thread() -> None:
    bus = EventBus()
    threads: list[int] = []
    bus.subscribe(STARTING, lambda e: threads.append(threading.get_ident()), inline=True)
    await bus.emit(starting())
    assert threads == [threading.get_ident()]


async def test_report_lists_results_in_subscription_order() -> None:
    bus = EventBus()
    for index in range(5):

        async def handler(event: Event) -> None:
            pass

        bus.subscribe(STARTING, handler, name=f"h{index}")
    report = await bus.emit(starting())
    assert [r.handler for r in report.results] == ["h0", "h1", "h2", "h3", "h4"]
    assert all(r.signal == STARTING and r.run_id == "run-1" for r in report.results)


async def test_failing_handler_is_isolated_and_logged() -> None:
    bus = EventBus()
    ran: list[str] = []

    async def boom(event: Event) -> None:
        raise ValueError("boom")

    async def fine(event: Event) -> None:
        ran.append("fine")

    bus.subscribe(STARTING, boom)
    bus.subscribe(STARTING, fine)
    with capture_logs() as logs:
        report = await bus.emit(starting("r-42"))
    assert ran == ["fine"]
    failed, ok = report.results
    assert failed.status is Status.ERROR
    assert isinstance(failed.exception, ValueError)
    assert ok.status is Status.OK
    (entry,) = [log for log in logs if log["event"] == "handler failed"]
    assert entry["handler"] == failed.handler
    assert entry["signal"] == STARTING
    assert entry["run_id"] == "r-42"
    assert entry["log_level"] == "error"
    assert isinstance(entry["exc_info"], ValueError)


async def test_failing_sync_handler_is_isolated() -> None:
    bus = EventBus()

    def boom(event: Event) -> None:
        raise KeyError("missing")

    bus.subscribe(STARTING, boom)
    bus.subscribe(STARTING, boom, inline=True, name="inline boom")
    report = await bus.emit(starting())
    assert [r.status for r in report.results] == [Status.ERROR, Status.ERROR]
    assert all(isinstance(r.exception, KeyError) for r in report.results)


async def test_hanging_async_handler_is_cancelled_at_its_timeout() -> None:
    bus = EventBus()
    cancelled = anyio.Event()

    async def hang(event: Event) -> None:
        try:
            await anyio.sleep(FOREVER)
        finally:
            cancelled.set()

    bus.subscribe(STARTING, hang, timeout=SHORT)
    with anyio.fail_after(FOREVER / 4):
        report = await bus.emit(starting())
        await cancelled.wait()
    (result,) = report.results
    assert result.status is Status.TIMEOUT
    assert result.duration >= SHORT
    assert report.duration < FOREVER / 4


async def test_hanging_sync_handler_is_abandoned_at_its_timeout() -> None:
    bus = EventBus()
    release = threading.Event()
    bus.subscribe(STARTING, lambda e: release.wait(FOREVER), timeout=SHORT)
    try:
        with anyio.fail_after(FOREVER / 4):
            report = await bus.emit(starting())
    finally:
        release.set()
    assert [r.status for r in report.results] == [Status.TIMEOUT]


async def test_bus_default_timeout_applies_unless_the_subscription_says_otherwise() -> None:
    bus = EventBus(default_timeout=SHORT)
    sub = bus.subscribe(STARTING, lambda e: None)
    unlimited = bus.subscribe(STARTING, lambda e: None, timeout=None)
    assert sub.timeout == SHORT
    assert unlimited.timeout is None
    assert EventBus().default_timeout == 10.0


async def test_handlers_of_one_emit_run_concurrently() -> None:
    # Each handler waits for the other: run one after the other, this would deadlock.
    bus = EventBus()
    first_in, second_in = anyio.Event(), anyio.Event()

    async def first(event: Event) -> None:
        first_in.set()
        await second_in.wait()

    async def second(event: Event) -> None:
        second_in.set()
        await first_in.wait()

    bus.subscribe(STARTING, first)
    bus.subscribe(STARTING, second)
    with anyio.fail_after(FOREVER / 4):
        report = await bus.emit(starting())
    assert report.ok


async def test_slow_handler_does_not_delay_the_others() -> None:
    bus = EventBus()
    fast_done = anyio.Event()
    observed: list[bool] = []

    async def slow(event: Event) -> None:
        await anyio.sleep(FOREVER)

    async def fast(event: Event) -> None:
        fast_done.set()

    async def watcher(event: Event) -> None:
        # Runs beside the slow one; sees the fast one finish long before the timeout.
        with anyio.fail_after(FOREVER / 4):
            await fast_done.wait()
        observed.append(True)

    bus.subscribe(STARTING, slow, timeout=SHORT)
    bus.subscribe(STARTING, fast)
    bus.subscribe(STARTING, watcher)
    report = await bus.emit(starting())
    assert observed == [True]
    assert [r.status for r in report.results] == [Status.TIMEOUT, Status.OK, Status.OK]


async def test_order_key_finishes_earlier_groups_before_later_ones_start() -> None:
    bus = EventBus()
    log: list[str] = []

    async def setup(event: Event) -> None:
        log.append("setup in")
        await anyio.lowlevel.checkpoint()
        log.append("setup out")

    async def later(event: Event) -> None:
        log.append("later")

    bus.subscribe(STARTING, later, order=1)
    bus.subscribe(STARTING, setup, order=0)
    bus.subscribe(STARTING, setup, order=0, name="setup 2")
    report = await bus.emit(starting())
    assert log[-1] == "later"
    assert log.count("setup out") == 2
    assert [r.handler for r in report.results][-1].endswith("later")


async def test_sender_filter_receives_only_that_environments_events() -> None:
    bus = EventBus()
    mine, other = Environment("mine", bus=bus), Environment("other", bus=bus)
    seen: list[str] = []
    bus.subscribe(STARTING, lambda e: seen.append(e.environment.name), sender=mine, inline=True)
    await mine.emit(mine.event(STARTING, "r"))
    await other.emit(other.event(STARTING, "r"))
    await bus.emit(starting())
    assert seen == ["mine"]


async def test_label_filter_receives_only_matching_environments() -> None:
    bus = EventBus()
    seen: list[str] = []
    bus.subscribe(STARTING, lambda e: seen.append(e.run_id), labels=["gpu"], inline=True)
    await bus.emit(starting("plain"))
    await bus.emit(starting("gpu", labels=("gpu", "nightly")))
    assert seen == ["gpu"]


async def test_plain_blinker_receivers_are_called_as_blinker_calls_them() -> None:
    bus = EventBus()
    calls: list[tuple[Any, Event]] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        calls.append((sender, kwargs["event"]))

    bus.signal(STARTING).connect(receiver)
    env = Environment("env", bus=bus)
    event = env.event(STARTING, "r")
    report = await env.emit(event)
    assert calls == [(env, event)]
    assert report.results[0].handler.endswith("receiver")


async def test_subscriptions_are_blinker_receivers_of_the_bus_signal() -> None:
    bus = EventBus()
    sub = bus.subscribe(STARTING, lambda e: None)
    assert sub in bus.signal(STARTING).receivers.values()
    assert bus.subscriptions(STARTING) == [sub]


async def test_result_hook_sees_every_result() -> None:
    bus = EventBus()
    seen: list[HandlerResult] = []

    async def boom(event: Event) -> None:
        raise RuntimeError("x")

    bus.subscribe(STARTING, boom)
    bus.subscribe(STARTING, lambda e: None)
    with bus.on_result(lambda sender, result: seen.append(result)):
        report = await bus.emit(starting())
    await bus.emit(starting())
    assert seen == list(report.results)
    assert {r.status for r in seen} == {Status.ERROR, Status.OK}


async def test_failing_result_hook_does_not_break_the_emit() -> None:
    bus = EventBus()
    bus.subscribe(STARTING, lambda e: None)

    def broken(sender: Any, result: HandlerResult) -> None:
        raise RuntimeError("hook")

    bus.on_result(broken)
    with capture_logs() as logs:
        report = await bus.emit(starting())
    assert report.ok
    assert any(log["event"] == "result hook failed" for log in logs)


async def test_handler_emitting_on_the_same_bus_is_allowed() -> None:
    bus = EventBus()
    seen: list[str] = []

    async def relay(event: Event) -> None:
        await bus.emit(event.evolve(name="relayed"))

    bus.subscribe(STARTING, relay)
    bus.subscribe("relayed", lambda e: seen.append(e.name), inline=True)
    report = await bus.emit(starting())
    assert report.ok
    assert seen == ["relayed"]


async def test_runaway_recursion_ends_as_an_error_result() -> None:
    bus = EventBus(max_depth=5)

    async def recurse(event: Event) -> None:
        report = await bus.emit(event)
        if not report.ok:
            raise report.results[0].exception or RuntimeError("nested failure")

    bus.subscribe(STARTING, recurse)
    with anyio.fail_after(FOREVER / 4):
        report = await bus.emit(starting())
    (result,) = report.results
    assert result.status is Status.ERROR
    innermost = result.exception
    assert isinstance(innermost, EmitDepthError)
    assert innermost.limit == 5


async def test_cancelling_the_emitter_cancels_handlers_and_propagates() -> None:
    bus = EventBus()
    entered, handler_cancelled = anyio.Event(), anyio.Event()

    async def hang(event: Event) -> None:
        entered.set()
        try:
            await anyio.sleep(FOREVER)
        finally:
            handler_cancelled.set()

    bus.subscribe(STARTING, hang, timeout=None)
    with anyio.fail_after(FOREVER / 4):
        async with anyio.create_task_group() as tg:
            tg.start_soon(bus.emit, starting())
            await entered.wait()
            tg.cancel_scope.cancel()
        await handler_cancelled.wait()
    assert tg.cancel_scope.cancelled_caught


async def test_emit_without_receivers_returns_an_empty_report() -> None:
    report = await EventBus().emit(starting())
    assert report.results == ()
    assert report.ok


async def test_hundred_subscribers_with_one_failing_and_one_hanging() -> None:
    bus = EventBus()
    for index in range(98):

        async def fine(event: Event) -> None:
            await anyio.lowlevel.checkpoint()

        bus.subscribe(STARTING, fine, name=f"fine-{index}")

    async def boom(event: Event) -> None:
        raise RuntimeError("boom")

    async def hang(event: Event) -> None:
        await anyio.sleep(FOREVER)

    bus.subscribe(STARTING, boom)
    bus.subscribe(STARTING, hang, timeout=0.2)
    with anyio.fail_after(FOREVER / 4):
        report = await bus.emit(starting())
    counts = report.counts()
    assert (counts[Status.OK], counts[Status.ERROR], counts[Status.TIMEOUT]) == (98, 1, 1)
    assert "1 error, 1 timeout" in str(report)


async def test_a_hook_that_logs_failures_itself_silences_the_bus_log() -> None:
    bus = EventBus()

    async def boom(event: Event) -> None:
        raise RuntimeError("x")

    bus.subscribe(STARTING, boom)
    hook = bus.on_result(lambda sender, result: None, logs_failures=True)
    with capture_logs() as quiet:
        await bus.emit(starting())
    hook.disconnect()
    hook.disconnect()  # twice is harmless
    with capture_logs() as loud:
        await bus.emit(starting())
    assert not [log for log in quiet if log["event"] == "handler failed"]
    assert [log["event"] for log in loud] == ["handler failed"]
