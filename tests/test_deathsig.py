"""The death signal is set in the forked child when the wrapper has one thread, else by the shim.

Each case runs in a fresh interpreter: the test process has threads of its own (earlier
tests leave worker threads behind), and whether the wrapper has any is what is tested.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's"
)

# The command: a shell (Python would ignore SIGPIPE itself) that shows the signals it
# ignores, then execs Python in its place to show its death signal (PR_GET_PDEATHSIG).
_DEATH_SIGNAL = (
    "import ctypes; value = ctypes.c_int(); "
    "ctypes.CDLL(None).prctl(2, ctypes.byref(value), 0, 0, 0); print(value.value)"
)
_REPORT = f"grep SigIgn /proc/$$/status; exec {sys.executable} -c '{_DEATH_SIGNAL}'"

# Starts the command as SubprocessEnvironment does (anyio) or as lifecycle run does (asyncio),
# and says whether it went through the shim.
_WRAPPER = """
import asyncio, signal, subprocess, sys, threading
from lifecycle import SubprocessEnvironment, _deathsig
from lifecycle._command_asyncio import _spawn

through_shim = []
shim_command = _deathsig.shim_command

def spy(command, report):
    through_shim.append(command)
    return shim_command(command, report)

_deathsig.shim_command = spy

async def main():
    if sys.argv[1] == "thread":
        threading.Thread(target=threading.Event().wait, daemon=True).start()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in the background of a shell
    command = ["sh", "-c", sys.argv[2]]
    options = dict(stdin=None, stdout=subprocess.PIPE, stderr=None)
    if sys.argv[3] == "anyio":
        process = await _deathsig.open_process(command, **options)
        out = b""
        async for chunk in process.stdout:
            out += chunk
        await process.wait()
    else:
        child = await _spawn(SubprocessEnvironment(command), options)
        out = await child.stdout.read()
        await child.wait()
        child.close()
    print(bool(through_shim), out.decode().strip())

asyncio.run(main())
"""

RUNNERS = pytest.mark.parametrize("runner", ["anyio", "lifecycle run"])


def _wrap(threads: str, runner: str) -> tuple[bool, int, int]:
    done = subprocess.run(
        [sys.executable, "-c", _WRAPPER, threads, _REPORT, runner.split()[0]],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    shim, _, ignored, death = done.stdout.split()
    return shim == "True", int(death), int(ignored, 16)


def _bit(signum: int) -> int:
    return 1 << (signum - 1)


@RUNNERS
def test_a_wrapper_with_one_thread_sets_the_death_signal_without_the_shim(runner: str) -> None:
    shim, death, ignored = _wrap("alone", runner)
    assert not shim
    assert death == signal.SIGKILL
    assert ignored & (_bit(signal.SIGPIPE) | _bit(signal.SIGINT)) == 0


@RUNNERS
def test_a_wrapper_with_other_threads_sets_the_death_signal_through_the_shim(runner: str) -> None:
    shim, death, ignored = _wrap("thread", runner)
    assert shim
    assert death == signal.SIGKILL
    assert ignored & (_bit(signal.SIGPIPE) | _bit(signal.SIGINT)) == 0


_ORPHAN = """
import subprocess, sys
from lifecycle import _deathsig

# Told that its wrapper is pid 1: as if the wrapper had died between fork and prctl.
done = subprocess.run(["touch", sys.argv[1]], preexec_fn=_deathsig.child_setup(1))
print(done.returncode)
"""


def test_the_child_kills_itself_if_its_wrapper_died_before_it_could_ask_for_the_signal(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "ran"
    done = subprocess.run(
        [sys.executable, "-c", _ORPHAN, str(marker)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == -signal.SIGKILL
    assert not marker.exists()
