"""Prometheus metrics for lifecycle-bus runs and handlers, with prometheus-client.

``attach(bus)`` counts runs started and finished (by environment and outcome), observes
run and handler durations, tracks runs in progress, and counts handler failures by
reason. The metrics live in a :class:`~prometheus_client.CollectorRegistry` of their own
unless you pass one, and leave the process in any of three ways:

- ``port=``: an HTTP endpoint in this process for Prometheus to scrape (services);
- ``pushgateway=``: a push to a Pushgateway after every run exits (batch jobs);
- ``textfile=``: a ``.prom`` file for node-exporter's textfile collector, rewritten
  atomically after every run exits (cron jobs on a host with node-exporter).

.. versionadded:: 0.1
"""

from __future__ import annotations

import os
import socket
import threading
import weakref
from socketserver import ThreadingMixIn
from time import time
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    make_wsgi_app,
    push_to_gateway,
    write_to_textfile,
)

from lifecycle import EXITED, STARTING, Attachment, Outcome, Status
from lifecycle.plugins import adapter

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from lifecycle import Event, EventBus, HandlerResult

__all__ = [
    "HANDLER_BUCKETS",
    "RUN_BUCKETS",
    "PrometheusAdapter",
    "attach",
]

RUN_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, float("inf"))
"""Run duration buckets in seconds: from quick tasks to six-hour batch jobs."""
HANDLER_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, float("inf"))
"""Handler duration buckets in seconds."""


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _ServerV6(_Server):
    address_family = socket.AF_INET6


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # a scrape every few seconds is not news


# After every other exited handler in order 0..N: the export sees this run's metrics.
_EXPORT_ORDER = 1_000_000


