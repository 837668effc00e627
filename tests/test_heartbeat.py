"""Heartbeats for any run: ``environment.heartbeat`` with the run id, at an interval."""

from __future__ import annotations

import anyio
import pytest
from trio.testing import MockClock

from lifecycle import (
    EXITED,
    HEARTBEAT,
    STARTING,
    Environment,
    Event,
    Outcome,
    SubprocessEnvironment,
    heartbeats,
)

WIDE = 10.0


class Beats:
    def __init__(self, env: Environment, wanted: int = 3) -> None:
        self.events: list[Event] = []
        self.exited: list[Event] = []
        self.enough = anyio.Event()
        self.wanted = wanted
        env.bus.subscribe(HEARTBEAT, self.beat, inline=True)
        env.bus.subscribe(EXITED, self.exited.append, inline=True)

    def beat(self, event: Event) -> None:
        self.events.append(event)
        if len(self.events) >= self.wanted:
            self.enough.set()


@pytest.mark.anyio
async def test_beats_carry_the_run_id_a_sequence_and_the_interval() -> None:
    env = Environment("train")
    beats = Beats(env)
    with anyio.fail_after(WIDE):
        async with env.running(run_id="r1") as run, heartbeats(run, 0.01):
            await beats.enough.wait()
    assert [e.run_id for e in beats.events[:3]] == ["r1"] * 3
    sequences = [e.attributes["sequence"] for e in beats.events]
    # Consecutive unless a loaded machine made the loop miss a beat (then it is skipped).
    assert sequences == sorted(set(sequences))
    assert sequences[0] >= 1
    assert {e.attributes["interval"] for e in beats.events} == {0.01}
    assert all(e.environment.name == "train" for e in beats.events)
    assert beats.exited[0].outcome is Outcome.SUCCEEDED


@pytest.mark.anyio
async def test_the_bodys_exception_passes_through_unwrapped() -> None:
    env = Environment()
    beats = Beats(env, wanted=1)

    async def failing_run() -> None:
        async with env.running() as run, heartbeats(run, 0.01):
            await beats.enough.wait()
            raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"), anyio.fail_after(WIDE):
        await failing_run()
    (exited,) = beats.exited
    assert exited.outcome is Outcome.FAILED


@pytest.mark.anyio
async def test_cancelling_the_body_ends_the_beats_and_the_run_as_cancelled() -> None:
    env = Environment()
    beats = Beats(env, wanted=1)
    with anyio.fail_after(WIDE), anyio.CancelScope() as scope:
        async with env.running() as run, heartbeats(run, 0.01):
            await beats.enough.wait()
            scope.cancel()
            await anyio.sleep_forever()
    (exited,) = beats.exited
    assert exited.outcome is Outcome.CANCELLED
    assert scope.cancelled_caught


@pytest.mark.anyio
@pytest.mark.parametrize("interval", [None, 0])
async def test_no_interval_sends_no_beats(interval: float | None) -> None:
    env = Environment()
    beats = Beats(env)
    async with env.running() as run, heartbeats(run, interval):
        await anyio.wait_all_tasks_blocked()
    assert beats.events == []


@pytest.mark.anyio
async def test_a_failing_heartbeat_handler_does_not_stop_the_beats() -> None:
    env = Environment()
    beats = Beats(env)

    @env.bus.on(HEARTBEAT)
    async def broken() -> None:
        raise RuntimeError("watchdog down")

    with anyio.fail_after(WIDE):
        async with env.running() as run, heartbeats(run, 0.01):
            await beats.enough.wait()


def test_missed_beats_are_skipped_not_sent_in_a_burst() -> None:
    """A handler that outlives the interval delays its beat; the schedule does not drift."""
    sequences: list[int] = []

    async def main() -> None:
        env = Environment()

        @env.bus.on(HEARTBEAT, timeout=None)
        async def slow_first(event: Event) -> None:
            sequences.append(event.attributes["sequence"])
            if len(sequences) == 1:
                await anyio.sleep(2.5)

        async with env.running() as run, heartbeats(run, 1.0):
            await anyio.sleep(5.5)

    # Virtual time: the 5.5 s run takes no real time at all.
    anyio.run(main, backend="trio", backend_options={"clock": MockClock(autojump_threshold=0)})
    assert sequences == [1, 4, 5]


@pytest.mark.parametrize(
    ("interval", "error"),
    [(-1, ValueError), (float("nan"), ValueError), (float("inf"), ValueError), ("5", TypeError)],
)
def test_a_bad_interval_is_refused(interval: object, error: type[Exception]) -> None:
    env = Environment()

    async def main() -> None:
        async with env.running() as run, heartbeats(run, interval):  # type: ignore[arg-type]
            pass

    with pytest.raises(error, match="heartbeat interval"):
        anyio.run(main)


@pytest.mark.anyio
@pytest.mark.parametrize(("heartbeat", "announced"), [(5, 5.0), (None, None), (0, None)])
async def test_starting_announces_the_heartbeat_interval_when_beats_are_on(
    heartbeat: float | None, announced: float | None
) -> None:
    """A watchdog knows from ``starting`` alone how often to expect a beat."""
    env = Environment()
    started: list[Event] = []
    env.bus.subscribe(STARTING, started.append, inline=True)
    async with env.running(attributes={"job": "x"}, heartbeat=heartbeat):
        pass
    (event,) = started
    assert event.attributes.get("heartbeat_interval") == announced
    assert event.attributes["job"] == "x"


@pytest.mark.anyio
@pytest.mark.parametrize(("heartbeat", "announced"), [(30, 30.0), (None, None)])
async def test_a_commands_starting_announces_its_heartbeat_interval(
    heartbeat: float | None, announced: float | None
) -> None:
    env = SubprocessEnvironment(["true"], heartbeat=heartbeat, forward_signals=False)
    started: list[Event] = []
    env.bus.subscribe(STARTING, started.append, inline=True)
    with anyio.fail_after(WIDE):
        await env.execute()
    (event,) = started
    assert event.attributes.get("heartbeat_interval") == announced
