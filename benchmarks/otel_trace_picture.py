"""Draw one real lifecycle trace as a Jaeger/Tempo-style waterfall (adapters/otel/trace.png).

    uv run python -m benchmarks.otel_trace_picture               # writes adapters/otel/trace.png
    uv run python -m benchmarks.otel_trace_picture --out x.png

Everything in it is real and on loopback: an OTLP/HTTP receiver (lifecycle-testing's
``serve_otlp``, as in the adapter's tests), a ``nats-server`` with JetStream on a port it
picks, a "CI pipeline" span in this process, ``lifecycle run --config ... -- python
job.py`` with the otel and nats adapters and two handlers, a job that makes spans of its
own with the OTel SDK, and ``lifecycle listen`` with the otel adapter and two handlers of
its own. The picture is drawn from the spans the receiver was sent: one trace id from the
pipeline through the wrapper and its handlers into the job, and across NATS into the
listener.
Without a ``nats-server`` binary the listener's part is left out (said on stderr).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from lifecycle_testing import NatsServer, OtlpReceiver, ReceivedSpan, poll_blocking, serve_otlp

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "adapters" / "otel" / "trace.png"

HOOKS = textwrap.dedent(
    """
    import os, pathlib, time

    def warm_cache():
        time.sleep(0.04)

    def notify():
        time.sleep(0.03)

    def update_dashboard():
        time.sleep(0.02)

    def page_on_call(event):
        time.sleep(0.03)
        pathlib.Path(os.environ["LISTENED"]).write_text(event.event_id)
    """
)

JOB = textwrap.dedent(
    """
    import os, time
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    provider = TracerProvider(resource=Resource.create({"service.name": "nightly-etl"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter()))
    tracer = provider.get_tracer("etl")
    run = TraceContextTextMapPropagator().extract({"traceparent": os.environ["TRACEPARENT"]})
    for step, seconds in (("etl.extract", 0.12), ("etl.transform", 0.08), ("etl.load", 0.16)):
        with tracer.start_as_current_span(step, context=run):
            time.sleep(seconds)
    provider.shutdown()
    """
)


def start_nats(directory: Path) -> NatsServer | None:
    """The tests' own harness (a nats-server that picks its port), or None without one."""
    if not (shutil.which("nats-server") or os.access("/usr/sbin/nats-server", os.X_OK)):
        print("no nats-server: the picture leaves the listener out", file=sys.stderr)
        return None
    server = NatsServer(directory)
    server.start()
    return server


def record_trace(directory: Path) -> list[ReceivedSpan]:
    """Run it all; return (service, span) for the spans of the pipeline's trace."""
    with serve_otlp() as receiver:
        return _record_trace(directory, receiver)


def _record_trace(directory: Path, receiver: OtlpReceiver) -> list[ReceivedSpan]:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    (directory / "hooks.py").write_text(HOOKS)
    (directory / "job.py").write_text(JOB)
    env = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_METRICS_EXPORTER": "none",
        "LISTENED": str(directory / "listened"),
        "LIFECYCLE_NATS_SPOOL": str(directory / "spool"),
        "LIFECYCLE_NATS_STATE": str(directory / "state"),
        "PYTHONPATH": str(directory),
    }
    nats = start_nats(directory)
    listener = None
    nats_adapter = ""
    try:
        if nats is not None:
            url = nats.url
            nats_adapter = f'[[adapters]]\nname = "nats"\noptions = {{ servers = "{url}", stream = "PICTURE" }}\n'
            (directory / "listen.toml").write_text(
                f'[listen]\nservers = "{url}"\nstream = "PICTURE"\ndurable = "picture"\n\n'
                '[[adapters]]\nname = "otel"\n'
                'options = { sdk = true, service_name = "listener-host" }\n\n'
                '[[handlers]]\ntarget = "hooks:update_dashboard"\n'
                'signal = "environment.starting"\n\n'
                '[[handlers]]\ntarget = "hooks:page_on_call"\nsignal = "environment.exited"\n'
            )
            log = directory / "listen.log"
            with log.open("wb") as out:
                listener = subprocess.Popen(
                    [sys.executable, "-m", "lifecycle", "listen", "--config", "listen.toml"],
                    cwd=directory, env=env, stdout=out, stderr=out,
                )  # fmt: skip
            poll_blocking(lambda: b"listening" in log.read_bytes(), "the listener")
        (directory / "run.toml").write_text(
            '[[adapters]]\nname = "otel"\noptions = { sdk = true, service_name = "nightly-host" }\n\n'
            + nats_adapter
            + '\n[[handlers]]\ntarget = "hooks:warm_cache"\nsignal = "environment.starting"\n'
            "critical = true\n\n"
            '[[handlers]]\ntarget = "hooks:notify"\nsignal = "environment.exited"\n'
            "background = true\n"
        )
        provider = TracerProvider(resource=Resource.create({"service.name": "ci-pipeline"}))
        provider.add_span_processor(
            SimpleSpanProcessor(OTLPSpanExporter(f"{receiver.url}/v1/traces"))
        )
        tracer = provider.get_tracer("ci")
        with tracer.start_as_current_span("deploy nightly-etl") as pipeline:
            time.sleep(0.03)
            carrier: dict[str, str] = {}
            TraceContextTextMapPropagator().inject(carrier)
            subprocess.run(
                [sys.executable, "-m", "lifecycle", "run", "--config", "run.toml",
                 "--name", "nightly-etl", "--", sys.executable, "job.py"],
                cwd=directory, env={**env, "TRACEPARENT": carrier["traceparent"]},
                check=True, timeout=60,
            )  # fmt: skip
            time.sleep(0.03)
        provider.shutdown()
        if listener is not None:
            poll_blocking((directory / "listened").exists, "the listener's exited handler")
            listener.send_signal(signal.SIGTERM)
            listener.wait(timeout=20)
            listener = None
        trace_id = pipeline.get_span_context().trace_id.to_bytes(16, "big")
        return [received for received in receiver.spans() if received.span.trace_id == trace_id]
    finally:
        if listener is not None:
            listener.kill()
            listener.wait()
        if nats is not None:
            nats.stop(signal.SIGTERM)


