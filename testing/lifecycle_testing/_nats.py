"""A real ``nats-server`` for tests: it picks its own port, so no two tests can race for one."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["NatsServer", "nats_server_binary"]

BINARY_ENV = "NATS_SERVER"
"""Names the nats-server binary to use instead of the one on ``PATH``."""

READY_WITHIN = 20.0
"""Seconds a server may take to start: a bound that turns a hang into a failure."""


def nats_server_binary() -> str:
    """The ``nats-server`` to run: ``$NATS_SERVER``, the one on ``PATH``, or Debian's."""
    named = os.environ.get(BINARY_ENV)
    if named:
        if not os.access(named, os.X_OK):
            pytest.fail(f"{BINARY_ENV}={named}: no executable nats-server there")
        return named
    found = shutil.which("nats-server") or (
        "/usr/sbin/nats-server" if os.access("/usr/sbin/nats-server", os.X_OK) else None
    )
    if found is None:
        pytest.fail(
            "nats-server is not installed: the NATS tests need it (apt-get install nats-server, "
            f"or set {BINARY_ENV} to its path)"
        )
    return found


class NatsServer:
    """A ``nats-server`` on 127.0.0.1 with its own store, for one test or one module.

    The first start lets the server choose a free port (``-p -1``) and reads it back from the
    ports file the server writes (``--ports_file_dir``): no port is guessed, so none can be
    taken in between. A restart asks for the same port again, so that clients reconnect to
    the URL they know, and keeps the store.

    Args:
        directory: where the store, the log and the ports file go.
        args: more ``nats-server`` options (``--user``, ...).
        jetstream: run with JetStream (``-js``).
    """

    def __init__(self, directory: Path, *args: str, jetstream: bool = True) -> None:
        self.directory = directory
        self.store = directory / "store"
        self.log = directory / "nats.log"
        self.args = args
        self.jetstream = jetstream
        self.port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the server has no port yet: start() it first")
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the server and return once it accepts connections."""
        assert self.process is None, "already running"
        ports = self.directory / "ports"
        shutil.rmtree(ports, ignore_errors=True)  # a killed server leaves its file behind
        ports.mkdir(parents=True)
        jetstream = ["-js", "-sd", str(self.store)] if self.jetstream else []
        port = -1 if self.port is None else self.port
        self.process = process = subprocess.Popen(
            [nats_server_binary(), *jetstream, "-a", "127.0.0.1", "-p", str(port),
             "--ports_file_dir", str(ports), "-l", str(self.log), *self.args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + READY_WITHIN
        while True:
            if process.poll() is not None:
                self.process = None
                raise RuntimeError(f"nats-server exited with {process.returncode}: see {self.log}")
            if self.port is None:
                self.port = self._port_from(ports / f"nats-server_{process.pid}.ports")
            if self.port is not None and self._accepts():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nats-server not ready within {READY_WITHIN} s: see {self.log}")
            time.sleep(0.005)

    def pick_port(self) -> None:
        """Start and stop the server once, for a test that needs its URL while it is down."""
        self.start()
        self.stop()

    def stop(self, sig: int = signal.SIGKILL) -> None:
        """Stop the server (killed by default, as a crash would); the store stays."""
        process, self.process = self.process, None
        if process is not None:
            process.send_signal(sig)
            process.wait(timeout=READY_WITHIN)

    def restart(self) -> None:
        """Kill the server and start it again on the same port with the same store."""
        self.stop()
        self.start()

    @staticmethod
    def _port_from(path: Path) -> int | None:
        try:
            urls = json.loads(path.read_text())["nats"]
        except (OSError, ValueError, KeyError):  # not written yet, or written half-way
            return None
        return int(urls[0].rsplit(":", 1)[1])

    def _accepts(self) -> bool:
        assert self.port is not None
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def __repr__(self) -> str:
        state = "running" if self.process is not None else "stopped"
        return f"<NatsServer {state} port={self.port} log={self.log}>"
