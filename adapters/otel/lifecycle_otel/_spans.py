"""One span per run, from its ``starting`` event to its ``exited`` event.

The events may come from this process (an ``Environment``, ``lifecycle run``) or from
another one (``lifecycle listen``, ``lifecycle watch``): the span starts and ends at the
events' own timestamps either way, and what it says about the host and the process is
the event's, not the observer's.
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, NonRecordingSpan, SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from lifecycle import MISSED, Outcome

from . import _attributes as attr
from ._attributes import attribute_value, nanoseconds, run_attributes

if TYPE_CHECKING:
    from collections.abc import Callable

    from opentelemetry.context import Context
    from opentelemetry.trace import Span, SpanContext, Tracer
    from opentelemetry.util.types import AttributeValue

    from lifecycle import Event

# What the verdict span says of its event's attributes (lifecycle.verdict.<key>).
_VERDICT_ATTRIBUTES = ("expectation", "due", "max_duration", "elapsed", "last_seen")
_CARRIED = frozenset({"traceparent", "tracestate"})

# Ended runs whose span context is kept, so that the results of ``exited`` handlers,
# which arrive after the span ended, still find their parent.
_RECENTLY_ENDED = 1024


_PROPAGATOR = TraceContextTextMapPropagator()


def carried_context(event: Event) -> SpanContext | None:
    """The run's span context an event carries from another process, if any.

    The NATS publisher puts the run's ``traceparent``/``tracestate`` (what this adapter
    gives the run's children) in the attributes of every event it sends; the watchdog
    copies them into its verdicts.
    """
    traceparent = event.attributes.get(attr.TRACEPARENT)
    if not traceparent or not isinstance(traceparent, str):
        return None
    carrier = {attr.TRACEPARENT: traceparent}
    tracestate = event.attributes.get(attr.TRACESTATE)
    if tracestate and isinstance(tracestate, str):
        carrier[attr.TRACESTATE] = tracestate
    found = trace.get_current_span(_PROPAGATOR.extract(carrier)).get_span_context()
    return found if found.is_valid else None


class _Open:
    __slots__ = ("environment", "heartbeats", "remote", "span")

    def __init__(self, span: Span, environment: str, *, remote: bool = False) -> None:
        self.span = span
        self.environment = environment
        self.heartbeats = 0
        # The run's span is another process's (its context came with the event): this
        # one's handler spans are its children, and it has nothing to end.
        self.remote = remote


class RunSpans:
    """The open run spans by run id, bounded by ``max_open_runs``."""

    def __init__(
        self,
        tracer: Tracer,
        *,
        parent: Context | None,
        record_command: bool,
        record_attributes: bool,
        max_open_runs: int,
        on_untracked: Callable[[str], None] | None = None,
    ) -> None:
        self.tracer = tracer
        self.parent = parent
        self.record_command = record_command
        self.record_attributes = record_attributes
        self.max_open_runs = max_open_runs
        self.on_untracked = on_untracked
        self.open: OrderedDict[str, _Open] = OrderedDict()
        self.ended: OrderedDict[str, SpanContext] = OrderedDict()
        self.evicted = 0

    def _context(self) -> Context | None:
        # A span active where the event is emitted (in-process runs) is the parent; else
        # the context the adapter was given, or found in TRACEPARENT.
        if trace.get_current_span().get_span_context().is_valid:
            return otel_context.get_current()
        return self.parent

    def starting(self, event: Event) -> Span | None:
        """Open the run's span; ``None`` if it is open already (a redelivered event)."""
        if event.run_id in self.open:
            return None
        carried = carried_context(event)
        if carried is not None:
            entry = _Open(NonRecordingSpan(carried), event.environment.name, remote=True)
            self.open[event.run_id] = entry
            if len(self.open) > self.max_open_runs:
                self.evict()
            return entry.span
        attributes = run_attributes(event)
        attributes[attr.EVENT_ID] = event.event_id
        self._record(attributes, event)
        span = self.tracer.start_span(
            f"lifecycle.run {event.environment.name}",
            context=self._context(),
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            start_time=nanoseconds(event.timestamp),
        )
        self.open[event.run_id] = _Open(span, event.environment.name)
        if len(self.open) > self.max_open_runs:
            self.evict()
        return span

    def heartbeat(self, event: Event) -> None:
        entry = self.open.get(event.run_id)
        if entry is not None:
            entry.heartbeats += 1

    def span_context(self, run_id: str | None) -> SpanContext | None:
        """The context of the run's span, open or recently ended."""
        if run_id is None:
            return None
        entry = self.open.get(run_id)
        if entry is not None:
            return entry.span.get_span_context()
        return self.ended.get(run_id)

    def exited(self, event: Event) -> bool:
        """End the run's span at ``event``; return whether it had been open."""
        entry = self.open.pop(event.run_id, None)
        carried = carried_context(event)
        lost = event.outcome is Outcome.LOST
        if entry is not None and not entry.remote:
            span, heartbeats = entry.span, entry.heartbeats
        elif carried is not None and not lost:
            # The run's own span, in the process that ran it, ends there.
            self._remember(event.run_id, carried)
            return entry is not None
        else:
            # Its start was not seen (attached late, or a listener of exited events only),
            # or this is a watchdog's verdict on a run whose span is elsewhere (and never
            # ended, its process having died): a span rebuilt from the run's duration,
            # linked to the run's span when the verdict names it.
            end = nanoseconds(event.timestamp)
            start = end - round((event.duration or 0.0) * 1e9)
            attributes = run_attributes(event)
            span = self.tracer.start_span(
                f"lifecycle.run {event.environment.name}",
                context=None if carried is not None else self._context(),
                kind=SpanKind.INTERNAL,
                attributes=attributes,
                links=[Link(carried, {attr.LINK_KIND: "lost"})] if carried is not None else None,
                start_time=start,
            )
            heartbeats = 0
        self._finish(span, event, heartbeats)
        return entry is not None

    def _finish(self, span: Span, event: Event, heartbeats: int) -> None:
        outcome = event.outcome or Outcome.FAILED
        attributes: dict[str, AttributeValue] = {
            attr.OUTCOME: outcome.value,
            attr.EXITED_EVENT_ID: event.event_id,
        }
        if heartbeats:
            attributes[attr.HEARTBEATS] = heartbeats
        if event.exit_code is not None:
            attributes[attr.EXIT_CODE] = event.exit_code
        self._record(attributes, event)
        end = nanoseconds(event.timestamp)
        error = event.error
        if outcome is not Outcome.SUCCEEDED:
            attributes[attr.ERROR_TYPE] = error.type if error is not None else outcome.value
            if error is not None:
                span.add_event(
                    "exception",
                    {
                        "exception.type": error.type,
                        "exception.message": error.message,
                        "exception.stacktrace": error.traceback,
                    },
                    timestamp=end,
                )
                description = f"{outcome.value}: {error.type}: {error.message}"
            elif event.exit_code is not None:
                description = f"{outcome.value} with exit status {event.exit_code}"
            else:
                description = outcome.value
            # A succeeded run's status stays unset, as the specification asks of
            # instrumentation libraries.
            span.set_status(StatusCode.ERROR, description)
        span.set_attributes(attributes)
        span.end(end_time=end)
        self._remember(event.run_id, span.get_span_context())

    def verdict(self, event: Event) -> None:
        """A span for a watchdog's ``missed`` or ``overdue`` verdict, at its time.

        Linked to the run's span when the verdict carries its context (``overdue``; a
        missed start has no run). Its status is ERROR: a verdict is an alarm.
        """
        kind = "missed" if event.name == MISSED else "overdue"
        at = nanoseconds(event.timestamp)
        carried = carried_context(event)
        attributes = run_attributes(event)
        attributes[attr.EVENT_ID] = event.event_id
        attributes[attr.VERDICT] = kind
        for key in _VERDICT_ATTRIBUTES:
            value = event.attributes.get(key)
            if value is not None:
                attributes[attr.VERDICT_PREFIX + key] = attribute_value(value)
        if kind == "missed":
            del attributes[attr.HOST], attributes[attr.PID], attributes[attr.RUN_ID]
        span = self.tracer.start_span(
            f"lifecycle.{kind} {event.environment.name}",
            context=None if carried is not None else self._context(),
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            links=[Link(carried, {attr.LINK_KIND: kind})] if carried is not None else None,
            start_time=at,
        )
        found = event.attributes
        if kind == "missed":
            description = f"missed: no start of {found.get('expectation')} due {found.get('due')}"
        else:
            description = f"overdue: running past max_duration {found.get('max_duration')} s"
        span.set_status(StatusCode.ERROR, description)
        span.end(end_time=at)

    def _record(self, attributes: dict[str, AttributeValue], event: Event) -> None:
        """The opted-in parts: the command's arguments, the run's attributes."""
        command = event.attributes.get("command")
        if self.record_command and command:
            attributes[attr.COMMAND_ARGS] = tuple(str(part) for part in command)
        if self.record_attributes:
            for key, value in event.attributes.items():
                if key != "command" and key not in _CARRIED:
                    attributes[attr.RUN_ATTRIBUTE + key] = attribute_value(value)

    def _remember(self, run_id: str, context: SpanContext) -> None:
        self.ended[run_id] = context
        if len(self.ended) > _RECENTLY_ENDED:
            self.ended.popitem(last=False)

    def evict(self) -> None:
        """End the oldest open span without its ``exited`` event (the table is full)."""
        run_id, entry = self.open.popitem(last=False)
        self.evicted += 1
        self._abandon(run_id, entry, "more runs open than max_open_runs")

    def close(self) -> int:
        """End every span still open (the adapter detaches); return how many there were."""
        count = len(self.open)
        while self.open:
            run_id, entry = self.open.popitem(last=False)
            self._abandon(run_id, entry, "the adapter was detached before the run exited")
        return count

    def _abandon(self, run_id: str, entry: _Open, reason: str) -> None:
        # A span cannot be exported unfinished: it ends now, saying that its end is not the
        # run's. Its status stays unset: nobody knows how the run went.
        attributes: dict[str, AttributeValue] = {attr.OUTCOME: attr.UNKNOWN}
        if entry.heartbeats:
            attributes[attr.HEARTBEATS] = entry.heartbeats
        entry.span.set_attributes(attributes)
        entry.span.add_event("lifecycle.run.untracked", {"reason": reason})
        entry.span.end(end_time=nanoseconds(datetime.now(timezone.utc)))
        self._remember(run_id, entry.span.get_span_context())
        if self.on_untracked is not None:
            self.on_untracked(entry.environment)
