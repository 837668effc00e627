"""The blocking runner: ``Environment.run_sync`` for programs that are not async."""

from __future__ import annotations

import os
import signal
import threading
import time

import anyio
import anyio.lowlevel
import pytest

from lifecycle import EXITED, STARTING, Environment, Event, EventBus, Outcome, RunTerminated

FOREVER = 60.0


def recorded(env: Environment) -> list[Event]:
    events: list[Event] = []
    env.bus.subscribe(EXITED, events.append, inline=True)
    return events


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_run_sync_returns_the_result_and_emits_both_events(backend: str) -> None:
    calls: list[str] = []
    env = Environment(on_start=lambda: calls.append("start"), on_exit=lambda: calls.append("exit"))
    assert env.run_sync(lambda x: x + 1, 41, backend=backend) == 42
    assert calls == ["start", "exit"]


def test_run_sync_runs_async_functions_too() -> None:
    async def compute() -> str:
        await anyio.lowlevel.checkpoint()
        return "done"

    assert Environment().run_sync(compute) == "done"


def test_run_sync_reraises_and_reports_failure() -> None:
    env = Environment()
    events = recorded(env)

    def fail() -> None:
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        env.run_sync(fail)
    assert [e.outcome for e in events] == [Outcome.FAILED]


def test_sigterm_during_a_sync_body_emits_terminated() -> None:
    env = Environment("batch")
    events = recorded(env)

    def body() -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(FOREVER)  # interrupted by the signal

    with pytest.raises(RunTerminated, match="'batch' was terminated by SIGTERM") as raised:
        env.run_sync(body)
    assert raised.value.exit_status == 128 + signal.SIGTERM
    (event,) = events
    assert (event.outcome, event.exit_code) == (Outcome.TERMINATED, 128 + signal.SIGTERM)


def test_sigint_during_an_async_body_emits_terminated() -> None:
    env = Environment()
    events = recorded(env)
    cancelled: list[bool] = []

    async def body() -> None:
        os.kill(os.getpid(), signal.SIGINT)
        try:
            await anyio.sleep(FOREVER)
        finally:
            cancelled.append(True)

    with pytest.raises(RunTerminated) as raised:
        env.run_sync(body)
    assert raised.value.signal_name == "SIGINT"
    assert [e.outcome for e in events] == [Outcome.TERMINATED]
    assert cancelled == [True]


def test_signal_during_starting_still_ends_in_exactly_one_exited() -> None:
    env = Environment()
    events = recorded(env)
    body_ran: list[bool] = []

    def send_sigterm(event: Event) -> None:
        os.kill(os.getpid(), signal.SIGTERM)

    env.bus.subscribe(STARTING, send_sigterm, inline=True)
    with pytest.raises(RunTerminated):
        env.run_sync(lambda: body_ran.append(True))
    assert body_ran == []
    assert [e.outcome for e in events] == [Outcome.TERMINATED]


def test_signal_handlers_are_restored_after_the_run() -> None:
    before = signal.getsignal(signal.SIGTERM)
    Environment().run_sync(lambda: None)
    assert signal.getsignal(signal.SIGTERM) is before


def test_run_sync_drains_background_handlers_before_returning() -> None:
    bus = EventBus()
    env = Environment(bus=bus)
    delivered: list[str] = []

    async def notify(event: Event) -> None:
        await anyio.lowlevel.checkpoint()
        delivered.append(event.run_id)

    bus.subscribe(EXITED, notify, background=True)
    env.run_sync(lambda: None, run_id="r-7")
    assert delivered == ["r-7"]


def test_run_sync_works_off_the_main_thread_without_signal_handling() -> None:
    results: list[object] = []
    thread = threading.Thread(target=lambda: results.append(Environment().run_sync(lambda: "ok")))
    thread.start()
    thread.join(FOREVER / 4)
    assert results == ["ok"]
