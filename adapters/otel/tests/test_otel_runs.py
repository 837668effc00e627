"""lifecycle-otel with a real SDK in memory: run spans, handler spans and metrics."""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import lifecycle_otel
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from lifecycle import (
    EXITED,
    HEARTBEAT,
    MISSED,
    OVERDUE,
    STARTING,
    Environment,
    EnvironmentInfo,
    Event,
    EventBus,
    HandlerResult,
    Outcome,
    StartAborted,
    SubprocessEnvironment,
    load_config,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from opentelemetry.sdk.trace import ReadableSpan

    from lifecycle.plugins import Attach

_: Attach = lifecycle_otel.attach  # mypy checks attach against the contract

pytestmark = pytest.mark.anyio


@dataclass
class Telemetry:
    """A real SDK whose spans and metrics stay in memory."""

    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader

    def spans(self, prefix: str = "") -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if s.name.startswith(prefix)]

    def run_span(self) -> ReadableSpan:
        (span,) = self.spans("lifecycle.run ")
        return span

    def points(self, name: str) -> list[Any]:
        """The data points of the metric ``name`` at a collection now."""
        data = self.reader.get_metrics_data()
        found: list[Any] = []
        if data is None:
            return found
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found.extend(metric.data.data_points)
        return found


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider(shutdown_on_exit=False)
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    yield Telemetry(tracer_provider, meter_provider, exporter, reader)
    tracer_provider.shutdown()
    meter_provider.shutdown()


def attach(bus: EventBus, telemetry: Telemetry, **options: object) -> lifecycle_otel.OtelAdapter:
    return lifecycle_otel.attach(
        bus,
        tracer_provider=telemetry.tracer_provider,
        meter_provider=telemetry.meter_provider,
        **options,  # type: ignore[arg-type]
    )


def ns(when: datetime) -> int:
    return (
        int((when - datetime(1970, 1, 1, tzinfo=timezone.utc)) / timedelta(microseconds=1)) * 1000
    )


def attributes(span: ReadableSpan) -> dict[str, object]:
    return dict(span.attributes or {})


async def command(telemetry: Telemetry, code: str, limit: float | None = None) -> ReadableSpan:
    async with EventBus() as bus:
        with attach(bus, telemetry):
            env = SubprocessEnvironment(
                [sys.executable, "-c", code], name="job", bus=bus, timeout=limit, kill_grace=5
            )
            await env.execute()
    span: ReadableSpan = telemetry.run_span()
    return span


async def test_a_succeeded_run_is_one_span_from_starting_to_exited(telemetry: Telemetry) -> None:
    async with EventBus() as bus:
        with attach(bus, telemetry):
            async with Environment("nightly", labels=["etl", "prod"], bus=bus).running() as run:
                pass
    span = telemetry.run_span()
    assert run.exited is not None
    assert span.name == "lifecycle.run nightly"
    assert run.start_report is not None
    assert span.start_time == ns(run.start_report.event.timestamp)
    assert span.end_time == ns(run.exited.timestamp)
    assert span.status.status_code is StatusCode.UNSET
    found = attributes(span)
    assert found["lifecycle.environment.name"] == "nightly"
    assert found["lifecycle.environment.labels"] == ("etl", "prod")
    assert found["lifecycle.run.id"] == run.run_id
    assert found["lifecycle.run.outcome"] == "succeeded"
    assert found["lifecycle.exited.event.id"] == run.exited.event_id
    assert found["host.name"] == run.exited.environment.host
    assert found["process.pid"] == os.getpid()
    assert "error.type" not in found
    assert "process.command_args" not in found


async def test_a_failed_run_has_error_status_and_the_exception_event(
    telemetry: Telemetry,
) -> None:
    async with EventBus() as bus:
        with attach(bus, telemetry), pytest.raises(ValueError, match="bad row"):
            async with Environment("nightly", bus=bus).running():
                raise ValueError("bad row 7")
    span = telemetry.run_span()
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "failed: ValueError: bad row 7"
    assert attributes(span)["error.type"] == "ValueError"
    (event,) = span.events
    assert event.name == "exception"
    assert event.attributes is not None
    assert event.attributes["exception.type"] == "ValueError"
    assert event.attributes["exception.message"] == "bad row 7"
    assert "raise ValueError" in str(event.attributes["exception.stacktrace"])


async def test_a_failed_command_has_its_exit_code(telemetry: Telemetry) -> None:
    span = await command(telemetry, "raise SystemExit(3)")
    assert attributes(span)["process.exit.code"] == 3
    assert attributes(span)["error.type"] == "failed"
    assert span.status.description == "failed with exit status 3"


