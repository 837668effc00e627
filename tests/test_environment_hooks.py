"""``Environment.lifespan`` and ``Environment.collect``: the hooks of an environment subclass."""

from __future__ import annotations

import contextvars
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio
import pytest
from structlog.testing import capture_logs

from lifecycle import EXITED, STARTING, Environment, Event, EventBus, Outcome, Run, StartAborted

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

pytestmark = pytest.mark.anyio

CLUSTER: contextvars.ContextVar[str] = contextvars.ContextVar("cluster")


class ClusterEnvironment(Environment):
    """An environment whose runs hold a resource and report what it did."""

    def __init__(self, bus: EventBus, *, fail_to_open: bool = False) -> None:
        super().__init__("on-cluster", bus=bus, exit_grace=0.2)
        self.fail_to_open = fail_to_open
        self.steps: list[str] = []
        self.collected: list[Outcome] = []

    @asynccontextmanager
    async def lifespan(self, run: Run) -> AsyncIterator[None]:
        if self.fail_to_open:
            raise OSError("scheduler unreachable")
        self.steps.append("open")
        run.attributes["workers"] = 4
        token = CLUSTER.set("tcp://scheduler:8786")
        try:
            yield
        except BaseException as exc:
            self.steps.append(f"close after {type(exc).__name__}")
            raise
        else:
            self.steps.append("close")
        finally:
            CLUSTER.reset(token)

    async def collect(self, run: Run, outcome: Outcome) -> None:
        self.collected.append(outcome)
        run.attributes["tasks"] = 12


def record(bus: EventBus, env: ClusterEnvironment) -> list[Event]:
    events: list[Event] = []

    def seen(event: Event) -> None:
        events.append(event)
        env.steps.append(event.name)

    bus.subscribe(STARTING, seen, inline=True)
    bus.subscribe(EXITED, seen, inline=True)
    return events


async def test_lifespan_wraps_both_events_and_its_attributes_travel_on_starting() -> None:
    async with EventBus() as bus:
        env = ClusterEnvironment(bus)
        events = record(bus, env)
        async with env.running():
            assert CLUSTER.get() == "tcp://scheduler:8786"  # set in lifespan, seen by the body
    assert env.steps == ["open", STARTING, EXITED, "close"]
    starting, exited = events
    assert starting.attributes == {"workers": 4}
    assert exited.attributes == {"workers": 4, "tasks": 12}  # collect's, before exited
    assert env.collected == [Outcome.SUCCEEDED]


async def test_lifespan_sees_the_body_exception_after_exited() -> None:
    async with EventBus() as bus:
        env = ClusterEnvironment(bus)
        record(bus, env)
        with pytest.raises(ValueError, match="bad row"):
            async with env.running():
                raise ValueError("bad row")
    assert env.steps == ["open", STARTING, EXITED, "close after ValueError"]
    assert env.collected == [Outcome.FAILED]


async def test_a_lifespan_that_cannot_open_means_no_run_and_no_event() -> None:
    async with EventBus() as bus:
        env = ClusterEnvironment(bus, fail_to_open=True)
        events = record(bus, env)
        with pytest.raises(OSError, match="scheduler unreachable"):
            async with env.running():
                pytest.fail("the body must not run")
    assert events == []


async def test_collect_runs_for_an_aborted_start_too() -> None:
    async with EventBus() as bus:
        env = ClusterEnvironment(bus)
        events = record(bus, env)

        def refuse() -> None:
            raise RuntimeError("no quota")

        bus.subscribe(STARTING, refuse, critical=True)
        with pytest.raises(StartAborted):
            async with env.running():
                pytest.fail("the body must not run")
    assert env.collected == [Outcome.ABORTED]
    assert events[-1].attributes["tasks"] == 12


class BrokenCollect(ClusterEnvironment):
    async def collect(self, run: Run, outcome: Outcome) -> None:
        raise ConnectionError("metrics endpoint gone")


class HangingCollect(ClusterEnvironment):
    async def collect(self, run: Run, outcome: Outcome) -> None:
        await anyio.sleep_forever()


@pytest.mark.parametrize(
    ("environment", "logged"),
    [
        (BrokenCollect, "collect failed"),
        (HangingCollect, "collect cut off by the exit grace period"),
    ],
)
async def test_a_failing_or_hanging_collect_never_loses_exited(
    environment: type[ClusterEnvironment], logged: str
) -> None:
    async with EventBus() as bus:
        env = environment(bus)
        events = record(bus, env)
        with capture_logs() as logs:
            async with env.running():
                pass
    assert [e.name for e in events] == [STARTING, EXITED]
    assert events[-1].outcome is Outcome.SUCCEEDED
    assert "tasks" not in events[-1].attributes
    assert [line["event"] for line in logs if line["log_level"] == "error"] == [logged]
