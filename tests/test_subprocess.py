"""SubprocessEnvironment: real child processes, one ``exited`` each, with the right outcome."""

from __future__ import annotations

import io
import os
import signal
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest
from lifecycle_testing import Recorder

import lifecycle._command_asyncio
import lifecycle._subprocess
from lifecycle import (
    EXITED,
    HEARTBEAT,
    STARTING,
    CommandResult,
    Event,
    EventBus,
    Outcome,
    SubprocessEnvironment,
)
from lifecycle._subprocess import OutputTail

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

pytestmark = pytest.mark.anyio

WIDE = 10.0
"""A margin no healthy test comes near: it only bounds a hang."""


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


# Prints a line when it is ready to be signalled (after any signal setup), then waits.
READY_THEN_WAIT = "import sys, time\n{setup}\nprint('ready', flush=True)\ntime.sleep(60)"


class Sink(io.BytesIO):
    """A binary stream that notes when a given line has been written to it."""

    def __init__(self, line: bytes = b"ready") -> None:
        super().__init__()
        self.line = line
        self.seen = threading.Event()

    def write(self, data: bytes) -> int:  # type: ignore[override]
        written = super().write(data)
        if self.line in self.getvalue():
            self.seen.set()
        return written

    async def wait(self) -> None:
        with anyio.fail_after(WIDE):
            while not await anyio.to_thread.run_sync(self.seen.wait, 0.5):
                pass


@pytest.fixture
async def bus() -> AsyncIterator[EventBus]:
    async with EventBus() as bus:
        yield bus


Execute = Callable[..., Coroutine[Any, Any, CommandResult]]

# Each run on asyncio is tested twice: through ``SubprocessEnvironment.execute`` (anyio's
# processes and cancel scopes), and through the asyncio runner ``lifecycle run`` uses,
# which must behave the same.
RUNNERS = pytest.mark.parametrize(
    ("anyio_backend", "runner"),
    [("asyncio", "execute"), ("asyncio", "lifecycle run"), ("trio", "execute")],
    scope="module",
)


@pytest.fixture
def execute(runner: str) -> Execute:
    """Runs an environment's command once (in at most ``WIDE`` seconds) with ``runner``."""

    async def run(env: SubprocessEnvironment, run_id: str | None = None) -> CommandResult:
        with anyio.fail_after(WIDE):
            if runner == "lifecycle run":
                return await lifecycle._command_asyncio.execute(env, run_id)
            return await env.execute(run_id)

    return run


@RUNNERS
async def test_a_command_that_succeeds_is_succeeded_with_its_output_passed_through(
    bus: EventBus, execute: Execute
) -> None:
    events = Recorder(bus)
    out, err = Sink(), Sink()
    env = SubprocessEnvironment(
        py("import sys; print('hello'); print('oops', file=sys.stderr)"),
        name="hello",
        labels=["nightly"],
        bus=bus,
        stdout=out,
        stderr=err,
    )
    result = await execute(env)
    assert (result.outcome, result.exit_status, result.returncode) == (Outcome.SUCCEEDED, 0, 0)
    assert out.getvalue() == b"hello\n"
    assert err.getvalue() == b"oops\n"
    assert events.names() == [STARTING, EXITED]
    exited = events.only_exit
    assert exited is result.exited
    assert (exited.outcome, exited.exit_code, exited.error) == (Outcome.SUCCEEDED, 0, None)
    assert exited.environment.labels == frozenset({"nightly"})
    assert exited.duration is not None
    assert exited.duration > 0
    assert exited.attributes["command"] == tuple(env.command)
    assert sorted(exited.attributes["output_tail"].splitlines()) == ["hello", "oops"]


@RUNNERS
async def test_a_non_zero_exit_is_failed_with_its_status_and_the_tail_of_its_output(
    bus: EventBus, execute: Execute
) -> None:
    events = Recorder(bus)
    code = "import sys\nfor i in range(50): print('line', i)\nsys.exit(3)"
    env = SubprocessEnvironment(py(code), bus=bus, stdout=Sink(), tail_lines=5)
    result = await execute(env)
    assert (result.outcome, result.exit_status, result.signal) == (Outcome.FAILED, 3, None)
    exited = events.only_exit
    assert (exited.outcome, exited.exit_code) == (Outcome.FAILED, 3)
    assert exited.attributes["output_tail"] == "\n".join(f"line {i}" for i in range(45, 50))
    assert result.output_tail == exited.attributes["output_tail"]


