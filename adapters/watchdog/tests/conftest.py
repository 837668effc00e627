"""A real nats-server with JetStream per test, on a free port with its own store."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from lifecycle import EXITED, HEARTBEAT, STARTING

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

BEAT = 0.2
"""The wrappers' heartbeat interval in the end-to-end tests."""

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    """A fresh ``nats-server -js`` for one test; stopped (and its store dropped) after."""
    port = free_port()
    store = tmp_path / "jetstream"
    server = subprocess.Popen(
        [NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:  # ready when it accepts connections (bounded: fails the test, never hangs)
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"nats-server did not start on port {port}") from None
                time.sleep(0.02)
        yield f"nats://127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


RELAY = textwrap.dedent(
    """
    # Publishes the wrapper's events to NATS, until lifecycle-nats' adapter is on main.
    import os

    import nats
    from lifecycle_nats import subject_for

    _js = None


    async def publish(event):
        global _js
        if _js is None:
            _js = (await nats.connect(os.environ["WATCHDOG_TEST_NATS"])).jetstream()
        await _js.publish(
            subject_for(event.name, event.environment.name),
            event.to_json().encode(),
            headers={"Nats-Msg-Id": event.event_id},
        )
    """
)


@dataclass
class Wrapper:
    process: subprocess.Popen[bytes]

    def signal(self, number: int) -> None:
        os.killpg(self.process.pid, number)  # the wrapper and its command


@pytest.fixture
def wrapper(nats_url: str, tmp_path: Path) -> Iterator[Callable[..., Wrapper]]:
    """Start `lifecycle run --heartbeat 0.2 -- sleep 60` publishing to the test's server."""
    (tmp_path / "relay.py").write_text(RELAY)
    config = tmp_path / "lifecycle.toml"
    config.write_text(
        "".join(
            f'[[handlers]]\ntarget = "relay:publish"\nsignal = "{signal}"\ntimeout = 5\n\n'
            for signal in (STARTING, HEARTBEAT, EXITED)
        )
    )
    started: list[Wrapper] = []

    def start(name: str = "nightly-etl") -> Wrapper:
        command = [sys.executable, "-m", "lifecycle", "run", "--config", str(config)]
        command += ["--name", name, "--heartbeat", str(BEAT), "--", "sleep", "60"]
        process = subprocess.Popen(
            command,
            cwd=tmp_path,
            env={**os.environ, "WATCHDOG_TEST_NATS": nats_url},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        started.append(Wrapper(process))
        return started[-1]

    yield start
    for one in started:
        if one.process.poll() is None:
            one.signal(signal.SIGKILL)
        one.process.wait()
