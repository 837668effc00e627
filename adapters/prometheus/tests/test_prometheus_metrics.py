"""lifecycle-prometheus: a real scrape, a real Pushgateway receiver, a real textfile."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from types import ModuleType
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import pytest
from lifecycle_prometheus import attach
from lifecycle_testing import QuietHandler, StandIn, serve_http
from prometheus_client import REGISTRY, CollectorRegistry

from lifecycle import EXITED, STARTING, Environment, EventBus, Outcome, load_config

from .prometheus_servers import (  # type: ignore[import-not-found,unused-ignore]
    Samples,
    parse,
    promtool_check_metrics,
    value,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from lifecycle_prometheus import PrometheusAdapter


NIGHTLY = {"lifecycle_environment": "nightly"}


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
    return body.decode()


async def scrape(handle: PrometheusAdapter) -> Samples:
    """GET the real /metrics endpoint over HTTP."""
    assert handle.url is not None
    return parse(await anyio.to_thread.run_sync(_get, handle.url))


async def runs(bus: EventBus, *outcomes: str) -> None:
    """One run of "nightly" per outcome: "succeeded" or "failed"."""
    env = Environment("nightly", bus=bus)
    for outcome in outcomes:
        try:
            async with env.running():
                if outcome == "failed":
                    raise ValueError("boom")
        except ValueError:
            pass


# -- the scrape endpoint ---------------------------------------------------------------


@pytest.mark.anyio
async def test_runs_are_counted_by_environment_and_outcome() -> None:
    async with EventBus() as bus:
        with attach(bus, port=0, addr="127.0.0.1") as handle:
            await runs(bus, "succeeded", "failed", "failed")
            samples = await scrape(handle)
    assert value(samples, "lifecycle_runs_started_total", lifecycle_environment="nightly") == 3
    finished = "lifecycle_runs_finished_total"
    assert value(samples, finished, lifecycle_environment="nightly", outcome="succeeded") == 1
    assert value(samples, finished, lifecycle_environment="nightly", outcome="failed") == 2
    assert value(samples, "lifecycle_runs_in_progress", lifecycle_environment="nightly") == 0


@pytest.mark.anyio
async def test_run_duration_is_a_histogram_by_outcome() -> None:
    async with EventBus() as bus:
        with attach(bus, port=0, addr="127.0.0.1") as handle:
            await runs(bus, "failed")
            samples = await scrape(handle)
    labels = {"lifecycle_environment": "nightly", "outcome": "failed"}
    assert value(samples, "lifecycle_run_duration_seconds_count", **labels) == 1
    assert value(samples, "lifecycle_run_duration_seconds_bucket", le="+Inf", **labels) == 1
    assert (
        value(
            samples, "lifecycle_run_last_success_timestamp_seconds", lifecycle_environment="nightly"
        )
        is None
    )


@pytest.mark.anyio
async def test_a_run_in_progress_is_seen_while_it_runs() -> None:
    async with EventBus() as bus:
        with attach(bus, port=0, addr="127.0.0.1") as handle:
            async with Environment("nightly", bus=bus).running():
                during = await scrape(handle)
            after = await scrape(handle)
    assert value(during, "lifecycle_runs_in_progress", lifecycle_environment="nightly") == 1
    assert value(after, "lifecycle_runs_in_progress", lifecycle_environment="nightly") == 0
    assert value(
        after, "lifecycle_run_last_success_timestamp_seconds", lifecycle_environment="nightly"
    )


@pytest.mark.anyio
async def test_handler_durations_and_failures_by_reason() -> None:
    async with EventBus() as bus:
        with attach(bus, port=0, addr="127.0.0.1") as handle:

            def broken() -> None:
                raise RuntimeError("boom")

            async def slow() -> None:
                await anyio.sleep(10)

            bus.subscribe(STARTING, broken, name="broken", inline=True)
            bus.subscribe(EXITED, slow, name="slow", timeout=0.05)
            await runs(bus, "succeeded")
            samples = await scrape(handle)
    failures = "lifecycle_handler_failures_total"
    assert value(samples, failures, signal=STARTING, handler="broken", reason="error") == 1
    assert value(samples, failures, signal=EXITED, handler="slow", reason="timeout") == 1
    count = "lifecycle_handler_duration_seconds_count"
    assert value(samples, count, signal=EXITED, handler="slow") == 1
    assert value(samples, count, signal=STARTING, handler="broken") == 1


@pytest.mark.anyio
async def test_port_zero_reports_the_bound_port_and_detach_closes_it() -> None:
    async with EventBus() as bus:
        handle = attach(bus, port=0, addr="127.0.0.1")
        port = handle.port
        assert port
        assert handle.url == f"http://127.0.0.1:{port}/metrics"
        handle.detach()
        assert handle.port is None
        with pytest.raises(urllib.error.URLError):
            await anyio.to_thread.run_sync(_get, f"http://127.0.0.1:{port}/metrics")
        assert bus.subscriptions() == []


def test_each_attach_has_its_own_registry() -> None:
    first, second = attach(EventBus()), attach(EventBus())
    assert first.registry is not second.registry
    assert first.registry is not REGISTRY
    first.detach()
    second.detach()


def test_a_given_registry_is_used() -> None:
    registry = CollectorRegistry()
    with attach(EventBus(), registry=registry, namespace="jobs"):
        names = {metric.name for metric in registry.collect()}
    assert "jobs_runs_started" in names


# -- batch jobs: Pushgateway and textfile ----------------------------------------------


@dataclass
class Pushgateway:
    """What a Pushgateway would have received (method, path, body), and its answer."""

    port: int
    status: int = 200
    received: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class _Receiver(QuietHandler):
    server: StandIn[Pushgateway]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        owner = self.server.owner
        owner.received.append((self.command, self.path, body.decode()))
        self.send_response(owner.status)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def pushgateway() -> Iterator[Pushgateway]:
    """A real HTTP receiver on 127.0.0.1 that records what a Pushgateway would get."""
    with serve_http(_Receiver, Pushgateway) as owner:
        yield owner


def pushed(pushgateway: Pushgateway) -> list[tuple[str, str, Samples]]:
    """What the receiver got: method, path and parsed body, each body promtool-clean."""
    for _, _, body in pushgateway.received:
        promtool_check_metrics(body)
        assert "_created" not in body  # a batch push carries gauges only
    return [(method, path, parse(body)) for method, path, body in pushgateway.received]


@pytest.mark.anyio
async def test_a_run_is_pushed_when_it_starts_and_when_it_exits(pushgateway: Pushgateway) -> None:
    url = pushgateway.url
    async with EventBus() as bus:
        attach(bus, pushgateway=url, job="etl", grouping_key={"instance": "host-1"})
        await runs(bus, "failed")
        # Pushed before the exited emit returned: a batch job may exit right away.
        (start, end) = pushed(pushgateway)
    # POST: the group's other metrics (the last success of an earlier run) stay.
    group = "/metrics/job/etl/instance/host-1/lifecycle_environment/nightly"
    assert start[:2] == end[:2] == ("POST", group)
    assert {name for name, _ in start[2]} == {"lifecycle_run_last_start_timestamp_seconds"}
    nightly = {"lifecycle_environment": "nightly"}
    assert value(end[2], "lifecycle_run_last_outcome", outcome="failed", **nightly) == 1
    assert value(end[2], "lifecycle_run_last_outcome", outcome="succeeded", **nightly) == 0
    assert value(end[2], "lifecycle_run_last_duration_seconds", **nightly) is not None
    # No success to report: left out, so the Pushgateway keeps the last one it has.
    assert value(end[2], "lifecycle_run_last_success_timestamp_seconds", **nightly) is None
    # Counters of a process that lives for one run would say 1 in every push.
    assert not [name for name, _ in end[2] if name.endswith(("_total", "_bucket"))]


@pytest.mark.anyio
async def test_a_failed_push_is_a_handler_failure(pushgateway: Pushgateway) -> None:
    pushgateway.status = 500
    url = pushgateway.url
    async with EventBus() as bus:
        attach(bus, pushgateway=url)
        env = Environment("nightly", bus=bus)
        async with env.running() as run:
            pass
    assert run.exit_report is not None
    (failure,) = run.exit_report.failures
    assert failure.handler == "lifecycle_prometheus:export"
    assert "answered 500" in failure.describe_error()


async def batch_run(outcome: str, **options: Any) -> None:
    """One run with a bus and an adapter of its own, as each cron run is a new process."""
    async with EventBus() as bus:
        with attach(bus, **options):
            await runs(bus, outcome)


async def replay(bus: EventBus, name: str, outcome: Outcome, *, ended_ago: float) -> float:
    """Emit a run of ``name`` that ended ``ended_ago`` seconds ago; return its end time."""
    env, run_id = Environment(name), uuid.uuid4().hex
    end = datetime.now(timezone.utc) - timedelta(seconds=ended_ago)
    await bus.emit(env.event(STARTING, run_id, timestamp=end - timedelta(seconds=30)))
    await bus.emit(env.event(EXITED, run_id, timestamp=end, outcome=outcome, duration=30.0))
    return end.timestamp()


async def read_textfile(path: Path) -> Samples:
    text = await anyio.Path(path).read_text()
    promtool_check_metrics(text)
    assert "_created" not in text
    assert "_total" not in text
    return parse(text)


@pytest.mark.anyio
async def test_textfile_is_written_atomically_when_a_run_exits(tmp_path: Path) -> None:
    path = tmp_path / "lifecycle.prom"
    await batch_run("succeeded", textfile=path)
    samples = await read_textfile(path)
    success = value(samples, "lifecycle_run_last_success_timestamp_seconds", **NIGHTLY)
    assert success == value(samples, "lifecycle_run_last_completion_timestamp_seconds", **NIGHTLY)
    left = [p.name async for p in anyio.Path(tmp_path).iterdir()]
    assert left == ["lifecycle.prom"]  # no temporary file left behind


@pytest.mark.anyio
async def test_the_last_success_survives_failed_runs_in_the_textfile(tmp_path: Path) -> None:
    path = tmp_path / "lifecycle.prom"
    await batch_run("succeeded", textfile=path)
    success = value(
        await read_textfile(path), "lifecycle_run_last_success_timestamp_seconds", **NIGHTLY
    )
    await batch_run("failed", textfile=path)
    await batch_run("failed", textfile=path)
    samples = await read_textfile(path)
    assert value(samples, "lifecycle_run_last_success_timestamp_seconds", **NIGHTLY) == success
    assert value(samples, "lifecycle_run_last_outcome", outcome="failed", **NIGHTLY) == 1
    completion = value(samples, "lifecycle_run_last_completion_timestamp_seconds", **NIGHTLY)
    assert completion is not None
    assert success is not None
    assert completion > success


@pytest.mark.anyio
async def test_jobs_sharing_a_textfile_keep_each_their_own_series(tmp_path: Path) -> None:
    path = tmp_path / "jobs.prom"
    async with EventBus() as bus:
        with attach(bus, textfile=path):
            first = await replay(bus, "backup", Outcome.SUCCEEDED, ended_ago=60)
    async with EventBus() as bus:
        with attach(bus, textfile=path):
            second = await replay(bus, "report", Outcome.SUCCEEDED, ended_ago=30)
    samples = await read_textfile(path)
    last_success = "lifecycle_run_last_success_timestamp_seconds"
    assert value(samples, last_success, lifecycle_environment="backup") == first
    assert value(samples, last_success, lifecycle_environment="report") == second


@pytest.mark.anyio
async def test_names_that_prefix_or_need_escaping_keep_their_own_series(tmp_path: Path) -> None:
    path = tmp_path / "jobs.prom"
    odd = 'etl"2\\x'  # a quote and a backslash, escaped in the file; "etl" is its prefix
    for name, outcome in (
        ("etl", Outcome.SUCCEEDED),
        (odd, Outcome.SUCCEEDED),
        ("etl", Outcome.FAILED),
    ):
        async with EventBus() as bus:
            with attach(bus, textfile=path):
                await replay(bus, name, outcome, ended_ago=60)
    samples = await read_textfile(path)
    outcome_of = "lifecycle_run_last_outcome"
    assert value(samples, outcome_of, lifecycle_environment="etl", outcome="failed") == 1
    assert value(samples, outcome_of, lifecycle_environment=odd, outcome="succeeded") == 1
    success = "lifecycle_run_last_success_timestamp_seconds"
    assert value(samples, success, lifecycle_environment="etl") is not None
    assert value(samples, success, lifecycle_environment=odd) is not None
    assert len([key for key in samples if key[0] == outcome_of]) == 2 * len(Outcome)


@pytest.mark.anyio
async def test_a_textfile_not_in_the_text_format_is_reported_and_left_alone(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.prom"
    path.write_text("this is not { an exposition\n")
    async with EventBus() as bus:
        attach(bus, textfile=path)
        async with Environment("nightly", bus=bus).running() as run:
            pass
    assert run.exit_report is not None
    (failure,) = run.exit_report.failures
    assert f"textfile {path} is not in the Prometheus text format" in failure.describe_error()
    assert path.read_text() == "this is not { an exposition\n"


@pytest.mark.anyio
async def test_timestamps_are_the_events_not_the_handlers_clock() -> None:
    """A run replayed an hour late (lifecycle listen, a flushed spool) is an hour old."""
    async with EventBus() as bus:
        with attach(bus, port=0, addr="127.0.0.1") as handle:
            end = await replay(bus, "nightly", Outcome.SUCCEEDED, ended_ago=3600)
            samples = await scrape(handle)
    assert value(samples, "lifecycle_run_last_success_timestamp_seconds", **NIGHTLY) == end
    assert value(samples, "lifecycle_run_last_start_timestamp_seconds", **NIGHTLY) == end - 30


@pytest.mark.anyio
async def test_an_older_run_replayed_late_does_not_replace_the_last_run() -> None:
    async with EventBus() as bus:
        with attach(bus, port=0, addr="127.0.0.1") as handle:
            success = await replay(bus, "nightly", Outcome.SUCCEEDED, ended_ago=60)
            await replay(bus, "nightly", Outcome.FAILED, ended_ago=600)
            samples = await scrape(handle)
    assert value(samples, "lifecycle_run_last_completion_timestamp_seconds", **NIGHTLY) == success
    assert value(samples, "lifecycle_run_last_outcome", outcome="succeeded", **NIGHTLY) == 1
    assert value(samples, "lifecycle_runs_finished_total", outcome="failed", **NIGHTLY) == 1


@pytest.mark.anyio
async def test_the_name_label_is_configurable(tmp_path: Path) -> None:
    path = tmp_path / "jobs.prom"
    await batch_run("succeeded", textfile=path, name_label="cron_job")
    samples = await read_textfile(path)
    assert value(samples, "lifecycle_run_last_duration_seconds", cron_job="nightly") is not None


@pytest.mark.parametrize("bad", ["job", "outcome", "__name", "my-label", ""])
def test_a_name_label_that_cannot_work_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="name_label"):
        attach(EventBus(), name_label=bad)


def test_bad_port_is_refused() -> None:
    with pytest.raises(ValueError, match="port must be"):
        attach(EventBus(), port=-1)


def test_check_does_not_bind_the_port_the_running_job_holds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    from lifecycle._cli import main

    config = tmp_path / "lifecycle.toml"
    with socket.socket() as taken:  # the job, running, serving its metrics
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config.write_text(
            f'[[adapters]]\nname = "prometheus"\noptions = {{ port = {port}, addr = "127.0.0.1" }}\n'
        )
        assert main(["check", "--config", str(config)]) == 0
    config.write_text('[[adapters]]\nname = "prometheus"\noptions = { port = 70000 }\n')
    assert main(["check", "--config", str(config)]) == 1
    assert "adapters[0].options.port" in capsys.readouterr().err


def test_check_warns_that_a_port_dies_with_a_wrapped_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lifecycle._cli import main

    config = tmp_path / "lifecycle.toml"
    config.write_text('[[adapters]]\nname = "prometheus"\noptions = { port = 9464 }\n')
    assert main(["check", "--config", str(config)]) == 0
    err = capsys.readouterr().err
    assert "warning: prometheus port=9464" in err
    assert "not under lifecycle run" in err
    assert "pushgateway= or textfile=" in err
    config.write_text(
        f'[[adapters]]\nname = "prometheus"\noptions = {{ textfile = "{tmp_path}/x.prom" }}\n'
    )
    assert main(["check", "--config", str(config)]) == 0
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("textfile", "warning"),
    [
        ("jobs.txt", "reads only files ending in .prom"),
        ("missing/jobs.prom", "its directory does not exist"),
    ],
)
def test_check_warns_about_a_textfile_node_exporter_would_not_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], textfile: str, warning: str
) -> None:
    from lifecycle._cli import main

    config = tmp_path / "lifecycle.toml"
    config.write_text(
        f'[[adapters]]\nname = "prometheus"\noptions = {{ textfile = "{tmp_path / textfile}" }}\n'
    )
    assert main(["check", "--config", str(config)]) == 0
    assert warning in capsys.readouterr().err


def test_a_port_in_use_is_an_error_naming_the_address() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot serve metrics on 127.0.0.1:{port}: "):
            attach(EventBus(), port=port, addr="127.0.0.1")


@pytest.mark.anyio
async def test_attached_from_a_config_file(tmp_path: Path) -> None:
    config = anyio.Path(tmp_path / "lifecycle.toml")
    await config.write_text(
        f'[[adapters]]\nname = "prometheus"\noptions = {{ textfile = "{tmp_path}/jobs.prom" }}\n'
    )
    async with EventBus() as bus:
        with load_config(config).attach(bus):
            await runs(bus, "failed")
    samples = await read_textfile(tmp_path / "jobs.prom")
    assert value(samples, "lifecycle_run_last_outcome", outcome="failed", **NIGHTLY) == 1


def test_all_lists_exactly_the_public_names() -> None:
    import lifecycle_prometheus

    public = {
        name
        for name, obj in vars(lifecycle_prometheus).items()
        if not name.startswith("_") and not isinstance(obj, ModuleType)
    }
    assert public == set(lifecycle_prometheus.__all__)


@pytest.mark.anyio
async def test_the_abandoned_threads_of_the_bus_are_a_gauge() -> None:
    """Hung plain handlers, given up at their timeouts, show up at the next scrape."""
    bus = EventBus()
    release, entered = threading.Event(), threading.Event()

    def hang() -> None:
        entered.set()
        release.wait()

    bus.subscribe("test.hang", hang, timeout=None)
    try:
        with attach(bus, port=0, addr="127.0.0.1") as handle:
            assert value(await scrape(handle), "lifecycle_abandoned_threads") == 0
            with anyio.fail_after(10):
                async with anyio.create_task_group() as group:
                    event = Environment("x").event("test.hang", "r1")
                    group.start_soon(bus.emit, event)
                    await anyio.to_thread.run_sync(entered.wait, abandon_on_cancel=True)
                    group.cancel_scope.cancel()
            assert value(await scrape(handle), "lifecycle_abandoned_threads") == 1
    finally:
        release.set()
