"""bus.on_child_env: what a hook returns reaches the command of a run of the bus."""

from __future__ import annotations

import sys

import pytest

from lifecycle import ChildEnvHook, Event, EventBus, SubprocessEnvironment

pytestmark = pytest.mark.anyio

PRINT = "import os; print(os.environ.get('RUN', '-'), os.environ.get('HOME_SET', '-'))"


async def output(bus: EventBus, env: dict[str, str] | None = None) -> str:
    run = SubprocessEnvironment([sys.executable, "-c", PRINT], bus=bus, heartbeat=None, env=env)
    result = await run.execute()
    return result.output_tail


async def test_the_command_gets_what_the_hooks_return_for_its_run() -> None:
    seen: list[Event] = []

    def hook(starting: Event) -> dict[str, str]:
        seen.append(starting)
        return {"RUN": starting.run_id}

    async with EventBus() as bus:
        with bus.on_child_env(hook) as handle:
            assert isinstance(handle, ChildEnvHook)
            tail = await output(bus, env={"RUN": "inherited", "HOME_SET": "kept"})
        assert [event.name for event in seen] == ["environment.starting"]
        assert tail == f"{seen[0].run_id} kept"
        # Detached: the next run's command gets nothing from it.
        assert await output(bus) == "- -"


async def test_a_failing_hook_adds_nothing_and_the_command_runs() -> None:
    def broken(starting: Event) -> dict[str, str]:
        raise RuntimeError("no context")

    async with EventBus() as bus:
        bus.on_child_env(broken)
        bus.on_child_env(lambda starting: {"HOME_SET": "yes"})
        assert await output(bus) == "- yes"
