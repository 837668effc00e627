"""Prometheus metrics for lifecycle-bus runs and handlers, with prometheus-client.

``attach(bus)`` keeps, for each environment, the gauges of its last run (start,
completion, last success, duration, outcome, exit code: what a batch job is alerted on),
and for a long-lived process counts runs started and finished, observes run and handler
durations, tracks runs in progress and counts handler failures by reason. The metrics
live in a :class:`~prometheus_client.CollectorRegistry` of their own unless you pass one,
and leave the process in any of three ways:

- ``port=``: an HTTP endpoint in this process for Prometheus to scrape (``lifecycle
  listen``, services);
- ``pushgateway=``: the last-run gauges pushed to a Pushgateway, one group per
  environment, when a run starts and exits (batch jobs);
- ``textfile=``: the same gauges in a ``.prom`` file for node-exporter's textfile
  collector (cron jobs on a host with node-exporter).

.. versionadded:: 0.1
"""

from lifecycle.plugins import adapter as _declare_adapter
from lifecycle.plugins import claim_exports as _claim_exports

from ._adapter import (
    HANDLER_BUCKETS,
    NAME_LABEL,
    RUN_BUCKETS,
    PrometheusAdapter,
    attach,
)
from ._adapter import check as _check

__all__ = [
    "HANDLER_BUCKETS",
    "NAME_LABEL",
    "RUN_BUCKETS",
    "PrometheusAdapter",
    "attach",
]

_declare_adapter(attach, check=_check)
_claim_exports(globals())
