"""Signals stop a run at once, and the process ends with the status a supervisor expects.

Real processes and real signals: ``lifecycle run`` wrappers, and a Python program that uses
``Environment.run_sync``.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest

from lifecycle import SubprocessEnvironment, _deathsig

from .test_cli import CONFIG, WIDE, Job, job, py, wait_until_ready

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["job"]  # the fixture, shared with test_cli


@contextlib.contextmanager
def reaped(process: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    """The process, killed at the end if a failed test left it running (never a hang)."""
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def stopped(tmp_path: Path, source: str, sent: signal.Signals) -> tuple[int, str, str]:
    """Run a Python program, send it ``sent`` once it prints "ready"; its status and output."""
    program = tmp_path / "job.py"
    program.write_text(textwrap.dedent(source))
    with reaped(
        subprocess.Popen(
            [sys.executable, str(program)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    ) as process:
        wait_until_ready(process)
        process.send_signal(sent)
        out, err = process.communicate(timeout=WIDE)
    return process.returncode, out, err


HUNG_STARTING = """
import threading

def hang(event):
    print("ready", flush=True)
    threading.Event().wait()  # never set: only the signal can end this run
"""


@pytest.mark.parametrize("sent", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_starting_cancels_a_hung_starting_handler(
    job: Job, sent: signal.Signals
) -> None:
    """The run goes straight to ``exited`` (terminated); the command never starts."""
    (job.directory / "hung.py").write_text(HUNG_STARTING)
    (job.directory / "lifecycle.toml").write_text(
        CONFIG + '\n[[handlers]]\ntarget = "hung:hang"\nsignal = "environment.starting"\n'
        "timeout = 3600\n"
    )
    marker = job.directory / "ran"
    with reaped(job.start("run", "--", "touch", str(marker))) as wrapper:
        wait_until_ready(wrapper)
        wrapper.send_signal(sent)
        # Before: the wrapper waited for the handler's whole timeout (an hour).
        assert wrapper.wait(WIDE) == 128 + sent
    exited = job.only_exit()
    assert (exited["outcome"], exited["exit_code"]) == ("terminated", 128 + sent)
    assert exited["attributes"]["received_signal"] == sent.name
    assert not marker.exists()


def test_a_command_that_catches_sigterm_and_exits_0_gives_terminated_and_status_0(
    job: Job,
) -> None:
    """The outcome says the run was stopped; the status is the command's own, as documented."""
    setup = "import signal, sys; signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))"
    code = f"import time\n{setup}\nprint('ready', flush=True)\ntime.sleep(60)"
    with reaped(job.start("run", "--", *py(code))) as wrapper:
        wait_until_ready(wrapper)
        wrapper.send_signal(signal.SIGTERM)
        assert wrapper.wait(WIDE) == 0
    exited = job.only_exit()
    assert (exited["outcome"], exited["exit_code"]) == ("terminated", 0)
    assert exited["attributes"]["received_signal"] == "SIGTERM"
    assert exited["attributes"]["returncode"] == 0


def exited_lines(out: str) -> list[str]:
    """The program's own lines about ``exited`` (the library logs to stdout too)."""
    return [line for line in out.splitlines() if line.startswith("exited")]


RUN_SYNC_PROGRAM = """
import sys, time
from lifecycle import EXITED, Environment

env = Environment("batch")
env.bus.subscribe(EXITED, lambda e: print("exited", e.outcome.value, e.exit_code, flush=True))

def body():
    print("ready", flush=True)
    time.sleep(60)

env.run_sync(body)
"""


@pytest.mark.parametrize("sent", [signal.SIGTERM, signal.SIGINT])
def test_run_sync_ends_the_process_with_128_plus_n_and_no_traceback(
    tmp_path: Path, sent: signal.Signals
) -> None:
    returncode, out, err = stopped(tmp_path, RUN_SYNC_PROGRAM, sent)
    assert returncode == 128 + sent
    assert exited_lines(out) == [f"exited terminated {128 + sent}"]
    assert "Traceback" not in err


RUN_SYNC_HUNG_STARTING = """
import threading
from lifecycle import EXITED, STARTING, Environment

env = Environment("batch")

def hang(event):
    print("ready", flush=True)
    threading.Event().wait()

env.bus.subscribe(STARTING, hang, timeout=3600)
env.bus.subscribe(EXITED, lambda e: print("exited", e.outcome.value, flush=True))
env.run_sync(lambda: print("body ran", flush=True))
"""


def test_run_sync_a_signal_during_starting_cancels_a_hung_starting_handler(
    tmp_path: Path,
) -> None:
    returncode, out, err = stopped(tmp_path, RUN_SYNC_HUNG_STARTING, signal.SIGTERM)
    assert returncode == 143, err
    assert exited_lines(out) == ["exited terminated"]


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for a parent to reap it does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_command_dies_when_its_wrapper_is_killed(job: Job) -> None:
    """SIGKILL leaves the wrapper no chance to stop its child: the kernel does it."""
    with reaped(job.start("run", "--", "sh", "-c", "echo $$; exec sleep 60")) as wrapper:
        assert wrapper.stdout is not None
        pid = int(wrapper.stdout.readline())  # sh, which becomes sleep in its place
        try:
            wrapper.kill()
            wrapper.wait(WIDE)
            deadline = time.monotonic() + WIDE
            while alive(pid):
                assert time.monotonic() < deadline, "the command outlived its killed wrapper"
                time.sleep(0.02)
        finally:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_shim_kills_itself_if_its_wrapper_died_before_it_could_ask_for_the_signal(
    tmp_path: Path,
) -> None:
    """The death signal only comes for a parent alive at ``prctl``: the shim checks."""
    marker = tmp_path / "ran"
    read_end, write_end = os.pipe()
    try:
        # Its parent is this test process, not the pid it is told is its wrapper's.
        shim = [sys.executable, "-I", "-S", "-c", _deathsig._SHIM, "1", str(write_end), "9"]
        done = subprocess.run(
            [*shim, "touch", str(marker)],
            pass_fds=(write_end,),
            timeout=WIDE,
            check=False,
        )
    finally:
        os.close(read_end)
        os.close(write_end)
    assert done.returncode == -signal.SIGKILL
    assert not marker.exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the backend that uses the shim
async def test_the_shim_leaves_the_command_no_ignored_signals(anyio_backend: str) -> None:
    """Python ignores SIGPIPE; a command started through it must not inherit that."""
    env = SubprocessEnvironment(
        ["grep", "SigIgn", "/proc/self/status"], forward_signals=False, stdout=io.BytesIO()
    )
    with anyio.fail_after(WIDE):
        result = await env.execute()
    assert result.exit_status == 0, result.output_tail
    ignored = int(result.output_tail.split()[-1], 16)
    assert ignored & (1 << (signal.SIGPIPE - 1)) == 0
