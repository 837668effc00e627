from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import pytest
import structlog

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
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

    def __init__(self, directory: Path, *args: str, jetstream: bool = True) -> None:
        self.jetstream = jetstream
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
            [nats_server_binary(), *(["-js", "-sd", str(self.store)] if self.jetstream else []),
             "-a", "127.0.0.1", "-p", str(self.port), "-l", str(self.log), *self.args],
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


@pytest.fixture(autouse=True)
def _structlog_defaults() -> Iterator[None]:
    """The CLI configures structlog for stderr; undo it after each test."""
    yield
    structlog.reset_defaults()


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
def no_jetstream(tmp_path: Path) -> Iterator[NatsServer]:
    """A server that runs without JetStream."""
    server = NatsServer(tmp_path, jetstream=False)
    server.start()
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


RECORDER = """
import json, os, time

def record(event):
    # A slow handler (SLOW seconds) makes a stream last long enough to kill a listener.
    time.sleep(float(os.environ.get("SLOW", "0")))
    with open(os.environ["RECORD_FILE"], "a", encoding="utf-8") as file:
        file.write(event.to_json() + "\\n")
"""


_LISTENERS: list[subprocess.Popen[bytes]] = []
"""Every listener process a test started, so none outlives a test that failed half-way."""


@pytest.fixture(autouse=True)
def _no_listener_outlives_its_test() -> Iterator[None]:
    yield
    while _LISTENERS:
        process = _LISTENERS.pop()
        if process.poll() is None:
            process.kill()
            process.wait(timeout=20)


class Listener:
    """``lifecycle listen --config notify.toml`` as a real process, recording what it handles."""

    def __init__(self, directory: Path, server: NatsServer, **listen: Any) -> None:
        self.directory = directory
        self.record = directory / "listened.jsonl"
        self.log = directory / "listen.log"
        self.config = directory / "notify.toml"
        (directory / "recorder.py").write_text(RECORDER)
        options = {"servers": server.url, "durable": "test", "ack_wait": 2, **listen}
        table = "\n".join(f"{key} = {toml_value(value)}" for key, value in options.items())
        handlers = "".join(
            f'[[handlers]]\ntarget = "recorder:record"\nsignal = "{signal}"\ninline = true\n'
            for signal in ("environment.starting", "environment.heartbeat", "environment.exited")
        )
        self.config.write_text(f"[listen]\n{table}\n\n{handlers}")
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, **extra_env: str) -> None:
        self.starts += 1
        env = {
            **os.environ,
            "RECORD_FILE": str(self.record),
            "LIFECYCLE_NATS_STATE": str(self.directory / "state"),
            **extra_env,
        }
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "lifecycle", "listen", "--config", str(self.config)],
                cwd=self.directory, env=env, stdout=log, stderr=log,
            )  # fmt: skip
        _LISTENERS.append(self.process)
        wait_for(lambda: self.log.read_text().count("listening") >= self.starts, "listening", self)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        process, self.process = self.process, None
        assert process is not None
        process.send_signal(sig)
        return process.wait(timeout=20)

    def events(self) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines() if line]

    def __repr__(self) -> str:
        return f"<Listener log:\n{self.log.read_text() if self.log.exists() else ''}>"


def toml_value(value: Any) -> str:
    return json.dumps(value)


def wait_for(
    condition: Callable[[], bool], what: str, context: Any = None, limit: float = 20
) -> None:
    """Poll a condition another process makes true, up to ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}: {context!r}")
        time.sleep(0.02)


def lifecycle_run(
    directory: Path,
    server_url: str,
    *command: str,
    stream: str = "LIFECYCLE",
    extra: str = "",
    heartbeat: float = 0.2,
    env: dict[str, str] | None = None,
) -> tuple[int, list[dict[str, Any]]]:
    """``lifecycle run --config cfg.toml -- CMD`` as a real process; its status and its events.

    ``env`` replaces the environment (``RECORD_FILE`` is added); stderr goes to ``run.err``.
    """
    (directory / "recorder.py").write_text(RECORDER)
    config = directory / "cfg.toml"
    record = directory / "ran.jsonl"
    config.write_text(
        f'[[adapters]]\nname = "nats"\noptions = {{ servers = "{server_url}", stream = "{stream}", '
        f"delivery_timeout = 1, reconnect_wait = 0.2{extra} }}\n\n"
        + "".join(
            f'[[handlers]]\ntarget = "recorder:record"\nsignal = "{signal}"\ninline = true\n'
            for signal in ("environment.starting", "environment.heartbeat", "environment.exited")
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "lifecycle", "run", "--config", str(config),
         "--heartbeat", str(heartbeat), "--", *command],
        cwd=directory, env={**(os.environ if env is None else env), "RECORD_FILE": str(record)},
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    (directory / "run.err").write_bytes(done.stderr)
    lines = record.read_text().splitlines() if record.exists() else []
    return done.returncode, [json.loads(line) for line in lines]
