"""OpenTelemetry for lifecycle-bus: a span per run, spans per handler, metrics.

``attach(bus)`` traces every run of the bus from its ``starting`` event to its
``exited`` event (``lifecycle.run <environment>``), with a child span per handler call,
and records run and handler metrics (``lifecycle.run.duration``, ``lifecycle.run.active``,
``lifecycle.handler.duration``, ``lifecycle.handler.errors``,
``lifecycle.bus.abandoned_threads``). In code it uses the global providers (or the ones
given); under ``lifecycle run``, ``listen`` and ``watch``, ``sdk = true`` builds them from
the standard ``OTEL_*`` environment variables and exports OTLP over HTTP.

.. versionadded:: 0.2
"""

from __future__ import annotations

from lifecycle.plugins import claim_exports

from ._adapter import SCOPE, OtelAdapter, attach
from ._attributes import UNKNOWN
from ._metrics import HANDLER_BUCKETS, RUN_BUCKETS

__all__ = [
    "HANDLER_BUCKETS",
    "RUN_BUCKETS",
    "SCOPE",
    "UNKNOWN",
    "OtelAdapter",
    "attach",
]

claim_exports(globals())
