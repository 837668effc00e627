"""A stop is not an error: ``RunTerminated`` passes through ``except Exception``.

A program that wraps ``env.run_sync(...)`` in ``except Exception:`` (to log a failed job
and go on, say) must still stop when it is told to: the supervisor sent SIGTERM.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

from lifecycle import LifecycleError, RunTerminated

from .test_stop_signals import RUN_SYNC_PROGRAM, exited_lines, stopped

if TYPE_CHECKING:
    from pathlib import Path


def test_run_terminated_is_a_system_exit_and_not_an_exception() -> None:
    stop = RunTerminated("batch", signal.SIGTERM)
    assert isinstance(stop, SystemExit)
    assert not isinstance(stop, Exception)
    assert not isinstance(stop, LifecycleError)
    assert (stop.code, stop.exit_status, stop.signal_name) == (143, 143, "SIGTERM")


# test_stop_signals' program, with a catch-all around run_sync as careful code has it.
CATCH_ALL_PROGRAM = RUN_SYNC_PROGRAM.replace(
    "\nenv.run_sync(body)\n",
    """
try:
    env.run_sync(body)
except Exception as exc:
    print("swallowed", type(exc).__name__, flush=True)
print("went on after the stop", flush=True)
""",
)


def test_a_catch_all_around_run_sync_does_not_swallow_sigterm(tmp_path: Path) -> None:
    """The program stops with 143; before, ``except Exception`` caught the stop and it went on."""
    assert "except Exception" in CATCH_ALL_PROGRAM  # the replace found its line
    returncode, out, err = stopped(tmp_path, CATCH_ALL_PROGRAM, signal.SIGTERM)
    assert returncode == 143, (out, err)
    assert "swallowed" not in out
    assert "went on" not in out
    assert exited_lines(out) == ["exited terminated 143"]
    assert "Traceback" not in err
