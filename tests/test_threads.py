"""Plain handlers that hang: their threads are abandoned, replaced, counted and bounded."""

from __future__ import annotations

import dataclasses
import threading
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import pytest
from lifecycle_testing import poll
from structlog.testing import capture_logs

from lifecycle import (
    STARTING,
    AbandonedThreadsError,
    EmitReport,
    Event,
    EventBus,
    Status,
)

from .helpers import starting

if TYPE_CHECKING:
    from collections.abc import Iterator, MutableMapping

pytestmark = pytest.mark.anyio

SHORT = 0.1
FOREVER = 60.0
HANG = "test.hang"


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """What hung handlers block on; set at the end of the test, so their threads end."""
    event = threading.Event()
    yield event
    event.set()


def hang_event(name: str = HANG) -> Event:
    return dataclasses.replace(starting(), name=name)


async def wait_for_count(bus: EventBus, count: int) -> None:
    """Wait until ``bus.abandoned_threads`` is ``count`` (abandoned threads end on their own)."""
    # The count drops in the abandoned thread itself, after its handler returns: there is
    # no event to wait on, so look again until it is right (bounded above).
    await poll(
        lambda: bus.abandoned_threads == count, f"{count} abandoned threads", limit=FOREVER / 4
    )


async def abandon_one(bus: EventBus, release: threading.Event) -> None:
    """Start a plain handler that blocks on ``release``, then cancel its emitter."""
    entered = threading.Event()

    def hang() -> None:
        entered.set()
        release.wait()

    with bus.subscribe(HANG, hang, timeout=None):
        with anyio.fail_after(FOREVER / 4):
            async with anyio.create_task_group() as group:
                group.start_soon(bus.emit, hang_event())
                await anyio.to_thread.run_sync(entered.wait, abandon_on_cancel=True)
                group.cancel_scope.cancel()


async def test_timed_out_sync_handlers_do_not_use_up_the_worker_threads(
    release: threading.Event,
) -> None:
    """Issue 8's repro: two hung handlers on a two-thread bus; the next one still runs."""
    bus = EventBus(max_threads=2)
    bus.subscribe(HANG, lambda: release.wait(), timeout=SHORT)
    bus.subscribe(STARTING, lambda: "ran", timeout=FOREVER / 4)
    with anyio.fail_after(FOREVER / 2):
        for _ in range(2):
            hung = await bus.emit(hang_event())
            assert [r.status for r in hung.results] == [Status.TIMEOUT]
        report = await bus.emit(starting())
    assert [r.status for r in report.results] == [Status.OK]


async def test_an_abandoned_thread_is_counted_logged_and_forgotten_when_it_returns(
    release: threading.Event,
) -> None:
    bus = EventBus(name="counted")
    with capture_logs() as logs:
        await abandon_one(bus, release)
    assert bus.abandoned_threads == 1
    (warning,) = [log for log in logs if log["log_level"] == "warning"]
    assert "abandoned" in warning["event"]
    assert (warning["bus"], warning["signal"], warning["abandoned_threads"]) == (
        "counted",
        HANG,
        1,
    )
    release.set()
    await wait_for_count(bus, 0)


async def test_past_max_abandoned_threads_sync_handlers_fail_at_once_without_running(
    release: threading.Event,
) -> None:
    bus = EventBus(name="capped", max_abandoned_threads=1)
    await abandon_one(bus, release)
    ran: list[str] = []

    async def async_handler() -> None:
        ran.append("async")

    bus.subscribe(STARTING, lambda: ran.append("sync"), timeout=FOREVER / 4)
    bus.subscribe(STARTING, async_handler)
    with anyio.fail_after(FOREVER / 4):
        report = await bus.emit(starting())
    refused, ok = report.results
    assert refused.status is Status.ERROR
    assert isinstance(refused.exception, AbandonedThreadsError)
    assert "max_abandoned_threads=1" in str(refused.exception)
    assert ok.status is Status.OK
    assert ran == ["async"]


