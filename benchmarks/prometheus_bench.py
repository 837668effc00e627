"""What lifecycle-prometheus costs per run, as ratios to what one would write by hand.

    uv run python -m benchmarks.prometheus_bench            # about 20 s
    uv run python -m benchmarks.prometheus_bench --quick    # a smoke run: a second or two

- ``record``: one run (``starting`` and ``exited`` emitted on a bus) with the adapter
  attached and no export (what a ``lifecycle listen`` with a scrape endpoint pays per
  run), against the same run on a bus with one no-op inline handler per signal.
- ``textfile, N others``: one run of a batch job (a new bus, as each ``lifecycle run``
  has) writing its textfile at the start and at the exit, which already holds the gauges
  of N other environments (the adapter reads it back, replaces this environment's series
  and keeps the others', under a lock), against a handler on both signals calling
  prometheus_client's ``write_to_textfile`` with six gauges of one environment (what a job
  writes by hand, overwriting every other job's series: the cost of not merging).

Baseline and adapter alternate round by round in one process; each figure is the median
over the rounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import uuid
from functools import partial
from importlib.metadata import version
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING

import anyio
from lifecycle_prometheus import NAME_LABEL, attach
from lifecycle_prometheus._last_run import LastRuns
from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

from lifecycle import EXITED, STARTING, Environment, Event, EventBus, Outcome

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable


async def one_run(bus: EventBus, name: str) -> None:
    env, run_id = Environment(name), uuid.uuid4().hex
    await bus.emit(env.event(STARTING, run_id))
    await bus.emit(env.event(EXITED, run_id, outcome=Outcome.SUCCEEDED, duration=1.0))


_GAUGES = (
    "start_timestamp_seconds",
    "completion_timestamp_seconds",
    "success_timestamp_seconds",
    "duration_seconds",
    "outcome",
    "exit_code",
)


def by_hand(path: Path, event: Event) -> None:
    """The six gauges of one run, written as a batch job would by hand."""
    registry = CollectorRegistry()
    for metric in _GAUGES:
        gauge = Gauge(f"lifecycle_run_last_{metric}", "h", ["e"], registry=registry)
        gauge.labels(event.environment.name).set(1)
    write_to_textfile(str(path), registry)


async def rounds(
    n: int, baseline: Callable[[], Awaitable[None]], ours: Callable[[], Awaitable[None]]
) -> tuple[float, float]:
    base, mine = [], []
    for _ in range(n):
        start = perf_counter()
        await baseline()
        base.append(perf_counter() - start)
        start = perf_counter()
        await ours()
        mine.append(perf_counter() - start)
    return statistics.median(base), statistics.median(mine)


async def record(n: int) -> tuple[float, float]:
    def noop(event: Event) -> None:
        pass

    async with EventBus() as plain, EventBus() as measured:
        for signal in (STARTING, EXITED):
            plain.subscribe(signal, noop, inline=True)
        with attach(measured):
            return await rounds(
                n, lambda: one_run(plain, "nightly"), lambda: one_run(measured, "nightly")
            )


async def textfile(n: int, others: int, directory: Path) -> tuple[float, float]:
    shared, alone = directory / f"shared-{others}.prom", directory / f"alone-{others}.prom"
    # The other environments' gauges, as their own runs would have left them.
    runs = LastRuns("lifecycle", NAME_LABEL)
    for index in range(others):
        env, run_id = Environment(f"job-{index}"), uuid.uuid4().hex
        runs.started(env.event(STARTING, run_id))
        runs.exited(env.event(EXITED, run_id, outcome=Outcome.SUCCEEDED, duration=1.0))
    write_to_textfile(str(shared), runs)

    async def hand() -> None:
        # A new process per cron run: a new bus each time, as lifecycle run has; the
        # handler writes at the start and at the exit, as the adapter does.
        async with EventBus() as bus:
            for signal in (STARTING, EXITED):
                bus.subscribe(signal, partial(by_hand, alone))
            await one_run(bus, "nightly")

    async def adapter() -> None:
        async with EventBus() as bus:
            with attach(bus, textfile=shared):
                await one_run(bus, "nightly")

    return await rounds(n, hand, adapter)


async def main(quick: bool) -> None:
    n = 5 if quick else 200
    print(
        f"lifecycle-prometheus, Python {sys.version.split()[0]}, prometheus-client {version('prometheus-client')}, median of {n} rounds"
    )
    print(f"{'scenario':<22} {'baseline':>12} {'adapter':>12} {'ratio':>7}")
    rows = [("record (no export)", await record(n * 10))]
    with tempfile.TemporaryDirectory() as directory:
        for others in (0, 100, 1000):
            rows.append((f"textfile, {others} others", await textfile(n, others, Path(directory))))
    for label, (base, mine) in rows:
        print(f"{label:<22} {base * 1e6:>9.0f} µs {mine * 1e6:>9.0f} µs {mine / base:>6.1f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: few rounds")
    anyio.run(main, parser.parse_args().quick)
