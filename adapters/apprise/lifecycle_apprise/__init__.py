"""Notifications for lifecycle-bus runs through Apprise, to its 100+ services.

``attach(bus, urls=["slack://...", "tgram://..."])`` sends a title and body made from
templates to every Apprise URL when a run ends (or on any signal you choose): in the
background, each service tried with a bounded timeout, retried with backoff inside a
total deadline, and reported (a service that was not notified is the handler's error
result and a log line). Tokens in the URLs appear in no log line and no error message,
Apprise's own DEBUG lines included.

.. versionadded:: 0.1
"""

from __future__ import annotations

from lifecycle.plugins import claim_exports as _claim_exports

from ._adapter import AppriseAdapter, attach
from ._exceptions import AppriseDeliveryError

__all__ = ["AppriseAdapter", "AppriseDeliveryError", "attach"]

__version__ = "0.1.0"

_claim_exports(globals())
