"""What lifecycle-otel adds: to a run's dispatch, and to ``lifecycle run -- true``.

    uv run python -m benchmarks.otel_bench            # about a minute on 2 cores
    uv run python -m benchmarks.otel_bench --quick    # a smoke run: a few seconds

1. Dispatch, in one process and one event loop: a run (``starting`` then ``exited``) on a
   bus with one inline handler, without the adapter, with it on the API's no-op providers
   (no SDK configured: what a library user pays who installed the adapter and no SDK), and
   with it on a real SDK (a tracer provider whose batch processor exports to a no-op
   exporter, a meter provider with an in-memory reader). The three alternate run by run;
   each figure is a median per run over the rounds.
2. ``lifecycle run -- true`` as a fresh process: with no configuration, and with
   ``[[adapters]] name = "otel", options = { sdk = true }`` exporting OTLP/HTTP to a
   receiver on loopback that answers at once. The two alternate; medians over the rounds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING, Any

import anyio
import lifecycle_otel
from lifecycle_testing import QuietHandler, serve_http
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import NoOpTracerProvider

from lifecycle import Environment, EventBus

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from opentelemetry.sdk.trace import ReadableSpan


class _Drop(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _nothing() -> None:
    pass


async def _runs(bus: EventBus, count: int) -> float:
    environment = Environment("bench", bus=bus)
    start = perf_counter()
    for _ in range(count):
        async with environment.running():
            pass
    return (perf_counter() - start) / count


async def dispatch(rounds: int, per_round: int) -> dict[str, float]:
    tracer_provider = TracerProvider(shutdown_on_exit=False)
    tracer_provider.add_span_processor(BatchSpanProcessor(_Drop()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()], shutdown_on_exit=False)
    setups: dict[str, Callable[[EventBus], Any]] = {
        "without the adapter": lambda bus: None,
        "adapter, no SDK (no-op providers)": lambda bus: lifecycle_otel.attach(
            bus, tracer_provider=NoOpTracerProvider(), meter_provider=NoOpMeterProvider()
        ),
        "adapter, SDK": lambda bus: lifecycle_otel.attach(
            bus, tracer_provider=tracer_provider, meter_provider=meter_provider
        ),
    }
    times: dict[str, list[float]] = {label: [] for label in setups}
    buses: dict[str, EventBus] = {}
    for label, setup in setups.items():
        bus = EventBus(name=label)
        bus.subscribe("environment.starting", _nothing, inline=True)
        bus.subscribe("environment.exited", _nothing, inline=True)
        setup(bus)
        buses[label] = bus
        await _runs(bus, per_round)  # warm up
    for _ in range(rounds):
        for label, bus in buses.items():
            times[label].append(await _runs(bus, per_round))
    for bus in buses.values():
        await bus.aclose()
    tracer_provider.shutdown()
    meter_provider.shutdown()
    return {label: statistics.median(values) for label, values in times.items()}


class _Ok(QuietHandler):
    """A collector that reads and drops what it is sent: decoding it (as ``serve_otlp`` does)
    would take CPU from the processes being timed."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()


def command(rounds: int) -> dict[str, float]:
    true = shutil.which("true") or "true"
    script = Path(sys.executable).parent / "lifecycle"
    lifecycle = (
        [sys.executable, str(script)] if script.exists() else [sys.executable, "-m", "lifecycle"]
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    with (
        serve_http(_Ok, lambda port: f"http://127.0.0.1:{port}") as endpoint,
        tempfile.TemporaryDirectory() as work,
    ):
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
        bare, otel = Path(work, "bare"), Path(work, "otel")
        bare.mkdir()
        otel.mkdir()
        (otel / "lifecycle.toml").write_text(
            '[[adapters]]\nname = "otel"\noptions = { sdk = true }\n'
        )
        cases = {"lifecycle run -- true, no configuration": bare, "with otel (sdk = true)": otel}
        times: dict[str, list[float]] = {label: [] for label in cases}
        for index in range(rounds + 2):
            for label, cwd in cases.items():
                start = perf_counter()
                subprocess.run(
                    [*lifecycle, "run", "--", true], cwd=cwd, env=env, check=True,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                if index >= 2:  # the first two compile bytecode
                    times[label].append(perf_counter() - start)
    return {label: statistics.median(values) for label, values in times.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    args = parser.parse_args(argv)
    rounds, per_round, processes = (3, 50, 2) if args.quick else (15, 400, 15)
    figures = anyio.run(dispatch, rounds, per_round)
    base = figures["without the adapter"]
    print(f"dispatch of one run (starting + exited, one inline handler each), {rounds} rounds:")
    for label, value in figures.items():
        print(f"  {label:<36} {value * 1e6:8.1f} us   x{value / base:.2f}")
    wall = command(processes)
    base = wall["lifecycle run -- true, no configuration"]
    print(f"lifecycle run -- true, {processes} rounds (median wall time):")
    for label, value in wall.items():
        print(f"  {label:<40} {value * 1e3:7.0f} ms  +{(value - base) * 1e3:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