@RUNNERS
async def test_a_child_killed_by_sigkill_is_killed_with_the_signal_name(
    bus: EventBus, execute: Execute
) -> None:
    events = Recorder(bus)
    code = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    result = await execute(SubprocessEnvironment(py(code), bus=bus, stdout=Sink()))
    assert (result.outcome, result.exit_status, result.returncode) == (Outcome.KILLED, 137, -9)
    exited = events.only_exit
    assert (exited.outcome, exited.exit_code) == (Outcome.KILLED, 137)
    assert exited.attributes["signal"] == "SIGKILL"


@RUNNERS
async def test_a_command_past_its_time_limit_is_stopped_as_timeout(
    bus: EventBus, execute: Execute
) -> None:
    events = Recorder(bus)
    env = SubprocessEnvironment(
        py(READY_THEN_WAIT.format(setup="")), bus=bus, timeout=0.2, stdout=Sink()
    )
    result = await execute(env)
    assert (result.outcome, result.exit_status) == (Outcome.TIMEOUT, 124)
    exited = events.only_exit
    assert (exited.outcome, exited.exit_code) == (Outcome.TIMEOUT, 124)
    assert exited.attributes["timeout"] == 0.2
    assert exited.attributes["signal"] == "SIGTERM"
    assert exited.duration is not None
    assert exited.duration < WIDE


@pytest.mark.parametrize(
    ("command", "status", "error"),
    [
        (["/nonexistent/lifecycle-test-command"], 127, "FileNotFoundError"),
        (["lifecycle-test-command-that-is-not-on-path"], 127, "FileNotFoundError"),
    ],
)
@RUNNERS
async def test_a_command_that_does_not_exist_fails_with_127(
    bus: EventBus, command: list[str], status: int, error: str, execute: Execute
) -> None:
    events = Recorder(bus)
    result = await execute(SubprocessEnvironment(command, bus=bus))
    assert (result.outcome, result.exit_status, result.returncode) == (Outcome.FAILED, 127, None)
    assert isinstance(result.error, FileNotFoundError)
    assert result.describe().startswith("command not found")
    exited = events.only_exit
    assert (exited.outcome, exited.exit_code) == (Outcome.FAILED, status)
    assert exited.error is not None
    assert exited.error.type == error
    assert "subprocess.py" not in exited.error.traceback
    assert events.names() == [STARTING, EXITED]


@RUNNERS
async def test_a_file_that_is_not_executable_fails_with_126(
    bus: EventBus, tmp_path: Path, execute: Execute
) -> None:
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\necho never\n")
    script.chmod(0o644)
    events = Recorder(bus)
    result = await execute(SubprocessEnvironment([str(script)], bus=bus))
    assert (result.outcome, result.exit_status) == (Outcome.FAILED, 126)
    assert isinstance(result.error, PermissionError)
    assert events.only_exit.exit_code == 126


@RUNNERS
async def test_sigterm_to_the_wrapper_is_forwarded_and_the_run_is_terminated(
    bus: EventBus, execute: Execute
) -> None:
    events = Recorder(bus)
    out = Sink()
    env = SubprocessEnvironment(py(READY_THEN_WAIT.format(setup="")), bus=bus, stdout=out)
    results: list[CommandResult] = []
    async with anyio.create_task_group() as group:
        group.start_soon(_collect, execute, env, results)
        await out.wait()
        os.kill(os.getpid(), signal.SIGTERM)
    (result,) = results
    assert (result.outcome, result.exit_status, result.signal) == (
        Outcome.TERMINATED,
        143,
        "SIGTERM",
    )
    exited = events.only_exit
    assert exited.attributes["received_signal"] == "SIGTERM"
    assert "killed_after_grace" not in exited.attributes