class PrometheusAdapter(Attachment):
    """The handle :func:`attach` returns; ``detach()`` unsubscribes and stops the endpoint.

    Attributes:
        registry: the registry holding the metrics.
        port: the port the HTTP endpoint is bound to, or ``None`` without one.
        url: the endpoint's metrics URL, or ``None``.

    Metrics (with the namespace prefix): ``runs_started_total``, ``runs_finished_total``,
    ``runs_in_progress``, ``run_duration_seconds``, ``run_last_success_timestamp_seconds``,
    ``handler_duration_seconds``, ``handler_failures_total`` and ``abandoned_threads`` (plain
    handlers given up but still running, read from the bus at each scrape).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        namespace: str,
        run_buckets: Iterable[float],
        handler_buckets: Iterable[float],
    ) -> None:
        super().__init__()
        self.registry = registry
        self.port: int | None = None
        self.url: str | None = None
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._in_progress: set[str] = set()
        self._lock = threading.Lock()
        ns = namespace
        self.runs_started = Counter(
            "runs_started", "Runs started.", ["environment"], namespace=ns, registry=registry
        )
        self.runs_finished = Counter(
            "runs_finished",
            "Runs finished, by outcome.",
            ["environment", "outcome"],
            namespace=ns,
            registry=registry,
        )
        self.runs_in_progress = Gauge(
            "runs_in_progress",
            "Runs started and not yet finished.",
            ["environment"],
            namespace=ns,
            registry=registry,
        )
        self.run_duration = Histogram(
            "run_duration_seconds",
            "Run duration, by outcome.",
            ["environment", "outcome"],
            buckets=tuple(run_buckets),
            namespace=ns,
            registry=registry,
        )
        self.last_success = Gauge(
            "run_last_success_timestamp_seconds",
            "Unix time the last successful run finished.",
            ["environment"],
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
        self.runs_started.labels(environment).inc()
        with self._lock:
            if event.run_id in self._in_progress:
                return
            self._in_progress.add(event.run_id)
        self.runs_in_progress.labels(environment).inc()

    def record_exited(self, event: Event) -> None:
        environment = event.environment.name
        outcome = (event.outcome or Outcome.FAILED).value
        self.runs_finished.labels(environment, outcome).inc()
        if event.duration is not None:
            self.run_duration.labels(environment, outcome).observe(event.duration)
        if event.outcome is Outcome.SUCCEEDED:
            self.last_success.labels(environment).set(time())
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

    # -- ways out ----------------------------------------------------------------------

    def serve(self, port: int, addr: str) -> None:
        # prometheus_client's start_http_server polls for shutdown every 0.5 s, which
        # detach would wait out; the same WSGI app on a server of our own stops at once.
        server_class = _ServerV6 if ":" in addr else _Server
        try:
            server = make_server(addr, port, make_wsgi_app(self.registry), server_class, _Quiet)
        except OSError as exc:
            # The bare error ("Address already in use") does not say which address.
            where = f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
            raise OSError(exc.errno, f"cannot serve metrics on {where}: {exc.strerror}") from None
        thread = threading.Thread(
            target=server.serve_forever, args=(0.05,), name="lifecycle-prometheus", daemon=True
        )
        thread.start()
        self._server, self._thread = server, thread
        self.port = int(server.server_port)
        host = f"[{addr}]" if ":" in addr else addr
        self.url = f"http://{host}:{self.port}/metrics"
        self.add(self._stop_server)

    def _stop_server(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.port = self.url = None


def _check_port(port: object) -> None:
    if port is not None and (
        isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535
    ):
        raise ValueError(f"port must be an int from 0 to 65535, or None, not {port!r}")


def attach(
    bus: EventBus,
    *,
    registry: CollectorRegistry | None = None,
    namespace: str = "lifecycle",
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
        port: serve ``/metrics`` over HTTP on this port; ``0`` picks a free port, which
            the handle's ``port`` then tells.
        addr: the address the endpoint binds to.
        pushgateway: a Pushgateway URL (``http://host:9091``) to push to after every run
            exits, replacing the group of ``job`` and ``grouping_key``.
        push_timeout: seconds a push may take.
        textfile: a ``.prom`` path to rewrite atomically after every run exits.
        labels: only count environments that carry all these labels.

    Recording is ``inline`` (a counter increment must not wait for a thread). The push
    and the textfile are written by one handler that runs after every other ``exited``
    handler of order below 1,000,000 and before the emit returns, in a worker thread, so a
    batch job never exits before its metrics are out. A failed push is that handler's
    error result: logged by the bus and counted in ``handler_failures``.

    Raises:
        ValueError: a metric name or port is invalid, or the registry already holds
            metrics of this namespace.
        OSError: the port cannot be bound.
    """
    _check_port(port)
    if isinstance(labels, str):
        raise TypeError(f"labels must be a list of strings, not the string {labels!r}")
    adapter = PrometheusAdapter(
        CollectorRegistry() if registry is None else registry,
        namespace,
        run_buckets,
        handler_buckets,
    )
    # Weakly: the registry may outlive the bus; a bus that is gone has no hung handlers.
    bus_ref = weakref.ref(bus)
    adapter.abandoned_threads.set_function(lambda: getattr(bus_ref(), "abandoned_threads", 0))
    try:
        adapter.add(
            bus.subscribe(
                STARTING,
                adapter.record_starting,
                inline=True,
                labels=labels,
                name="lifecycle_prometheus:record_starting",
            )
        )
        adapter.add(
            bus.subscribe(
                EXITED,
                adapter.record_exited,
                inline=True,
                labels=labels,
                name="lifecycle_prometheus:record_exited",
            )
        )
        adapter.add(bus.on_result(adapter.record_result))
        if pushgateway is not None or textfile is not None:
            export = _Export(
                adapter.registry, pushgateway, job, grouping_key, push_timeout, textfile
            )
            adapter.add(
                bus.subscribe(
                    EXITED,
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


def _check(bus: EventBus, **options: Any) -> None:
    """``lifecycle check``: every option as :func:`attach` checks it, without binding the
    port, which the job itself may be holding while it runs."""
    port = options.pop("port", None)
    attach(bus, **options).detach()
    _check_port(port)


adapter(attach, check=_check)


class _Export:
    """Pushes to the Pushgateway and writes the textfile (a sync handler, in a thread)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        pushgateway: str | None,
        job: str,
        grouping_key: Mapping[str, str] | None,
        timeout: float,
        textfile: str | os.PathLike[str] | None,
    ) -> None:
        self.registry = registry
        self.pushgateway = pushgateway
        self.job = job
        self.grouping_key = dict(grouping_key or {})
        self.timeout = timeout
        self.textfile = None if textfile is None else os.fspath(textfile)

    def __call__(self, event: Event) -> None:
        if self.textfile is not None:
            # Written to a temporary file beside it, then renamed: readers never see half.
            write_to_textfile(self.textfile, self.registry)
        if self.pushgateway is not None:
            push_to_gateway(
                self.pushgateway,
                job=self.job,
                registry=self.registry,
                grouping_key=self.grouping_key,
                timeout=self.timeout,
            )
