"""Faults with real processes and a real server that the test stops, kills and restarts.

Every scenario counts the events: the listener must have handled exactly the events the
run handled in process, each once, in the same order.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from lifecycle_nats import Publisher
from lifecycle_testing import RECORD_FILE, poll_blocking, record_handlers, recorded

from lifecycle import HEARTBEAT, EnvironmentInfo, Event

from .conftest import Listener, lifecycle_run  # type: ignore[import-not-found,unused-ignore]

if TYPE_CHECKING:
    from pathlib import Path

    from lifecycle_testing import NatsServer

WAIT_FOR_GO = "import os, time\nwhile not os.path.exists('go'):\n    time.sleep(0.02)\n"


class BackgroundRun:
    """``lifecycle run`` of a command that waits for a file named ``go``."""

    def __init__(self, directory: Path, server: NatsServer) -> None:
        directory.mkdir()
        self.directory = directory
        self.record = directory / "ran.jsonl"
        config = directory / "cfg.toml"
        config.write_text(
            f'[[adapters]]\nname = "nats"\noptions = {{ servers = "{server.url}", '
            "delivery_timeout = 1, reconnect_wait = 0.2 }\n\n" + record_handlers()
        )
        with (directory / "run.log").open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "lifecycle", "run", "--config", str(config),
                 "--heartbeat", "0.1", "--", sys.executable, "-c", WAIT_FOR_GO],
                cwd=directory, env={**os.environ, RECORD_FILE: str(self.record)},
                stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip

    def events(self) -> list[dict[str, Any]]:
        return recorded(self.record)

    def finish(self) -> int:
        (self.directory / "go").touch()
        return self.process.wait(timeout=30)


def ids(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["name"], e["event_id"]) for e in events]


def ids_by_run(events: list[dict[str, Any]]) -> dict[str, list[tuple[str, str]]]:
    """Each run's events in the order handled: the listener keeps it within a run only."""
    runs: dict[str, list[tuple[str, str]]] = {}
    for event in events:
        runs.setdefault(event["run_id"], []).append((event["name"], event["event_id"]))
    return runs


def test_broker_down_before_the_run_then_started(own_nats: NatsServer, tmp_path: Path) -> None:
    own_nats.pick_port()
    run = BackgroundRun(tmp_path / "run", own_nats)
    poll_blocking(
        lambda: len(run.events()) >= 4, "starting and some heartbeats", context=run.events
    )
    own_nats.start()
    (tmp_path / "listen").mkdir()
    listener = Listener(tmp_path / "listen", own_nats)
    listener.start()
    poll_blocking(
        lambda: len(listener.events()) >= 4, "the waiting events to arrive", context=listener
    )
    assert run.finish() == 0
    ran = run.events()
    poll_blocking(lambda: len(listener.events()) >= len(ran), "the rest", context=listener)
    assert listener.stop() == 0
    assert ids(listener.events()) == ids(ran)
    print(f"broker down before the run: {len(ran)} events, each once, in order")


def test_broker_restarted_mid_run(own_nats: NatsServer, tmp_path: Path) -> None:
    own_nats.start()
    (tmp_path / "listen").mkdir()
    listener = Listener(tmp_path / "listen", own_nats)
    listener.start()
    run = BackgroundRun(tmp_path / "run", own_nats)
    poll_blocking(
        lambda: len(listener.events()) >= 3, "events before the restart", context=listener
    )
    own_nats.stop(signal.SIGTERM)
    before = len(run.events())
    poll_blocking(
        lambda: len(run.events()) >= before + 3, "heartbeats during the outage", context=run.events
    )
    own_nats.start()
    poll_blocking(
        lambda: len(listener.events()) >= before + 3, "events after the restart", context=listener
    )
    assert run.finish() == 0
    ran = run.events()
    poll_blocking(lambda: len(listener.events()) >= len(ran), "the rest", context=listener)
    assert listener.stop() == 0
    assert ids(listener.events()) == ids(ran)
    print(f"broker restarted mid-run: {len(ran)} events, each once, in order")


