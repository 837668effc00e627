"""Watchdog at scale: N simulated runs heartbeating through a real nats-server, some killed.

    uv run python -m benchmarks.watchdog_bench                 # 10,000 runs, 1 % killed
    uv run python -m benchmarks.watchdog_bench --runs 1000 --seconds 20

Starts its own ``nats-server -js`` (the tests' ``lifecycle_testing.NatsServer``: a port it
picks, a temporary store) and a real ``lifecycle watch`` process. This process plays the
runs: each publishes ``starting``, then a heartbeat every ``--interval`` seconds (phases
spread evenly over the interval, so the server sees a steady N / interval events per
second, each stored with an ack). A random ``--kill`` fraction stops beating at random
times in the middle of the run, as a SIGKILLed wrapper would. It then reads every ``lost`` verdict from the stream and checks:
every killed run reported lost exactly once, within ``misses x interval + 1 s`` of its last
heartbeat; no live run reported. It reports the watchdog's CPU (share of one core) and
memory (peak RSS) from ``/proc``, and the simulator's own achieved rate and lateness (a
simulator that cannot keep up makes false alarms of its own; that is reported, not hidden).

Not run in CI. Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import nats
from lifecycle_nats import subject_for
from lifecycle_testing import NatsServer, poll
from nats.js.api import ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def _memory_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat()


_ENV = '{{"name":"sim-{env}","labels":[],"host":"sim-host-{host}","pid":{pid}}}'
_EVENT = (
    '{{"schema_version":1,"name":"{name}","event_id":"{event_id}","run_id":"{run_id}",'
    '"environment":{environment},"timestamp":"{timestamp}","attributes":{attributes},'
    '"outcome":null,"duration":null,"exit_code":null,"error":null}}'
)


@dataclass
class Run:
    index: int
    run_id: str
    environment: str
    env_json: str
    phase: float
    kill_at: float | None = None
    sequence: int = 0
    last_beat: float = 0.0
    max_gap: float = 0.0
    killed: bool = False
    ramp: float = 0.0
    started: bool = False


@dataclass
class Simulation:
    runs: list[Run]
    interval: float
    published: int = 0
    lateness: list[float] = field(default_factory=list)


async def _simulate(nc: Any, sim: Simulation, t0: float, until: float) -> None:
    """Publish each run's starting, then its heartbeats on its phase, until ``until``.

    Core NATS publishes (the stream stores them all the same, deduplicating by
    ``Nats-Msg-Id``), flushed every 500: one Python process could not otherwise play
    10,000 runs on two cores shared with the server and the watchdog. The wrapper itself
    waits for each ack; that cost is the publisher's, not the watchdog's.
    """
    interval = sim.interval
    order = sorted(sim.runs, key=lambda r: r.phase)
    period = 0
    pending = 0
    while True:
        base = t0 + period * interval
        if base >= until:
            break
        for run in order:
            due = base + run.phase
            now = time.time()
            if due > now:
                if pending:
                    await nc.flush()
                    pending = 0
                now = time.time()
                if due > now:
                    await asyncio.sleep(due - now)
                now = time.time()
            sim.lateness.append(max(0.0, now - due))
            if run.kill_at is not None and now >= run.kill_at:
                run.killed = True
                continue
            if run.sequence == 0 and not run.started:
                if now < t0 + run.ramp:
                    continue  # not started yet
                run.started = True
                name, attributes = "environment.starting", f'{{"heartbeat_interval":{interval}}}'
            else:
                run.sequence += 1
                name = "environment.heartbeat"
                attributes = (
                    f'{{"sequence":{run.sequence},"interval":{interval},'
                    f'"elapsed":{now - t0 - run.phase:.3f}}}'
                )
            event_id = f"{run.run_id}-{run.sequence}"
            payload = _EVENT.format(
                name=name,
                event_id=event_id,
                run_id=run.run_id,
                environment=run.env_json,
                timestamp=_iso(now),
                attributes=attributes,
            ).encode()
            await nc.publish(
                subject_for(name, run.environment), payload, headers={"Nats-Msg-Id": event_id}
            )
            if run.last_beat and name != "environment.starting":
                run.max_gap = max(run.max_gap, now - run.last_beat)
            run.last_beat = now
            sim.published += 1
            pending += 1
            if pending >= 500:
                await nc.flush()
                pending = 0
        period += 1
    await nc.flush()


async def _lost_verdicts(url: str) -> list[tuple[dict[str, Any], float]]:
    """Every ``lost`` exited in the stream, with the time the server stored it."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        found: list[tuple[dict[str, Any], float]] = []
        sub = await js.subscribe(
            "lifecycle.exited.>",
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
        while True:
            try:
                msg = await sub.next_msg(timeout=2.0)
            except nats.errors.TimeoutError:
                break
            data = json.loads(msg.data)
            if data.get("outcome") == "lost":
                found.append((data, msg.metadata.timestamp.timestamp()))
            if msg.metadata.num_pending == 0:
                break
        await sub.unsubscribe()
        return found
    finally:
        await nc.close()


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="watchdog-bench-"))
    server = NatsServer(workdir / "nats")
    watch_log = (workdir / "watch.log").open("w")
    watcher: subprocess.Popen[bytes] | None = None
    try:
        server.start()  # blocks the loop: once, before anything runs on it or is measured
        assert server.process is not None
        url = server.url
        nc = await nats.connect(url, max_reconnect_attempts=-1)
        js = nc.jetstream(publish_async_max_pending=8000)
        await js.add_stream(
            StreamConfig(
                name="LIFECYCLE",
                subjects=["lifecycle.>"],
                storage=StorageType.FILE,
                duplicate_window=120.0,
                max_age=3600.0,
            )
        )
        (workdir / "watch.toml").write_text(
            f'[watch]\nservers = ["{url}"]\nmisses = {args.misses}\ntick = {args.tick}\n'
            "report_every = 2\n"
        )
        profile = ["-m", "cProfile", "-o", args.profile] if args.profile else []
        watcher = subprocess.Popen(  # noqa: ASYNC220  # once, before anything is measured
            [
                sys.executable,
                *profile,
                "-m",
                "lifecycle",
                "watch",
                "--config",
                str(workdir / "watch.toml"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=watch_log,
        )

        def watching() -> bool:
            log = (workdir / "watch.log").read_text()
            if watcher.poll() is not None:
                raise RuntimeError(f"the watchdog exited: {log}")
            return "watching stream" in log

        await poll(watching, "the watchdog to watch the stream")

        rng = random.Random(args.seed)
        runs = [
            Run(
                index=i,
                run_id=f"{rng.getrandbits(64):016x}",
                environment=f"sim-{i % 100}",
                env_json=_ENV.format(env=i % 100, host=i % 50, pid=10_000 + i),
                phase=args.interval * i / args.runs,
                ramp=args.ramp * i / args.runs,
            )
            for i in range(args.runs)
        ]
        t0 = time.time() + 0.5
        until = t0 + args.seconds
        allowance = args.misses * args.interval
        kill_from, kill_to = t0 + args.ramp + args.warmup, until - allowance - 3.0
        for run in rng.sample(runs, round(args.runs * args.kill)):
            run.kill_at = rng.uniform(kill_from, kill_to)
        sim = Simulation(runs, args.interval)

        cpu0 = _cpu_seconds(watcher.pid)
        server_cpu0 = _cpu_seconds(server.process.pid)
        self_cpu0 = time.process_time()
        await _simulate(nc, sim, t0, until)
        elapsed = time.time() - t0
        cpu = _cpu_seconds(watcher.pid) - cpu0
        server_cpu = _cpu_seconds(server.process.pid) - server_cpu0
        self_cpu = time.process_time() - self_cpu0
        peak = _memory_mb(watcher.pid, "VmHWM")
        rss = _memory_mb(watcher.pid, "VmRSS")
        await nc.close()
        # Stop the watchdog before the live runs "go silent" by the simulation's end.
        watcher.send_signal(signal.SIGTERM)
        watcher.wait(30)

        verdicts = await _lost_verdicts(url)
        killed = {r.run_id: r for r in runs if r.killed}
        per_run: dict[str, int] = {}
        delays: list[float] = []
        judged_late: list[float] = []  # the verdict's own time after the run's deadline
        stored_late: list[float] = []  # the verdict stored after the verdict's own time
        for data, stored_at in verdicts:
            stamp = datetime.fromisoformat(data["timestamp"]).timestamp()
            judged_late.append(
                stamp - datetime.fromisoformat(data["attributes"]["deadline"]).timestamp()
            )
            stored_late.append(stored_at - stamp)
            per_run[data["run_id"]] = per_run.get(data["run_id"], 0) + 1
            victim = killed.get(data["run_id"])
            if victim is not None:
                delays.append(stored_at - victim.last_beat)
        reported_once = sum(1 for rid in killed if per_run.get(rid) == 1)
        duplicates = sum(n - 1 for n in per_run.values() if n > 1)
        # A live run whose own beats were late past the allowance (the simulator fell
        # behind) is rightly declared lost: counted apart from false alarms.
        late_sim = {r.run_id for r in runs if not r.killed and r.max_gap >= allowance}
        false_alarms = sum(1 for rid in per_run if rid not in killed and rid not in late_sim)
        justified = sum(1 for rid in per_run if rid in late_sim)
        within = sum(1 for d in delays if d <= allowance + 1.0)
        lateness = sorted(sim.lateness)
        return {
            "runs": args.runs,
            "interval_s": args.interval,
            "misses": args.misses,
            "tick_s": args.tick,
            "ramp_s": args.ramp,
            "seconds": round(elapsed, 1),
            "events_published": sim.published,
            "events_per_s": round(sim.published / elapsed),
            "killed": len(killed),
            "lost_verdicts": len(verdicts),
            "killed_reported_exactly_once": reported_once,
            "duplicates": duplicates,
            "false_alarms": false_alarms,
            "lost_after_a_simulator_gap_past_the_allowance": justified,
            "live_runs_with_a_simulator_gap_past_the_allowance": len(late_sim),
            "within_allowance_plus_1s": within,
            "delay_after_last_beat_s": {
                "median": round(statistics.median(delays), 3) if delays else None,
                "max": round(max(delays), 3) if delays else None,
                "allowance": allowance,
            },
            "verdict_after_deadline_s": {
                "median": round(statistics.median(judged_late), 3) if judged_late else None,
                "max": round(max(judged_late), 3) if judged_late else None,
            },
            "verdict_stored_after_its_time_s": {
                "median": round(statistics.median(stored_late), 3) if stored_late else None,
                "max": round(max(stored_late), 3) if stored_late else None,
            },
            "watchdog_cpu_share_of_one_core": round(cpu / elapsed, 3),
            "watchdog_rss_mb": round(rss, 1),
            "watchdog_peak_rss_mb": round(peak, 1),
            "nats_server_cpu_share": round(server_cpu / elapsed, 3),
            "simulator_cpu_share": round(self_cpu / elapsed, 3),
            "simulator_lateness_s": {
                "p99": round(lateness[int(len(lateness) * 0.99)], 3) if lateness else None,
                "max": round(lateness[-1], 3) if lateness else None,
            },
            "cpus": os.cpu_count(),
            "loadavg_at_end": Path("/proc/loadavg").read_text().split()[:3],  # noqa: ASYNC240
        }
    finally:
        if watcher is not None and watcher.poll() is None:
            watcher.kill()
            watcher.wait()
        watch_log.close()
        server.stop(signal.SIGTERM)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"kept {workdir}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.watchdog_bench")
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--misses", type=float, default=3.0)
    parser.add_argument("--kill", type=float, default=0.01, help="fraction of runs killed")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the simulation")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before any kill")
    parser.add_argument("--ramp", type=float, default=5.0, help="seconds over which the runs start")
    parser.add_argument("--tick", type=float, default=0.1, help="the watchdog's tick")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--profile", metavar="FILE", help="run the watchdog under cProfile")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    args = parser.parse_args(argv)
    result = asyncio.run(_main(args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
