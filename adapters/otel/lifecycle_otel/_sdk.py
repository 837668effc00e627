"""Providers built from the standard ``OTEL_*`` environment variables, and bounded flushing.

Imported only for ``sdk = true``: the OpenTelemetry SDK is the ``[sdk]`` extra, and a
``lifecycle run`` that does not ask for it does not import it.

The variables read: ``OTEL_SDK_DISABLED``, ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_EXPORTER`` and ``OTEL_METRICS_EXPORTER``
(``otlp``, the default, ``console`` or ``none``), ``OTEL_EXPORTER_OTLP_PROTOCOL``
(``http/protobuf`` only), ``OTEL_EXPORTER_OTLP_[TRACES_|METRICS_]ENDPOINT``, ``_HEADERS``,
``_TIMEOUT``, ``_COMPRESSION``, ``OTEL_TRACES_SAMPLER[_ARG]``, ``OTEL_BSP_*`` and
``OTEL_METRIC_EXPORT_INTERVAL``, as the SDK reads them.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider

_EXPORTERS = ("otlp", "console", "none")


def _exporter_choice(signal: str) -> str:
    variable = f"OTEL_{signal.upper()}_EXPORTER"
    value = os.environ.get(variable, "otlp").strip().lower() or "otlp"
    if value not in _EXPORTERS:
        raise ValueError(
            f"sdk: {variable}={value!r} is not supported; lifecycle-otel sends "
            f"{', '.join(repr(name) for name in _EXPORTERS)}"
        )
    if value == "otlp":
        for name in (
            f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ):
            protocol = os.environ.get(name, "").strip()
            if protocol and protocol != "http/protobuf":
                raise ValueError(
                    f"sdk: {name}={protocol!r} is not supported; lifecycle-otel exports "
                    "OTLP over HTTP ('http/protobuf', port 4318)"
                )
            if protocol:
                break
    return value


def check_sdk(*, traces: bool, metrics: bool) -> None:
    """Raise as :func:`build_providers` would, building nothing."""
    try:
        import opentelemetry.exporter.otlp.proto.http
        import opentelemetry.sdk  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"sdk: the OpenTelemetry SDK is not installed ({exc}); install 'lifecycle-otel[sdk]'"
        ) from None
    if traces:
        _exporter_choice("traces")
    if metrics:
        _exporter_choice("metrics")


def build_providers(
    *, service_name: str, traces: bool, metrics: bool
) -> tuple[TracerProvider | None, MeterProvider | None]:
    """A tracer and a meter provider exporting as the ``OTEL_*`` variables say.

    Raises:
        ImportError: the SDK is not installed (``lifecycle-otel[sdk]``).
        ValueError: a variable asks for an exporter or protocol this package does not ship.
    """
    try:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
    except ImportError as exc:
        raise ImportError(
            f"sdk: the OpenTelemetry SDK is not installed ({exc}); install 'lifecycle-otel[sdk]'"
        ) from None
    trace_exporter = _exporter_choice("traces") if traces else "none"
    metric_exporter = _exporter_choice("metrics") if metrics else "none"
    resource = Resource.create({})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        # Neither OTEL_SERVICE_NAME nor OTEL_RESOURCE_ATTRIBUTES named the service.
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    tracer_provider = meter_provider = None
    if traces:
        # shutdown_on_exit=False: the SDK's own atexit shutdown waits for a dead collector
        # for as long as its exporter's timeout; the adapter shuts down, bounded, itself.
        tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        if trace_exporter != "none":
            from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

            if trace_exporter == "otlp":
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter,
                )

                span_exporter: ConsoleSpanExporter | OTLPSpanExporter = OTLPSpanExporter()
            else:
                span_exporter = ConsoleSpanExporter()
            tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
    if metrics:
        from opentelemetry.sdk.metrics.export import MetricReader

        readers: list[MetricReader] = []
        if metric_exporter != "none":
            from opentelemetry.sdk.metrics.export import (
                ConsoleMetricExporter,
                PeriodicExportingMetricReader,
            )

            if metric_exporter == "otlp":
                from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                    OTLPMetricExporter,
                )

                exporter: ConsoleMetricExporter | OTLPMetricExporter = OTLPMetricExporter()
            else:
                exporter = ConsoleMetricExporter()
            readers.append(PeriodicExportingMetricReader(exporter))
        meter_provider = MeterProvider(
            resource=resource, metric_readers=readers, shutdown_on_exit=False
        )
    return tracer_provider, meter_provider


def bounded(call: Callable[[], object], timeout: float, name: str) -> tuple[bool, Exception | None]:
    """Run ``call`` in a daemon thread for at most ``timeout`` seconds.

    Returns whether it finished in time, and the exception it raised if it did. The SDK's flush ignores its own timeout (an exporter retries a
    dead collector for up to ``OTEL_EXPORTER_OTLP_TIMEOUT``, 10 s by default), so the
    bound is a thread the caller stops waiting for; being a daemon thread, it cannot keep
    the process alive.
    """
    done = threading.Event()
    error: list[Exception] = []

    def target() -> None:
        try:
            call()
        except Exception as exc:
            error.append(exc)
        finally:
            done.set()

    threading.Thread(target=target, name=name, daemon=True).start()
    if not done.wait(timeout):
        return False, None
    return True, error[0] if error else None