async def test_a_command_past_its_timeout_is_a_timeout_span(telemetry: Telemetry) -> None:
    span = await command(telemetry, "import time; time.sleep(30)", limit=0.2)
    assert attributes(span)["lifecycle.run.outcome"] == "timeout"
    assert attributes(span)["process.exit.code"] == 124
    assert span.status.status_code is StatusCode.ERROR


async def test_a_command_killed_by_a_signal_is_a_killed_span(telemetry: Telemetry) -> None:
    span = await command(telemetry, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert attributes(span)["lifecycle.run.outcome"] == "killed"
    assert attributes(span)["process.exit.code"] == 137
    assert attributes(span)["error.type"] == "killed"


async def test_a_critical_starting_failure_is_an_aborted_span(telemetry: Telemetry) -> None:
    def refuse() -> None:
        raise RuntimeError("no disk")

    async with EventBus() as bus:
        with attach(bus, telemetry):
            bus.subscribe(STARTING, refuse, critical=True)
            with pytest.raises(StartAborted):
                async with Environment("nightly", bus=bus).running():
                    pass
    span = telemetry.run_span()
    assert attributes(span)["lifecycle.run.outcome"] == "aborted"
    assert span.status.status_code is StatusCode.ERROR
    (handler,) = telemetry.spans("lifecycle.handler ")
    assert handler.parent is not None
    assert handler.parent.span_id == span.context.span_id
    assert handler.status.status_code is StatusCode.ERROR
    assert attributes(handler)["lifecycle.handler.critical"] is True
    assert attributes(handler)["error.type"] == "RuntimeError"
    assert [event.name for event in handler.events] == ["exception"]


def events_from_elsewhere(outcome: Outcome) -> tuple[Event, Event]:
    where = EnvironmentInfo("etl", frozenset({"prod"}), host="worker-7", pid=4242)
    start = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc)
    starting = Event(STARTING, "run-1", where, {"command": ["etl", "--token=x"]}, timestamp=start)
    exited = Event(
        EXITED,
        "run-1",
        where,
        {"command": ["etl", "--token=x"], "rows": 12},
        timestamp=start + timedelta(seconds=90),
        outcome=outcome,
        duration=90.0,
        exit_code=143,
    )
    return starting, exited


async def test_events_of_another_process_give_the_span_their_times_and_host(
    telemetry: Telemetry,
) -> None:
    starting, exited = events_from_elsewhere(Outcome.TERMINATED)
    async with EventBus() as bus:
        with attach(bus, telemetry):
            await bus.emit(starting)
            await bus.emit(exited)
    span = telemetry.run_span()
    assert (span.start_time, span.end_time) == (ns(starting.timestamp), ns(exited.timestamp))
    found = attributes(span)
    assert (found["host.name"], found["process.pid"]) == ("worker-7", 4242)
    assert found["lifecycle.run.outcome"] == "terminated"
    assert found["lifecycle.event.id"] == starting.event_id
    assert span.status.status_code is StatusCode.ERROR


async def test_an_exit_whose_start_was_not_seen_spans_its_duration(telemetry: Telemetry) -> None:
    _, exited = events_from_elsewhere(Outcome.SUCCEEDED)
    async with EventBus() as bus:
        with attach(bus, telemetry):
            await bus.emit(exited)
    span = telemetry.run_span()
    assert span.end_time == ns(exited.timestamp)
    assert span.start_time == ns(exited.timestamp) - 90_000_000_000
    # Not counted in, so not counted out: the gauge never goes below zero.
    assert all(point.value == 0 for point in telemetry.points("lifecycle.run.active"))


async def test_command_and_attributes_only_when_opted_in(telemetry: Telemetry) -> None:
    starting, exited = events_from_elsewhere(Outcome.SUCCEEDED)
    async with EventBus() as bus:
        with attach(bus, telemetry):
            await bus.emit(starting)
            await bus.emit(exited)
        with attach(bus, telemetry, record_command=True, record_attributes=True):
            await bus.emit(starting.evolve(run_id="run-2", event_id="e2"))
            await bus.emit(exited.evolve(run_id="run-2"))
    plain, opted = telemetry.spans("lifecycle.run ")
    assert not [key for key in attributes(plain) if "command" in key or "attributes" in key]
    assert attributes(opted)["process.command_args"] == ("etl", "--token=x")
    assert attributes(opted)["lifecycle.run.attributes.rows"] == 12