COLOURS = {
    "ci-pipeline": "#7f7f7f",
    "nightly-host": "#1f77b4",
    "nightly-etl": "#2ca02c",
    "listener-host": "#9467bd",
}


def _signal(span: Any) -> str:
    for attribute in span.attributes:
        if attribute.key == "lifecycle.signal":
            return f"  [{attribute.value.string_value.removeprefix('environment.')}]"
    return ""


def draw(spans: list[ReceivedSpan], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    by_id = {span.span_id: (service, span) for service, span in spans}
    children: dict[bytes, list[tuple[str, Any]]] = {}
    roots: list[tuple[str, Any]] = []
    for service, span in spans:
        if span.parent_span_id in by_id:
            children.setdefault(span.parent_span_id, []).append((service, span))
        else:
            roots.append((service, span))
    rows: list[tuple[int, str, Any]] = []

    def walk(item: tuple[str, Any], depth: int) -> None:
        rows.append((depth, *item))
        for child in sorted(
            children.get(item[1].span_id, []), key=lambda c: c[1].start_time_unix_nano
        ):
            walk(child, depth + 1)

    for root in sorted(roots, key=lambda r: r[1].start_time_unix_nano):
        walk(root, 0)
    origin = min(span.start_time_unix_nano for _, span in spans)
    end = max(span.end_time_unix_nano for _, span in spans)
    total_ms = (end - origin) / 1e6

    fig, ax = plt.subplots(figsize=(12, 0.42 * len(rows) + 1.3))
    for index, (depth, service, span) in enumerate(rows):
        start = (span.start_time_unix_nano - origin) / 1e6
        took = (span.end_time_unix_nano - span.start_time_unix_nano) / 1e6
        width = max(took, total_ms / 400)  # a visible sliver for the shortest
        error = span.status.code == 2  # STATUS_CODE_ERROR
        ax.barh(
            index, width, left=start, height=0.6, color=COLOURS.get(service, "#bcbd22"),
            edgecolor="#d62728" if error else "none", linewidth=2,
        )  # fmt: skip
        label = f"{took:.1f} ms" if took >= 1 else f"{took * 1000:.0f} us"
        ax.text(start + width + total_ms / 150, index, label, va="center", fontsize=8)
        ax.text(
            -total_ms / 100, index, "    " * depth + f"{service}: {span.name}{_signal(span)}",
            va="center", ha="right", fontsize=9,
            family="monospace",
        )  # fmt: skip
    ax.set_yticks([])
    ax.set_ylim(len(rows) - 0.4, -0.6)
    ax.set_xlim(0, total_ms * 1.1)
    ax.set_xlabel("ms since the trace started")
    trace_id = spans[0][1].trace_id.hex()
    ax.set_title(f"one trace, {len(rows)} spans, trace id {trace_id}", fontsize=10, loc="left")
    for spine in ("top", "right", "left"):
        ax.spines[spine].set_visible(False)
    handles = [
        Rectangle((0, 0), 1, 1, color=colour)
        for service, colour in COLOURS.items()
        if any(s == service for _, s, _ in rows)
    ]
    names = [service for service in COLOURS if any(s == service for _, s, _ in rows)]
    ax.legend(handles, names, loc="lower left", fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="otel-picture-") as tmp:
        spans = record_trace(Path(tmp))
    if not spans:
        raise SystemExit("the receiver got no span of the trace")
    draw(spans, args.out)
    services = sorted({service for service, _ in spans})
    print(f"wrote {args.out}: {len(spans)} spans of one trace from {', '.join(services)}")


if __name__ == "__main__":
    main()
