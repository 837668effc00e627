"""The blocking runner: ``Environment.run_sync`` for programs that are not async.

The event loop runs in a portal thread; the body runs in the main thread, where Python
delivers signals. SIGTERM and SIGINT raise :class:`Terminated` into the body (like
``KeyboardInterrupt``), so it unwinds through ``Environment.running`` and ``exited`` fires
with outcome ``terminated``. A signal during the ``starting`` emit cancels that emit (a hung
starting handler cannot hold up the stop) and is raised as soon as the body would start, so
the body never runs. Later signals during the exit are noted, not raised, so they cannot cut
the ``exited`` emit short. :exc:`~lifecycle.RunTerminated` is a ``SystemExit``: uncaught,
the program ends with status 128 + n and no traceback.
"""

from __future__ import annotations

import contextlib
import inspect
import signal
import threading
from concurrent.futures import CancelledError as FutureCancelled
from typing import TYPE_CHECKING, Any, TypeVar

from anyio import CancelScope
from anyio.from_thread import BlockingPortal, start_blocking_portal

from ._exceptions import RunTerminated, Terminated
from ._logging import logger

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator
    from types import FrameType

    from ._environment import Environment

T = TypeVar("T")

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _Signals:
    """Turns the first SIGTERM or SIGINT into :class:`Terminated` while the body runs.

    A signal that arrives before the body starts (during the ``starting`` emit) cancels
    that emit through the portal, and is held and raised as soon as the body would start,
    so the run still unwinds through ``exited``.
    """

    def __init__(self, portal: BlockingPortal | None, starting: CancelScope | None) -> None:
        self.received: list[int] = []
        self.armed = False
        self.portal = portal
        self.starting = starting  # the scope of the ``starting`` emit, until the body starts

    def handle(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)
        if self.armed and len(self.received) == 1:
            raise Terminated(signum)
        if self.starting is not None and self.portal is not None and len(self.received) == 1:
            # The loop runs in the portal's thread, not here: ask it to cancel the emit.
            self.portal.start_task_soon(_cancel, self.starting)
            logger.warning(
                "signal received while the run starts; cancelling the starting handlers",
                signal=signal.Signals(signum).name,
            )
            return
        logger.warning(
            "signal noted while the run starts or exits", signal=signal.Signals(signum).name
        )

    def arm(self) -> None:
        self.armed = True
        self.starting = None
        if self.received:
            raise Terminated(self.received[0])

    def disarm(self) -> None:
        self.armed = False


@contextlib.contextmanager
def termination_signals(
    portal: BlockingPortal | None = None, starting: CancelScope | None = None
) -> Iterator[_Signals]:
    """Install the SIGTERM and SIGINT handlers of the blocking runner (main thread only)."""
    signals = _Signals(portal, starting)
    if threading.current_thread() is not threading.main_thread():
        # Only the main thread may install signal handlers; elsewhere, do without.
        yield signals
        return
    previous = {signum: signal.signal(signum, signals.handle) for signum in _SIGNALS}
    try:
        yield signals
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def run_blocking(
    environment: Environment,
    fn: Callable[..., Awaitable[T] | T],
    args: tuple[Any, ...],
    *,
    run_id: str | None,
    backend: str,
) -> T:
    with start_blocking_portal(backend) as portal:
        starting = portal.call(CancelScope)  # made in the loop, which owns it
        try:
            with (
                termination_signals(portal, starting) as signals,
                portal.wrap_async_context_manager(
                    environment._running(run_id, stop_starting=starting)
                ),
            ):
                try:
                    signals.arm()
                    return _body(portal, fn, args, environment.exit_grace)
                finally:
                    signals.disarm()
        except Terminated as exc:
            raise RunTerminated(environment.name, exc.signum) from None
        finally:
            # Background handlers (a webhook on exit, say) must finish before the loop goes.
            portal.call(environment.bus.drain, environment.exit_grace)


def _body(
    portal: BlockingPortal, fn: Callable[..., Awaitable[T] | T], args: tuple[Any, ...], grace: float
) -> T:
    if not inspect.iscoroutinefunction(fn):
        result = fn(*args)
        if inspect.isawaitable(result):
            return portal.call(_await, result)
        return result
    future = portal.start_task_soon(fn, *args)
    try:
        return future.result()  # type: ignore[no-any-return]
    except Terminated:
        # The body is async: cancel it in the loop and give it the grace to unwind.
        future.cancel()
        with contextlib.suppress(FutureCancelled, Exception):
            future.result(timeout=grace)
        raise


async def _cancel(scope: CancelScope) -> None:
    scope.cancel()


async def _await(awaitable: Awaitable[T]) -> T:
    return await awaitable
