"""lifecycle-dask against a real in-process Dask cluster (``LocalCluster(processes=False)``).

One cluster serves the whole module (starting one costs more than most tests), so every
test here runs on asyncio: Dask's asynchronous API needs asyncio's loop, and the cluster
lives on the module's loop. Tests that need a cluster of their own let the environment
create it, which is also what they check.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import anyio
import dask
import lifecycle_dask
import pytest
from distributed import Client, LocalCluster, Worker
from distributed.core import Status
from distributed.diagnostics.plugin import WorkerPlugin
from lifecycle_dask import (
    DaskEnvironment,
    NoDaskRunError,
    broadcast,
    current_client,
    current_session,
)

from lifecycle import EXITED, STARTING, Event, EventBus, Outcome, StartAborted

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.asyncio_only,  # distributed runs on asyncio; the module shares one loop
]

# Each test's own cluster opens a dashboard; ":0" picks a free port, so no
# "Port 8787 is already in use" UserWarning (an error under filterwarnings = error).
QUIET = {"dashboard_address": ":0", "processes": False}


@pytest.fixture(scope="module")
async def cluster(anyio_backend: str) -> AsyncIterator[LocalCluster]:
    async with untyped(LocalCluster)(
        n_workers=2, threads_per_worker=2, memory_limit="1GiB", asynchronous=True, **QUIET
    ) as cluster:
        yield cluster


@pytest.fixture(scope="module")
async def client(cluster: LocalCluster) -> AsyncIterator[Client]:
    async with untyped(Client)(cluster, asynchronous=True) as client:
        yield client


def untyped(obj: Any) -> Any:
    """``obj`` as ``Any``: distributed's constructors and Client methods are untyped."""
    return obj


async def identity(client: Client) -> Any:
    """What the scheduler reports about itself and its workers."""
    return await untyped(client).scheduler.identity()


class Setting(WorkerPlugin):
    """A setting broadcast to workers: ``setup`` stores it, ``teardown`` removes it."""

    name = "test-setting"

    def __init__(self, value: int) -> None:
        self.value = value

    def setup(self, worker: Worker) -> None:
        worker.test_setting = self.value  # type: ignore[attr-defined]

    def teardown(self, worker: Worker) -> None:
        del worker.test_setting  # type: ignore[attr-defined]


class FailingSetup(WorkerPlugin):
    name = "test-failing-setup"

    def setup(self, worker: Worker) -> None:
        raise RuntimeError("this worker refuses the setting")


def setting_of(dask_worker: Worker) -> Any:
    return getattr(dask_worker, "test_setting", None)


async def settings(client: Client) -> dict[str, Any]:
    """Each worker's broadcast setting (None where it has none)."""
    runner: Any = client
    result: dict[str, Any] = await runner.run(setting_of)
    return result


def exited_of(events: list[Event]) -> Event:
    (exited,) = [event for event in events if event.name == EXITED]
    return exited


def recorder(bus: EventBus) -> list[Event]:
    events: list[Event] = []
    bus.subscribe(STARTING, events.append, inline=True)
    bus.subscribe(EXITED, events.append, inline=True)
    return events


async def test_starting_carries_the_resources_the_scheduler_reports(
    cluster: LocalCluster, client: Client
) -> None:
    async with EventBus() as bus:
        events = recorder(bus)
        async with DaskEnvironment(cluster, bus=bus).running():
            pass
    reported = await identity(client)
    dask_info = events[0].attributes["dask"]
    assert dask_info["scheduler"] == cluster.scheduler_address
    assert dask_info["n_workers"] == len(reported["workers"]) == 2
    assert dask_info["total_threads"] == reported["total_threads"] == 4
    assert dask_info["total_memory"] == reported["total_memory"] == 2 * 2**30
    assert {w["address"]: (w["threads"], w["memory_limit"]) for w in dask_info["workers"]} == {
        address: (w["nthreads"], w["memory_limit"]) for address, w in reported["workers"].items()
    }
    assert dask_info["gpus"] == 0


