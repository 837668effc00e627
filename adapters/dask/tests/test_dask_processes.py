"""lifecycle-dask with real worker processes (``LocalCluster(processes=True)``, one worker).

Slower to start than the in-process cluster, so only what needs a separate process is
here: a worker killed by a signal, and a plugin that must travel to another interpreter.
The cluster is shared by the module, on one asyncio loop (Dask's async API needs asyncio).
"""

from __future__ import annotations

import operator
import os
import signal
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from distributed import Client, LocalCluster, Worker
from distributed.diagnostics.plugin import WorkerPlugin
from lifecycle_dask import DaskEnvironment, broadcast, current_client

from lifecycle import EXITED, Event, EventBus, Outcome

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.asyncio_only,  # distributed runs on asyncio; the module shares one loop
]


def untyped(obj: Any) -> Any:
    """``obj`` as ``Any``: distributed's constructors and Client methods are untyped."""
    return obj


@pytest.fixture(scope="module")
async def cluster(anyio_backend: str) -> AsyncIterator[LocalCluster]:
    # dashboard_address=":0": a free port, not a "Port 8787 is already in use" warning.
    async with untyped(LocalCluster)(
        n_workers=1,
        threads_per_worker=1,
        processes=True,
        asynchronous=True,
        dashboard_address=":0",
    ) as cluster:
        yield cluster


@pytest.fixture(scope="module")
async def client(cluster: LocalCluster) -> AsyncIterator[Client]:
    async with untyped(Client)(cluster, asynchronous=True) as client:
        yield client


def make_plugin(value: str) -> WorkerPlugin:
    # A class made in a function travels by value (cloudpickle): the worker process
    # could not import this test module by name.
    class Setting(WorkerPlugin):
        name = "process-setting"

        def setup(self, worker: Worker) -> None:
            os.environ["LIFECYCLE_DASK_SETTING"] = value

        def teardown(self, worker: Worker) -> None:
            os.environ.pop("LIFECYCLE_DASK_SETTING", None)

    return Setting()


def read_setting() -> str | None:
    return os.environ.get("LIFECYCLE_DASK_SETTING")


async def worker_pids(client: Any) -> dict[str, int]:
    pids: dict[str, int] = await client.run(os.getpid)
    return pids


async def test_a_plugin_broadcast_on_start_reaches_a_worker_process(client: Client) -> None:
    async def on_start() -> None:
        await broadcast(make_plugin("fast"))

    async with DaskEnvironment(client, on_start=on_start).running():
        pids = await worker_pids(current_client())
        assert os.getpid() not in pids.values()  # the workers really are other processes
        assert set((await untyped(client).run(read_setting)).values()) == {"fast"}
    assert set((await untyped(client).run(read_setting)).values()) == {None}


async def run_tasks(client: Any, count: int) -> None:
    """Run ``count`` tasks to the end, then let the scheduler forget them.

    Forgotten, they are not recomputed when the worker that holds their results dies,
    so the test knows exactly how many tasks ran.
    """
    futures = client.map(operator.neg, range(count), pure=False)
    assert await client.gather(futures) == [-i for i in range(count)]
    await client.cancel(futures)


async def test_a_worker_killed_mid_run_is_reported_lost_and_the_outcome_follows_the_body(
    cluster: LocalCluster,
) -> None:
    """Its tasks still count: issue 19 found ``tasks_run`` 6 of 8 when one worker died."""
    events: list[Event] = []
    async with EventBus() as bus:
        bus.subscribe(EXITED, events.append, inline=True)
        async with DaskEnvironment(cluster, bus=bus).running():
            run_client: Any = current_client()
            ((victim, pid),) = (await worker_pids(run_client)).items()
            await run_tasks(run_client, 3)
            os.kill(pid, signal.SIGKILL)
            # The nanny starts a new worker process, at a new address; wait for both the
            # loss and the replacement to reach the scheduler.
            with anyio.fail_after(25):
                while True:
                    workers = (await run_client.scheduler.identity())["workers"]
                    if workers and victim not in workers:
                        break
                    await anyio.sleep(0.05)
            (replacement,) = workers
            await run_tasks(run_client, 5)
    (exited,) = events
    assert exited.outcome is Outcome.SUCCEEDED
    dask_info = exited.attributes["dask"]
    assert dask_info["workers_lost"] == (victim,)
    assert dask_info["workers_added"] == (replacement,)
    # Counted on the scheduler: the killed worker's own counter died with it.
    assert dask_info["tasks_run"] == 8
    metrics = dask_info["worker_metrics"]
    assert (metrics[victim]["tasks_run"], metrics[replacement]["tasks_run"]) == (3, 5)
    assert "metrics_error" not in dask_info
