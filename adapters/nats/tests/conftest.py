from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


def nats_server_binary() -> str:
    found = shutil.which("nats-server") or (
        "/usr/sbin/nats-server" if os.path.exists("/usr/sbin/nats-server") else None
    )
    if found is None:
        pytest.fail(
            "nats-server is not installed (apt-get install nats-server); the NATS tests need it"
        )
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class NatsServer:
    """A nats-server with JetStream on a free port and its own store dir, for one test (module)."""

    def __init__(self, directory: Path, *args: str) -> None:
        self.port = free_port()
        self.store = directory / "store"
        self.log = directory / "nats.log"
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self.process is None
        offset = self.log.stat().st_size if self.log.exists() else 0
        self.process = subprocess.Popen(
            [nats_server_binary(), "-js", "-a", "127.0.0.1", "-p", str(self.port),
             "-sd", str(self.store), "-l", str(self.log), *self.args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        # Readiness is the server's own "Server is ready" line (not a guess at a delay).
        deadline = time.monotonic() + 20
        while True:
            if self.log.exists():
                with self.log.open("rb") as file:
                    file.seek(offset)
                    if b"Server is ready" in file.read():
                        return
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"nats-server exited with {self.process.returncode}: see {self.log}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"nats-server did not get ready in 20 s: see {self.log}")
            time.sleep(0.01)

    def stop(self, sig: int = signal.SIGKILL) -> None:
        process, self.process = self.process, None
        if process is not None:
            process.send_signal(sig)
            process.wait(timeout=20)

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def shared_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One server for a whole module, for tests that do not stop it (each uses its own stream)."""
    server = NatsServer(tmp_path_factory.mktemp("nats"))
    server.start()
    yield server
    server.stop(signal.SIGTERM)


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A server this test may stop, kill and restart (not started yet)."""
    server = NatsServer(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def nowhere() -> str:
    """The URL of a port where no server listens."""
    return f"nats://127.0.0.1:{free_port()}"


@pytest.fixture
def spool_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "spool"
    monkeypatch.setenv("LIFECYCLE_NATS_SPOOL", str(directory))
    return directory