async def test_heartbeats_are_a_count_not_events(telemetry: Telemetry) -> None:
    starting, exited = events_from_elsewhere(Outcome.SUCCEEDED)
    async with EventBus() as bus:
        with attach(bus, telemetry):
            await bus.emit(starting)
            for _ in range(3):
                await bus.emit(Event(HEARTBEAT, "run-1", starting.environment))
            await bus.emit(exited)
    span = telemetry.run_span()
    assert attributes(span)["lifecycle.run.heartbeats"] == 3
    assert not span.events


async def test_runs_that_never_exit_are_bounded(telemetry: Telemetry) -> None:
    starting, _ = events_from_elsewhere(Outcome.SUCCEEDED)
    async with EventBus() as bus:
        with attach(bus, telemetry, max_open_runs=2) as adapter:
            for run in ("a", "b", "c"):
                await bus.emit(starting.evolve(run_id=run, event_id=run))
            (evicted,) = telemetry.spans("lifecycle.run ")
            assert attributes(evicted)["lifecycle.run.id"] == "a"
            assert attributes(evicted)["lifecycle.run.outcome"] == "unknown"
            assert [event.name for event in evicted.events] == ["lifecycle.run.untracked"]
            assert sum(point.value for point in telemetry.points("lifecycle.run.active")) == 2
            assert adapter.spans is not None
            assert len(adapter.spans.open) == 2
    # Detaching ends the spans still open, so none is lost.
    assert len(telemetry.spans("lifecycle.run ")) == 3


async def test_the_run_span_is_a_child_of_the_span_active_where_the_run_starts(
    telemetry: Telemetry,
) -> None:
    tracer = telemetry.tracer_provider.get_tracer("test")
    async with EventBus() as bus:
        with attach(bus, telemetry), tracer.start_as_current_span("deploy") as outer:
            async with Environment("nightly", bus=bus).running():
                pass
    span = telemetry.run_span()
    assert span.parent is not None
    assert span.parent.span_id == outer.get_span_context().span_id