@RUNNERS
async def test_a_child_that_ignores_sigterm_is_killed_after_the_grace(
    bus: EventBus, execute: Execute
) -> None:
    events = Recorder(bus)
    out = Sink()
    setup = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)"
    env = SubprocessEnvironment(
        py(READY_THEN_WAIT.format(setup=setup)), bus=bus, stdout=out, kill_grace=0.1
    )
    results: list[CommandResult] = []
    async with anyio.create_task_group() as group:
        group.start_soon(_collect, execute, env, results)
        await out.wait()
        os.kill(os.getpid(), signal.SIGTERM)
    (result,) = results
    assert (result.outcome, result.exit_status, result.signal) == (
        Outcome.TERMINATED,
        137,
        "SIGKILL",
    )
    assert events.only_exit.attributes["killed_after_grace"] is True


@RUNNERS
async def test_a_signal_during_starting_means_the_run_ends_terminated(
    bus: EventBus, execute: Execute
) -> None:
    events = Recorder(bus)

    @bus.on(STARTING)
    async def stop_at_once() -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        await anyio.lowlevel.checkpoint()

    env = SubprocessEnvironment(py(READY_THEN_WAIT.format(setup="")), bus=bus, stdout=Sink())
    result = await execute(env)
    # Whether the signal was handled before or after the child started, it ends the run.
    assert (result.outcome, result.exit_status) == (Outcome.TERMINATED, 143)
    assert events.only_exit.outcome is Outcome.TERMINATED


@RUNNERS
async def test_a_signal_cancels_a_starting_handler_that_would_never_return(
    bus: EventBus, tmp_path: Path, execute: Execute
) -> None:
    """No waiting for the handler's timeout: the run is terminated and the command never runs."""
    events = Recorder(bus)
    entered = anyio.Event()
    cancelled: list[bool] = []

    @bus.on(STARTING, timeout=None)
    async def hang() -> None:
        entered.set()
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.append(True)

    marker = tmp_path / "ran"
    env = SubprocessEnvironment(["touch", str(marker)], bus=bus)
    results: list[CommandResult] = []
    async with anyio.create_task_group() as group:
        group.start_soon(_collect, execute, env, results)
        await entered.wait()
        os.kill(os.getpid(), signal.SIGTERM)
    (result,) = results
    assert (result.outcome, result.exit_status, result.returncode) == (
        Outcome.TERMINATED,
        143,
        None,
    )
    assert cancelled == [True]
    assert events.only_exit.attributes["received_signal"] == "SIGTERM"
    assert not marker.exists()


@RUNNERS
async def test_heartbeats_carry_the_run_id_and_cancelling_stops_the_child(
    bus: EventBus, execute: Execute
) -> None:
    events = Recorder(bus)
    beats: list[Event] = []
    two_beats = anyio.Event()

    @bus.on(HEARTBEAT, inline=True)
    def count(event: Event) -> None:
        beats.append(event)
        if len(beats) == 2:
            two_beats.set()

    env = SubprocessEnvironment(
        py(READY_THEN_WAIT.format(setup="")), bus=bus, heartbeat=0.01, stdout=Sink()
    )
    with anyio.fail_after(WIDE):
        async with anyio.create_task_group() as group:
            group.start_soon(execute, env, "job-7")
            await two_beats.wait()
            group.cancel_scope.cancel()
    assert [beat.run_id for beat in beats[:2]] == ["job-7", "job-7"]
    sequences = [beat.attributes["sequence"] for beat in beats]
    assert sequences == sorted(set(sequences))  # increasing; a missed beat is skipped
    assert beats[0].attributes["interval"] == 0.01
    exited = events.only_exit
    assert exited.outcome is Outcome.CANCELLED
    assert events.names()[-1] == EXITED  # no heartbeat after the run ended
    pid = exited.attributes.get("child_pid")
    assert isinstance(pid, int)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # stopped and reaped


@RUNNERS
async def test_output_is_passed_through_while_the_command_still_runs(
    bus: EventBus, execute: Execute
) -> None:
    events = Recorder(bus)
    out = Sink()
    env = SubprocessEnvironment(py(READY_THEN_WAIT.format(setup="")), bus=bus, stdout=out)
    with anyio.fail_after(WIDE):
        async with anyio.create_task_group() as group:
            group.start_soon(execute, env)
            await out.wait()  # the child is still sleeping: nothing waited for its end
            assert [e.name for e in events.events] == [STARTING]
            group.cancel_scope.cancel()
    exited = events.only_exit
    assert exited.outcome is Outcome.CANCELLED
    assert exited.attributes["output_tail"] == "ready"


