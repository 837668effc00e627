"""The Apprise adapter's one exception.

::

    Exception
     └── AppriseDeliveryError   a notification reached not every service, after retrying
"""

from __future__ import annotations

__all__ = ["AppriseDeliveryError"]


class AppriseDeliveryError(Exception):
    """Raised by the Apprise handler when some services were not notified after retrying.

    It becomes the handler's ``error`` result on the bus. ``failures`` maps each failed
    service, as shown (``slack://t...2/***``: secrets masked), to the last reason.
    """

    def __init__(self, failures: dict[str, str], attempts: int) -> None:
        plural = "" if attempts == 1 else "s"
        listed = "; ".join(f"{target}: {reason}" for target, reason in failures.items())
        super().__init__(f"Apprise notification failed after {attempts} attempt{plural}: {listed}")
        self.failures = failures
        self.attempts = attempts