async def test_gpus_declared_as_worker_resources_are_counted(cluster: LocalCluster) -> None:
    async with EventBus() as bus:
        events = recorder(bus)
        async with (
            Worker(
                cluster.scheduler_address, nthreads=1, resources={"GPU": 2}, dashboard_address=":0"
            ) as gpu_worker,
            DaskEnvironment(cluster, bus=bus).running(),
        ):
            pass
    dask_info = events[0].attributes["dask"]
    assert dask_info["gpus"] == 2
    (entry,) = [w for w in dask_info["workers"] if w["address"] == gpu_worker.address]
    assert entry["gpus"] == 2
    assert entry["resources"] == {"GPU": 2}


@pytest.mark.parametrize("given", ["address", "cluster", "client"])
async def test_a_given_cluster_or_client_is_used_and_left_open(
    cluster: LocalCluster, client: Client, given: str
) -> None:
    target: Any = {"address": cluster.scheduler_address, "cluster": cluster, "client": client}
    async with DaskEnvironment(target[given]).running():
        assert untyped(current_client()).scheduler.address == cluster.scheduler_address
        assert current_session().owns_cluster is False
    assert cluster.status is Status.running
    assert client.status == "running"


async def test_events_name_the_main_process_and_the_scheduler(cluster: LocalCluster) -> None:
    async with EventBus() as bus:
        events = recorder(bus)
        async with DaskEnvironment(cluster, bus=bus).running():
            pass
    for event in events:
        assert event.environment.pid == os.getpid()
        assert event.attributes["dask"]["scheduler"] == cluster.scheduler_address


async def test_exited_counts_the_tasks_the_workers_ran(cluster: LocalCluster) -> None:
    async with EventBus() as bus:
        events = recorder(bus)
        async with DaskEnvironment(cluster, bus=bus).running():
            client: Any = current_client()
            assert await client.gather(client.map(abs, range(-10, 0))) == list(range(10, 0, -1))
    dask_info = exited_of(events).attributes["dask"]
    assert dask_info["tasks_run"] == 10
    assert sum(w["tasks_run"] for w in dask_info["worker_metrics"].values()) == 10
    assert dask_info["memory_peak"] > 0
    assert dask_info["workers_lost"] == dask_info["workers_added"] == ()
    assert "worker_logs" not in dask_info  # only a run that did not succeed carries them
    assert "metrics_error" not in dask_info


def task_counters(cluster: LocalCluster) -> list[str]:
    """The run task counters on the (in-process) scheduler."""
    scheduler: Any = cluster.scheduler
    return [name for name in scheduler.plugins if name.startswith("lifecycle-dask-tasks-")]


async def test_the_task_counter_lives_on_the_scheduler_for_the_run_only(
    cluster: LocalCluster,
) -> None:
    async with DaskEnvironment(cluster).running():
        assert len(task_counters(cluster)) == 1
    assert task_counters(cluster) == []


async def test_without_the_scheduler_s_count_tasks_run_comes_from_the_live_workers(
    cluster: LocalCluster,
) -> None:
    """Said in metrics_error, since a worker lost during the run took its count with it."""
    async with EventBus() as bus:
        events = recorder(bus)
        async with DaskEnvironment(cluster, bus=bus).running():
            (counter,) = task_counters(cluster)
            untyped(cluster.scheduler).remove_plugin(name=counter)
            client: Any = current_client()
            await client.gather(client.map(abs, range(-4, 0)))
    dask_info = exited_of(events).attributes["dask"]
    assert dask_info["tasks_run"] == 4
    assert "tasks_run counted by the workers alive at exit only" in dask_info["metrics_error"]


