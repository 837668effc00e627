"""The run's trace context over NATS: in the headers and in the event, into the listener's spans."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import lifecycle_nats
import lifecycle_otel
import nats
import pytest
from lifecycle_nats import source
from lifecycle_nats._publisher import message_for
from lifecycle_nats._spool import Spool
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from lifecycle import (
    EXITED,
    STARTING,
    Environment,
    EnvironmentInfo,
    Event,
    EventBus,
    HandlerResult,
)

if TYPE_CHECKING:
    from pathlib import Path

    from lifecycle_testing import NatsServer

pytestmark = [pytest.mark.anyio, pytest.mark.asyncio_only]  # nats-py runs on asyncio only

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class Spans:
    """One process's tracer provider, its spans in memory."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider(shutdown_on_exit=False)
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def named(self, prefix: str) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if s.name.startswith(prefix)]


async def test_the_listeners_handler_spans_are_children_of_the_runs_span(
    shared_nats: NatsServer, tmp_path: Path
) -> None:
    job, listener = Spans(), Spans()
    handled: list[Event] = []
    both_handled = anyio.Event()

    def notify(event: Event) -> None:
        handled.append(event)

    def reported(bus: EventBus, *, result: HandlerResult) -> None:
        # After the adapter's own result hook, which ends the handler's span.
        if result.handler == "notify" and len(handled) == 2:
            both_handled.set()

    options: dict[str, Any] = {
        "servers": shared_nats.url,
        "stream": "TRACE",
        "subject_prefix": "trace",
    }
    async with EventBus() as far, anyio.create_task_group() as group:
        far.subscribe(STARTING, notify, name="notify")
        far.subscribe(EXITED, notify, name="notify")
        with lifecycle_otel.attach(far, tracer_provider=listener.provider, metrics=False):
            far.on_result(reported)
            consumer = source(far, state_dir=tmp_path / "state", **options)
            await group.start(consumer.run)
            async with EventBus() as near:
                with (
                    lifecycle_otel.attach(near, tracer_provider=job.provider, metrics=False),
                    lifecycle_nats.attach(near, spool_dir=tmp_path / "spool", **options) as nats_,
                ):
                    async with Environment("nightly", bus=near).running():
                        pass
                    assert await nats_.publisher.flush(10)
            with anyio.fail_after(10):
                await both_handled.wait()
            consumer.stop()

    (run_span,) = job.named("lifecycle.run ")
    run = run_span.get_span_context()
    assert run is not None
    # The listener makes no run span of its own: the run's is the job's.
    assert listener.named("lifecycle.run ") == []
    far_handlers = listener.named("lifecycle.handler notify")
    assert len(far_handlers) == 2
    for span in far_handlers:
        assert span.context is not None
        assert span.parent is not None
        assert (span.context.trace_id, span.parent.span_id) == (run.trace_id, run.span_id)
    traceparent = f"00-{run.trace_id:032x}-{run.span_id:016x}-{run.trace_flags:02x}"
    assert [event.attributes["traceparent"] for event in handled] == [traceparent] * 2


async def test_the_message_carries_the_trace_context_in_its_headers(
    shared_nats: NatsServer, tmp_path: Path
) -> None:
    spans = Spans()
    options: dict[str, Any] = {
        "servers": shared_nats.url,
        "stream": "TRACEHDR",
        "subject_prefix": "tracehdr",
    }
    async with EventBus() as bus:
        with (
            lifecycle_otel.attach(bus, tracer_provider=spans.provider, metrics=False),
            lifecycle_nats.attach(bus, spool_dir=tmp_path, **options) as nats_,
        ):
            async with Environment("nightly", bus=bus).running():
                pass
            assert await nats_.publisher.flush(10)
    run = spans.named("lifecycle.run ")[0].get_span_context()
    assert run is not None
    client = await nats.connect(shared_nats.url)
    try:
        message = await client.jetstream().get_last_msg("TRACEHDR", "tracehdr.exited.>")
    finally:
        await client.close()
    assert message.headers is not None
    assert (
        message.headers["traceparent"]
        == f"00-{run.trace_id:032x}-{run.span_id:016x}-{run.trace_flags:02x}"
    )


async def test_without_a_tracing_adapter_nothing_is_added(tmp_path: Path) -> None:
    async with EventBus() as bus:
        assert bus.child_env(Event(STARTING, "r", EnvironmentInfo.current("job"))) == {}
    message = message_for(Event(STARTING, "r", EnvironmentInfo.current("job")))
    assert message.headers == ()
    assert b"traceparent" not in message.payload


def test_the_spool_keeps_the_trace_context(tmp_path: Path) -> None:
    event = Event(STARTING, "r", EnvironmentInfo.current("job"), {"k": 1})
    message = message_for(event, trace={"traceparent": TRACEPARENT, "tracestate": "a=b"})
    assert Event.from_json(message.payload).attributes == {
        "k": 1,
        "traceparent": TRACEPARENT,
        "tracestate": "a=b",
    }
    spool = Spool(tmp_path)
    spool.write([message])
    [(_, loaded)] = spool.load()
    assert loaded == message
    assert dict(loaded.headers) == {"traceparent": TRACEPARENT, "tracestate": "a=b"}


async def test_a_trace_context_sent_only_as_headers_reaches_the_listeners_bus(
    shared_nats: NatsServer, tmp_path: Path
) -> None:
    sent = Event(STARTING, "r", EnvironmentInfo.current("job"), {"k": 1})
    client = await nats.connect(shared_nats.url)
    try:
        js = client.jetstream()
        await lifecycle_nats.ensure_stream(js, stream="TRACEONLY", subject_prefix="traceonly")
        await js.publish(
            lifecycle_nats.subject_for(STARTING, "job", "traceonly"),
            sent.to_json().encode(),
            headers={"traceparent": TRACEPARENT, "tracestate": "a=b"},
        )
    finally:
        await client.close()
    received: list[Event] = []
    got = anyio.Event()

    def record(event: Event) -> None:
        received.append(event)
        got.set()

    async with EventBus() as bus, anyio.create_task_group() as group:
        bus.subscribe(STARTING, record, inline=True)
        consumer = source(
            bus, servers=shared_nats.url, stream="TRACEONLY", subject_prefix="traceonly",
            state_dir=tmp_path / "state",
        )  # fmt: skip
        await group.start(consumer.run)
        with anyio.fail_after(10):
            await got.wait()
        consumer.stop()
    [event] = received
    assert event.event_id == sent.event_id
    assert event.attributes == {"k": 1, "traceparent": TRACEPARENT, "tracestate": "a=b"}
