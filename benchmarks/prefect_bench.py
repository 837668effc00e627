"""lifecycle-prefect beside Prefect: overhead, SIGKILL to Crashed, false alarms.

    uv run --group prefect python -m benchmarks.prefect_bench            # about 2 minutes
    uv run --group prefect python -m benchmarks.prefect_bench --quick    # a smoke run

On Prefect's own test harness (a temporary server and SQLite database, started once):

- **overhead**: a trivial flow run with and without ``@lifecycle_prefect.observe`` (a no-op
  handler on ``starting`` and ``exited``, heartbeats on), alternating run by run in one
  process; the median of each, and their ratio.
- **SIGKILL to Crashed**: a flow run beating every ``BEAT`` s in a child process is
  SIGKILLed; a real ``lifecycle watch`` (``misses = 3``) with ``mark_crashed`` reads its
  events on NATS (``$NATS_URL``, default ``nats://127.0.0.1:4222``, a stream of its own);
  the time until Prefect's API shows the flow run Crashed.
- **false alarms**: flow runs whose process lives on for ``LINGER`` s (more than
  ``misses x BEAT``) after each completes, as a process that flushes logs or closes a
  pool does; how many the watchdog calls lost (none should be).

Prefect's own zombie detection is not run here: it needs the server's automation services
and heartbeats every 180 s by default (about nine minutes to a Crashed state); the figures
in benchmarks/RESULTS.md quote its documented settings beside ours.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import lifecycle_prefect
from lifecycle_testing import poll_blocking
from prefect import flow

# The harness's server would try to send telemetry (a DNS look-up that fails here).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
NATS_URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
BEAT = 0.25
MISSES = 3
LINGER = MISSES * BEAT + 0.5
ROOT = Path(__file__).resolve().parent.parent


def noop(event: object) -> None:
    """The handler of the overhead configuration: the integration's cost, not a handler's."""


def note_lost(event: Any) -> None:
    if event.outcome is not None and event.outcome.value == "lost":
        with open(os.environ["LOST_NOTES"], "a", encoding="utf-8") as notes:
            notes.write(event.run_id + "\n")


def trivial() -> int:
    return 1


def beating() -> None:
    print("RUNNING", flush=True)
    time.sleep(600)


def measure_overhead(rounds: int, directory: Path) -> dict[str, float]:
    config = directory / "overhead.toml"
    config.write_text(
        "".join(
            f'[[handlers]]\ntarget = "benchmarks.prefect_bench:noop"\nsignal = "{signal}"\n\n'
            for signal in ("environment.starting", "environment.exited")
        )
    )
    plain = flow(name="plain")(trivial)
    observed = lifecycle_prefect.observe(config=config)(flow(name="observed")(trivial))
    plain(), observed()  # the first runs pay for imports and the clients' start
    times: dict[str, list[float]] = {"plain": [], "observed": []}
    for _ in range(rounds):
        for name, one in (("plain", plain), ("observed", observed)):
            start = time.perf_counter()
            one()
            times[name].append(time.perf_counter() - start)
    plain_ms = statistics.median(times["plain"]) * 1000
    observed_ms = statistics.median(times["observed"]) * 1000
    ratios = [o / p for p, o in zip(times["plain"], times["observed"], strict=True)]
    return {
        "plain_ms": plain_ms,
        "observed_ms": observed_ms,
        "ratio_of_medians": observed_ms / plain_ms,
        "median_round_ratio": statistics.median(ratios),
    }


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return json.load(answer)


def zombies(api: str, kills: int, lingering: int, directory: Path) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    stream, prefix = f"PREFECTBENCH{tag.upper()}", f"prefectbench{tag}"
    (directory / "flow.toml").write_text(
        f'[[adapters]]\nname = "nats"\noptions = {{ servers = ["{NATS_URL}"], '
        f'stream = "{stream}", subject_prefix = "{prefix}" }}\n'
    )
    (directory / "watch.toml").write_text(
        f'[watch]\nservers = ["{NATS_URL}"]\nstream = "{stream}"\nsubject_prefix = "{prefix}"\n'
        f'bucket = "{prefix}"\nmisses = {MISSES}\ntick = 0.05\n\n'
        '[[handlers]]\ntarget = "lifecycle_prefect:mark_crashed"\nsignal = "environment.exited"\n'
        'labels = ["prefect"]\n\n'
        '[[handlers]]\ntarget = "benchmarks.prefect_bench:note_lost"\n'
        'signal = "environment.exited"\n'
    )
    lost_notes = directory / "lost.txt"
    env = {
        **os.environ,
        "PREFECT_API_URL": api,
        "LIFECYCLE_CONFIG": str(directory / "flow.toml"),
        "LOST_NOTES": str(lost_notes),
        "PYTHONPATH": str(ROOT),
    }
    watch = subprocess.Popen(
        [sys.executable, "-m", "lifecycle", "watch", "--config", str(directory / "watch.toml")],
        env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert watch.stderr is not None
        for line in watch.stderr:
            if "watching stream" in line:
                break
        seconds = [_kill_one(api, env) for _ in range(kills)]
        child = subprocess.run(
            [sys.executable, "-m", "benchmarks.prefect_bench", "linger", str(lingering)],
            env=env, capture_output=True, text=True, check=True, cwd=ROOT,
        )  # fmt: skip
        completed = [
            line.split()[1] for line in child.stdout.splitlines() if line.startswith("DONE")
        ]
        time.sleep(MISSES * BEAT + 1)  # a verdict on the last run would be out by now
        lost = set(lost_notes.read_text().split()) if lost_notes.exists() else set()
        states = [_get(f"{api}/flow_runs/{run_id}")["state"]["type"] for run_id in completed]
    finally:
        watch.terminate()
        watch.wait(15)
    return {
        "kill_to_crashed_s": seconds,
        "median_kill_to_crashed_s": statistics.median(seconds) if seconds else None,
        "allowance_s": MISSES * BEAT,
        "lingering_runs": len(completed),
        "false_lost": len(lost & set(completed)),
        "left_completed": states.count("COMPLETED"),
    }


def _kill_one(api: str, env: dict[str, str]) -> float:
    child = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.prefect_bench", "beat"],
        env=env, stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    assert child.stdout is not None
    run_id = child.stdout.readline().split()[1]
    time.sleep(2 * BEAT)  # a few heartbeats stored, as for a run well under way
    killed = time.monotonic()
    child.send_signal(signal.SIGKILL)
    child.wait()
    poll_blocking(
        lambda: _get(f"{api}/flow_runs/{run_id}")["state"]["name"] == "Crashed",
        f"flow run {run_id} marked Crashed",
        limit=60,
    )
    return round(time.monotonic() - killed, 2)


def child(mode: str, count: int) -> None:
    from prefect.runtime import flow_run

    if mode == "beat":

        def announce() -> None:
            print("RUN", flow_run.id, flush=True)
            beating()

        lifecycle_prefect.observe(heartbeat=BEAT)(flow(name="killed")(announce))()
        return

    def short() -> str:
        return str(flow_run.id)

    lingering = lifecycle_prefect.observe(heartbeat=BEAT)(flow(name="lingering")(short))
    for _ in range(count):
        print("DONE", lingering(), flush=True)
        time.sleep(LINGER)  # the process lives on after its flow run completed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("mode", nargs="?", default="")
    parser.add_argument("count", nargs="?", type=int, default=0)
    args = parser.parse_args()
    if args.mode:
        child(args.mode, args.count)
        return
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    rounds, kills, lingering = (5, 1, 3) if args.quick else (40, 5, 50)
    with tempfile.TemporaryDirectory() as tmp, prefect_test_harness(server_startup_timeout=120):
        api = str(PREFECT_API_URL.value())
        overhead = measure_overhead(rounds, Path(tmp))
        print(
            f"overhead, {rounds} rounds: plain {overhead['plain_ms']:.1f} ms, observed "
            f"{overhead['observed_ms']:.1f} ms per flow run: {overhead['ratio_of_medians']:.3f}x "
            f"(median of round ratios {overhead['median_round_ratio']:.3f}x)"
        )
        found = zombies(api, kills, lingering, Path(tmp))
        print(
            f"SIGKILL to Crashed, {kills} runs beating every {BEAT} s, misses {MISSES} "
            f"(allowance {found['allowance_s']:.2f} s): {found['kill_to_crashed_s']} s, "
            f"median {found['median_kill_to_crashed_s']} s"
        )
        print(
            f"false alarms: {found['false_lost']} lost of {found['lingering_runs']} runs whose "
            f"process lived {LINGER} s past completion; {found['left_completed']} still Completed"
        )


if __name__ == "__main__":
    main()
