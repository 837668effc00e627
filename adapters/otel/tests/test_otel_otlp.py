"""lifecycle-otel on the wire: ``lifecycle run`` exporting OTLP/HTTP to a receiver on loopback.

The receiver is lifecycle-testing's ``serve_otlp``: ``http.server`` decoding the OTLP
requests with ``opentelemetry-proto``, as a collector would.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from typing import TYPE_CHECKING

import pytest
from lifecycle_testing import OtlpReceiver, serve_otlp

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with serve_otlp() as receiver:
        yield receiver


CHILD = textwrap.dedent(
    """
    import os
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    provider = TracerProvider(resource=Resource.create({"service.name": "child"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter()))
    parent = TraceContextTextMapPropagator().extract({"traceparent": os.environ["TRACEPARENT"]})
    with provider.get_tracer("child").start_as_current_span("child.work", context=parent):
        pass
    provider.shutdown()
    """
)

OUTSIDE_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
OUTSIDE_SPAN = "00f067aa0ba902b7"


def lifecycle_run(
    directory: Path, endpoint: str, *command: str, flush_timeout: float = 5
) -> tuple[subprocess.CompletedProcess[str], float]:
    """``lifecycle run --config otel.toml -- CMD`` as a real process; how long it took."""
    config = directory / "otel.toml"
    config.write_text(
        "[[adapters]]\n"
        'name = "otel"\n'
        f'options = {{ sdk = true, service_name = "nightly-host", flush_timeout = {flush_timeout} }}\n'
        "\n[[handlers]]\n"
        'target = "hooks:warm_cache"\n'
        'signal = "environment.starting"\n'
    )
    (directory / "hooks.py").write_text("def warm_cache():\n    pass\n")
    env = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "TRACEPARENT": f"00-{OUTSIDE_TRACE}-{OUTSIDE_SPAN}-01",
    }
    env.pop("OTEL_SERVICE_NAME", None)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "lifecycle", "run", "--config", str(config), "--name", "nightly",
         "--", *command],
        cwd=directory, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return done, time.monotonic() - started


def test_one_trace_from_the_caller_through_the_wrapper_into_the_job(
    tmp_path: Path, receiver: OtlpReceiver
) -> None:
    (tmp_path / "child.py").write_text(CHILD)
    done, _ = lifecycle_run(tmp_path, receiver.url, sys.executable, "child.py")
    assert done.returncode == 0, done.stderr
    run = receiver.named("lifecycle.run nightly")
    child = receiver.named("child.work")
    # One trace: the caller's TRACEPARENT -> the wrapper's run span -> the job's span.
    assert run.trace_id.hex() == child.trace_id.hex() == OUTSIDE_TRACE
    assert run.parent_span_id.hex() == OUTSIDE_SPAN
    assert child.parent_span_id == run.span_id
    handler = receiver.named("lifecycle.handler hooks:warm_cache")
    assert (handler.trace_id, handler.parent_span_id) == (run.trace_id, run.span_id)
    attributes = {a.key: a.value for a in run.attributes}
    assert attributes["lifecycle.run.outcome"].string_value == "succeeded"
    assert attributes["process.exit.code"].int_value == 0
    assert receiver.services() == {"child", "nightly-host"}
    assert {"lifecycle.run.duration", "lifecycle.handler.duration"} <= receiver.metric_names()


def silent_collector() -> socket.socket:
    """A socket that accepts connections (the kernel's backlog) and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    return server


@pytest.mark.parametrize("collector", ["silent", "refusing"])
def test_a_dead_collector_holds_the_wrapper_no_longer_than_the_flush_bound(
    tmp_path: Path, collector: str, closed_port: int
) -> None:
    bound = 1.0
    if collector == "silent":
        server = silent_collector()
        endpoint = f"http://127.0.0.1:{server.getsockname()[1]}"
    else:
        server, endpoint = None, f"http://127.0.0.1:{closed_port}"
    try:
        done, elapsed = lifecycle_run(
            tmp_path, endpoint, sys.executable, "-c", "pass", flush_timeout=bound
        )
    finally:
        if server is not None:
            server.close()
    assert done.returncode == 0, done.stderr
    assert "telemetry not exported" in done.stderr
    # The SDK alone would wait out OTEL_EXPORTER_OTLP_TIMEOUT (10 s) per signal. Around
    # the whole process, with the margin a loaded machine's interpreter starts need:
    # a correctness bound, not a benchmark.
    assert elapsed < bound + 1 + 4, (elapsed, done.stderr)


def test_importing_the_adapter_imports_no_sdk() -> None:
    code = "import sys, lifecycle_otel; print(sorted(m for m in sys.modules if 'sdk' in m))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert done.stdout.strip() == "[]"


def lifecycle_check(directory: Path, **env: str) -> subprocess.CompletedProcess[str]:
    config = directory / "otel.toml"
    config.write_text('[[adapters]]\nname = "otel"\noptions = { sdk = true }\n')
    return subprocess.run(
        [sys.executable, "-m", "lifecycle", "check", "--config", str(config)],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def test_check_builds_no_provider_and_sends_nothing(tmp_path: Path) -> None:
    server = silent_collector()
    try:
        done = lifecycle_check(
            tmp_path, OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{server.getsockname()[1]}"
        )
        server.settimeout(0)
        with pytest.raises(BlockingIOError):
            server.accept()  # nobody connected
    finally:
        server.close()
    assert done.returncode == 0, done.stderr


def test_an_exporter_protocol_it_does_not_ship_is_named(tmp_path: Path) -> None:
    done = lifecycle_check(tmp_path, OTEL_EXPORTER_OTLP_PROTOCOL="grpc")
    assert done.returncode == 1
    assert "adapters[0].options.sdk" in done.stderr
    assert "OTEL_EXPORTER_OTLP_PROTOCOL='grpc' is not supported" in done.stderr
