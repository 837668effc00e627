"""The webhook adapter's one exception.

::

    Exception
     └── WebhookDeliveryError   a notification was not delivered, after retrying
"""

from __future__ import annotations

__all__ = ["WebhookDeliveryError"]


class WebhookDeliveryError(Exception):
    """Raised by the webhook handler when a notification was not delivered after retrying.

    It becomes the handler's ``error`` result on the bus. The message names the endpoint
    (scheme, host and port only), the attempt count and the last status or error.
    """

    def __init__(self, target: str, attempts: int, reason: str, status: int | None = None) -> None:
        plural = "" if attempts == 1 else "s"
        super().__init__(
            f"webhook POST to {target} failed after {attempts} attempt{plural}: {reason}"
        )
        self.target = target
        self.attempts = attempts
        self.reason = reason
        self.status = status
