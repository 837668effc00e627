"""Subscriptions: a handler with its options, connected to a blinker signal."""

from __future__ import annotations

import functools
import inspect
import itertools
import math
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from blinker import ANY

from ._handle import Handle

if TYPE_CHECKING:
    from blinker import Signal

    from ._event import Event

Handler = Callable[..., Any]
"""A handler: ``async def h(event)``, ``def h(event)``, or either taking no argument."""

_sequence = itertools.count()


def handler_name(handler: Any) -> str:
    """A readable name for a handler: module-qualified function name where there is one."""
    target = handler.func if isinstance(handler, functools.partial) else handler
    qualname = getattr(target, "__qualname__", None) or type(target).__qualname__
    # "main.<locals>.notify" says less than "notify" and reads worse in every log line.
    qualname = str(qualname).rpartition("<locals>.")[2]
    module = getattr(target, "__module__", None)
    if module and module not in ("__main__", "builtins"):
        return f"{module}.{qualname}"
    return str(qualname)


def is_async_callable(handler: Any) -> bool:
    while isinstance(handler, functools.partial):
        handler = handler.func
    if inspect.iscoroutinefunction(handler):
        return True
    # A callable object whose __call__ is async (functions have a sync __call__ slot).
    call = type(handler).__dict__.get("__call__") if not inspect.isfunction(handler) else None
    return call is not None and inspect.iscoroutinefunction(call)


def _takes_event(handler: Handler, name: str) -> bool:
    """True if ``handler`` takes the event positionally, False if it takes nothing."""
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError):
        # Some builtins have no signature; assume the documented calling convention.
        return True
    try:
        signature.bind(None)
    except TypeError:
        pass
    else:
        return True
    try:
        signature.bind()
    except TypeError:
        raise TypeError(
            f"handler {name} has the signature {signature}, which cannot be called with the "
            "event: a handler must take the event as its only required positional argument, "
            "or take no arguments"
        ) from None
    return False


def check_timeout(timeout: float | None, what: str = "timeout") -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"{what} must be a number of seconds or None, not {timeout!r}")
    if not timeout > 0:
        raise ValueError(
            f"{what} must be greater than 0 seconds (or None for no limit), not {timeout!r}"
        )
    return None if math.isinf(timeout) else float(timeout)


class Subscription(Handle):
    """A handler subscribed to one signal on one bus, with its options.

    Returned by ``EventBus.subscribe``. Call :meth:`unsubscribe`, or use it as a context
    manager, to disconnect it. It is also a blinker receiver, which is how it lives in the
    bus's signal.
    """

    __slots__ = (
        "__weakref__",
        "_connected",
        "_signal",
        "background",
        "call",
        "critical",
        "handler",
        "inline",
        "is_async",
        "labels",
        "name",
        "order",
        "sender",
        "sequence",
        "signal_name",
        "timeout",
        "unwrapped",
    )

    def __init__(
        self,
        signal: Signal | None,
        signal_name: str,
        handler: Handler,
        *,
        timeout: float | None,
        background: bool = False,
        critical: bool = False,
        order: int = 0,
        inline: bool = False,
        sender: Any = ANY,
        labels: Iterable[str] = (),
        name: str | None = None,
        takes_event: bool | None = None,
    ) -> None:
        if not callable(handler):
            raise TypeError(
                f"cannot subscribe {handler!r} to {signal_name!r}: a handler must be callable "
                "(an async or plain function taking the event)"
            )
        if isinstance(labels, str):
            raise TypeError(
                f"labels must be an iterable of strings, not the string {labels!r}; "
                f"write labels=[{labels!r}]"
            )
        label_set = frozenset(labels)
        for label in label_set:
            if not isinstance(label, str):
                raise TypeError(f"labels must be strings, not {label!r}")
        if isinstance(order, bool) or not isinstance(order, int):
            raise TypeError(f"order must be an int, not {order!r}")
        self.name = name or handler_name(handler)
        self.is_async = is_async_callable(handler)
        if inline and self.is_async:
            raise ValueError(f"handler {self.name} is async; inline=True is for plain functions")
        if inline and background:
            raise ValueError(
                f"handler {self.name} cannot be both inline and background: inline handlers "
                "run in the emitter itself"
            )
        if takes_event is None:
            takes_event = _takes_event(handler, self.name)
        self.handler = handler
        self.call: Callable[[Event], Any] = handler if takes_event else _drop_event(handler)
        # The call without the bus's handler wrappers (EventBus.wrap_handlers).
        self.unwrapped = self.call
        self._signal = signal
        self.signal_name = signal_name
        self.timeout = check_timeout(timeout)
        self.background = bool(background)
        self.critical = bool(critical)
        self.order = order
        self.inline = bool(inline)
        self.sender = sender
        self.labels = label_set
        self.sequence = next(_sequence)
        self._connected = False

    def __call__(self, sender: Any, /, **kwargs: Any) -> Any:
        # The blinker receiver protocol, for code that sends on the signal directly.
        return self.call(kwargs["event"])

    def __repr__(self) -> str:
        options = [f"timeout={self.timeout}"]
        for flag in ("background", "critical", "inline"):
            if getattr(self, flag):
                options.append(f"{flag}=True")
        if self.order:
            options.append(f"order={self.order}")
        if self.labels:
            options.append(f"labels={sorted(self.labels)}")
        return f"<Subscription {self.name} to {self.signal_name!r} {' '.join(options)}>"

    def connect(self) -> None:
        assert self._signal is not None
        self._signal.connect(self, sender=self.sender, weak=False)
        self._connected = True
        if self.sender is not ANY:
            # Hold the sender weakly: a subscription must not keep its environment alive,
            # and when the environment goes, so does the subscription.
            try:
                self.sender = weakref.ref(self.sender)
            except TypeError:
                return
            weakref.finalize(self.sender(), self.unsubscribe)

    @property
    def connected(self) -> bool:
        return self._connected

    def unsubscribe(self) -> None:
        """Disconnect the handler. Unsubscribing twice is harmless."""
        if self._connected and self._signal is not None:
            self._connected = False
            # Disconnecting from ANY removes the receiver whatever sender it was bound to.
            self._signal.disconnect(self)

    def _release(self) -> None:
        self.unsubscribe()


def _drop_event(handler: Handler) -> Callable[[Event], Any]:
    # Zero-argument callbacks from the design note keep working: the event is dropped.
    def call(event: Event) -> Any:
        return handler()

    # What names the handler where only its call is at hand (the worker threads' logs).
    functools.update_wrapper(call, handler, assigned=(), updated=())
    return call
