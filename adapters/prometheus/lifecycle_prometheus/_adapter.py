"""The adapter: what it records from the bus, and the three ways the metrics leave."""

from __future__ import annotations

import re
import sys
import threading
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from lifecycle import EXITED, STARTING, Attachment, Outcome, Status, escape

from ._export import Export
from ._last_run import LastRuns
from ._server import Endpoint, check_port

if TYPE_CHECKING:
    import os
    from collections.abc import Iterable, Mapping

    from lifecycle import Event, EventBus, HandlerResult

RUN_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, float("inf"))
"""Run duration buckets in seconds: from quick tasks to six-hour batch jobs."""
HANDLER_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, float("inf"))
"""Handler duration buckets in seconds."""
NAME_LABEL = "lifecycle_environment"
"""The default label carrying the environment's (the run's) name. Not ``environment``,
which many scrape configurations set as a target label (``environment: prod``): Prometheus
would rename ours ``exported_environment``."""

# After every other handler of order 0..N: the export sees this run's metrics.
_EXPORT_ORDER = 1_000_000
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
# Labels that the metrics, or the Pushgateway's grouping key, already use.
_TAKEN_LABELS = frozenset({"job", "le", "outcome", "signal", "handler", "reason", "quantile"})


class PrometheusAdapter(Attachment):
    """The handle :func:`attach` returns; ``detach()`` unsubscribes and stops the endpoint.

    Attributes:
        registry: the registry holding the metrics.
        port: the port the HTTP endpoint is bound to, or ``None`` without one.
        url: the endpoint's metrics URL, or ``None``.

    Metrics (with the namespace prefix), by environment: the gauges of the last run
    (``run_last_start_timestamp_seconds``, ``run_last_completion_timestamp_seconds``,
    ``run_last_success_timestamp_seconds``, ``run_last_duration_seconds``,
    ``run_last_outcome``, ``run_last_exit_code``), and, for the scrape endpoint of a
    long-lived process, ``runs_started_total``, ``runs_finished_total``,
    ``runs_in_progress``, ``run_duration_seconds``, ``handler_duration_seconds``,
    ``handler_failures_total`` and ``abandoned_threads`` (plain handlers given up but still
    running, read from the bus at each scrape).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        namespace: str,
        run_buckets: Iterable[float],
        handler_buckets: Iterable[float],
        name_label: str = NAME_LABEL,
    ) -> None:
        super().__init__()
        self.registry = registry
        self.port: int | None = None
        self.url: str | None = None
        self._endpoint: Endpoint | None = None
        self._in_progress: set[str] = set()
        self._lock = threading.Lock()
        ns, name = namespace, name_label
        self._last_runs = LastRuns(namespace, name_label)
        registry.register(self._last_runs)
        self.runs_started = Counter(
            "runs_started", "Runs started.", [name], namespace=ns, registry=registry
        )
        self.runs_finished = Counter(
            "runs_finished",
            "Runs finished, by outcome.",
            [name, "outcome"],
            namespace=ns,
            registry=registry,
        )
        self.runs_in_progress = Gauge(
            "runs_in_progress",
            "Runs started and not yet finished.",
            [name],
            namespace=ns,
            registry=registry,
        )
        self.run_duration = Histogram(
            "run_duration_seconds",
            "Run duration, by outcome.",
            [name, "outcome"],
            buckets=tuple(run_buckets),
            namespace=ns,
            registry=registry,
        )
        self.handler_duration = Histogram(
            "handler_duration_seconds",
            "Handler (callback) duration, by signal and handler.",
            ["signal", "handler"],
            buckets=tuple(handler_buckets),
            namespace=ns,
            registry=registry,
        )
        # Read from the bus at each scrape (see attach); a gauge no run has to update.
        self.abandoned_threads = Gauge(
            "abandoned_threads",
            "Plain handlers given up at their timeouts that still run in abandoned threads.",
            namespace=ns,
            registry=registry,
        )
        self.handler_failures = Counter(
            "handler_failures",
            "Handlers that did not return: reason is error, timeout or cancelled.",
            ["signal", "handler", "reason"],
            namespace=ns,
            registry=registry,
        )

    # -- recording ---------------------------------------------------------------------

    def record_starting(self, event: Event) -> None:
        environment = event.environment.name
        self._last_runs.started(event)
        self.runs_started.labels(environment).inc()
        with self._lock:
            if event.run_id in self._in_progress:
                return
            self._in_progress.add(event.run_id)
        self.runs_in_progress.labels(environment).inc()

    def record_exited(self, event: Event) -> None:
        environment = event.environment.name
        outcome = (event.outcome or Outcome.FAILED).value
        self._last_runs.exited(event)
        self.runs_finished.labels(environment, outcome).inc()
        if event.duration is not None:
            self.run_duration.labels(environment, outcome).observe(event.duration)
        with self._lock:
            # A run that started before we attached was never counted in: leave the gauge be.
            if event.run_id not in self._in_progress:
                return
            self._in_progress.discard(event.run_id)
        self.runs_in_progress.labels(environment).dec()

    def record_result(self, bus: EventBus, *, result: HandlerResult) -> None:
        self.handler_duration.labels(result.signal, result.handler).observe(result.duration)
        if result.status is not Status.OK:
            self.handler_failures.labels(result.signal, result.handler, result.status.value).inc()

    # -- the scrape endpoint -----------------------------------------------------------

    def serve(self, port: int, addr: str) -> None:
        self._endpoint = Endpoint(self.registry, port, addr)
        self.port, self.url = self._endpoint.port, self._endpoint.url
        self.add(self._stop_serving)

    def _stop_serving(self) -> None:
        if self._endpoint is not None:
            self._endpoint.stop()
            self._endpoint = None
        self.port = self.url = None


def _check_name_label(name_label: object) -> str:
    if not isinstance(name_label, str) or not _LABEL_NAME.match(name_label):
        raise ValueError(
            f"name_label must be a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*), "
            f"not {name_label!r}"
        )
    if name_label.startswith("__") or name_label in _TAKEN_LABELS:
        raise ValueError(
            f"name_label {name_label!r} is reserved or used by the metrics themselves: "
            f"choose another (the default is {NAME_LABEL!r})"
        )
    return name_label


def attach(
    bus: EventBus,
    *,
    registry: CollectorRegistry | None = None,
    namespace: str = "lifecycle",
    name_label: str = NAME_LABEL,
    port: int | None = None,
    addr: str = "0.0.0.0",
    pushgateway: str | None = None,
    job: str = "lifecycle",
    grouping_key: Mapping[str, str] | None = None,
    push_timeout: float = 10.0,
    textfile: str | os.PathLike[str] | None = None,
    run_buckets: Iterable[float] = RUN_BUCKETS,
    handler_buckets: Iterable[float] = HANDLER_BUCKETS,
    labels: Iterable[str] = (),
) -> PrometheusAdapter:
    """Collect Prometheus metrics from ``bus``.

    Args:
        bus: the bus to observe.
        registry: where the metrics live (default: a new registry, not the global one,
            so that two buses or two tests never collide).
        namespace: the metric name prefix (``lifecycle_runs_started_total``).
        name_label: the label carrying the environment's name (default
            ``lifecycle_environment``, which no scrape configuration sets).
        port: serve ``/metrics`` over HTTP on this port; ``0`` picks a free port, which
            the handle's ``port`` then tells. For a long-lived process (``lifecycle
            listen``, a service): under ``lifecycle run`` the endpoint closes with the
            command, and no scrape sees the run's end.
        addr: the address the endpoint binds to.
        pushgateway: a Pushgateway URL (``http://host:9091``): the last-run gauges are
            pushed (``POST``) when a run starts and when it exits, to the group of
            ``job``, the environment's name under ``name_label`` and ``grouping_key``.
        push_timeout: seconds a push may take.
        textfile: a ``.prom`` path for node-exporter's textfile collector: the last-run
            gauges are merged into it when a run starts and exits (runs of several
            environments may share it), atomically.
        labels: only count environments that carry all these labels.

    Recording is ``inline`` (a counter increment must not wait for a thread). The push
    and the textfile are written by one handler that runs after every other handler of
    order below 1,000,000 and before the emit returns, in a worker thread, so a batch
    job never exits before its metrics are out. A failed push is that handler's error
    result: logged by the bus and counted in ``handler_failures``.

    Raises:
        ValueError: a metric or label name or the port is invalid, or the registry
            already holds metrics of this namespace.
        OSError: the port cannot be bound.

    .. versionchanged:: 0.2
       ``name_label``; the environment's label was ``environment``. Pushgateway and
       textfile carry the last-run gauges only, grouped by environment.
    """
    check_port(port)
    _check_name_label(name_label)
    if isinstance(labels, str):
        raise TypeError(f"labels must be a list of strings, not the string {labels!r}")
    adapter = PrometheusAdapter(
        CollectorRegistry() if registry is None else registry,
        namespace,
        run_buckets,
        handler_buckets,
        name_label,
    )
    # Weakly: the registry may outlive the bus; a bus that is gone has no hung handlers.
    bus_ref = weakref.ref(bus)
    adapter.abandoned_threads.set_function(lambda: getattr(bus_ref(), "abandoned_threads", 0))
    try:
        for signal, record in (
            (STARTING, adapter.record_starting),
            (EXITED, adapter.record_exited),
        ):
            adapter.add(
                bus.subscribe(
                    signal,
                    record,
                    inline=True,
                    labels=labels,
                    name=f"lifecycle_prometheus:{record.__name__}",
                )
            )
        adapter.add(bus.on_result(adapter.record_result))
        if pushgateway is not None or textfile is not None:
            export = Export(
                adapter._last_runs,
                pushgateway=pushgateway,
                job=job,
                grouping_key=grouping_key,
                timeout=push_timeout,
                textfile=textfile,
            )
            for signal in (STARTING, EXITED):
                adapter.add(
                    bus.subscribe(
                        signal,
                        export,
                        order=_EXPORT_ORDER,
                        timeout=push_timeout * 2,
                        labels=labels,
                        name="lifecycle_prometheus:export",
                    )
                )
        if port is not None:
            adapter.serve(port, addr)
    except BaseException:
        adapter.detach()
        raise
    return adapter


def check(bus: EventBus, **options: Any) -> None:
    """``lifecycle check``: every option as :func:`attach` checks it, without binding the
    port, which the job itself may be holding while it runs; and a warning for what would
    work but export nothing anyone sees (a ``port`` under ``lifecycle run``, a textfile
    node-exporter does not read)."""
    port = options.pop("port", None)
    attach(bus, **options).detach()
    check_port(port)
    for warning in _warnings(port, options.get("textfile")):
        sys.stderr.write(f"lifecycle: warning: prometheus {warning}\n")


def _warnings(port: int | None, textfile: str | os.PathLike[str] | None) -> list[str]:
    found = []
    if port is not None:
        # A warning, not an error: the same configuration may be lifecycle listen's.
        found.append(
            f"port={port} serves metrics only while the process lives: right for lifecycle "
            "listen or a service, not under lifecycle run, where the endpoint closes with "
            "the command and no scrape sees the run's end; for batch jobs use pushgateway= "
            "or textfile="
        )
    if textfile is not None:
        path = Path(textfile)
        if path.suffix != ".prom":
            found.append(
                f"textfile={escape(str(path))}: node-exporter's textfile collector reads only "
                "files ending in .prom"
            )
        if not path.parent.is_dir():
            found.append(
                f"textfile={escape(str(path))}: its directory does not exist (yet): every "
                "export will fail until it does"
            )
    return found
