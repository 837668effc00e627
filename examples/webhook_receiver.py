"""A toy webhook receiver for the examples: prints every notification it is sent.

    uv run python examples/webhook_receiver.py [PORT]     # default 8765

Then run a failing job with ``examples/lifecycle.toml`` in another terminal.
"""

from __future__ import annotations

import contextlib
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            message = json.loads(body)
            text = message.get("text", message) if isinstance(message, dict) else message
        except ValueError:
            text = body.decode("utf-8", "replace")
        print(f"--- notification for {self.path}\n{text}", flush=True)
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass  # the notification itself is the interesting line


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8765
    server = ThreadingHTTPServer(("127.0.0.1", port), Receiver)
    print(f"listening on http://127.0.0.1:{port}/hook (Ctrl-C to stop)", flush=True)
    with server, contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
