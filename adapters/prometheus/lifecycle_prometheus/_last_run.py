"""The gauges of each environment's last run: what a batch job is alerted on.

Prometheus' guidance for batch jobs: the key metric is the last time the job succeeded,
then when it last completed and how long it took, all gauges. Every value here comes from
the events (their timestamps), never from the clock of whoever handles them: a listener
replaying a stream, or a spool flushed an hour late, reports when the run happened.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client.metrics_core import GaugeMetricFamily

from lifecycle import Outcome

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from prometheus_client import Metric

    from lifecycle import Event

# The suffixes of the gauges after the namespace, with their help texts.
START = "run_last_start_timestamp_seconds"
COMPLETION = "run_last_completion_timestamp_seconds"
SUCCESS = "run_last_success_timestamp_seconds"
DURATION = "run_last_duration_seconds"
OUTCOME = "run_last_outcome"
EXIT_CODE = "run_last_exit_code"
HELP = {
    START: "Unix time the last run started.",
    COMPLETION: "Unix time the last run finished, however it ended.",
    SUCCESS: "Unix time the last successful run finished.",
    DURATION: "Duration of the last finished run, in seconds.",
    OUTCOME: "Outcome of the last finished run: 1 for its outcome, 0 for the others.",
    EXIT_CODE: "Exit status of the last finished run of a command.",
}

# Starts of runs not yet seen exiting; bounded, for the runs that never exit (lost hosts).
_MAX_OPEN_RUNS = 10_000


@dataclass
class LastRun:
    """What is known of one environment's runs; ``None`` where nothing is known yet."""

    start: float | None = None
    completion: float | None = None
    success: float | None = None
    duration: float | None = None
    outcome: Outcome | None = None
    exit_code: int | None = None


class LastRuns:
    """The last-run gauges of every environment seen, as a prometheus_client collector.

    Thread-safe: recorded inline on the event loop, read by scrapes and exports in threads.
    """

    def __init__(self, namespace: str, name_label: str) -> None:
        self.prefix = f"{namespace}_" if namespace else ""
        self.name_label = name_label
        self.family_names = frozenset(self.prefix + key for key in HELP)
        self._runs: dict[str, LastRun] = {}
        self._starts: dict[str, float] = {}
        self._lock = threading.Lock()

    def started(self, event: Event) -> None:
        at = event.timestamp.timestamp()
        with self._lock:
            run = self._runs.setdefault(event.environment.name, LastRun())
            # Concurrent runs, or events replayed out of order: the latest start wins.
            if run.start is None or at > run.start:
                run.start = at
            if len(self._starts) >= _MAX_OPEN_RUNS:
                del self._starts[next(iter(self._starts))]
            self._starts[event.run_id] = at

    def exited(self, event: Event) -> None:
        at = event.timestamp.timestamp()
        outcome = event.outcome or Outcome.FAILED
        with self._lock:
            run = self._runs.setdefault(event.environment.name, LastRun())
            start = self._starts.pop(event.run_id, None)
            if start is None and event.duration is not None:
                start = at - event.duration  # its starting event was never seen here
            if start is not None and (run.start is None or start > run.start):
                run.start = start
            if outcome is Outcome.SUCCEEDED and (run.success is None or at > run.success):
                run.success = at
            if run.completion is not None and at < run.completion:
                return  # an older run, replayed late: the last run is still the last
            run.completion = at
            run.duration = event.duration
            run.outcome = outcome
            run.exit_code = event.exit_code

    def families(self, names: Iterable[str] | None = None) -> list[Metric]:
        """The gauges of ``names`` (default: every environment seen), leaving out the
        values not known: a batch export never overwrites a kept value with nothing."""
        label = [self.name_label]
        gauges = {
            key: GaugeMetricFamily(self.prefix + key, text, labels=label)
            for key, text in HELP.items()
            if key != OUTCOME
        }
        outcome = GaugeMetricFamily(
            self.prefix + OUTCOME, HELP[OUTCOME], labels=[self.name_label, "outcome"]
        )
        with self._lock:
            chosen = sorted(self._runs if names is None else set(names) & set(self._runs))
            for name in chosen:
                run = self._runs[name]
                for key, value in (
                    (START, run.start),
                    (COMPLETION, run.completion),
                    (SUCCESS, run.success),
                    (DURATION, run.duration),
                    (EXIT_CODE, run.exit_code),
                ):
                    if value is not None:
                        gauges[key].add_metric([name], value)
                if run.outcome is not None:
                    for each in Outcome:
                        outcome.add_metric([name, each.value], float(each is run.outcome))
        return [family for family in (*gauges.values(), outcome) if family.samples]

    def collect(self) -> Iterator[Metric]:
        yield from self.families()

    def describe(self) -> Iterator[Metric]:
        # Lets the registry refuse a second adapter of the same namespace at once.
        for key, text in HELP.items():
            yield GaugeMetricFamily(self.prefix + key, text, labels=[self.name_label])


class Families:
    """A fixed list of metric families, as the collector prometheus_client writes out."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        yield from self._families
