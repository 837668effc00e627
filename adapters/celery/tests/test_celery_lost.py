"""A killed worker's tasks, reported ``lost`` once by a real ``lifecycle watch``.

Real parts only: a nats-server (the lifecycle-nats tests' harness), ``lifecycle watch`` as a
process, ``celery worker`` processes publishing through the nats adapter, SIGKILL.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from celery_harness import APP, Worker, celery_client, handlers_toml
from lifecycle_testing import RECORD_FILE, poll_blocking, record_handlers, recorded

from lifecycle import EXITED

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from celery import Celery
    from lifecycle_testing import NatsServer

BEAT = 0.25
MISSES = 4
"""One second of silence before lost: a second a loaded CI machine may well stall a worker
for, and the watchdog would rightly call that a death."""
ALLOWANCE = MISSES * BEAT + 2
"""The issue's bound: a dead task is reported within misses x interval + 2 s."""


class Watch:
    """``lifecycle watch`` as a real process; the lost verdicts its handler wrote down."""

    def __init__(self, directory: Path, servers: str) -> None:
        self.notes = directory / "verdicts.jsonl"
        self.servers = servers
        config = directory / "watch.toml"
        config.write_text(
            f'[watch]\nservers = ["{servers}"]\ntick = 0.05\nmisses = {MISSES}\n\n'
            + record_handlers(EXITED)
        )
        env = {
            **os.environ,
            RECORD_FILE: str(self.notes),
            "PYTHONPATH": str(Path(__file__).parent),
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "lifecycle", "watch", "--config", str(config)],
            cwd=directory, env=env, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.process.stderr is not None
        for line in self.process.stderr:  # ends if it dies: the assert below says so
            if "watching stream" in line:
                break
        assert self.process.poll() is None, "lifecycle watch did not start"

    def wait_live(self, *run_ids: str) -> None:
        """Until ``lifecycle runs`` lists each run with a heartbeat: the watchdog knows them."""

        def live() -> bool:
            listed = subprocess.run(
                [sys.executable, "-m", "lifecycle", "runs", "--server", self.servers, "--json"],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            beating = {row["run_id"] for row in json.loads(listed.stdout) if row["last_heartbeat"]}
            return beating >= set(run_ids)

        poll_blocking(live, f"heartbeats of {run_ids} in the run table", context=self)

    def lost(self, run_id: str | None = None) -> list[dict[str, Any]]:
        return [
            event
            for event in recorded(self.notes)
            if event["outcome"] == "lost" and (run_id is None or event["run_id"] == run_id)
        ]

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        assert self.process.stderr is not None
        self.process.stderr.close()


@pytest.fixture(scope="module")
def nats_url(shared_nats: NatsServer) -> str:
    return shared_nats.url


@pytest.fixture(scope="module")
def watch(tmp_path_factory: pytest.TempPathFactory, nats_url: str) -> Iterator[Watch]:
    service = Watch(tmp_path_factory.mktemp("watch"), nats_url)
    yield service
    service.stop()


client = pytest.fixture(scope="module", name="client")(celery_client)


@pytest.fixture
def publishing_worker(nats_url: str, tmp_path: Path) -> Iterator[Callable[[int], Worker]]:
    """Start a worker publishing to the module's NATS server (stopped after the test)."""
    started: list[Worker] = []

    def start(concurrency: int) -> Worker:
        started.append(new_publishing_worker(tmp_path, nats_url, concurrency))
        return started[-1]

    yield start
    for worker in started:
        worker.stop()


def new_publishing_worker(directory: Path, nats_url: str, concurrency: int) -> Worker:
    adapter = (
        f'[[adapters]]\nname = "nats"\noptions = {{ servers = "{nats_url}", '
        "delivery_timeout = 1, reconnect_wait = 0.2 }\n"
    )
    return Worker(
        directory,
        handlers_toml(adapter),
        concurrency=concurrency,
        heartbeat=BEAT,
        extra_env={"LIFECYCLE_NATS_SPOOL": str(directory / "spool")},
    ).start()


def finished_task(client: Celery, worker: Worker) -> str:
    """A task that ran to its end before the kill: it must never be called lost."""
    done = client.send_task(f"{APP}.add", (1, 2), queue=worker.queue)
    assert done.get(timeout=20) == 3
    worker.wait_event("environment.exited", done.id)
    return str(done.id)


def assert_lost_once(watch: Watch, run_id: str, killed_at: float, task: str = "sleepy") -> None:
    [lost] = poll_blocking(lambda: watch.lost(run_id), f"lost of {run_id}", context=watch, limit=15)
    # When the watchdog said it, not when this test looked (it may have waited on others).
    said_at = datetime.datetime.fromisoformat(lost["timestamp"]).timestamp()
    assert said_at - killed_at <= ALLOWANCE
    assert lost["environment"]["name"] == f"{APP}.{task}"
    assert lost["environment"]["host"] == socket.gethostname()


def kill_child(worker: Worker, watch: Watch, run_id: str) -> float:
    """SIGKILL the pool process running ``run_id`` once the watchdog knows it; the time."""
    start = worker.wait_event("environment.starting", run_id)
    watch.wait_live(run_id)
    os.kill(start["attributes"]["celery_pid"], signal.SIGKILL)
    return time.time()


def settle() -> None:
    """Past every allowance once more, so that a second or a wrong verdict would be in."""
    time.sleep(MISSES * BEAT + 0.5)


def test_a_killed_prefork_child_has_its_task_lost_once(
    client: Celery, watch: Watch, publishing_worker: Callable[[int], Worker]
) -> None:
    worker = publishing_worker(2)
    finished = finished_task(client, worker)
    running = client.send_task(f"{APP}.sleepy", (30,), queue=worker.queue)
    killed_at = kill_child(worker, watch, running.id)
    assert_lost_once(watch, running.id, killed_at)
    # The worker replaced its child and goes on, publishing as before.
    finished_task(client, worker)
    settle()
    assert len(watch.lost(running.id)) == 1
    assert watch.lost(finished) == []


def test_a_killed_worker_has_each_task_in_flight_lost_once(
    client: Celery, watch: Watch, publishing_worker: Callable[[int], Worker]
) -> None:
    worker = publishing_worker(3)
    finished = finished_task(client, worker)
    running = [client.send_task(f"{APP}.sleepy", (30,), queue=worker.queue) for _ in range(3)]
    watch.wait_live(*(task.id for task in running))
    worker.kill_all()
    killed_at = time.time()
    for task in running:
        assert_lost_once(watch, task.id, killed_at)
    settle()
    for task in running:
        assert len(watch.lost(task.id)) == 1
    assert watch.lost(finished) == []


def test_a_task_requeued_after_its_child_was_killed_is_a_new_run_naming_the_lost_one(
    client: Celery, watch: Watch, publishing_worker: Callable[[int], Worker]
) -> None:
    """acks_late + reject_on_worker_lost: lost for the first run, a second run to the end."""
    worker = publishing_worker(2)
    task = client.send_task(f"{APP}.sleepy_once", (30,), queue=worker.queue)
    killed_at = kill_child(worker, watch, task.id)
    assert task.get(timeout=20) == "ran again"
    [again] = poll_blocking(
        lambda: [
            event
            for event in worker.events("environment.starting")
            if event["attributes"].get("celery_previous_run") == task.id
        ],
        "the second run's starting",
        context=worker,
    )
    assert again["run_id"].startswith(f"{task.id}.redelivered-")
    assert again["attributes"]["celery_redelivered"] is True
    assert worker.wait_event("environment.exited", again["run_id"])["outcome"] == "succeeded"
    assert_lost_once(watch, task.id, killed_at, task="sleepy_once")
    assert watch.lost(again["run_id"]) == []
