"""The test-support package itself: the backends a test runs on, the NATS server harness,
the pollers, the OTLP receiver and the helpers for other daemons."""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

import nats
import pytest
import structlog
from lifecycle_testing import (
    NatsServer,
    QuietHandler,
    poll,
    poll_blocking,
    recorded,
    serve_http,
    serve_otlp,
    stop_process,
    wait_serving,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric, ResourceMetrics, ScopeMetrics
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.anyio
async def test_on_both(anyio_backend: str) -> None:
    assert anyio_backend in ("asyncio", "trio")


@pytest.mark.anyio
@pytest.mark.asyncio_only
async def test_on_asyncio(anyio_backend: str) -> None:
    assert anyio_backend == "asyncio"


def test_anyio_tests_run_on_asyncio_and_trio_unless_marked_asyncio_only(
    request: pytest.FixtureRequest,
) -> None:
    module = request.node.parent
    assert isinstance(module, pytest.Module)
    names = {item.name for item in module.collect() if item.name.startswith("test_on_")}
    assert names == {"test_on_both[asyncio]", "test_on_both[trio]", "test_on_asyncio[asyncio]"}


async def _server_answers(url: str) -> bool:
    client = await nats.connect(url, connect_timeout=2, allow_reconnect=False)
    try:
        js = client.jetstream()
        await js.add_stream(name="KEPT", subjects=["kept"])
        await js.publish("kept", b"x")
        return (await js.stream_info("KEPT")).state.messages >= 1
    finally:
        await client.close()


@pytest.mark.anyio
@pytest.mark.asyncio_only  # nats-py runs on asyncio only
async def test_a_restarted_server_keeps_its_port_and_its_store(own_nats: NatsServer) -> None:
    own_nats.start()
    url = own_nats.url
    assert await _server_answers(url)
    own_nats.restart()
    assert own_nats.url == url
    client = await nats.connect(url)
    try:
        info = await client.jetstream().stream_info("KEPT")
    finally:
        await client.close()
    assert info.state.messages == 1


def test_two_servers_pick_two_ports(nats_server: NatsServer, tmp_path: Path) -> None:
    other = NatsServer(tmp_path / "other")
    other.start()
    try:
        assert other.port != nats_server.port
    finally:
        other.stop(signal.SIGTERM)


def test_a_missing_binary_fails_saying_how_to_get_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NATS_SERVER", str(tmp_path / "absent"))
    with pytest.raises(pytest.fail.Exception, match=r"NATS_SERVER=.*absent: no executable"):
        NatsServer(tmp_path).start()
    monkeypatch.delenv("NATS_SERVER")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("os.access", lambda path, mode: False)
    with pytest.raises(pytest.fail.Exception, match="apt-get install nats-server"):
        NatsServer(tmp_path).start()


def test_a_server_that_cannot_start_says_where_its_log_is(tmp_path: Path) -> None:
    server = NatsServer(tmp_path, "--no-such-option")
    with pytest.raises(RuntimeError, match=r"nats-server exited with \d+: see .*nats.log"):
        server.start()


def test_the_url_of_a_server_never_started_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="start"):
        _ = NatsServer(tmp_path).url


def test_a_wait_that_never_ends_fails_naming_what_it_waited_for() -> None:
    with pytest.raises(AssertionError, match=r"gave up waiting for the moon after 0\.05 s: .log."):
        poll_blocking(lambda: False, "the moon", limit=0.05, context="log")
    assert poll_blocking(lambda: [1], "a list") == [1]


@pytest.mark.anyio
async def test_an_async_wait_returns_what_it_waited_for_or_fails_naming_it() -> None:
    assert await poll(lambda: "here", "a value") == "here"
    with pytest.raises(AssertionError, match=r"gave up waiting for the moon after 0\.05 s"):
        await poll(lambda: 0, "the moon", limit=0.05)


def _post(url: str, body: bytes) -> bytes:
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/x-protobuf"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: bytes = response.read()
        return answer


def _resource(service: str) -> Resource:
    return Resource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value=service))])