@RUNNERS
async def test_a_grandchild_holding_the_output_open_does_not_hold_the_run(
    bus: EventBus, monkeypatch: pytest.MonkeyPatch, execute: Execute
) -> None:
    """The child exits; a background grandchild keeps its pipes; the run ends anyway."""
    monkeypatch.setattr(lifecycle._subprocess, "_OUTPUT_DRAIN_SECONDS", 0.1)
    events = Recorder(bus)
    env = SubprocessEnvironment(
        ["sh", "-c", "sleep 30 & echo started"], bus=bus, stdout=Sink(), heartbeat=None
    )
    try:
        result = await execute(env)
    finally:
        pid = events.only_exit.attributes["child_pid"]
        os.killpg(pid, signal.SIGKILL)  # the grandchild, left in the child's process group
    assert (result.outcome, result.exit_status) == (Outcome.SUCCEEDED, 0)
    assert result.output_tail == "started"


@RUNNERS
async def test_a_python_child_writes_unbuffered_so_its_output_is_live(
    bus: EventBus, execute: Execute
) -> None:
    # No flush: without PYTHONUNBUFFERED the line would wait in the child's buffer.
    out = Sink()
    code = "import os, time\nprint(os.environ['PYTHONUNBUFFERED'])\ntime.sleep(60)"
    env = SubprocessEnvironment(py(code), bus=bus, stdout=out, env={"PATH": os.defpath})
    out.line = b"1\n"
    with anyio.fail_after(WIDE):
        async with anyio.create_task_group() as group:
            group.start_soon(execute, env)
            await out.wait()
            group.cancel_scope.cancel()


@RUNNERS
async def test_inherited_output_keeps_no_tail(bus: EventBus, execute: Execute) -> None:
    events = Recorder(bus)
    env = SubprocessEnvironment(py("pass"), bus=bus, output="inherit")
    result = await execute(env)
    assert result.outcome is Outcome.SUCCEEDED
    assert "output_tail" not in events.only_exit.attributes


async def _collect(
    execute: Execute, env: SubprocessEnvironment, results: list[CommandResult]
) -> None:
    results.append(await execute(env))


def test_the_command_must_be_a_list_not_a_string() -> None:
    with pytest.raises(TypeError, match="sequence of program and arguments"):
        SubprocessEnvironment("ls -l")
    with pytest.raises(TypeError, match="sequence of program and arguments"):
        SubprocessEnvironment([])


def test_options_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError, match="output must be"):
        SubprocessEnvironment(["true"], output="capture")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="heartbeat"):
        SubprocessEnvironment(["true"], heartbeat=-1)
    with pytest.raises(ValueError, match="tail_lines"):
        SubprocessEnvironment(["true"], tail_lines=-1)


@pytest.mark.parametrize(
    ("command", "name"),
    [
        (["/usr/bin/env", "true"], "env"),
        (["backup", "--full"], "backup"),
        (["python3", "jobs/etl.py", "--day", "1"], "etl.py"),
        (["/bin/sh", "nightly.sh"], "nightly.sh"),
        (["python3.12", "-c", "pass"], "python3.12"),
        (["bash"], "bash"),
        (["ssh", "backup-host", "uptime"], "ssh"),
    ],
)
def test_the_default_name_is_the_programs_or_its_scripts_base_name(
    command: list[str], name: str
) -> None:
    assert SubprocessEnvironment(command).name == name
    assert SubprocessEnvironment(command, name="backup").name == "backup"


def test_the_output_tail_is_bounded_in_lines_and_bytes() -> None:
    tail = OutputTail(max_lines=3, max_bytes=20)
    tail.feed("stdout", b"one\ntwo\nthr")
    tail.feed("stderr", b"err\n")
    tail.feed("stdout", b"ee\nfour\n")
    assert tail.text() == "err\nthree\nfour"
    tail.feed("stdout", b"x" * 100 + b"\n")
    assert tail.text() == "x" * 20
    assert tail.truncated


def test_the_output_tail_keeps_an_unfinished_line_and_replaces_bad_utf8() -> None:
    tail = OutputTail(max_lines=5, max_bytes=100)
    tail.feed("stdout", b"done\r\nprogress \xff 50%")
    assert tail.text() == "done\nprogress \ufffd 50%"
