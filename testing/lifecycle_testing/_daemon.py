"""Third-party HTTP daemons a test starts (Prometheus, Alertmanager, a Prefect server).

Such a daemon must be told its port, so the test takes one from anyio's
``free_tcp_port_factory`` fixture (it never hands out the same port twice in a session):
there is no ports file to read back, as :class:`NatsServer` has.
"""

from __future__ import annotations

import subprocess
import urllib.request
from typing import TYPE_CHECKING, Any

import pytest

from ._poll import LIMIT, poll_blocking

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["stop_process", "wait_serving"]

LOG_TAIL = 2000
"""Characters of a daemon's log shown when it fails to start."""


class _LogTail:
    """The end of a log, read when shown: a failure message then says what happened last."""

    def __init__(self, log: Path | None) -> None:
        self.log = log

    def __repr__(self) -> str:
        if self.log is None:
            return "no log"
        try:
            return f"{self.log}:\n{self.log.read_text(errors='replace')[-LOG_TAIL:]}"
        except OSError as error:
            return f"{self.log}: {error}"


def wait_serving(
    url: str, process: subprocess.Popen[Any], *, log: Path | None = None, limit: float = LIMIT
) -> None:
    """Wait until ``url`` answers 200; fail at once if ``process`` exits first.

    Either failure shows the end of ``log`` (where the daemon writes), as does the bound
    ``limit`` (seconds) when the daemon neither answers nor exits.
    """
    tail = _LogTail(log)

    def serving() -> bool:
        if process.poll() is not None:
            pytest.fail(f"{process.args!r} exited with {process.returncode}: {tail!r}")
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                return bool(answer.status == 200)
        except OSError:  # refused, or an HTTP error while it starts: not serving yet
            return False

    poll_blocking(serving, url, limit=limit, context=tail)


def stop_process(process: subprocess.Popen[Any], grace: float = 10) -> None:
    """SIGTERM, then SIGKILL if ``process`` has not exited within ``grace`` seconds."""
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
