"""A flow on a Dask LocalCluster: broadcast a setting on start, size the work from the
cluster's resources, show what the workers did on exit.

    uv run python examples/dask_broadcast.py

Where each piece runs: ``on_start``, ``on_exit`` and the body run in this (the main)
process; ``Scale.setup`` runs on every worker, including any that would join later.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
from distributed import Worker, get_worker
from distributed.diagnostics.plugin import WorkerPlugin
from lifecycle_dask import DaskEnvironment, broadcast, current_client

if TYPE_CHECKING:
    from lifecycle import Event

MiB = 2**20


class Scale(WorkerPlugin):
    """The setting every worker needs: its ``setup`` runs on each worker."""

    name = "scale"

    def __init__(self, factor: int) -> None:
        self.factor = factor

    def setup(self, worker: Worker) -> None:
        worker.log_event("example", f"scale set to {self.factor}")


def scaled_sum(chunk: range) -> int:
    """A task: reads the broadcast setting on the worker it runs on."""
    scale: Any = get_worker().plugins["scale"]
    return sum(i * scale.factor for i in chunk)


async def on_start(event: Event) -> None:
    cluster = event.attributes["dask"]
    print(
        f"starting {event.run_id[:8]} in pid {event.environment.pid} on {event.environment.host},"
        f" scheduler {cluster['scheduler']}"
    )
    for w in cluster["workers"]:
        print(
            f"  worker {w['name']}: {w['threads']} threads, "
            f"{w['memory_limit'] / MiB:.0f} MiB, {w['gpus']} GPUs"
        )
    name = await broadcast(Scale(factor=3))
    print(f"  broadcast {name!r} to every worker (and any that joins later)")


def on_exit(event: Event) -> None:
    dask = event.attributes["dask"]
    print(
        f"exited {event.outcome} in {event.duration:.2f} s: {dask['tasks_run']} tasks run, "
        f"memory peak {(dask['memory_peak'] or 0) / MiB:.0f} MiB, "
        f"spilled {dask['spilled_bytes']} B, "
        f"workers lost {len(dask['workers_lost'])}, added {len(dask['workers_added'])}"
    )
    for address, w in dask["worker_metrics"].items():
        print(f"  worker {w['name']} ({address}): {w.get('tasks_run', '?')} tasks")


async def main() -> None:
    env = DaskEnvironment(
        cluster_kwargs={
            "n_workers": 2,
            "threads_per_worker": 2,
            "processes": False,  # threads in this process: starts in a fraction of a second
            "dashboard_address": ":0",
        },
        name="dask-example",
        on_start=on_start,
        on_exit=on_exit,
    )
    async with env.running() as run:
        # Size the work from what the cluster reported on ``starting``: 4 chunks a thread.
        chunks = 4 * run.attributes["dask"]["total_threads"]
        n = 1_000_000
        step = -(-n // chunks)
        client: Any = current_client()
        futures = client.map(scaled_sum, [range(i, min(i + step, n)) for i in range(0, n, step)])
        total = sum(await client.gather(futures))
        print(f"  {chunks} chunks for {run.attributes['dask']['total_threads']} threads: {total}")
        assert total == 3 * n * (n - 1) // 2


if __name__ == "__main__":
    anyio.run(main)
