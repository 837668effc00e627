"""The scrape endpoint: prometheus_client's WSGI app on a server that stops at once."""

from __future__ import annotations

import socket
import threading
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _ServerV6(_Server):
    address_family = socket.AF_INET6


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # a scrape every few seconds is not news


class Endpoint:
    """``/metrics`` of ``registry`` served over HTTP in a daemon thread until :meth:`stop`."""

    def __init__(self, registry: CollectorRegistry, port: int, addr: str) -> None:
        # prometheus_client's start_http_server polls for shutdown every 0.5 s, which
        # detach would wait out; the same WSGI app on a server of our own stops at once.
        server_class = _ServerV6 if ":" in addr else _Server
        try:
            server = make_server(addr, port, make_wsgi_app(registry), server_class, _Quiet)
        except OSError as exc:
            # The bare error ("Address already in use") does not say which address.
            where = f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
            raise OSError(exc.errno, f"cannot serve metrics on {where}: {exc.strerror}") from None
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.05,), name="lifecycle-prometheus", daemon=True
        )
        self._thread.start()
        self.port = int(server.server_port)
        host = f"[{addr}]" if ":" in addr else addr
        self.url = f"http://{host}:{self.port}/metrics"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def check_port(port: object) -> None:
    if port is not None and (
        isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535
    ):
        raise ValueError(f"port must be an int from 0 to 65535, or None, not {port!r}")
