from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import lifecycle_nats._source
import pytest
import structlog
from lifecycle_testing import RECORD_FILE, NatsServer, poll_blocking, record_handlers, recorded

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture(autouse=True)
def _structlog_defaults() -> Iterator[None]:
    """The CLI configures structlog for stderr; undo it after each test."""
    yield
    structlog.reset_defaults()


@pytest.fixture(autouse=True)
def _short_fetch_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pull requests open 0.1 s instead of 0.5 s, for the listeners run in this process.

    A stop waits out the open request, and nats-py's fetch hands over a message that comes
    alone during a request only when the request expires: the same handling, sooner (the
    in-process listener tests took 13 s with 0.5 s, 7.5 s with 0.1 s).
    """
    monkeypatch.setattr(lifecycle_nats._source, "_FETCH_WAIT", 0.1)


@pytest.fixture
def spool_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "spool"
    monkeypatch.setenv("LIFECYCLE_NATS_SPOOL", str(directory))
    return directory


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
        options = {"servers": server.url, "durable": "test", "ack_wait": 2, **listen}
        table = "\n".join(f"{key} = {toml_value(value)}" for key, value in options.items())
        self.config.write_text(f"[listen]\n{table}\n\n{record_handlers()}")
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, **extra_env: str) -> None:
        self.starts += 1
        env = {
            **os.environ,
            RECORD_FILE: str(self.record),
            "LIFECYCLE_NATS_STATE": str(self.directory / "state"),
            **extra_env,
        }
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "lifecycle", "listen", "--config", str(self.config)],
                cwd=self.directory, env=env, stdout=log, stderr=log,
            )  # fmt: skip
        _LISTENERS.append(self.process)
        poll_blocking(
            lambda: self.log.read_text().count("listening") >= self.starts,
            "listening",
            context=self,
        )

    def stop(self, sig: int = signal.SIGTERM) -> int:
        process, self.process = self.process, None
        assert process is not None
        process.send_signal(sig)
        return process.wait(timeout=20)

    def events(self) -> list[dict[str, Any]]:
        return recorded(self.record)

    def __repr__(self) -> str:
        return f"<Listener log:\n{self.log.read_text() if self.log.exists() else ''}>"


def toml_value(value: Any) -> str:
    return json.dumps(value)


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
    config = directory / "cfg.toml"
    record = directory / "ran.jsonl"
    config.write_text(
        f'[[adapters]]\nname = "nats"\noptions = {{ servers = "{server_url}", stream = "{stream}", '
        f"delivery_timeout = 1, reconnect_wait = 0.2{extra} }}\n\n" + record_handlers()
    )
    done = subprocess.run(
        [sys.executable, "-m", "lifecycle", "run", "--config", str(config),
         "--heartbeat", str(heartbeat), "--", *command],
        cwd=directory, env={**(os.environ if env is None else env), RECORD_FILE: str(record)},
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    (directory / "run.err").write_bytes(done.stderr)
    lines = record.read_text().splitlines() if record.exists() else []
    return done.returncode, [json.loads(line) for line in lines]