async def test_a_sync_handler_queued_before_the_limit_is_refused_once_it_is_reached(
    release: threading.Event,
) -> None:
    """The limit holds for handlers already waiting for a thread, not just new ones."""
    bus = EventBus(max_threads=1, max_abandoned_threads=1)
    ran, entered = threading.Event(), threading.Event()

    def hang() -> None:
        entered.set()
        release.wait()

    bus.subscribe(HANG, hang, timeout=None)
    bus.subscribe("test.queued", ran.set, timeout=None)
    hang_scope = anyio.CancelScope()
    reports: list[EmitReport] = []

    async def emit_hang() -> None:
        with hang_scope:
            await bus.emit(hang_event())

    async def emit_queued() -> None:
        reports.append(await bus.emit(hang_event("test.queued")))

    with anyio.fail_after(FOREVER / 4):
        async with anyio.create_task_group() as group:
            group.start_soon(emit_hang)
            await anyio.to_thread.run_sync(entered.wait, abandon_on_cancel=True)
            group.start_soon(emit_queued)  # waits: the only worker thread hangs
            await anyio.wait_all_tasks_blocked()
            hang_scope.cancel()  # abandoned: the limit is reached
    ((result,),) = [report.results for report in reports]
    assert result.status is Status.ERROR
    assert isinstance(result.exception, AbandonedThreadsError)
    assert not ran.is_set()


async def test_sync_handlers_run_again_once_abandoned_threads_return(
    release: threading.Event,
) -> None:
    bus = EventBus(max_abandoned_threads=1)
    await abandon_one(bus, release)
    release.set()
    await wait_for_count(bus, 0)
    bus.subscribe(STARTING, lambda: None, timeout=FOREVER / 4)
    with anyio.fail_after(FOREVER / 4):
        report = await bus.emit(starting())
    assert [r.status for r in report.results] == [Status.OK]


async def test_a_sync_handler_given_up_before_it_started_never_runs(
    release: threading.Event,
) -> None:
    """One worker thread, hung: the handler queued behind it times out and is dropped."""
    bus = EventBus(max_threads=1)
    ran, entered = threading.Event(), threading.Event()

    def hang() -> None:
        entered.set()
        release.wait()

    bus.subscribe(HANG, hang, timeout=None)
    bus.subscribe("test.queued", ran.set, timeout=SHORT)
    with anyio.fail_after(FOREVER / 4):
        async with anyio.create_task_group() as group:
            group.start_soon(bus.emit, hang_event())
            await anyio.to_thread.run_sync(entered.wait, abandon_on_cancel=True)
            queued = await bus.emit(hang_event("test.queued"))
            assert [r.status for r in queued.results] == [Status.TIMEOUT]
            group.cancel_scope.cancel()
    # The hung thread was replaced; a dropped job would run before this one, in order.
    bus.subscribe(STARTING, lambda: None, timeout=FOREVER / 4)
    with anyio.fail_after(FOREVER / 4):
        report = await bus.emit(starting())
    assert [r.status for r in report.results] == [Status.OK]
    assert not ran.is_set()


class Hang:
    """A plain handler that blocks on ``release`` on every call, and says when it entered."""

    def __init__(self, release: threading.Event) -> None:
        self.release = release
        self.entered = threading.Event()
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1
        self.entered.set()
        self.release.wait()


async def abandon_call(bus: EventBus, hang: Hang) -> None:
    """Emit ``HANG`` until ``hang`` is running, then cancel the emitter: one call abandoned."""
    hang.entered.clear()
    with anyio.fail_after(FOREVER / 4):
        async with anyio.create_task_group() as group:
            group.start_soon(bus.emit, hang_event())
            await anyio.to_thread.run_sync(hang.entered.wait, abandon_on_cancel=True)
            group.cancel_scope.cancel()


async def wait_for_log(logs: list[MutableMapping[str, Any]], text: str) -> MutableMapping[str, Any]:
    """The log line containing ``text``; abandoned threads log after their count drops."""
    (line,) = await poll(
        lambda: [log for log in logs if text in str(log["event"])],
        f"a log line with {text!r}",
        limit=FOREVER / 4,
    )
    return line


