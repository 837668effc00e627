"""What a Dask cluster has and what its workers did, read through the scheduler's API.

Nothing here needs lifecycle-dask on the scheduler or the workers: resources come from the
scheduler's identity, worker counters from a probe sent by value with ``Client.run``,
worker arrivals and departures from the scheduler's ``all`` event topic, and the tasks
finished during the run from a scheduler plugin counting their transitions, both put
there and read by functions sent by value with ``Client.run_on_scheduler``.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Mapping

    from distributed import Client

__all__ = [
    "Baseline",
    "at_exit",
    "baseline",
    "forget_task_counter",
    "log_tail",
    "make_probe",
    "resources",
]

PROBE_NAME = "lifecycle_dask_probe"
"""The probe's name, as workers log it when ``Client.run`` calls it."""


def make_probe() -> Callable[..., dict[str, Any]]:
    """Build the function ``Client.run`` sends to every worker to read its counters.

    It is made inside a function on purpose: cloudpickle sends a function it cannot import
    by name *by value*, so workers run it without lifecycle-dask installed. It reads only
    the worker object it is given, and every field degrades to ``None`` when a worker's
    version lacks it.
    """

    def lifecycle_dask_probe(
        dask_worker: Any, since: Mapping[str, int] | None = None
    ) -> dict[str, Any]:
        import os

        state = getattr(dask_worker, "state", None)
        monitor = getattr(dask_worker, "monitor", None)
        cumulative = getattr(getattr(dask_worker, "data", None), "cumulative_metrics", None) or {}
        samples: list[Any] = []
        memory = None
        count = None
        error = None
        if monitor is not None:
            count = getattr(monitor, "count", None)
            try:
                memory = monitor.get_process_memory()
                start = (since or {}).get(dask_worker.address, 0)
                samples = monitor.range_query(start=start).get("memory", [])
            except Exception as exc:  # an older worker's monitor: no peak, but say why
                error = f"{type(exc).__name__}: {exc}"
        peak = max([m for m in [*samples, memory] if m is not None], default=None)
        return {
            "pid": os.getpid(),
            "executed": getattr(state, "executed_count", None),
            "monitor_count": count,
            "memory": memory,
            "memory_peak": peak,
            "spilled_bytes": cumulative.get(("disk-write", "bytes"), 0),
            "spilled_count": cumulative.get(("disk-write", "count"), 0),
            "error": error,
        }

    return lifecycle_dask_probe


def _gpu_count(worker: Mapping[str, Any]) -> int:
    """GPUs a worker offers: its declared ``GPU`` resource, else 1 if NVML saw one."""
    for key, value in (worker.get("resources") or {}).items():
        if str(key).lower() == "gpu":
            return int(value)
    gpu = worker.get("gpu")
    return 1 if isinstance(gpu, dict) and gpu.get("name") else 0


