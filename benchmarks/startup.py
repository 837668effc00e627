"""Start-up cost of the ``lifecycle`` command, against bare Python (issues 8 and 19).

Run it with ``uv run python -m benchmarks.startup`` (``--quick`` for a smoke run). Each
command runs as a fresh process, one after the other in every round (the order rotates
from round to round, so that load drifting over the run weighs on all alike); the table
gives the median and the fastest wall time per command over the rounds, and the median's
excess over ``python -c pass``.

Bytecode is compiled first: the children run without ``PYTHONDONTWRITEBYTECODE`` and each
command runs twice before timing, so every module it imports has its ``.pyc`` (a user's
installed package has them too).

Wall time is what a user waits; on a machine shared with other work it swings with the
load. The CPU time of the process (user + system, from ``RUSAGE_CHILDREN``) swings much
less, and for a start-up, which is imports, it is most of the wall time on an idle machine.
The fastest wall time of the rounds is the one least disturbed by other work.

The last lines divide ``lifecycle run -- true`` by the bare ``asyncio.run`` line (issue
19's target: at most 1.5 times), wall and CPU medians of the same rounds.

``--baseline DIR`` also times the ``lifecycle`` commands of another checkout (its
``lifecycle`` package and ``adapters/*`` put first on ``PYTHONPATH``), in the same rounds:
the figures before and after a change, under the same load.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

ASYNCIO_RUN = "asyncio.run of asyncio.sleep(0)"
RUN_TRUE = "lifecycle run -- true, no configuration"

STRUCTLOG_CONFIG = """\
[[adapters]]
name = "structlog"
options = { render = "console" }
"""


@dataclass
class Case:
    """One command to time."""

    label: str
    argv: list[str]
    cwd: Path
    env: dict[str, str]
    times: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def run(self) -> tuple[float, float]:
        """Run once; the wall time and the CPU time of the process, in seconds."""
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run(
            self.argv,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            check=False,
        )
        elapsed = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        if done.returncode != 0:
            raise SystemExit(
                f"{self.label}: exited {done.returncode}\n{done.stderr.decode(errors='replace')}"
            )
        return elapsed, cpu

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu)


def _lifecycle() -> list[str]:
    """The ``lifecycle`` console script, as users run it (``python -m lifecycle`` without)."""
    script = Path(sys.executable).parent / "lifecycle"
    if script.exists():
        return [sys.executable, str(script)]
    return [sys.executable, "-m", "lifecycle"]


def _has_structlog_adapter() -> bool:
    from importlib.metadata import entry_points

    return any(p.name == "structlog" for p in entry_points(group="lifecycle.adapters"))


def _cases(work: Path, baseline: Path | None) -> list[Case]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    bare = work / "bare"
    configured = work / "configured"
    bare.mkdir()
    configured.mkdir()
    (configured / "lifecycle.toml").write_text(STRUCTLOG_CONFIG)
    python = [sys.executable]
    true = shutil.which("true") or "true"
    cases = [
        Case("python -c pass", [*python, "-c", "pass"], bare, env),
        Case('python -c "import asyncio"', [*python, "-c", "import asyncio"], bare, env),
        Case(
            ASYNCIO_RUN,
            [*python, "-c", "import asyncio; asyncio.run(asyncio.sleep(0))"],
            bare,
            env,
        ),
        Case(
            "anyio.run of an empty function",
            [*python, "-c", "import anyio; anyio.run(anyio.sleep, 0)"],
            bare,
            env,
        ),
    ]
    versions = [("", env)]
    if baseline is not None:
        paths = [str(baseline), *(str(p) for p in sorted((baseline / "adapters").glob("*")))]
        old = dict(env, PYTHONPATH=os.pathsep.join([*paths, env.get("PYTHONPATH", "")]))
        versions.append((" [baseline]", old))
    for suffix, version_env in versions:
        cases.append(
            Case(f"lifecycle --version{suffix}", [*_lifecycle(), "--version"], bare, version_env)
        )
        cases.append(
            Case(
                f"{RUN_TRUE}{suffix}",
                [*_lifecycle(), "run", "--", true],
                bare,
                version_env,
            )
        )
        if _has_structlog_adapter():
            cases.append(
                Case(
                    f"lifecycle run -- true, structlog adapter{suffix}",
                    [*_lifecycle(), "run", "--", true],
                    configured,
                    version_env,
                )
            )
    return cases


def measure(rounds: int, baseline: Path | None) -> list[Case]:
    with tempfile.TemporaryDirectory(prefix="lifecycle-startup-") as directory:
        cases = _cases(Path(directory), baseline)
        for case in cases:  # compile bytecode, warm the file cache
            case.run()
            case.run()
        for round_ in range(rounds):
            shift = round_ % len(cases)
            for case in cases[shift:] + cases[:shift]:
                wall, cpu = case.run()
                case.times.append(wall)
                case.cpu.append(cpu)
    return cases


def report(cases: list[Case], rounds: int) -> str:
    bare = cases[0]
    width = max(len(case.label) for case in cases)
    load = os.getloadavg()[0]
    lines = [
        f"CLI start-up: {rounds} runs of each command, each a fresh process (median; fastest)",
        (
            f"Python {platform.python_version()} on {platform.system()} {platform.machine()}, "
            f"{os.cpu_count()} CPUs, load {load:.1f} at the end; bytecode compiled"
        ),
        "",
        (
            f"{'command':<{width}}  {'CPU':>8}  {'over bare':>10}  {'wall':>8}  {'fastest':>8}"
            f"  {'over bare':>10}"
        ),
    ]
    for case in cases:
        cpu_over = fastest_over = ""
        if case is not bare:
            cpu_over = f"{(case.cpu_median - bare.cpu_median) * 1000:+.1f} ms"
            fastest_over = f"{(min(case.times) - min(bare.times)) * 1000:+.1f} ms"
        lines.append(
            f"{case.label:<{width}}  {case.cpu_median * 1000:5.1f} ms  {cpu_over:>10}  "
            f"{case.median * 1000:5.1f} ms  {min(case.times) * 1000:5.1f} ms  {fastest_over:>10}"
        )
    by_label = {case.label: case for case in cases}
    asyncio_run = by_label[ASYNCIO_RUN]
    lines.append("")
    for label in (RUN_TRUE, f"{RUN_TRUE} [baseline]"):
        run = by_label.get(label)
        if run is not None:
            lines.append(
                f"{label} / {ASYNCIO_RUN}: wall {run.median / asyncio_run.median:.2f}x, "
                f"CPU {run.cpu_median / asyncio_run.cpu_median:.2f}x (target: at most 1.5x)"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.startup", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--rounds", type=int, default=30, help="timed runs per command")
    parser.add_argument("--quick", action="store_true", help="3 rounds: a smoke run")
    parser.add_argument(
        "--baseline", type=Path, metavar="DIR", help="also time the lifecycle of this checkout"
    )
    args = parser.parse_args(argv)
    rounds = 3 if args.quick else args.rounds
    cases = measure(rounds, args.baseline)
    print(report(cases, rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