def refusals(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [log for log in logs if "refused" in str(log["event"])]


async def test_a_handler_hanging_on_every_event_never_disables_the_other_handlers(
    release: threading.Event,
) -> None:
    """Issue 19: one handler hangs on each of 40 events; a quick plain one keeps running.

    Before, the bus-wide cap (32 hung threads) refused every plain handler from then on.
    """
    bus = EventBus(name="listener")
    hang = Hang(release)
    bus.subscribe(STARTING, hang, timeout=SHORT)
    ran: list[bool] = []
    quick = bus.subscribe(STARTING, lambda: ran.append(True), timeout=FOREVER / 4)
    hung_statuses: list[Status] = []
    with capture_logs() as logs, anyio.fail_after(FOREVER / 2):
        for _ in range(40):
            report = await bus.emit(starting())
            hung, ok = report.results
            assert (ok.handler, ok.status) == (quick.name, Status.OK)
            hung_statuses.append(hung.status)
            if hung.status is Status.ERROR:
                assert isinstance(hung.exception, AbandonedThreadsError)
                assert hung.exception.handler == "tests.test_threads.Hang"
                assert "max_abandoned_per_handler=2" in str(hung.exception)
    # A call given up before a thread took it never ran and holds no thread: only calls
    # that ran hang, and after two of them the handler is refused, and only it.
    timed_out = hung_statuses.count(Status.TIMEOUT)
    assert hung_statuses == [Status.TIMEOUT] * timed_out + [Status.ERROR] * (40 - timed_out)
    assert hang.calls == bus.abandoned_threads == 2
    assert len(ran) == 40
    assert bus.refused_calls == 40 - timed_out
    (refused,) = refusals(logs)  # once, not once per event
    assert (refused["log_level"], refused["handler"], refused["signal"]) == (
        "warning",
        "tests.test_threads.Hang",
        STARTING,
    )
    # Refused calls are not logged one by one as failures either.
    handler_lines = [log["event"] for log in logs if str(log["event"]).startswith("handler")]
    assert handler_lines == ["handler timed out"] * timed_out


async def test_a_refused_handler_runs_again_once_its_hung_calls_return(
    release: threading.Event,
) -> None:
    bus = EventBus(name="bulkhead", max_abandoned_per_handler=1)
    hang = Hang(release)
    bus.subscribe(HANG, hang, timeout=None)
    await abandon_call(bus, hang)  # hang's call abandoned
    # Subscribed after: a quick handler in flight when abandon_call cancels its emitter
    # would be abandoned too (seen on a loaded machine), and refused below.
    other = Hang(threading.Event())
    other.release.set()  # never hangs
    bus.subscribe(HANG, other, timeout=FOREVER / 4)
    with capture_logs() as logs, anyio.fail_after(FOREVER / 4):
        refused, ok = (await bus.emit(hang_event())).results
        assert refused.status is Status.ERROR
        assert isinstance(refused.exception, AbandonedThreadsError)
        assert "max_abandoned_per_handler=1" in str(refused.exception)
        assert ok.status is Status.OK
        assert (hang.calls, other.calls) == (1, 1)
        release.set()
        recovered = await wait_for_log(logs, "runs again")
        assert (recovered["handler"], recovered["refused_calls"]) == (
            "tests.test_threads.Hang",
            1,
        )
        report = await bus.emit(hang_event())
    assert [r.status for r in report.results] == [Status.OK, Status.OK]
    assert (hang.calls, bus.refused_calls, bus.abandoned_threads) == (2, 1, 0)
    (warning,) = refusals(logs)
    assert warning["max_abandoned_per_handler"] == 1


async def test_past_max_abandoned_threads_even_a_handler_that_never_hung_is_refused(
    release: threading.Event,
) -> None:
    """The bus-wide cap is the last resort, for many handlers hanging at once."""
    bus = EventBus(max_abandoned_threads=2)
    first, second = Hang(release), Hang(release)
    for hang in (first, second):
        with bus.subscribe(HANG, hang, timeout=None):
            await abandon_call(bus, hang)
    bus.subscribe(STARTING, lambda: None, timeout=FOREVER / 4)
    with capture_logs() as logs, anyio.fail_after(FOREVER / 4):
        for _ in range(3):
            (result,) = (await bus.emit(starting())).results
            assert isinstance(result.exception, AbandonedThreadsError)
            assert result.exception.handler is None
            assert "max_abandoned_threads=2" in str(result.exception)
        release.set()
        await wait_for_log(logs, "run again")
    assert bus.refused_calls == 3
    (warning,) = refusals(logs)
    assert warning["max_abandoned_threads"] == 2


@pytest.mark.parametrize(
    "option", ["max_threads", "max_abandoned_threads", "max_abandoned_per_handler"]
)
def test_thread_limits_must_be_positive(option: str) -> None:
    with pytest.raises(ValueError, match=f"{option} must be an int >= 1, not 0"):
        EventBus(**{option: 0})  # type: ignore[arg-type]