@pytest.mark.parametrize("resend", ["lifecycle flush", "the next run"])
def test_broker_killed_during_the_wrappers_exit(
    own_nats: NatsServer, tmp_path: Path, resend: str
) -> None:
    own_nats.start()
    (tmp_path / "listen").mkdir()
    listener = Listener(tmp_path / "listen", own_nats)
    listener.start()
    (tmp_path / "run").mkdir()
    assert own_nats.process is not None
    spool = f', spool_dir = "{tmp_path / "spool"}"'
    # The command itself kills the broker as it ends: exited is emitted while it is down.
    kill = f"import os, time; time.sleep(0.5); os.kill({own_nats.process.pid}, 9)"
    status, ran = lifecycle_run(
        tmp_path / "run", own_nats.url, sys.executable, "-c", kill, extra=spool, heartbeat=0.1
    )
    assert status == 0
    own_nats.process.wait(timeout=20)
    own_nats.process = None
    spooled = [name for name in os.listdir(tmp_path / "spool") if name.endswith(".json")]
    assert spooled  # at least the exited event
    own_nats.start()
    if resend == "lifecycle flush":
        flush = subprocess.run(
            [sys.executable, "-m", "lifecycle", "flush", "--config", str(tmp_path / "run" / "cfg.toml")],
            cwd=tmp_path / "run", capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert flush.returncode == 0, flush.stderr
        assert f"sent {len(spooled)} spooled event(s)" in flush.stdout
    else:
        (tmp_path / "next").mkdir()
        status, after = lifecycle_run(
            tmp_path / "next", own_nats.url, sys.executable, "-c", "pass", extra=spool
        )
        assert status == 0
        ran = ran + after  # two runs: the listener handles them side by side (issue 19)
    poll_blocking(
        lambda: len(listener.events()) >= len(ran), "the spooled events", context=listener
    )
    assert listener.stop() == 0
    assert ids_by_run(listener.events()) == ids_by_run(ran)  # each once, in its run's order
    assert [n for n in os.listdir(tmp_path / "spool") if n.endswith(".json")] == []
    print(f"broker killed during exit, {resend}: {len(ran)} events, {len(spooled)} spooled, once")


def test_listener_killed_mid_stream_and_restarted(shared_nats: NatsServer, tmp_path: Path) -> None:
    sent = [
        Event(name=HEARTBEAT, run_id="run-k", environment=EnvironmentInfo.current("kill"))
        for _ in range(40)
    ]

    async def publish() -> None:
        async with Publisher(
            servers=shared_nats.url, stream="KILL", subject_prefix="kill", spool_dir=tmp_path
        ) as publisher:
            for e in sent:
                await publisher.publish(e)

    anyio.run(publish)
    (tmp_path / "listen").mkdir()
    listener = Listener(tmp_path / "listen", shared_nats, stream="KILL", subject_prefix="kill")
    listener.start(SLOW="0.05")
    poll_blocking(lambda: len(listener.events()) >= 10, "some events handled", context=listener)
    seen = len(listener.events())
    listener.stop(signal.SIGKILL)
    killed_at = len(listener.events())
    assert killed_at < len(sent), (seen, killed_at)
    listener.start()
    poll_blocking(lambda: len(listener.events()) >= len(sent), "the rest", context=listener)
    assert listener.stop() == 0
    assert [e["event_id"] for e in listener.events()] == [e.event_id for e in sent]
    print(f"listener SIGKILLed after {killed_at} of {len(sent)}: each handled once, none skipped")


def unusable_state_env(tmp_path: Path) -> dict[str, str]:
    """An environment whose state directory cannot be created: it lies under a regular file.

    (Not a read-only directory: the tests run as root, which writes through those.)
    """
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    env = {k: v for k, v in os.environ.items() if k != "LIFECYCLE_NATS_SPOOL"}
    env["XDG_STATE_HOME"] = str(blocker / "state")
    return env


async def stored_in(server: NatsServer, stream: str) -> int:
    import nats

    client = await nats.connect(server.url)
    try:
        info = await client.jetstream().stream_info(stream)
        return int(info.state.messages)
    finally:
        await client.close()


def test_an_unusable_spool_does_not_stop_the_run(shared_nats: NatsServer, tmp_path: Path) -> None:
    touch = "import pathlib; pathlib.Path('ran').touch()"
    status, ran = lifecycle_run(
        tmp_path, shared_nats.url, sys.executable, "-c", touch, stream="NOSPOOL",
        extra=', subject_prefix = "nospool"', env=unusable_state_env(tmp_path),
    )  # fmt: skip
    assert status == 0, (tmp_path / "run.err").read_text()
    assert (tmp_path / "ran").exists()
    assert anyio.run(stored_in, shared_nats, "NOSPOOL") == len(ran) >= 2


def test_an_event_neither_sent_nor_spooled_is_reported_once(nowhere: str, tmp_path: Path) -> None:
    fail = "import pathlib, sys; pathlib.Path('ran').touch(); sys.exit(3)"
    status, ran = lifecycle_run(
        tmp_path, nowhere, sys.executable, "-c", fail, env=unusable_state_env(tmp_path)
    )
    err = (tmp_path / "run.err").read_text()
    assert status == 3, err  # the job's own status
    assert (tmp_path / "ran").exists()
    assert err.count("neither sent to NATS nor spooled") == 1, err
    lost_line = next(line for line in err.splitlines() if "nor spooled" in line)
    assert f"count={len(ran)}" in lost_line
    assert "NotADirectoryError" in lost_line
    assert "cannot connect to NATS at" in lost_line  # why NATS did not take them
