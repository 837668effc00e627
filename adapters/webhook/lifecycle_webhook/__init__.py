"""Webhook notifications for lifecycle-bus runs, with httpx.

``attach(bus, url=..., format=...)`` tells an endpoint about chosen events (by default
every ``environment.exited``; ``outcomes=[...]`` narrows it, say to runs that did not
succeed): as the event's JSON form, a Slack-compatible message (its values escaped), a
Microsoft Teams Adaptive Card, a PagerDuty Events v2 trigger or resolve, Alertmanager
alerts, or the pings of healthchecks.io and Cronitor. Delivery runs in the background,
retries what is worth retrying (connection errors, timeouts, 429 and 5xx) with
exponential backoff and jitter, honours ``Retry-After``, and gives up at a total
deadline; a delivery that failed for good is the handler's error result on the bus and a
log line, never lost silently. Secrets in the URL, the headers or the routing key appear
in no log line and no error message.

.. versionadded:: 0.1
"""

from __future__ import annotations

from lifecycle.plugins import claim_exports as _claim_exports

from ._adapter import VERSION, WebhookAdapter, attach
from ._delivery import Policy
from ._exceptions import WebhookDeliveryError
from ._fields import DEFAULT_TEMPLATE, NOT_SUCCEEDED, Selection, check_template, template_fields
from ._formats import FORMATS, slack_escape, teams_escape

__all__ = [
    "DEFAULT_TEMPLATE",
    "FORMATS",
    "NOT_SUCCEEDED",
    "Policy",
    "Selection",
    "WebhookAdapter",
    "WebhookDeliveryError",
    "attach",
    "check_template",
    "slack_escape",
    "teams_escape",
    "template_fields",
]

__version__ = VERSION

_claim_exports(globals())
