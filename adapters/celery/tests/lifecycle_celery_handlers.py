"""Handlers the tests' worker configurations name: a hanging one, a failing one.

The recorder is lifecycle-testing's ``record_to_file`` (``record_handlers``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lifecycle import Event

HANGING_TASK = "lifecycle_celery_testapp.handler_hangs"


def hang(event: Event) -> None:
    """Hang (far past any timeout) for the one task that tests it."""
    if event.environment.name == HANGING_TASK:
        time.sleep(60)


def fail(event: Event) -> None:
    if event.environment.name == HANGING_TASK:
        raise RuntimeError("a broken exited handler")
