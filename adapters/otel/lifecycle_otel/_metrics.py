"""Run and handler metrics, OpenTelemetry style: dotted names, UCUM units."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

from opentelemetry.metrics import CallbackOptions, Observation

from lifecycle import Outcome, Status

from . import _attributes as attr

if TYPE_CHECKING:
    from collections.abc import Iterable

    from opentelemetry.metrics import Meter

    from lifecycle import Event, EventBus, HandlerResult

RUN_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600)
"""Run duration bucket boundaries in seconds: from quick tasks to six-hour batch jobs."""
HANDLER_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
"""Handler duration bucket boundaries in seconds."""


class Metrics:
    """The instruments, and what records into them.

    - ``lifecycle.run.duration`` (histogram, ``s``): by environment and outcome;
    - ``lifecycle.run.active`` (up-down counter, ``{run}``): runs started and not exited;
    - ``lifecycle.handler.duration`` (histogram, ``s``): by handler, signal and status;
    - ``lifecycle.handler.errors`` (counter, ``{error}``): handlers that did not return,
      by handler, signal and ``error.type`` (the exception's type, ``timeout`` or
      ``cancelled``);
    - ``lifecycle.bus.abandoned_threads`` (gauge, ``{thread}``): plain handlers given up
      at their timeouts that still run, read from the bus at each collection.
    """

    def __init__(self, meter: Meter, bus: EventBus) -> None:
        self.run_duration = meter.create_histogram(
            "lifecycle.run.duration",
            unit="s",
            description="Duration of lifecycle runs, from starting to exited.",
            explicit_bucket_boundaries_advisory=RUN_BUCKETS,
        )
        self.active_runs = meter.create_up_down_counter(
            "lifecycle.run.active",
            unit="{run}",
            description="Runs started and not yet exited.",
        )
        self.handler_duration = meter.create_histogram(
            "lifecycle.handler.duration",
            unit="s",
            description="Duration of lifecycle handler calls.",
            explicit_bucket_boundaries_advisory=HANDLER_BUCKETS,
        )
        self.handler_errors = meter.create_counter(
            "lifecycle.handler.errors",
            unit="{error}",
            description="Handler calls that raised, timed out or were cancelled.",
        )
        # An observable instrument cannot be unregistered: the callback holds the bus
        # weakly and says nothing once detached.
        self.detached = False
        self_ref = weakref.ref(self)
        bus_ref = weakref.ref(bus)

        def observe(options: CallbackOptions) -> Iterable[Observation]:
            metrics, observed = self_ref(), bus_ref()
            if metrics is None or metrics.detached or observed is None:
                return ()
            return (Observation(observed.abandoned_threads, {"lifecycle.bus.name": observed.name}),)

        meter.create_observable_gauge(
            "lifecycle.bus.abandoned_threads",
            callbacks=[observe],
            unit="{thread}",
            description="Plain handlers given up at their timeouts that still run.",
        )

    def run_started(self, event: Event) -> None:
        self.active_runs.add(1, {attr.ENVIRONMENT: event.environment.name})

    def run_ended(self, event: Event, *, was_open: bool) -> None:
        environment = event.environment.name
        if was_open:
            # A run whose start this adapter did not see was never counted in.
            self.active_runs.add(-1, {attr.ENVIRONMENT: environment})
        if event.duration is not None:
            outcome = (event.outcome or Outcome.FAILED).value
            self.run_duration.record(
                event.duration, {attr.ENVIRONMENT: environment, attr.OUTCOME: outcome}
            )

    def run_untracked(self, environment: str) -> None:
        self.active_runs.add(-1, {attr.ENVIRONMENT: environment})

    def result(self, bus: EventBus, *, result: HandlerResult) -> None:
        status = result.status
        self.handler_duration.record(
            result.duration,
            {
                attr.HANDLER: result.handler,
                attr.SIGNAL: result.signal,
                attr.HANDLER_STATUS: status.value,
            },
        )
        if status is not Status.OK:
            self.handler_errors.add(
                1,
                {
                    attr.HANDLER: result.handler,
                    attr.SIGNAL: result.signal,
                    attr.ERROR_TYPE: error_type(result),
                },
            )


def error_type(result: HandlerResult) -> str:
    """``error.type`` of a failed handler call: its exception's type, or the status."""
    if result.status is Status.ERROR and result.exception is not None:
        kind = type(result.exception)
        if kind.__module__ in ("builtins", "__main__"):
            return kind.__qualname__
        return f"{kind.__module__}.{kind.__qualname__}"
    return result.status.value
