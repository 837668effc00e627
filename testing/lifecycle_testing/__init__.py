"""Test support shared by lifecycle-bus and its adapters (dev-only; also a pytest plug-in)."""

from __future__ import annotations

from ._daemon import stop_process, wait_serving
from ._http import QuietHandler, StandIn, serve_http
from ._nats import NatsServer, nats_server_binary
from ._otlp import OtlpReceiver, ReceivedSpan, serve_otlp
from ._poll import poll, poll_blocking
from ._recorder import RECORD_FILE, Recorder, record_handlers, record_to_file, recorded

__all__ = [
    "RECORD_FILE",
    "NatsServer",
    "OtlpReceiver",
    "QuietHandler",
    "ReceivedSpan",
    "Recorder",
    "StandIn",
    "nats_server_binary",
    "poll",
    "poll_blocking",
    "record_handlers",
    "record_to_file",
    "recorded",
    "serve_http",
    "serve_otlp",
    "stop_process",
    "wait_serving",
]
