"""Handlers the tests' worker configurations name: a recorder, a hanging one, a failing one."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lifecycle import Event

HANGING_TASK = "lifecycle_celery_testapp.handler_hangs"


def record(event: Event) -> None:
    """Append the event's JSON to ``RECORD_FILE`` (one line, one write: processes share it)."""
    with open(os.environ["RECORD_FILE"], "a", encoding="utf-8") as file:
        file.write(event.to_json() + "\n")


def hang(event: Event) -> None:
    """Hang (far past any timeout) for the one task that tests it."""
    if event.environment.name == HANGING_TASK:
        time.sleep(60)


def fail(event: Event) -> None:
    if event.environment.name == HANGING_TASK:
        raise RuntimeError("a broken exited handler")
