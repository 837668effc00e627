"""``lifecycle run`` on one "host", ``lifecycle listen`` on another: the same events, the same ids."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from lifecycle_testing import poll_blocking

from .conftest import Listener, lifecycle_run  # type: ignore[import-not-found]

if TYPE_CHECKING:
    from pathlib import Path

    from lifecycle_testing import NatsServer


def test_the_listener_handles_what_the_run_handled(shared_nats: NatsServer, tmp_path: Path) -> None:
    (tmp_path / "listen").mkdir()
    listener = Listener(tmp_path / "listen", shared_nats, stream="E2E", subject_prefix="e2e")
    listener.start()
    (tmp_path / "run").mkdir()
    status, ran = lifecycle_run(
        tmp_path / "run", shared_nats.url, sys.executable, "-c", "import time; time.sleep(0.5)",
        stream="E2E", extra=', subject_prefix = "e2e"',
    )  # fmt: skip
    assert status == 0
    names = [e["name"] for e in ran]
    assert (names[0], names[-1]) == ("environment.starting", "environment.exited")
    assert "environment.heartbeat" in names
    poll_blocking(
        lambda: len(listener.events()) >= len(ran), "the listener to catch up", context=listener
    )
    assert listener.stop() == 0
    assert listener.events() == ran