def _worker_resources(address: str, worker: Mapping[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "address": address,
        "name": str(worker.get("name", address)),
        "host": worker.get("host"),
        "threads": worker.get("nthreads"),
        "memory_limit": worker.get("memory_limit"),
        "resources": {str(k): v for k, v in (worker.get("resources") or {}).items()},
        "gpus": _gpu_count(worker),
    }
    gpu = worker.get("gpu")
    if isinstance(gpu, dict) and gpu.get("name"):
        entry["gpu"] = {"name": gpu.get("name"), "memory_total": gpu.get("memory-total")}
    return entry


def resources(identity: Mapping[str, Any]) -> dict[str, Any]:
    """The ``starting`` attributes: the scheduler and its workers, from its identity."""
    workers = identity.get("workers") or {}
    listed = [_worker_resources(address, workers[address]) for address in sorted(workers)]
    dashboard = (identity.get("services") or {}).get("dashboard")
    return {
        "scheduler": identity.get("address"),
        "scheduler_id": identity.get("id"),
        "dashboard_port": dashboard,
        "n_workers": len(listed),
        "workers": listed,
        "total_threads": sum(int(w["threads"] or 0) for w in listed),
        "total_memory": sum(int(w["memory_limit"] or 0) for w in listed),
        "gpus": sum(w["gpus"] for w in listed),
    }


@dataclass
class Baseline:
    """What the cluster looked like when the run started, to measure the run against."""

    workers: set[str]
    scheduler_time: float | None
    probes: dict[str, dict[str, Any]] = field(default_factory=dict)
    probe_error: str | None = None
    # The name of the run's task counter on the scheduler, until it is read and removed.
    task_counter: str | None = None
    task_counter_error: str | None = None

    def since(self) -> dict[str, int]:
        """Each worker's monitor sample count at the start (peaks are read from there)."""
        return {
            address: probe["monitor_count"]
            for address, probe in self.probes.items()
            if isinstance(probe.get("monitor_count"), int)
        }


async def probe_workers(
    client: Client, since: Mapping[str, int] | None = None
) -> tuple[dict[str, dict[str, Any]], str | None]:
    """Run the probe on every worker; return the answers and, if some failed, why."""
    answers = await _client(client).run(make_probe(), since=dict(since or {}), on_error="return")
    probes: dict[str, dict[str, Any]] = {}
    errors: list[str] = []
    for address, answer in answers.items():
        if isinstance(answer, BaseException):
            errors.append(f"{address}: {type(answer).__name__}: {answer}")
            continue
        probes[address] = answer
        if answer.get("error"):
            errors.append(f"{address}: memory monitor: {answer['error']}")
    return probes, "; ".join(errors) or None


def make_scheduler_reader() -> Callable[..., Any]:
    """Build the function ``Client.run_on_scheduler`` sends at the start and the exit of a run.

    Made in a function so that it, and the plugin class it makes, travel by value, like
    the probe. One call at each end, so the run costs the scheduler no more round trips:

    - at the start (no ``since``), it adds a scheduler plugin named ``counter`` that counts,
      per worker, the tasks that finish there (the transitions ``processing -> memory``,
      and ``processing -> erred`` when the worker reported the task's own error, not a
      ``KilledWorker``, which ran nowhere to the end), and returns the scheduler's clock;
    - at the exit (``since``, the clock at the start), it removes the plugin and returns
      its counts (``None`` if it is gone) and the ``add-worker`` and ``remove-worker``
      entries of the scheduler's ``all`` topic from ``since`` on, read newest first and
      stopping at ``since``, so only they cross the wire, however long the log is.

    Counted where tasks finish, on the scheduler, the figure survives the workers: a
    worker killed mid-run takes its own counters with it, not the run's.
    """

    def lifecycle_dask_scheduler(
        dask_scheduler: Any, counter: str, since: float | None = None
    ) -> Any:
        import time

        if since is None:
            from distributed.diagnostics.plugin import SchedulerPlugin

            class LifecycleDaskTasks(SchedulerPlugin):
                def __init__(self) -> None:
                    self.finished: dict[str, int] = {}

                def transition(
                    self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any
                ) -> None:
                    if start != "processing" or not (
                        finish == "memory"
                        or (finish == "erred" and kwargs.get("exception_text") is not None)
                    ):
                        return
                    worker = str(kwargs.get("worker") or "")
                    self.finished[worker] = self.finished.get(worker, 0) + 1

            dask_scheduler.add_plugin(LifecycleDaskTasks(), name=counter)
            return time.time()

        plugin = dask_scheduler.plugins.get(counter)
        if plugin is not None:
            dask_scheduler.remove_plugin(name=counter)
        found = []
        for stamp, message in reversed(dask_scheduler.get_events("all")):
            if stamp < since:
                break
            if isinstance(message, dict) and message.get("action") in (
                "add-worker",
                "remove-worker",
            ):
                found.append(
                    (
                        stamp,
                        {
                            "action": message.get("action"),
                            "worker": message.get("worker"),
                            "expected": bool(message.get("expected", False)),
                        },
                    )
                )
        return {
            "tasks": None if plugin is None else dict(plugin.finished),
            "membership": found[::-1],
        }

    return lifecycle_dask_scheduler


async def forget_task_counter(client: Client, start: Baseline) -> None:
    """Remove the run's task counter from the scheduler if the exit did not read it."""
    name, start.task_counter = start.task_counter, None
    if name is not None:
        # From the end of time: no log entry to read, only the plugin to remove.
        await _client(client).run_on_scheduler(
            make_scheduler_reader(), counter=name, since=math.inf
        )


async def _gather(**calls: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
    """Await the calls concurrently; each result, or the exception it raised."""
    results: dict[str, Any] = {}

    async def one(key: str, call: Callable[[], Awaitable[Any]]) -> None:
        try:
            results[key] = await call()
        except Exception as exc:
            results[key] = exc

    async with anyio.create_task_group() as group:
        for key, call in calls.items():
            group.start_soon(one, key, call)
    return results


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


async def baseline(client: Client) -> tuple[dict[str, Any], Baseline]:
    """Read the start of the run: the scheduler's identity, its clock, the workers' counters.

    Raises:
        Exception: the scheduler's identity could not be read.
    """
    remote = _client(client)
    counter = f"lifecycle-dask-tasks-{uuid.uuid4().hex}"
    got = await _gather(
        identity=lambda: remote.scheduler.identity(),
        clock=lambda: remote.run_on_scheduler(make_scheduler_reader(), counter=counter),
        probes=lambda: probe_workers(client),
    )
    identity = got["identity"]
    if isinstance(identity, BaseException):
        raise identity
    workers = identity.get("workers") or {}
    clock = got["clock"]
    probes, error = (
        ({}, _why(got["probes"])) if isinstance(got["probes"], BaseException) else got["probes"]
    )
    # Refused when the scheduler does not run pickled functions: worker sets and the
    # live workers' counters only, then.
    refused = isinstance(clock, BaseException)
    return identity, Baseline(
        workers=set(workers),
        scheduler_time=None if refused else clock,
        probes=probes,
        probe_error=error,
        task_counter=None if refused else counter,
        task_counter_error=_why(clock) if refused else None,
    )


async def at_exit(client: Client, start: Baseline) -> tuple[dict[str, Any], list[str]]:
    """Read what the workers did since ``start``; return the metrics and what failed."""
    remote = _client(client)
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "identity": lambda: remote.scheduler.identity(),
        "probes": lambda: probe_workers(client, start.since()),
    }
    counter, since = start.task_counter, start.scheduler_time
    if counter is not None and since is not None:
        calls["scheduler"] = lambda: remote.run_on_scheduler(
            make_scheduler_reader(), counter=counter, since=since
        )
    got = await _gather(**calls)
    errors = [_why(value) for value in got.values() if isinstance(value, BaseException)]
    read = got.get("scheduler")
    if isinstance(read, dict):
        start.task_counter = None  # read, and removed
    else:
        read = {}
    events, tasks = read.get("membership") or [], read.get("tasks")
    if tasks is None:
        why = start.task_counter_error or "the scheduler's task counter could not be read"
        errors.append(f"tasks_run counted by the workers alive at exit only ({why})")
    identity = got["identity"]
    if isinstance(identity, BaseException):
        return {}, errors
    probes: dict[str, dict[str, Any]] = {}
    if not isinstance(got["probes"], BaseException):
        probes, probe_error = got["probes"]
        if probe_error:
            errors.append(probe_error)
    return run_metrics(start, identity, probes, events, tasks), errors


def _membership(
    start: Baseline, end_workers: Iterable[str], events: Iterable[Any]
) -> tuple[list[str], list[str], list[str]]:
    """Workers added, removed and lost (removed unexpectedly) during the run, in order."""
    end = set(end_workers)
    added: list[str] = []
    removed: list[str] = []
    lost: list[str] = []
    for _, message in events:
        if not isinstance(message, dict):
            continue
        action, worker = message.get("action"), message.get("worker")
        if not isinstance(worker, str):
            continue
        if action == "add-worker" and worker not in added:
            added.append(worker)
        elif action == "remove-worker" and worker not in removed:
            removed.append(worker)
            if not message.get("expected", False):
                lost.append(worker)
    # The scheduler's event log is bounded: a set difference catches what it dropped.
    for worker in sorted(end - start.workers):
        if worker not in added:
            added.append(worker)
    for worker in sorted(start.workers - end):
        if worker not in removed:
            removed.append(worker)
            lost.append(worker)
    return added, removed, lost


def run_metrics(
    start: Baseline,
    identity: Mapping[str, Any],
    probes: Mapping[str, Mapping[str, Any]],
    events: Iterable[Any],
    tasks: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """The ``exited`` attributes: what the workers did between ``start`` and now.

    ``tasks`` are the scheduler's counts of tasks finished per worker, lost workers
    included; without them, ``tasks_run`` is read from the live workers' own counters.
    """
    end_workers = identity.get("workers") or {}
    added, removed, lost = _membership(start, end_workers, events)
    per_worker: dict[str, dict[str, Any]] = {}
    known = set(probes) | set(end_workers) | {address for address in tasks or () if address}
    for address in sorted(known):
        probe = probes.get(address)
        before = start.probes.get(address, {})
        worker = end_workers.get(address) or {}
        entry: dict[str, Any] = {"name": str(worker.get("name", address))}
        if tasks is not None:
            entry["tasks_run"] = int(tasks.get(address, 0))
        if probe is not None:
            executed = probe.get("executed")
            if tasks is None and isinstance(executed, int):
                entry["tasks_run"] = executed - int(before.get("executed") or 0)
            entry["memory_peak"] = probe.get("memory_peak")
            entry["spilled_bytes"] = int(probe.get("spilled_bytes") or 0) - int(
                before.get("spilled_bytes") or 0
            )
            entry["pid"] = probe.get("pid")
        per_worker[address] = entry
    peaks = [w["memory_peak"] for w in per_worker.values() if w.get("memory_peak") is not None]
    return {
        "tasks_run": (
            sum(int(w.get("tasks_run", 0)) for w in per_worker.values())
            if tasks is None
            else sum(int(count) for count in tasks.values())
        ),
        "memory_peak": max(peaks, default=None),
        "spilled_bytes": sum(int(w.get("spilled_bytes", 0)) for w in per_worker.values()),
        "workers_added": added,
        "workers_removed": removed,
        "workers_lost": lost,
        "worker_metrics": per_worker,
    }


def log_tail(logs: Mapping[str, Any], lines: int) -> dict[str, list[str]]:
    """Workers' log records (newest first, as Dask sends them) as their last ``lines``."""
    tail: dict[str, list[str]] = {}
    for address in sorted(logs):
        # The probe's own "Run out-of-band function" lines are noise: skip them.
        records = [r for r in logs[address] or () if PROBE_NAME not in str(r)][:lines]
        tail[address] = [
            str(record[1]) if isinstance(record, (list, tuple)) and len(record) > 1 else str(record)
            for record in reversed(records)
        ]
    return tail


def _client(client: Client) -> Any:
    # distributed's Client methods are untyped; call them as Any, in one place.
    return client
