"""A toy webhook receiver for the examples: prints every notification it is sent.

    uv run python examples/webhook_receiver.py [PORT]     # default 8765

Then run a failing job with ``examples/lifecycle.toml`` in another terminal. It reads
every format of lifecycle-webhook: point a ``format = "teams"``, ``"pagerduty"``
(``url = "http://127.0.0.1:8765/pagerduty"``), ``"alertmanager"`` or ``"healthchecks"``
adapter at it to see what that service would be sent.
"""

from __future__ import annotations

import contextlib
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def describe(path: str, body: bytes) -> str:
    """One readable view of a notification, whichever format sent it."""
    try:
        message: Any = json.loads(body)
    except ValueError:
        # A healthchecks.io ping: the path says which signal, the body is the output tail.
        return f"ping {path}\n{body.decode('utf-8', 'replace')}"
    if isinstance(message, list):  # Alertmanager: postable alerts
        return "\n".join(
            f"alert {a['labels'].get('alertname')} {a['labels'].get('lifecycle_environment')}: "
            f"{a.get('annotations', {}).get('summary', '')} (until {a.get('endsAt')})"
            for a in message
        )
    if not isinstance(message, dict):
        return repr(message)
    if "text" in message:  # Slack, Mattermost
        return str(message["text"])
    if "event_action" in message:  # PagerDuty Events API v2
        summary = message.get("payload", {}).get("summary", "")
        return f"pagerduty {message['event_action']} {message.get('dedup_key')}: {summary}"
    if message.get("type") == "message":  # Teams: the card's title and facts
        card = message["attachments"][0]["content"]
        lines = []
        for element in card["body"]:
            if element["type"] == "RichTextBlock":
                lines += [run["text"] for run in element["inlines"]]
            elif element["type"] == "FactSet":
                lines += [f"  {f['title']}: {f['value']}" for f in element["facts"]]
        return "\n".join(lines)
    return json.dumps(message, indent=2)


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        print(f"--- notification for {self.path}\n{describe(self.path, body)}", flush=True)
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