async def test_a_plugin_broadcast_on_start_reaches_every_worker_even_one_added_later(
    cluster: LocalCluster, client: Client
) -> None:
    async def on_start() -> None:
        await broadcast(Setting(7))

    async with (
        DaskEnvironment(cluster, on_start=on_start).running(),
        Worker(cluster.scheduler_address, nthreads=1, dashboard_address=":0") as late,
    ):
        assert set((await settings(client)).values()) == {7}
        assert late.address in await settings(client)
    # Exited and unregistered: teardown ran on all three, the late one included.
    assert set((await settings(client)).values()) == {None}


async def test_a_worker_that_joins_mid_run_is_reported_as_added(cluster: LocalCluster) -> None:
    async with EventBus() as bus:
        events = recorder(bus)
        async with (
            DaskEnvironment(cluster, bus=bus).running(),
            Worker(cluster.scheduler_address, nthreads=1, dashboard_address=":0") as w,
        ):
            late = w.address
            await untyped(current_client()).retire_workers([late])
    dask_info = exited_of(events).attributes["dask"]
    assert dask_info["workers_added"] == (late,)
    # Retired by the scheduler within the run: removed, but not lost.
    assert dask_info["workers_removed"] == (late,)
    assert dask_info["workers_lost"] == ()


async def test_a_failing_broadcast_handler_is_isolated(
    cluster: LocalCluster, client: Client
) -> None:
    async def refuse() -> None:
        await broadcast(FailingSetup())

    async def good() -> None:
        await broadcast(Setting(1))

    ran = False
    env = DaskEnvironment(cluster, on_start=[refuse, good])
    async with env.running() as run:
        ran = True
        assert set((await settings(client)).values()) == {1}
    assert ran
    assert run.start_report is not None
    statuses = {r.handler.rsplit(".", 1)[-1]: r.status for r in run.start_report.results}
    assert statuses == {"refuse": "error", "good": "ok"}
    assert set((await settings(client)).values()) == {None}


async def test_a_hanging_broadcast_handler_is_timed_out_and_its_plugin_unregistered(
    cluster: LocalCluster, client: Client
) -> None:
    async def hang() -> None:
        await broadcast(Setting(2))
        await anyio.sleep_forever()

    async with EventBus() as bus:
        env = DaskEnvironment(cluster, bus=bus)
        bus.subscribe(STARTING, hang, sender=env, timeout=0.5)
        with anyio.fail_after(20):
            async with env.running() as run:
                assert set((await settings(client)).values()) == {2}
    assert run.start_report is not None
    assert [result.status for result in run.start_report.results] == ["timeout"]
    assert run.exited is not None
    assert run.exited.outcome is Outcome.SUCCEEDED
    assert run.exited.attributes["dask"]["plugins"] == ("test-setting",)
    assert set((await settings(client)).values()) == {None}


async def test_a_critical_broadcast_failure_aborts_the_run_and_closes_its_cluster() -> None:
    created: list[Any] = []

    async def refuse() -> None:
        created.append(current_session().cluster)
        await broadcast(FailingSetup())

    submitted = False
    async with EventBus() as bus:
        events = recorder(bus)
        env = DaskEnvironment(cluster_kwargs={"n_workers": 1, **QUIET}, bus=bus)
        bus.subscribe(STARTING, refuse, sender=env, critical=True)
        with pytest.raises(StartAborted):
            async with env.running():
                submitted = True
    assert not submitted
    assert exited_of(events).outcome is Outcome.ABORTED
    (cluster,) = created
    assert cluster.status is Status.closed


async def test_on_exit_handlers_can_still_use_the_run_client(cluster: LocalCluster) -> None:
    seen: list[int] = []

    async def on_exit() -> None:
        seen.append((await identity(current_client()))["n_workers"])

    async with DaskEnvironment(cluster, on_exit=on_exit).running() as run:
        pass
    assert run.exit_report is not None
    assert run.exit_report.ok
    assert seen == [2]


