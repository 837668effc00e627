"""What a bus emitted, in this process or (through a file) in a child process."""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING, Any

import anyio

from lifecycle import EXITED, HEARTBEAT, STARTING

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

    from lifecycle import Event, EventBus, Outcome

__all__ = ["RECORD_FILE", "Recorder", "record_handlers", "record_to_file", "recorded"]

RECORD_FILE = "RECORD_FILE"
"""The environment variable naming the file :func:`record_to_file` appends to."""


class Recorder:
    """Every event emitted on ``bus`` under ``names`` (the lifecycle's three by default)."""

    def __init__(self, bus: EventBus, names: Iterable[str] = (STARTING, HEARTBEAT, EXITED)) -> None:
        self.events: list[Event] = []
        self._waiting: tuple[int, anyio.Event] | None = None
        for name in names:
            bus.subscribe(name, self._got, inline=True)

    def _got(self, event: Event) -> None:
        self.events.append(event)
        if self._waiting is not None and len(self.events) >= self._waiting[0]:
            self._waiting[1].set()

    async def wait(self, count: int, *, limit: float = 20) -> None:
        """Return once ``count`` events are recorded; fail after ``limit`` seconds."""
        if len(self.events) < count:
            self._waiting = (count, anyio.Event())
            with anyio.fail_after(limit):
                await self._waiting[1].wait()

    def names(self) -> list[str]:
        return [event.name for event in self.events]

    def named(self, name: str, outcome: Outcome | None = None) -> list[Event]:
        """The events called ``name`` (with that outcome: ``None`` for events that have none)."""
        return [e for e in self.events if e.name == name and e.outcome is outcome]

    @property
    def exited(self) -> list[Event]:
        return [e for e in self.events if e.name == EXITED]

    @property
    def only_exit(self) -> Event:
        (event,) = self.exited
        return event


def record_to_file(event: Event) -> None:
    """A handler for child processes: append ``event`` as a JSON line to ``$RECORD_FILE``.

    An environment variable ``SLOW`` (seconds) makes it take that long first, so that a
    stream of events lasts long enough for a test to kill the process handling it.
    """
    time.sleep(float(os.environ.get("SLOW", "0")))
    with open(os.environ[RECORD_FILE], "a", encoding="utf-8") as file:
        file.write(event.to_json() + "\n")


def record_handlers(*names: str) -> str:
    """``[[handlers]]`` tables (TOML) that record ``names`` (the three by default) to a file.

    A child process run with this configuration and ``RECORD_FILE`` set appends each of
    those events to that file, in line (before the run goes on).
    """
    return "".join(
        f'[[handlers]]\ntarget = "lifecycle_testing:record_to_file"\nsignal = "{name}"\n'
        "inline = true\n"
        for name in names or (STARTING, HEARTBEAT, EXITED)
    )


def recorded(path: Path) -> list[dict[str, Any]]:
    """The events appended to ``path`` (by :func:`record_to_file`), as JSON objects, oldest first.

    None before the first is written; a last line still being written (no newline yet) is
    left for the next look, so a test polling the file never reads half an event.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    *complete, _unfinished = text.split("\n")
    return [json.loads(line) for line in complete if line]
