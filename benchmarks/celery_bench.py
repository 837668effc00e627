"""Task throughput of a Celery worker with lifecycle-celery installed, as a ratio to one without.

    uv run python -m benchmarks.celery_bench            # about a minute on 2 cores
    uv run python -m benchmarks.celery_bench --quick    # a smoke run: seconds

Two real ``celery worker`` processes of the same app on Redis (127.0.0.1:6379, database
14), one with ``lifecycle_celery.install(app, heartbeat=1)`` and an inline handler on
``starting`` and ``exited`` (each task is a run: a thread hand-off to the worker process's
loop, the two events, a heartbeat task), one without. Each round queues ``--tasks`` trivial
tasks for one worker, then times it from the moment it starts consuming them until all
their results are stored, then the same for the other (the order alternates); both stay
up, the idle one blocked on the broker. Pools: ``prefork``
(concurrency 2) and ``solo``. Each figure is a median over the rounds; the ratio is the
median of the rounds' ratios (with / without), which keeps a loaded machine's drift out.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from importlib.metadata import version
from pathlib import Path
from typing import Any

import lifecycle_celery
import redis
from celery import Celery

BROKER = os.environ.get("LIFECYCLE_CELERY_BENCH_BROKER", "redis://127.0.0.1:6379/14")
ROOT = Path(__file__).resolve().parents[1]


def noop(event: Any) -> None:
    """The handler on ``starting`` and ``exited`` of every task (inline: in the loop); defined
    before ``install`` loads the configuration that names it."""


app = Celery("benchmarks.celery_bench", broker=BROKER, backend=BROKER)
app.conf.update(worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)
if "LC_BENCH_CONFIG" in os.environ:  # in the worker that measures the integration
    lifecycle_celery.install(app, config=os.environ["LC_BENCH_CONFIG"], heartbeat=1.0)


@app.task
def trivial(x: int) -> int:
    return x + 1


CONFIG = "".join(
    f'[[handlers]]\ntarget = "benchmarks.celery_bench:noop"\nsignal = "{signal}"\ninline = true\n'
    for signal in ("environment.starting", "environment.exited")
)


class Worker:
    def __init__(self, pool: str, config: Path | None, log: Path) -> None:
        self.queue = f"bench-{uuid.uuid4().hex[:10]}"
        self.node = f"{self.queue}@{socket.gethostname()}"
        self.log = log
        env = {k: v for k, v in os.environ.items() if k != "LC_BENCH_CONFIG"}
        if config is not None:
            env["LC_BENCH_CONFIG"] = str(config)
        concurrency = "2" if pool == "prefork" else "1"
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "benchmarks.celery_bench", "worker",
                 "--pool", pool, "--concurrency", concurrency, "--queues", self.queue,
                 "--hostname", self.node, "--without-heartbeat", "--without-gossip",
                 "--without-mingle", "--loglevel", "warning"],
                cwd=ROOT, env=env, stdout=out, stderr=out,
            )  # fmt: skip

    def wait_ready(self, client: Celery) -> None:
        deadline = time.monotonic() + 60
        while client.control.ping(destination=[self.node], timeout=0.5) == []:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not start:\n{self.log.read_text()}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def batch(client: Celery, worker: Worker, tasks: int) -> float:
    """Seconds the worker takes to run ``tasks`` trivial tasks already waiting in its queue.

    The tasks go to a fresh queue first; the clock starts when the worker confirms it
    consumes that queue and stops when every result is stored (read with one MGET per
    poll, so the client's reads do not pace the worker).
    """
    queue = f"{worker.queue}-{uuid.uuid4().hex[:6]}"
    ids = [
        client.send_task("benchmarks.celery_bench.trivial", (i,), queue=queue).id
        for i in range(tasks)
    ]
    keys = [f"celery-task-meta-{task_id}" for task_id in ids]
    store = redis.Redis.from_url(BROKER)
    try:
        started = time.perf_counter()
        client.control.add_consumer(
            queue, destination=[worker.node], reply=True, limit=1, timeout=10
        )
        deadline = time.monotonic() + 300
        while None in store.mget(keys):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{tasks} tasks not done in 300 s: see {worker.log}")
            time.sleep(0.002)
        elapsed = time.perf_counter() - started
        client.control.cancel_consumer(
            queue, destination=[worker.node], reply=True, limit=1, timeout=10
        )
    finally:
        store.delete(*keys)  # nothing of the benchmark stays in the broker's database
        store.close()
    return elapsed


def measure(pool: str, tasks: int, rounds: int, directory: Path) -> dict[str, float]:
    client = Celery("benchmarks.celery_bench", broker=BROKER, backend=BROKER)
    config = directory / "lifecycle.toml"
    config.write_text(CONFIG)
    plain = Worker(pool, None, directory / f"{pool}-plain.log")
    lifecycle = Worker(pool, config, directory / f"{pool}-lifecycle.log")
    try:
        plain.wait_ready(client)
        lifecycle.wait_ready(client)
        for worker in (plain, lifecycle):  # warm up: imports, connections, the loop thread
            batch(client, worker, min(tasks, 20))
        times: dict[str, list[float]] = {"plain": [], "lifecycle": []}
        pair = [("plain", plain), ("lifecycle", lifecycle)]
        for index in range(rounds):
            for key, worker in pair if index % 2 == 0 else reversed(pair):
                times[key].append(batch(client, worker, tasks))
    finally:
        plain.stop()
        lifecycle.stop()
        client.close()
    ratios = [b / a for a, b in zip(times["plain"], times["lifecycle"], strict=True)]
    return {
        "plain": tasks / statistics.median(times["plain"]),
        "lifecycle": tasks / statistics.median(times["lifecycle"]),
        "ratio": statistics.median(ratios),
        "low": min(ratios),
        "high": max(ratios),
    }


def run_cost(config: Path, runs: int) -> tuple[float, float]:
    """Microseconds of a run per task, in one process without Celery: wall and CPU.

    What a task thread pays (``begin`` and ``end``: hand the run over; with only inline
    handlers on ``starting``, as here, nothing waits), and the CPU of the whole process,
    the loop thread's emits of the two events included.
    """
    from lifecycle_celery._runtime import Runtime, TaskRun

    from lifecycle import Outcome, load_config

    runtime = Runtime(load_config(config), heartbeat=1.0, start_timeout=10, close_timeout=10)
    runtime.start()
    attributes = {"celery_task_id": "", "celery_pid": os.getpid(), "celery_attempt": 1}
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        for index in range(runs):
            run = TaskRun(f"run-{index}", "trivial", frozenset({"celery"}), dict(attributes))
            runtime.begin(run)
            runtime.end(run.run_id, Outcome.SUCCEEDED, None, {"celery_state": "SUCCESS"})
        tasks = time.perf_counter() - wall
        runtime.close()  # every exited emitted: the loop's whole work is in the CPU figure
        cpu = time.process_time() - cpu
    finally:
        runtime.close()
    return tasks / runs * 1e6, cpu / runs * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000, help="tasks per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pools", nargs="+", default=["prefork", "solo"])
    parser.add_argument("--quick", action="store_true", help="a smoke run (50 tasks, 1 round)")
    args = parser.parse_args(argv)
    tasks = 50 if args.quick else args.tasks
    rounds = 1 if args.quick else args.rounds
    print(
        f"celery {version('celery')}, Python {sys.version.split()[0]}, {os.cpu_count()} cores; "
        f"{tasks} trivial tasks per round, {rounds} rounds, broker {BROKER}"
    )
    with tempfile.TemporaryDirectory() as directory:
        config = Path(directory) / "lifecycle.toml"
        config.write_text(CONFIG)
        wall, cpu = run_cost(config, 500 if args.quick else 5000)
        print(f"one run per task, without Celery: {wall:.0f} us in the task, {cpu:.0f} us CPU")
        print(
            f"{'pool':<8} {'without (tasks/s)':>18} {'with (tasks/s)':>15} {'time ratio':>11} "
            f"{'rounds min-max':>15}"
        )
        for pool in args.pools:
            figures = measure(pool, tasks, rounds, Path(directory))
            print(
                f"{pool:<8} {figures['plain']:>18.0f} {figures['lifecycle']:>15.0f} "
                f"{figures['ratio']:>10.3f}x {figures['low']:>7.2f}-{figures['high']:.2f}x"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
