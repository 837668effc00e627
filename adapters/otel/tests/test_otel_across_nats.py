"""One trace across real processes: a caller, ``lifecycle run``, its job, NATS, ``lifecycle listen``.

It runs what ``benchmarks/otel_trace_picture.py`` draws (the README's picture), so the
picture cannot drift from what the adapters do: every process exports OTLP/HTTP to a
receiver on loopback, and the run's events go through a real ``nats-server``.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "otel_trace_picture.py"


def load_script() -> Any:
    spec = importlib.util.spec_from_file_location("otel_trace_picture", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(
    shutil.which("nats-server") is None and not Path("/usr/sbin/nats-server").exists(),
    reason="nats-server is not installed (.ci/run installs it)",
)
def test_the_listeners_handlers_join_the_trace_of_the_run_they_handle(tmp_path: Path) -> None:
    spans = load_script().record_trace(tmp_path)
    by_name = {(service, span.name): span for service, span in spans}
    pipeline = by_name["ci-pipeline", "deploy nightly-etl"]
    run = by_name["nightly-host", "lifecycle.run nightly-etl"]
    assert len({span.trace_id for _, span in spans}) == 1
    assert run.parent_span_id == pipeline.span_id
    for service, name in (
        ("nightly-host", "lifecycle.handler hooks:warm_cache"),
        ("nightly-etl", "etl.load"),
        ("listener-host", "lifecycle.handler hooks:update_dashboard"),
        ("listener-host", "lifecycle.handler hooks:page_on_call"),
    ):
        assert by_name[service, name].parent_span_id == run.span_id, name
    # The listener spans no run of its own: the run's span is the job's.
    assert sorted(name for service, name in by_name if service == "listener-host") == [
        "lifecycle.handler hooks:page_on_call",
        "lifecycle.handler hooks:update_dashboard",
    ]
