"""The adapter: run spans, handler spans and metrics from a bus's events and results."""

from __future__ import annotations

import math
import os
import threading
from collections import deque
from time import time_ns
from typing import TYPE_CHECKING, Any

import structlog
from opentelemetry import metrics as otel_metrics
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanKind, StatusCode

from lifecycle import EXITED, HEARTBEAT, MISSED, OVERDUE, STARTING, Attachment, Status
from lifecycle.plugins import adapter

from . import _attributes as attr
from ._metrics import Metrics, error_type
from ._spans import RunSpans
from ._version import VERSION

if TYPE_CHECKING:
    from collections.abc import Callable

    from opentelemetry.context import Context
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import Span, SpanContext, TracerProvider

    from lifecycle import Event, EventBus, HandlerResult, Subscription

logger = structlog.get_logger("lifecycle.otel")

SCOPE = "lifecycle_otel"
"""The instrumentation scope of the spans and metrics (the tracer's and meter's name)."""

# Calls of one handler for one event name and run whose results are awaited, at most.
_MAX_WAITING = 64

# Before every other starting handler: their results find the run's span open.
_FIRST = -1_000_000


class OtelAdapter(Attachment):
    """The handle :func:`attach` returns; ``detach()`` unsubscribes and flushes.

    Attributes:
        tracer_provider, meter_provider: the providers in use (``None`` when traces or
            metrics are off).
        owns_providers: the providers were built by the adapter (``sdk=True``), so
            :meth:`detach` flushes and shuts them down.
        flush_timeout: the bound on flushing at :meth:`detach`, in seconds.
        flush_status: how the flush at :meth:`detach` went (``ok``, ``error``, or
            ``timeout`` when the collector did not answer within ``flush_timeout``);
            ``None`` before it, or when the adapter owns no providers.
    """

    def __init__(
        self,
        bus: EventBus,
        tracer_provider: TracerProvider | None,
        meter_provider: MeterProvider | None,
        *,
        owns_providers: bool,
        flush_timeout: float,
        spans: RunSpans | None,
        metrics: Metrics | None,
        handler_spans: bool,
    ) -> None:
        super().__init__()
        self.bus_name = bus.name
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.owns_providers = owns_providers
        self.flush_timeout = flush_timeout
        self.flush_status: Status | None = None
        self.spans = spans
        self.metrics = metrics
        self.handler_spans = handler_spans and spans is not None
        self._calls: dict[tuple[str, str, str | None], deque[Span]] = {}
        self._last_child_env: tuple[SpanContext, dict[str, str]] | None = None
        self._lock = threading.Lock()

    # -- events --------------------------------------------------------------------

    def starting(self, event: Event) -> None:
        opened = self.spans.starting(event) is not None if self.spans is not None else True
        if opened and self.metrics is not None:
            self.metrics.run_started(event)

    def heartbeat(self, event: Event) -> None:
        if self.spans is not None:
            self.spans.heartbeat(event)

    def exited(self, event: Event) -> None:
        was_open = self.spans.exited(event) if self.spans is not None else True
        if self.metrics is not None:
            self.metrics.run_ended(event, was_open=was_open)

    def verdict(self, event: Event) -> None:
        assert self.spans is not None
        self.spans.verdict(event)

    def child_env(self, starting: Event) -> dict[str, str] | None:
        """``TRACEPARENT``/``TRACESTATE`` of the run's span, for the command it runs."""
        assert self.spans is not None
        span_context = self.spans.span_context(starting.run_id)
        if span_context is None or not span_context.is_valid:
            return None
        # Asked again for every event the NATS publisher sends: the last run's answer is
        # kept (a span context is a tuple; the same one gives the same variables).
        last = self._last_child_env
        if last is not None and last[0] == span_context:
            return dict(last[1])
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(
            carrier, trace.set_span_in_context(NonRecordingSpan(span_context))
        )
        found = {key.upper(): value for key, value in carrier.items()}
        self._last_child_env = (span_context, found)
        return dict(found)

    def untracked(self, environment: str) -> None:
        if self.metrics is not None:
            self.metrics.run_untracked(environment)

    def result(self, bus: EventBus, *, result: HandlerResult) -> None:
        if result.handler.startswith("otel:"):
            return  # the adapter's own handlers: its cost, not the user's handlers'
        if self.metrics is not None:
            self.metrics.result(bus, result=result)
        if self.handler_spans:
            self._close_handler_span(result)

    def wrap(self, sub: Subscription, call: Callable[[Event], Any]) -> Callable[[Event], Any]:
        """Run each handler call inside its span (``bus.wrap_handlers``)."""
        if sub.name.startswith("otel:"):
            return call
        if sub.is_async:

            async def traced_async(event: Event) -> Any:
                span = self._open_handler_span(sub, event)
                with trace.use_span(span, record_exception=False, set_status_on_exception=False):
                    return await call(event)

            return traced_async

        def traced(event: Event) -> Any:
            span = self._open_handler_span(sub, event)
            with trace.use_span(span, record_exception=False, set_status_on_exception=False):
                return call(event)

        return traced

    def _open_handler_span(self, sub: Subscription, event: Event) -> Span:
        # The span ends when the bus reports the call's result (see result): only then
        # is its status known (a timeout, an abandoned thread still running).
        assert self.spans is not None
        parent = self.spans.span_context(event.run_id)
        context = trace.set_span_in_context(NonRecordingSpan(parent)) if parent else None
        span = self.spans.tracer.start_span(
            f"lifecycle.handler {sub.name}",
            context=context,
            kind=SpanKind.INTERNAL,
            attributes={
                attr.HANDLER: sub.name,
                attr.SIGNAL: event.name,
                attr.BACKGROUND: sub.background,
                attr.CRITICAL: sub.critical,
                attr.RUN_ID: event.run_id,
                attr.EVENT_ID: event.event_id,
            },
        )
        key = (sub.name, event.name, event.run_id)
        with self._lock:
            waiting = self._calls.setdefault(key, deque())
            waiting.append(span)
            if len(waiting) > _MAX_WAITING:
                # Results that never came (a hook removed mid-call): do not hold them forever.
                waiting.popleft().end()
        return span

    def _close_handler_span(self, result: HandlerResult) -> None:
        key = (result.handler, result.signal, result.run_id)
        with self._lock:
            waiting = self._calls.get(key)
            span = waiting.popleft() if waiting else None
            if waiting is not None and not waiting:
                del self._calls[key]
        now = time_ns()
        ended = result.end_time
        # The call's own end (or the moment it was given up), which the bus may report
        # later (inline handlers' results are built when their group is done); never
        # before the span's start, which another clock read.
        end = now if ended is None else min(now, round(ended * 1e9))
        if span is None:
            # Not run through the wrapper (refused for hung threads, or subscribed to the
            # blinker signal directly before the adapter): rebuilt from the result.
            span = self._rebuilt_handler_span(result, end)
        else:
            end = max(end, getattr(span, "start_time", None) or end)
        status = result.status
        span.set_attribute(attr.HANDLER_STATUS, status.value)
        if status is not Status.OK:
            span.set_attribute(attr.ERROR_TYPE, error_type(result))
            if result.exception is not None and status is Status.ERROR:
                span.record_exception(result.exception, timestamp=end)
            span.set_status(StatusCode.ERROR, result.describe_error())
        span.end(end_time=end)

    def _rebuilt_handler_span(self, result: HandlerResult, end: int) -> Span:
        assert self.spans is not None
        parent = self.spans.span_context(result.run_id)
        context = trace.set_span_in_context(NonRecordingSpan(parent)) if parent else None
        attributes: dict[str, Any] = {
            attr.HANDLER: result.handler,
            attr.SIGNAL: result.signal,
            attr.BACKGROUND: result.background,
            attr.CRITICAL: result.critical,
        }
        if result.run_id is not None:
            attributes[attr.RUN_ID] = result.run_id
        start = result.start_time  # when the bus started the call, if it says
        return self.spans.tracer.start_span(
            f"lifecycle.handler {result.handler}",
            context=context,
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            start_time=end - round(result.duration * 1e9) if start is None else round(start * 1e9),
        )

    # -- the end -------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> Status:
        """Export what the adapter's providers hold, waiting ``timeout`` seconds at most.

        Returns ``ok``, ``error`` (an exporter raised), or ``timeout`` (the collector did
        not answer in time; what was not sent stays queued).
        """
        return self._bounded("flush", timeout)

    def detach(self) -> None:
        """Unsubscribe, end the spans of runs still open, and, for providers the adapter
        built, flush and shut them down within ``flush_timeout`` seconds."""
        if self.detached:
            return
        try:
            super().detach()
        finally:
            if self.spans is not None:
                self.spans.close()
            if self.metrics is not None:
                self.metrics.detached = True
            if self.owns_providers:
                self.flush_status = self._bounded("shutdown", None)

    def _bounded(self, action: str, timeout: float | None) -> Status:
        from ._sdk import bounded

        providers = [p for p in (self.tracer_provider, self.meter_provider) if p is not None]

        def call() -> None:
            for provider in providers:
                getattr(provider, "force_flush" if action == "flush" else "shutdown")()

        limit = self.flush_timeout if timeout is None else timeout
        finished, error = bounded(call, limit, f"lifecycle-otel-{action}")
        if not finished:
            logger.warning(
                "telemetry not exported: the collector did not answer in time; giving up",
                bus=self.bus_name,
                timeout=limit,
            )
            return Status.TIMEOUT
        if error is not None:
            logger.error(
                "telemetry not exported",
                bus=self.bus_name,
                error=f"{type(error).__name__}: {error}",
            )
            return Status.ERROR
        return Status.OK