def test_the_otlp_receiver_keeps_each_span_with_its_service_and_each_metric_name() -> None:
    traces = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=_resource("job"),
                scope_spans=[ScopeSpans(spans=[Span(name="extract"), Span(name="load")])],
            ),
            ResourceSpans(resource=Resource(), scope_spans=[ScopeSpans(spans=[Span(name="x")])]),
        ]
    )
    metrics = ExportMetricsServiceRequest(
        resource_metrics=[
            ResourceMetrics(scope_metrics=[ScopeMetrics(metrics=[Metric(name="runs")])])
        ]
    )
    with serve_otlp() as receiver:
        answer = _post(f"{receiver.url}/v1/traces", traces.SerializeToString())
        _post(f"{receiver.url}/v1/metrics", metrics.SerializeToString())
    ExportTraceServiceResponse.FromString(answer)  # what an exporter expects back
    assert [(service, span.name) for service, span in receiver.spans()] == [
        ("job", "extract"),
        ("job", "load"),
        ("", "x"),
    ]
    assert receiver.named("load").name == "load"
    assert receiver.services() == {"job", ""}
    assert receiver.metric_names() == {"runs"}


def test_the_otlp_receiver_names_what_it_got_when_a_span_is_not_there_once() -> None:
    with serve_otlp() as receiver:
        assert receiver.spans() == []
        with pytest.raises(AssertionError, match=r"0 spans named 'run'; received: \[\]"):
            receiver.named("run")


def test_the_otlp_receiver_refuses_a_signal_it_does_not_serve() -> None:
    with serve_otlp() as receiver, pytest.raises(urllib.error.HTTPError) as refused:
        _post(f"{receiver.url}/v1/logs", b"")
    assert refused.value.code == 404
    refused.value.close()


class _Ready(QuietHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


def _python(code: str, **options: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code], **options)


def test_wait_serving_returns_once_the_url_answers() -> None:
    daemon = _python("import time; time.sleep(60)")
    try:
        with serve_http(_Ready, lambda port: f"http://127.0.0.1:{port}/-/ready") as url:
            wait_serving(url, daemon)
    finally:
        stop_process(daemon)
    assert daemon.returncode == -signal.SIGTERM


def test_wait_serving_fails_with_the_end_of_the_log_when_the_daemon_exits(
    tmp_path: Path, nowhere: str
) -> None:
    log = tmp_path / "daemon.log"
    with log.open("wb") as out:
        daemon = _python("print('bad flag'); raise SystemExit(3)", stdout=out)
    url = nowhere.replace("nats://", "http://")
    with pytest.raises(pytest.fail.Exception, match=r"exited with 3: .*daemon\.log:\nbad flag"):
        wait_serving(url, daemon, log=log)


def test_stop_process_kills_a_process_that_ignores_sigterm_after_the_grace() -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ignoring', flush=True); time.sleep(60)"
    )
    daemon = _python(code, stdout=subprocess.PIPE)
    assert daemon.stdout is not None
    assert daemon.stdout.readline() == b"ignoring\n"  # SIGTERM is ignored from here on
    stop_process(daemon, grace=0.1)
    daemon.stdout.close()
    assert daemon.returncode == -signal.SIGKILL


def test_recorded_reads_whole_lines_only_and_nothing_before_the_file_exists(
    tmp_path: Path,
) -> None:
    record = tmp_path / "events.jsonl"
    assert recorded(record) == []
    record.write_text('{"name": "environment.starting"}\n{"name": "environment.ex')
    assert recorded(record) == [{"name": "environment.starting"}]  # the second is half-written


def test_structlogs_default_renderer_prints_a_logged_traceback_plainly(
    capsys: pytest.CaptureFixture[str],
) -> None:
    structlog.reset_defaults()  # as tests that configured structlog do afterwards
    try:
        raise ValueError("logged")
    except ValueError:
        structlog.get_logger().exception("failed")
    out = capsys.readouterr().out
    assert "Traceback (most recent call last):" in out
    assert "ValueError: logged" in out
    assert "\u256d" not in out  # the corner of rich's traceback panel
