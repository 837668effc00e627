"""Real ``celery worker`` processes on the Redis broker, and what their handlers recorded.

Redis on 127.0.0.1:6379 (``.ci/run`` starts one where none answers), database 13 for these
tests; every worker consumes a queue of its own, so tests never take each other's tasks.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from lifecycle_testing import RECORD_FILE, poll_blocking, record_handlers, recorded

from lifecycle import EXITED, STARTING

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from celery import Celery

BROKER = os.environ.get("LIFECYCLE_CELERY_TEST_BROKER", "redis://127.0.0.1:6379/13")
HERE = Path(__file__).parent
APP = "lifecycle_celery_testapp"


def require_redis() -> None:
    """Fail, saying what to do, when no Redis answers where the tests expect their broker."""
    import redis

    client = redis.Redis.from_url(BROKER, socket_connect_timeout=2)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        pytest.fail(
            f"no Redis answers at {BROKER} ({exc}); the lifecycle-celery tests need one: "
            "apt-get install redis-server, or set LIFECYCLE_CELERY_TEST_BROKER"
        )
    finally:
        client.close()


def celery_client() -> Iterator[Celery]:
    """A client of the tests' app (sends by name: it needs no task code), once Redis answers."""
    from celery import Celery

    require_redis()
    app = Celery(APP, broker=BROKER, backend=BROKER)
    yield app
    app.close()


def handlers_toml(*extra: str) -> str:
    """The recorder on starting and exited (inline), plus ``extra`` TOML tables."""
    return record_handlers(STARTING, EXITED) + "\n" + "\n".join(extra)


class Worker:
    """``celery -A lifecycle_celery_testapp worker`` as a real process, in its own session."""

    def __init__(
        self,
        directory: Path,
        config: str,
        *,
        pool: str = "prefork",
        concurrency: int = 2,
        heartbeat: float = 0.2,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.queue = f"lc-{uuid.uuid4().hex[:12]}"
        self.node = f"{self.queue}@%h"
        self.record = directory / "events.jsonl"
        self.log = directory / "worker.log"
        self.config = directory / "lifecycle.toml"
        self.config.write_text(config)
        self.args = [
            sys.executable, "-m", "celery", "-A", APP, "worker", "--pool", pool,
            "--concurrency", str(concurrency), "--queues", self.queue, "--hostname", self.node,
            "--without-heartbeat", "--without-gossip", "--without-mingle", "--loglevel", "info",
        ]  # fmt: skip
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
            "LC_BROKER": BROKER,
            "LC_CONFIG": str(self.config),
            "LC_HEARTBEAT": str(heartbeat),
            RECORD_FILE: str(self.record),
            **(extra_env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.args, cwd=self.directory, env=self.env, stdout=log, stderr=log,
                start_new_session=True,
            )  # fmt: skip
        poll_blocking(
            lambda: b" ready." in self.log.read_bytes() or self.exited(), "ready", context=self
        )
        assert not self.exited(), self
        return self

    def exited(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def stop(self) -> None:
        """A warm shutdown (SIGTERM); killed, with its pool, if it takes more than 20 s."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill_all(process)

    def kill_all(self, process: subprocess.Popen[bytes] | None = None) -> None:
        """SIGKILL the worker and every pool process (its whole session), as the OOM killer may."""
        process = process or self.process
        assert process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=20)

    def events(self, name: str | None = None, run_id: str | None = None) -> list[dict[str, Any]]:
        return [
            event
            for event in recorded(self.record)
            if (name is None or event["name"] == name)
            and (run_id is None or event["run_id"] == run_id)
        ]

    def wait_event(self, name: str, run_id: str, limit: float = 20) -> dict[str, Any]:
        found = poll_blocking(
            lambda: self.events(name, run_id), f"{name} of {run_id}", limit=limit, context=self
        )
        return found[0]

    def __repr__(self) -> str:
        return f"<Worker {self.queue} log:\n{self.log.read_text() if self.log.exists() else ''}>"


def run_ids(events: Iterable[dict[str, Any]]) -> list[str]:
    return [event["run_id"] for event in events]
