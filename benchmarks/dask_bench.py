"""What ``DaskEnvironment`` adds to a run on a LocalCluster, as a ratio to the same run without it.

    uv run python -m benchmarks.dask_bench            # about 80 s on 2 cores
    uv run python -m benchmarks.dask_bench --quick    # a smoke run: a few seconds

Three ways to reach the cluster, each against the code one would write without the
environment, with the same work in the body (``client.map`` of ``n`` trivial tasks, then
``gather``; ``n = 0`` is an empty body, so its "added" column is the environment's whole
fixed cost), on an in-process ``LocalCluster`` (2 workers, 2 threads each):

- ``client``: a Client given to the environment, against using that Client directly;
- ``cluster``: a running cluster given to the environment, which opens a Client per run,
  against opening that Client by hand;
- ``created``: the environment creates and closes a LocalCluster per run, against
  ``async with LocalCluster(...), Client(...)`` by hand.

Baseline and environment alternate run by run in one process and one event loop; each
figure is a median over the rounds, the added time and the ratio of each round's pair. What the environment adds per run: before
``starting``, the scheduler's identity, its clock (the call that also installs the run's
task counter) and a probe of every worker; after the body, the same again plus the worker
arrivals and departures from the scheduler's event log and the task counts (and the
workers' logs on a failure); each round of reads is done concurrently.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from importlib.metadata import version
from time import perf_counter
from typing import TYPE_CHECKING, Any

import anyio
from distributed import Client, LocalCluster
from lifecycle_dask import DaskEnvironment, current_client

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

CLUSTER: dict[str, Any] = {
    "n_workers": 2,
    "threads_per_worker": 2,
    "processes": False,
    "dashboard_address": ":0",
}


def inc(x: int) -> int:
    return x + 1


async def work(client: Any, n: int) -> None:
    if not n:
        return
    results = await client.gather(client.map(inc, range(n), pure=False))
    assert len(results) == n


async def measure(
    baseline: Callable[[], Awaitable[None]],
    with_env: Callable[[], Awaitable[None]],
    rounds: int,
) -> tuple[float, float, tuple[float, float, float], float]:
    """Both, once per round, in an order that alternates; return medians.

    Returns the median seconds of each, the quartiles of the per-round difference and the
    median per-round ratio (env against baseline): pairing the two runs of a round keeps
    the drift of a loaded machine out of the comparison.
    """
    await baseline()  # warm both paths up (imports, first connections)
    await with_env()
    times: dict[str, list[float]] = {"baseline": [], "env": []}
    pair = [("baseline", baseline), ("env", with_env)]
    for index in range(rounds):
        for key, fn in pair if index % 2 == 0 else reversed(pair):
            started = perf_counter()
            await fn()
            times[key].append(perf_counter() - started)
    base, env = times["baseline"], times["env"]
    return (
        statistics.median(base),
        statistics.median(env),
        _quartiles([e - b for b, e in zip(base, env, strict=True)]),
        statistics.median(e / b for b, e in zip(base, env, strict=True))
        if min(base) > 1e-3  # an empty baseline: no ratio
        else float("nan"),
    )


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, q2, q3 = statistics.quantiles(values, n=4)
    return q1, q2, q3


async def main_async(
    rounds: int, sizes: list[int]
) -> list[tuple[str, int, float, float, tuple[float, float, float], float]]:
    rows: list[tuple[str, int, float, float, tuple[float, float, float], float]] = []
    new_cluster: Any = LocalCluster
    new_client: Any = Client
    async with new_cluster(asynchronous=True, **CLUSTER) as cluster:
        async with new_client(cluster, asynchronous=True) as client:
            for n in sizes:

                async def plain(n: int = n) -> None:
                    await work(client, n)

                async def given_client(n: int = n) -> None:
                    async with DaskEnvironment(client).running():
                        await work(current_client(), n)

                rows.append(("client", n, *await measure(plain, given_client, rounds)))

        for n in sizes:

            async def own_client(n: int = n) -> None:
                async with new_client(cluster.scheduler_address, asynchronous=True) as c:
                    await work(c, n)

            async def given_cluster(n: int = n) -> None:
                async with DaskEnvironment(cluster).running():
                    await work(current_client(), n)

            rows.append(("cluster", n, *await measure(own_client, given_cluster, rounds)))

    n = sizes[-1]

    async def own_cluster() -> None:
        async with (
            new_cluster(asynchronous=True, **CLUSTER) as created,
            new_client(created, asynchronous=True) as c,
        ):
            await work(c, n)

    async def created_cluster() -> None:
        async with DaskEnvironment(cluster_kwargs=CLUSTER).running():
            await work(current_client(), n)

    rows.append(("created", n, *await measure(own_cluster, created_cluster, max(3, rounds // 3))))
    return rows


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dask_bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run: few rounds")
    parser.add_argument("--rounds", type=int, default=None, help="runs of each per figure")
    args = parser.parse_args(argv)
    rounds = args.rounds or (4 if args.quick else 40)
    sizes = [0, 10] if args.quick else [0, 10, 100]
    started = perf_counter()
    rows = anyio.run(main_async, rounds, sizes, backend="asyncio")
    print(
        f"DaskEnvironment overhead, median of {rounds} runs each "
        f"(Python {sys.version.split()[0]}, dask {version('dask')}, "
        f"distributed {version('distributed')}; in-process LocalCluster, "
        f"{CLUSTER['n_workers']} workers x {CLUSTER['threads_per_worker']} threads)"
    )
    print()
    print(
        "| reached through | tasks | without | with DaskEnvironment | added (quartiles) | ratio |"
    )
    print("|---|---|---|---|---|---|")
    for kind, n, base, env, (q1, q2, q3), ratio in rows:
        shown = "-" if math.isnan(ratio) else f"{ratio:.2f}"  # NaN: an empty baseline
        added = f"{_ms(q2)} ({q1 * 1000:.1f} to {q3 * 1000:.1f})"
        print(f"| {kind} | {n} | {_ms(base)} | {_ms(env)} | {added} | {shown} |")
    print()
    print("without, with: median per run. added: quartiles over rounds of (with - without);")
    print("ratio: median over rounds of with / without; the two runs of a round back to back.")
    print()
    print(f"(took {perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
