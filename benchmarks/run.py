"""Run the dispatch benchmark: print the tables, write JSON and a PNG chart.

    uv run --group bench python -m benchmarks            # full run, a few minutes
    uv run --group bench python -m benchmarks --quick    # smoke run for CI, seconds

Results go to ``benchmarks/results/`` (``bench.txt``, ``bench.json`` and ``bench.png``;
``quick.*`` for ``--quick``), or to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import platform
import sys
import time
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: python benchmarks/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _report, _scenarios
from benchmarks._harness import GC
from benchmarks._scenarios import Config

LIBRARIES = (
    "lifecycle-bus", "anyio", "blinker", "structlog", "django", "pyee", "aiosignal", "bubus",
    "trio", "matplotlib",
)  # fmt: skip

FULL = Config(
    sizes=(1, 10, 100, 1000),
    isolation_sizes=(10, 100, 1000),
    rounds=15,
    budget=0.02,
    isolation_rounds=8,
    sustain_seconds=2.0,
    memory_size=1000,
    trio=True,
)
QUICK = Config(
    sizes=(1, 10),
    isolation_sizes=(10,),
    rounds=3,
    budget=0.002,
    isolation_rounds=2,
    sustain_seconds=0.2,
    memory_size=100,
    trio=True,
    label_sizes=(10, 1000),
    big_size=0,
)


def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _quiet_logging() -> None:
    """Send every log line to /dev/null, still formatted: logging is part of the work."""
    import structlog

    sink = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sink))
    logging.basicConfig(stream=sink, level=logging.WARNING, force=True)
    warnings.simplefilter("ignore")


async def _asyncio_suite(cfg: Config, only: set[str] | None, say: Any) -> dict[str, Any]:
    steps = [
        ("s1_async", _scenarios.async_no_suspend),
        ("s2_suspend", _scenarios.async_suspend),
        ("s3_sync", _scenarios.sync_handlers),
        ("s4_background", _scenarios.background),
        ("s5_isolation", _scenarios.isolation),
        ("s6_environment", _scenarios.environment_run),
        ("s8_sustained", _scenarios.sustained),
        ("s9_slow", _scenarios.slow_path),
        ("s10_labels", _scenarios.label_scaling),
        ("s11_big", _scenarios.big),
        ("s12_unfrozen", _scenarios.unfrozen),
        ("s7_memory", _scenarios.memory),
    ]
    data: dict[str, Any] = {}
    for key, step in steps:
        if only and key not in only:
            continue
        started = time.perf_counter()
        data[key] = await step(cfg)
        say(f"[{key} done in {time.perf_counter() - started:.1f} s]")
    return data


def render(data: dict[str, Any]) -> str:
    """The printed report of one run's results (also rebuilt from JSON by ``--render``)."""
    meta = data["meta"]
    out = [
        f"# lifecycle-bus benchmark: Python {meta['python']} on {meta['cpu']} ({meta['cpus']} CPUs)"
    ]
    out.append("versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v))
    for key in _report.TITLES:
        if data.get(key):
            out += ["", _report.latency_table(key, data[key])]
            if key in ("s1_async", "s2_suspend", "s9_slow", "s11_big"):
                out.append(
                    _report.ratio_table(
                        data[key], _report.BUS, [_report.GATHER, _report.DJANGO, _report.FLOOR]
                    )
                )
    if "s7_memory" in data:
        out += ["", _report.memory_table(data["s7_memory"])]
    if "s8_sustained" in data:
        out += ["", _report.sustained_table(data["s8_sustained"])]
    for key, results in (data.get("trio") or {}).items():
        out += ["", _report.latency_table(f"trio_{key}", results, title=f"trio backend: {key}")]
        if key in ("async", "suspend", "slow"):
            out.append(_report.ratio_table(results, _report.BUS, [_report.NATIVE_TRIO]))
    out += ["", "## targets (issues 5 and 8)"]
    for check in data["targets"]:
        out.append(
            f"  [{'met' if check['met'] else 'MISSED'}] {check['target']}: {check['detail']}"
        )
    out.append(f"\n(run took {meta['seconds']} s)")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="a tiny run for CI smoke testing")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--no-trio", action="store_true", help="skip the trio figures")
    parser.add_argument("--no-chart", action="store_true", help="do not draw the PNG")
    parser.add_argument(
        "--only",
        action="append",
        metavar="SCENARIO",
        help="run only these (s1_async, ..., s12_unfrozen, trio)",
    )
    parser.add_argument("--sizes", help="comma-separated handler counts, instead of the defaults")
    parser.add_argument(
        "--render", type=Path, metavar="JSON", help="print the report of a saved run; run nothing"
    )
    args = parser.parse_args(argv)
    if args.render:
        print(render(json.loads(args.render.read_text())))
        return 0
    cfg = QUICK if args.quick else FULL
    if args.sizes:
        sizes = tuple(int(size) for size in args.sizes.split(","))
        cfg = dataclasses.replace(
            cfg, sizes=sizes, isolation_sizes=tuple(n for n in sizes if n >= 3) or (10,)
        )
    only = set(args.only) if args.only else None
    _quiet_logging()

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    started = time.perf_counter()
    meta = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "loop": "asyncio (default policy)",
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "eager_tasks": sys.version_info >= (3, 12),
        "versions": _versions(),
        "quick": args.quick,
        "command": "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": cfg.__dict__,
    }
    say(f"lifecycle-bus benchmark ({'quick' if args.quick else 'full'}), Python {meta['python']}")

    async def asyncio_main() -> dict[str, Any]:
        meta["loop"] = type(asyncio.get_running_loop()).__name__
        return await _asyncio_suite(cfg, only, say)

    with GC:
        data: dict[str, Any] = {"meta": meta}
        data.update(asyncio.run(asyncio_main()))
        if cfg.trio and not args.no_trio and (not only or "trio" in only):
            import trio

            trio_started = time.perf_counter()
            data["trio"] = trio.run(_scenarios.trio_suite, cfg)
            say(f"[trio done in {time.perf_counter() - trio_started:.1f} s]")
    meta["seconds"] = round(time.perf_counter() - started, 1)
    data["targets"] = _report.check_targets(data)

    text = render(data)
    print(text)

    args.out.mkdir(parents=True, exist_ok=True)
    stem = "quick" if args.quick else "bench"
    json_path = args.out / f"{stem}.json"
    json_path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    (args.out / f"{stem}.txt").write_text(text + "\n")
    say(f"wrote {json_path}")
    if not args.no_chart:
        png_path = args.out / f"{stem}.png"
        _report.chart(data, str(png_path))
        say(f"wrote {png_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
