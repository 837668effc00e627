"""A stand-in HTTP service on 127.0.0.1 in a thread of the test process."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

__all__ = ["QuietHandler", "StandIn", "serve_http"]

T = TypeVar("T")


class StandIn(ThreadingHTTPServer, Generic[T]):
    """The server; its handlers reach the test's state as ``self.server.owner``."""

    daemon_threads = True
    owner: T


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that keeps the test output free of access lines."""

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serve_http(
    handler: type[BaseHTTPRequestHandler],
    owner: Callable[[int], T],
    *,
    release: Callable[[T], object] | None = None,
) -> Iterator[T]:
    """Serve ``handler`` on a free loopback port; yield ``owner(port)``, the test's state.

    The port is the one the server bound (port 0), so no other test can take it. On exit
    ``release(state)`` is called first (to free a handler that hangs on purpose), then the
    server stops.
    """
    server: StandIn[T] = StandIn(("127.0.0.1", 0), handler)
    state = server.owner = owner(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        if release is not None:
            release(state)
        server.shutdown()
        server.server_close()
        thread.join()