async def test_a_cancelled_run_still_reports_the_workers(cluster: LocalCluster) -> None:
    async with EventBus() as bus:
        events = recorder(bus)
        with anyio.fail_after(20), anyio.CancelScope() as scope:
            async with DaskEnvironment(cluster, bus=bus).running():
                client: Any = current_client()
                await client.gather(client.map(abs, range(-3, 0)))
                scope.cancel()
                await anyio.sleep_forever()
    exited = exited_of(events)
    assert exited.outcome is Outcome.CANCELLED
    # Read under the cancellation that ended the body: the reads are shielded, and so
    # is closing the run's own Client.
    assert exited.attributes["dask"]["tasks_run"] == 3
    assert "worker_logs" in exited.attributes["dask"]
    assert client.status == "closed"


async def test_a_failed_run_carries_the_workers_log_tail(
    cluster: LocalCluster, client: Client
) -> None:
    def complain() -> None:
        logging.getLogger("distributed.worker").warning("disk quota nearly reached")

    async def failing_run(bus: EventBus) -> None:
        async with DaskEnvironment(cluster, bus=bus, log_lines=5).running():
            await untyped(current_client()).submit(complain, pure=False)
            raise ValueError("bad input")

    async with EventBus() as bus:
        events = recorder(bus)
        with pytest.raises(ValueError, match="bad input"):
            await failing_run(bus)
    exited = exited_of(events)
    assert exited.outcome is Outcome.FAILED
    logs = exited.attributes["dask"]["worker_logs"]
    assert set(logs) == set((await identity(client))["workers"])
    assert all(len(lines) <= 5 for lines in logs.values())
    assert any("disk quota nearly reached" in line for lines in logs.values() for line in lines)


async def test_spilled_bytes_are_reported() -> None:
    async def spill() -> None:
        client: Any = current_client()
        futures = client.map(lambda i: os.urandom(2**20) + bytes([i]), range(4))
        await client.gather(futures)

    # A tiny managed-memory target makes the worker spill every result to disk; pausing
    # and the process-memory thresholds are off, since the whole test process counts.
    with dask.config.set(
        {
            "distributed.worker.memory.target": 0.001,
            "distributed.worker.memory.spill": False,
            "distributed.worker.memory.pause": False,
            "distributed.worker.memory.terminate": False,
        }
    ):
        async with EventBus() as bus:
            events = recorder(bus)
            env = DaskEnvironment(
                cluster_kwargs={"n_workers": 1, "memory_limit": "1GiB", **QUIET}, bus=bus
            )
            async with env.running():
                await spill()
    assert exited_of(events).attributes["dask"]["spilled_bytes"] >= 3 * 2**20


def test_dask_needs_asyncio_and_says_so_under_trio() -> None:
    async def main() -> None:
        async with DaskEnvironment("tcp://127.0.0.1:1").running():
            pass

    # In a thread of its own: the module's asyncio loop owns this one.
    with ThreadPoolExecutor(1) as pool, pytest.raises(RuntimeError, match="needs asyncio"):
        pool.submit(untyped(anyio.run), main, backend="trio").result()


def test_a_run_sync_body_uses_the_run_client_with_the_blocking_api() -> None:
    def flow(n: int) -> int:
        client: Any = current_client()  # the body runs in this thread, the run in the portal's
        return sum(client.gather(client.map(abs, range(-n, 0))))

    env = DaskEnvironment(cluster_kwargs={"n_workers": 1, **QUIET})
    assert env.run_sync(flow, 4) == 10


def test_the_run_accessors_outside_a_run_raise() -> None:
    with pytest.raises(NoDaskRunError, match="current_client"):
        current_client()
    with pytest.raises(NoDaskRunError, match="current_session"):
        current_session()


def test_cluster_kwargs_only_apply_to_a_created_cluster() -> None:
    with pytest.raises(ValueError, match="cluster_kwargs"):
        DaskEnvironment("tcp://127.0.0.1:8786", cluster_kwargs={"n_workers": 1})


def test_exports() -> None:
    defined = {name for name in dir(lifecycle_dask) if not name.startswith("_")}
    assert defined == set(lifecycle_dask.__all__)
