"""Deliveries of one environment go out in the order their events were emitted.

Background deliveries run concurrently, so a fast run's ``exited`` (or a retried
``starting``) could reach the endpoint first: healthchecks.io would then see ``/start``
after the end and report the job as hanging; PagerDuty would take a resolve before the
trigger it was meant to close, and keep the incident open. The bus calls :meth:`issue`
inline, in emit order, and each delivery waits for the ones before it of its environment.
Other environments go on in parallel.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from lifecycle import Event

__all__ = ["Sequencer"]


class Sequencer:
    """Tickets per environment, issued in emit order and served in that order.

    A delivery waits at most ``patience`` seconds for its turn (the one before it gets
    that long, its own deadline, to finish), so one lost ticket never stalls an
    environment for good.
    """

    def __init__(self, patience: float) -> None:
        self.patience = patience
        # Per event id, in case one event is emitted twice (each emit gets its own ticket).
        self._tickets: dict[str, list[tuple[str, int]]] = {}
        self._issued: dict[str, int] = {}
        self._served: dict[str, int] = {}
        self._changed: anyio.Event | None = None

    def issue(self, event: Event) -> None:
        """Give ``event`` the next ticket of its environment (called inline, in emit order)."""
        key = event.environment.name
        number = self._issued.get(key, 0)
        self._issued[key] = number + 1
        self._tickets.setdefault(event.event_id, []).append((key, number))
        self._wake()

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def _ready(self, event: Event) -> bool:
        tickets = self._tickets.get(event.event_id)
        if not tickets:
            return False  # the emit that issues it has not got there yet
        key, number = tickets[0]
        return self._served.get(key, 0) >= number

    @contextlib.asynccontextmanager
    async def turn(self, event: Event) -> AsyncIterator[None]:
        """Wait for ``event``'s turn, then hold it until the block ends."""
        with anyio.move_on_after(self.patience):
            while not self._ready(event):
                if self._changed is None:
                    self._changed = anyio.Event()
                await self._changed.wait()
        tickets = self._tickets.get(event.event_id)
        ticket = tickets.pop(0) if tickets else None
        if tickets == []:
            del self._tickets[event.event_id]
        try:
            yield
        finally:
            if ticket is not None:
                key, number = ticket
                served = self._served[key] = max(self._served.get(key, 0), number + 1)
                if served >= self._issued.get(key, 0):
                    # Nothing of this environment pending: forget it (a fleet has many).
                    self._served.pop(key, None)
                    self._issued.pop(key, None)
                self._wake()