async def test_traceparent_in_the_environment_parents_the_run_span(
    telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    monkeypatch.setenv("TRACEPARENT", f"00-{trace_id}-{parent_id}-01")
    monkeypatch.setenv("TRACESTATE", "vendor=x")
    async with EventBus() as bus:
        with attach(bus, telemetry):
            async with Environment("nightly", bus=bus).running():
                pass
    span = telemetry.run_span()
    assert span.context.trace_id == int(trace_id, 16)
    assert span.parent is not None
    assert span.parent.span_id == int(parent_id, 16)
    assert span.context.trace_state.get("vendor") == "x"


async def test_run_and_handler_metrics(telemetry: Telemetry) -> None:
    def broken() -> None:
        raise KeyError("x")

    async def slow() -> None:
        await anyio.sleep(10)

    async with EventBus() as bus:
        with attach(bus, telemetry):
            bus.subscribe(EXITED, broken, name="broken")
            bus.subscribe(EXITED, slow, name="slow", timeout=0.05)
            env = Environment("nightly", bus=bus)
            async with env.running():
                assert [p.value for p in telemetry.points("lifecycle.run.active")] == [1]
            with pytest.raises(OSError, match="disk"):
                async with env.running():
                    raise OSError("disk")
    durations = {
        p.attributes["lifecycle.run.outcome"]: p.count
        for p in telemetry.points("lifecycle.run.duration")
    }
    assert durations == {"succeeded": 1, "failed": 1}
    assert [p.value for p in telemetry.points("lifecycle.run.active")] == [0]
    errors = {
        (p.attributes["lifecycle.handler.name"], p.attributes["error.type"]): p.value
        for p in telemetry.points("lifecycle.handler.errors")
    }
    assert errors == {("broken", "KeyError"): 2, ("slow", "timeout"): 2}
    statuses = {
        (p.attributes["lifecycle.handler.name"], p.attributes["lifecycle.handler.status"])
        for p in telemetry.points("lifecycle.handler.duration")
    }
    assert {("broken", "error"), ("slow", "timeout")} <= statuses


async def test_abandoned_threads_are_a_gauge_read_from_the_bus(telemetry: Telemetry) -> None:
    release = threading.Event()
    async with EventBus() as bus:
        with attach(bus, telemetry):
            bus.subscribe(STARTING, lambda: release.wait(10), timeout=0.05, name="hung")
            try:
                async with Environment("nightly", bus=bus).running():
                    pass
                assert bus.abandoned_threads == 1
                (point,) = telemetry.points("lifecycle.bus.abandoned_threads")
                assert point.value == 1
            finally:
                release.set()


async def test_detached_the_adapter_records_nothing(telemetry: Telemetry) -> None:
    async with EventBus() as bus:
        attach(bus, telemetry).detach()
        async with Environment("nightly", bus=bus).running():
            pass
    assert telemetry.spans() == []
    assert telemetry.points("lifecycle.bus.abandoned_threads") == []


async def test_bad_options_are_named(telemetry: Telemetry) -> None:
    async with EventBus() as bus:
        with pytest.raises(ValueError, match=r"^flush_timeout must be"):
            attach(bus, telemetry, flush_timeout=0)
        with pytest.raises(ValueError, match=r"^max_open_runs must be"):
            attach(bus, telemetry, max_open_runs=0)
        with pytest.raises(TypeError, match=r"^record_command must be"):
            attach(bus, telemetry, record_command="yes")
        with pytest.raises(ValueError, match=r"^sdk builds the providers"):
            attach(bus, telemetry, sdk=True)


async def test_attached_through_the_configuration(tmp_path: Path) -> None:
    config = tmp_path / "lifecycle.toml"
    config.write_text(
        '[[adapters]]\nname = "otel"\noptions = { record_command = true, flush_timeout = 2 }\n'
    )
    async with EventBus() as bus:
        attachment = load_config(config).attach(bus)
        attachment.detach()


async def test_the_command_gets_the_run_span_as_its_traceparent(telemetry: Telemetry) -> None:
    code = "import os; print(os.environ['TRACEPARENT'])"
    async with EventBus() as bus:
        with attach(bus, telemetry):
            env = SubprocessEnvironment([sys.executable, "-c", code], bus=bus, heartbeat=None)
            result = await env.execute()
    span = telemetry.run_span()
    context = span.get_span_context()
    assert context is not None
    assert (
        result.output_tail
        == f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    )


async def test_a_run_the_watchdog_declared_lost_ends_at_the_verdict(telemetry: Telemetry) -> None:
    starting, _ = events_from_elsewhere(Outcome.SUCCEEDED)
    verdict = Event(
        EXITED,
        "run-1",
        starting.environment,
        {"last_heartbeat": starting.timestamp.isoformat()},
        timestamp=starting.timestamp + timedelta(seconds=40),
        outcome=Outcome.LOST,
    )
    async with EventBus() as bus:
        with attach(bus, telemetry):
            await bus.emit(starting)
            await bus.emit(verdict)
    span = telemetry.run_span()
    assert (span.start_time, span.end_time) == (ns(starting.timestamp), ns(verdict.timestamp))
    assert attributes(span)["lifecycle.run.outcome"] == "lost"
    assert attributes(span)["error.type"] == "lost"
    assert span.status.status_code is StatusCode.ERROR


async def test_handlers_run_inside_their_spans(telemetry: Telemetry) -> None:
    tracer = telemetry.tracer_provider.get_tracer("test")

    def in_thread() -> None:
        with tracer.start_as_current_span("query"):
            pass

    def in_emitter() -> None:
        with tracer.start_as_current_span("log"):
            pass

    async def in_loop() -> None:
        with tracer.start_as_current_span("request"):
            await anyio.lowlevel.checkpoint()

    async def hung() -> None:
        await anyio.sleep(10)

    async with EventBus() as bus:
        with attach(bus, telemetry):
            bus.subscribe(STARTING, in_thread, name="in_thread")
            bus.subscribe(STARTING, in_emitter, inline=True, name="in_emitter")
            bus.subscribe(EXITED, in_loop, name="in_loop", background=True)
            bus.subscribe(EXITED, hung, name="hung", timeout=0.05)
            async with Environment("nightly", bus=bus).running():
                pass
            await bus.drain()
    run = telemetry.run_span()
    spans = {span.name: span for span in telemetry.spans()}
    for handler, inner in (("in_thread", "query"), ("in_emitter", "log"), ("in_loop", "request")):
        span = spans[f"lifecycle.handler {handler}"]
        assert span.parent is not None
        assert span.parent.span_id == run.context.span_id, handler
        child = spans[inner]
        assert child.parent is not None
        assert child.parent.span_id == span.context.span_id, handler
        assert attributes(span)["lifecycle.handler.status"] == "ok"
    assert attributes(spans["lifecycle.handler in_loop"])["lifecycle.handler.background"] is True
    timed_out = spans["lifecycle.handler hung"]
    assert attributes(timed_out)["lifecycle.handler.status"] == "timeout"
    assert attributes(timed_out)["error.type"] == "timeout"
    assert timed_out.status.status_code is StatusCode.ERROR


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
CARRIED = (0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331)


def carrying(event: Event) -> Event:
    """``event`` as the NATS publisher sends it from a traced run."""
    return event.evolve(attributes={**event.attributes, "traceparent": TRACEPARENT})


async def test_a_run_whose_events_carry_its_span_is_not_spanned_again_and_its_handlers_nest(
    telemetry: Telemetry,
) -> None:
    starting, exited = (carrying(e) for e in events_from_elsewhere(Outcome.SUCCEEDED))
    async with EventBus() as bus:
        bus.subscribe(STARTING, lambda event: None, name="notify")
        bus.subscribe(EXITED, lambda event: None, name="notify")
        with attach(bus, telemetry, record_attributes=True):
            await bus.emit(starting)
            await bus.emit(exited)
    assert telemetry.spans("lifecycle.run ") == []
    handlers = telemetry.spans("lifecycle.handler notify")
    assert len(handlers) == 2
    for span in handlers:
        assert span.context is not None
        assert span.parent is not None
        assert (span.context.trace_id, span.parent.span_id) == CARRIED
    # The run still counts in the observer's metrics.
    [point] = telemetry.points("lifecycle.run.duration")
    assert point.count == 1


async def test_overdue_and_missed_verdicts_are_spans_at_their_time(telemetry: Telemetry) -> None:
    starting, _ = events_from_elsewhere(Outcome.SUCCEEDED)
    at = starting.timestamp + timedelta(seconds=70)
    overdue = carrying(
        Event(
            OVERDUE,
            "run-1",
            starting.environment,
            {"max_duration": 60, "elapsed": 70.0},
            timestamp=at,
        )
    )
    missed = Event(
        MISSED,
        "slot-1",
        EnvironmentInfo("etl", host="", pid=0),
        {"expectation": "etl", "due": "2026-01-02T03:00:00+00:00"},
        timestamp=at,
    )
    async with EventBus() as bus:
        with attach(bus, telemetry):
            await bus.emit(overdue)
            await bus.emit(missed)
    [over] = telemetry.spans("lifecycle.overdue etl")
    assert (over.start_time, over.end_time) == (ns(at), ns(at))
    assert over.status.status_code is StatusCode.ERROR
    assert attributes(over)["lifecycle.verdict.max_duration"] == 60
    [link] = over.links
    assert (link.context.trace_id, link.context.span_id) == CARRIED
    [miss] = telemetry.spans("lifecycle.missed etl")
    assert miss.links == ()
    assert attributes(miss)["lifecycle.verdict.expectation"] == "etl"
    assert "process.pid" not in attributes(miss)


async def test_a_handler_span_ends_when_the_handler_did_not_when_its_group_did(
    telemetry: Telemetry,
) -> None:
    results: dict[str, HandlerResult] = {}

    async def slow(event: Event) -> None:
        await anyio.sleep(0.2)

    async with EventBus() as bus:
        bus.subscribe(STARTING, lambda event: None, inline=True, name="quick")
        bus.subscribe(STARTING, slow, name="slow")
        bus.on_result(lambda bus, *, result: results.__setitem__(result.handler, result))
        with attach(bus, telemetry):
            await bus.emit(Event(STARTING, "run-1", EnvironmentInfo.current("job")))
    [quick] = telemetry.spans("lifecycle.handler quick")
    assert quick.end_time is not None
    assert quick.start_time is not None
    # The inline handler's result is reported with its group's, 0.2 s later; its span
    # ends at its own end (1 ms for the two clocks' readings).
    assert quick.end_time - quick.start_time <= results["quick"].duration * 1e9 + 1e6
    [slow_span] = telemetry.spans("lifecycle.handler slow")
    assert slow_span.end_time is not None
    assert slow_span.start_time is not None
    assert slow_span.end_time - slow_span.start_time >= 0.2e9


async def test_a_lost_verdict_on_a_traced_run_is_a_run_span_linked_to_it(
    telemetry: Telemetry,
) -> None:
    starting, _ = events_from_elsewhere(Outcome.SUCCEEDED)
    verdict = carrying(
        Event(
            EXITED,
            "run-1",
            starting.environment,
            {"misses": 3},
            timestamp=starting.timestamp + timedelta(seconds=40),
            outcome=Outcome.LOST,
            duration=40.0,
        )
    )
    async with EventBus() as bus:
        with attach(bus, telemetry, record_attributes=True):
            await bus.emit(carrying(starting))
            await bus.emit(verdict)
    span = telemetry.run_span()
    assert (span.start_time, span.end_time) == (ns(starting.timestamp), ns(verdict.timestamp))
    assert attributes(span)["lifecycle.run.outcome"] == "lost"
    assert attributes(span)["lifecycle.run.attributes.misses"] == 3
    assert "lifecycle.run.attributes.traceparent" not in attributes(span)
    [link] = span.links
    assert (link.context.trace_id, link.context.span_id) == CARRIED
    assert span.parent is None
