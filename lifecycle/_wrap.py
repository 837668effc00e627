"""Handler wrappers: code run around every handler call of a bus, inside the call itself.

A tracing adapter opens a span around each handler call this way, so that what the
handler does (an HTTP request, a database call) nests under that span. A wrapper is
applied when a handler is subscribed (or when the wrapper is added), not per emit: a bus
without one runs its handlers exactly as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._handle import Handle

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._bus import EventBus
    from ._event import Event
    from ._subscription import Subscription

    HandlerWrapper = Callable[[Subscription, Callable[[Event], Any]], Callable[[Event], Any]]

__all__ = ["HandlerWrap"]


class HandlerWrap(Handle):
    """A handler wrapper added to a bus; :meth:`detach` (or leaving ``with``) removes it.

    .. versionadded:: 0.2
    """

    __slots__ = ("_bus", "_wrapper")

    def __init__(self, bus: EventBus, wrapper: HandlerWrapper) -> None:
        self._bus: EventBus | None = bus
        self._wrapper = wrapper
        bus._wrappers.append(wrapper)
        rewrap(bus)

    def detach(self) -> None:
        """Remove the wrapper: calls that start from now on are not wrapped. Harmless twice."""
        bus, self._bus = self._bus, None
        if bus is not None and self._wrapper in bus._wrappers:
            bus._wrappers.remove(self._wrapper)
            rewrap(bus)

    def _release(self) -> None:
        self.detach()


def wrapped(wrappers: list[HandlerWrapper], sub: Subscription) -> Callable[[Event], Any]:
    """``sub``'s own call inside every wrapper, the first added outermost."""
    call = sub.unwrapped
    for wrapper in reversed(wrappers):
        call = wrapper(sub, call)
    return call


def rewrap(bus: EventBus) -> None:
    """Apply the bus's wrappers to every subscription, and forget the plans built before."""
    for sub in bus.subscriptions():
        sub.call = wrapped(bus._wrappers, sub) if bus._wrappers else sub.unwrapped
    bus._plans.clear()
