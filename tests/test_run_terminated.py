"""A stop is not an error: ``RunTerminated`` passes through ``except Exception``.

A program that wraps ``env.run_sync(...)`` in ``except Exception:`` (to log a failed job
and go on, say) must still stop when it is told to: the supervisor sent SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

from lifecycle import LifecycleError, RunTerminated

from .test_cli import WIDE, wait_until_ready
from .test_stop_signals import exited_lines, reaped

if TYPE_CHECKING:
    from pathlib import Path


def test_run_terminated_is_a_system_exit_and_not_an_exception() -> None:
    stop = RunTerminated("batch", signal.SIGTERM)
    assert isinstance(stop, SystemExit)
    assert not isinstance(stop, Exception)
    assert not isinstance(stop, LifecycleError)
    assert (stop.code, stop.exit_status, stop.signal_name) == (143, 143, "SIGTERM")


CATCH_ALL_PROGRAM = """
import time
from lifecycle import EXITED, Environment

env = Environment("batch")
env.bus.subscribe(EXITED, lambda e: print("exited", e.outcome.value, e.exit_code, flush=True))

def body():
    print("ready", flush=True)
    time.sleep(60)

try:
    env.run_sync(body)
except Exception as exc:
    print("swallowed", type(exc).__name__, flush=True)
print("went on after the stop", flush=True)
"""


def test_a_catch_all_around_run_sync_does_not_swallow_sigterm(tmp_path: Path) -> None:
    """The program stops with 143; before, ``except Exception`` caught the stop and it went on."""
    program = tmp_path / "job.py"
    program.write_text(textwrap.dedent(CATCH_ALL_PROGRAM))
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
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=WIDE)
    assert process.returncode == 143, (out, err)
    assert "swallowed" not in out
    assert "went on" not in out
    assert exited_lines(out) == ["exited terminated 143"]
    assert "Traceback" not in err
