"""How handlers run, one module per event loop, as anyio's own ``_backends``.

:mod:`._asyncio` and :mod:`._trio` each run a group of blocking handlers (their tasks,
their deadlines) and start background handlers; :mod:`._background` keeps the background
handlers in flight for either; :mod:`._inline` runs inline handlers for both. A bus picks
the backend once per event loop (:func:`backend_for`) and keeps it while that loop runs.
"""

from __future__ import annotations

from asyncio import _get_running_loop as running_loop
from typing import TYPE_CHECKING, Protocol

from ._background import Background
from ._inline import run_inline_group

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Awaitable, Callable
    from contextlib import AbstractContextManager

    from .._event import Event
    from .._plan import Group, TimeoutBuckets
    from .._results import ResultPart
    from .._subscription import Subscription
    from .._threads import WorkerPool
    from ._background import Waitable, WaitFor

__all__ = [
    "Backend",
    "Background",
    "backend_for",
    "run_inline_group",
    "running_loop",
    "wait_for_here",
]


class Backend(Protocol):
    """What a bus needs of the event loop it runs on."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The asyncio loop this backend is bound to; ``None`` on trio."""

    @property
    def new_event(self) -> Callable[[], Waitable]:
        """Makes an event of this loop."""

    async def run_group(self, group: Group, event: Event, results: list[ResultPart]) -> None:
        """Run one group of blocking handlers; append their results in order."""

    async def wait_for(self, wait: Callable[[], Awaitable[object]], timeout: float | None) -> bool:
        """Await ``wait()`` for at most ``timeout`` seconds (``None``: no limit); did it end?"""

    def shielded(self) -> AbstractContextManager[object]:
        """A block that cancellation from outside waits for."""

    def start_background(
        self, subs: tuple[Subscription, ...], timeouts: TimeoutBuckets, event: Event
    ) -> None:
        """Start background handlers and enter them in the bus's :class:`Background`."""


def wait_for_here() -> WaitFor:
    """The running loop's bounded wait (see :meth:`Backend.wait_for`)."""
    if running_loop() is not None:
        from ._asyncio import wait_for
    else:
        from ._trio import wait_for
    return wait_for


def backend_for(
    loop: asyncio.AbstractEventLoop | None, pool: WorkerPool, background: Background
) -> Backend:
    """The backend for ``loop`` (the running asyncio loop; ``None`` where trio runs).

    Each backend module is imported when a loop of its kind first emits: an asyncio
    program never imports trio, nor the other way round.
    """
    if loop is not None:
        from ._asyncio import AsyncioBackend

        return AsyncioBackend(loop, pool, background)
    from ._trio import TrioBackend

    return TrioBackend(pool, background)
