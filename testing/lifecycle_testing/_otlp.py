"""A stand-in OpenTelemetry collector: OTLP/HTTP (protobuf) on 127.0.0.1, in a thread.

``opentelemetry-proto`` is imported on the first request, not with this module: the
plug-in loads this package in every pytest run, and the protobuf modules take a few
hundred milliseconds to import.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, NamedTuple

from ._http import QuietHandler, StandIn, serve_http

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from opentelemetry.proto.common.v1.common_pb2 import KeyValue
    from opentelemetry.proto.trace.v1.trace_pb2 import Span

__all__ = ["OtlpReceiver", "ReceivedSpan", "serve_otlp"]

TRACES = "/v1/traces"
METRICS = "/v1/metrics"


class ReceivedSpan(NamedTuple):
    """A span as received, with the ``service.name`` of its resource ("" without one)."""

    service: str
    span: Span


class OtlpReceiver:
    """What the stand-in collector was sent: spans and metric names, kept in arrival order.

    Point an exporter at :attr:`url` (``OTEL_EXPORTER_OTLP_ENDPOINT``, or ``url + "/v1/traces"``
    for a span exporter built in code). Reading is safe while requests come in: each method
    returns a copy taken under the lock that the receiving thread holds to add.
    """

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self._lock = threading.Lock()
        self._spans: list[ReceivedSpan] = []
        self._metrics: set[str] = set()

    def spans(self) -> list[ReceivedSpan]:
        """Every span received so far."""
        with self._lock:
            return list(self._spans)

    def named(self, name: str) -> Span:
        """The one span named ``name``; fails, listing the names received, unless exactly one."""
        found = [span for _, span in self.spans() if span.name == name]
        if len(found) != 1:
            names = sorted(span.name for _, span in self.spans())
            raise AssertionError(f"{len(found)} spans named {name!r}; received: {names}")
        return found[0]

    def services(self) -> set[str]:
        """The service names of the resources that sent spans."""
        return {service for service, _ in self.spans()}

    def metric_names(self) -> set[str]:
        """The names of every metric received so far."""
        with self._lock:
            return set(self._metrics)

    def _receive(self, path: str, body: bytes) -> bytes | None:
        """Keep what ``body`` carries; the response body, or None for a path it does not serve."""
        if path == TRACES:
            from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
                ExportTraceServiceRequest,
                ExportTraceServiceResponse,
            )

            traces = ExportTraceServiceRequest.FromString(body)
            received = [
                ReceivedSpan(_service_name(resource.resource.attributes), span)
                for resource in traces.resource_spans
                for scope in resource.scope_spans
                for span in scope.spans
            ]
            with self._lock:
                self._spans.extend(received)
            answer: bytes = ExportTraceServiceResponse().SerializeToString()
            return answer
        if path == METRICS:
            from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
                ExportMetricsServiceRequest,
                ExportMetricsServiceResponse,
            )

            metrics = ExportMetricsServiceRequest.FromString(body)
            names = {
                metric.name
                for resource in metrics.resource_metrics
                for scope in resource.scope_metrics
                for metric in scope.metrics
            }
            with self._lock:
                self._metrics.update(names)
            answer = ExportMetricsServiceResponse().SerializeToString()
            return answer
        return None


def _service_name(attributes: Iterable[KeyValue]) -> str:
    for attribute in attributes:
        if attribute.key == "service.name":
            return attribute.value.string_value
    return ""


class _OtlpHandler(QuietHandler):
    server: StandIn[OtlpReceiver]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        answer = self.server.owner._receive(self.path, body)
        if answer is None:  # logs, or a typo in a test's URL: say so, as a collector would
            self.send_error(404, f"no OTLP signal at {self.path}")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


@contextmanager
def serve_otlp() -> Iterator[OtlpReceiver]:
    """An OTLP/HTTP receiver (traces and metrics, protobuf) on a free loopback port.

    Yields the :class:`OtlpReceiver` that keeps what it is sent; stops the server on exit.
    """
    with serve_http(_OtlpHandler, OtlpReceiver) as receiver:
        yield receiver