def _check_seconds(value: object, option: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"{option} must be a number of seconds > 0, not {value!r}")
    return float(value)


def _check_bool(value: object, option: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{option} must be true or false, not {value!r}")
    return value


def environ_context() -> Context | None:
    """The context ``TRACEPARENT``/``TRACESTATE`` of this process's environment give, if any."""
    traceparent = os.environ.get("TRACEPARENT")
    if not traceparent:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier = {"traceparent": traceparent}
    tracestate = os.environ.get("TRACESTATE")
    if tracestate:
        carrier["tracestate"] = tracestate
    context = TraceContextTextMapPropagator().extract(carrier)
    if not trace.get_current_span(context).get_span_context().is_valid:
        logger.warning("TRACEPARENT is not a W3C traceparent; ignored", traceparent=traceparent)
        return None
    return context


def attach(
    bus: EventBus,
    *,
    sdk: bool = False,
    service_name: str = "lifecycle",
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    traces: bool = True,
    metrics: bool = True,
    handler_spans: bool = True,
    record_command: bool = False,
    record_attributes: bool = False,
    propagate: bool = True,
    flush_timeout: float = 3.0,
    max_open_runs: int = 10_000,
) -> OtelAdapter:
    """Trace and measure the runs and handlers of ``bus`` with OpenTelemetry.

    Args:
        bus: the bus to observe.
        sdk: build the providers from the standard ``OTEL_*`` environment variables
            (OTLP over HTTP; needs ``lifecycle-otel[sdk]``), and flush and shut them down
            at :meth:`~OtelAdapter.detach`. What ``lifecycle run``, ``listen`` and
            ``watch`` want. Without it, the given providers, else the global ones
            (``opentelemetry.trace.set_tracer_provider``): the application owns them.
        service_name: ``service.name`` with ``sdk``, unless ``OTEL_SERVICE_NAME`` or
            ``OTEL_RESOURCE_ATTRIBUTES`` name the service.
        tracer_provider, meter_provider: providers to use instead of the global ones.
        traces, metrics: what to produce.
        handler_spans: a child span of the run's span per handler call, with the
            handler running inside it (``bus.wrap_handlers``): the spans it makes nest
            under it.
        record_command: put the command's arguments on the run span
            (``process.command_args``). Off by default: arguments may hold secrets.
        record_attributes: put the run's attributes on the run span
            (``lifecycle.run.attributes.<key>``). Off by default, for the same reason.
        propagate: parent run spans on ``TRACEPARENT``/``TRACESTATE`` of this process's
            environment when no span is active where the run starts, and give a run's
            command (``lifecycle run``, ``SubprocessEnvironment``) the ``TRACEPARENT`` and
            ``TRACESTATE`` of the run's span, so that its own spans join the trace.
        flush_timeout: seconds that flushing at :meth:`~OtelAdapter.detach` may take at
            most (``sdk`` only): past it, one warning, ``flush_status`` is ``timeout``,
            and the process is free to exit. A dead collector never holds up a job.
        max_open_runs: runs whose span is open at once at most (a listener may see
            starts whose ends never come); past it, the oldest ends with outcome
            ``unknown``.

    Raises:
        ValueError, TypeError: an option is out of range or of the wrong type.
        ImportError: ``sdk`` without the SDK installed.
    """
    flush_timeout = _check_options(
        sdk=sdk,
        service_name=service_name,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        traces=traces,
        metrics=metrics,
        handler_spans=handler_spans,
        record_command=record_command,
        record_attributes=record_attributes,
        propagate=propagate,
        flush_timeout=flush_timeout,
        max_open_runs=max_open_runs,
    )
    if sdk:
        from ._sdk import build_providers

        tracer_provider, meter_provider = build_providers(
            service_name=service_name, traces=traces, metrics=metrics
        )
    else:
        if traces and tracer_provider is None:
            tracer_provider = trace.get_tracer_provider()
        if metrics and meter_provider is None:
            meter_provider = otel_metrics.get_meter_provider()
    tracer_provider = tracer_provider if traces else None
    meter_provider = meter_provider if metrics else None
    adapter: OtelAdapter
    spans = None
    if tracer_provider is not None:
        spans = RunSpans(
            tracer_provider.get_tracer(SCOPE, VERSION),
            parent=environ_context() if propagate else None,
            record_command=record_command,
            record_attributes=record_attributes,
            max_open_runs=max_open_runs,
        )
    instruments = (
        Metrics(meter_provider.get_meter(SCOPE, VERSION), bus)
        if meter_provider is not None
        else None
    )
    adapter = OtelAdapter(
        bus,
        tracer_provider,
        meter_provider,
        owns_providers=sdk,
        flush_timeout=flush_timeout,
        spans=spans,
        metrics=instruments,
        handler_spans=handler_spans,
    )
    if spans is not None:
        spans.on_untracked = adapter.untracked
    try:
        adapter.add(
            bus.subscribe(
                STARTING, adapter.starting, inline=True, order=_FIRST, name="otel:starting"
            )
        )
        adapter.add(bus.subscribe(EXITED, adapter.exited, inline=True, name="otel:exited"))
        if spans is not None:
            adapter.add(
                bus.subscribe(HEARTBEAT, adapter.heartbeat, inline=True, name="otel:heartbeat")
            )
        if spans is not None:
            for verdict in (MISSED, OVERDUE):
                adapter.add(
                    bus.subscribe(verdict, adapter.verdict, inline=True, name="otel:verdict")
                )
        if spans is not None and propagate:
            adapter.add(bus.on_child_env(adapter.child_env))
        if adapter.handler_spans:
            adapter.add(bus.wrap_handlers(adapter.wrap))
        if instruments is not None or adapter.handler_spans:
            adapter.add(bus.on_result(adapter.result))
    except BaseException:
        adapter.detach()
        raise
    return adapter


def _check_options(
    *,
    sdk: bool = False,
    service_name: str = "lifecycle",
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    traces: bool = True,
    metrics: bool = True,
    handler_spans: bool = True,
    record_command: bool = False,
    record_attributes: bool = False,
    propagate: bool = True,
    flush_timeout: float = 3.0,
    max_open_runs: int = 10_000,
) -> float:
    for option, value in (
        ("sdk", sdk),
        ("traces", traces),
        ("metrics", metrics),
        ("handler_spans", handler_spans),
        ("record_command", record_command),
        ("record_attributes", record_attributes),
        ("propagate", propagate),
    ):
        _check_bool(value, option)
    flush = _check_seconds(flush_timeout, "flush_timeout")
    if isinstance(max_open_runs, bool) or not isinstance(max_open_runs, int) or max_open_runs < 1:
        raise ValueError(f"max_open_runs must be an int >= 1, not {max_open_runs!r}")
    if not isinstance(service_name, str) or not service_name:
        raise ValueError(f"service_name must be a non-empty string, not {service_name!r}")
    if sdk and (tracer_provider is not None or meter_provider is not None):
        raise ValueError(
            "sdk builds the providers from the OTEL_* environment variables; it cannot be "
            "combined with tracer_provider or meter_provider"
        )
    return flush


def _check(bus: EventBus, **options: Any) -> None:
    # lifecycle check: the options and the OTEL_* exporter choices, with no provider built
    # (shutting one down would send its empty metrics to the collector). The core has
    # checked the option names against attach's signature.
    _check_options(**options)
    if options.get("sdk"):
        from ._sdk import check_sdk

        check_sdk(traces=options.get("traces", True), metrics=options.get("metrics", True))


adapter(attach, check=_check)
