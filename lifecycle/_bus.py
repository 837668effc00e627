"""The async event bus: blinker signals for receivers, isolated concurrent dispatch."""

from __future__ import annotations

import contextvars
import enum
from time import perf_counter
from typing import TYPE_CHECKING, Any, TypeVar

import blinker
from blinker import ANY

from ._backends import Backend, Background, backend_for, run_inline_group, running_loop
from ._childenv import ChildEnvHook, child_environment
from ._exceptions import BusClosedError, EmitDepthError
from ._handle import Handle
from ._logging import log_failure, logger
from ._plan import NO_PLAN, Plan, PlanCache, Selection, timeout_buckets
from ._results import CloseReport, EmitReport, HandlerResult, InlineRun, Status
from ._subscription import Handler, Subscription, check_timeout, handler_name, is_async_callable
from ._threads import WorkerPool
from ._wrap import HandlerWrap, wrapped

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from types import TracebackType

    from typing_extensions import Self

    from ._childenv import ChildEnvironment
    from ._event import Event
    from ._results import ResultPart
    from ._wrap import HandlerWrapper

__all__ = ["DEFAULT", "EventBus", "ResultHook"]

H = TypeVar("H", bound=Handler)

_depth: contextvars.ContextVar[int] = contextvars.ContextVar("lifecycle_emit_depth", default=0)


class _Default(enum.Enum):
    DEFAULT = "DEFAULT"

    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT = _Default.DEFAULT
"""Marks an option left to the bus's default (``timeout=DEFAULT``)."""

RESULT_SIGNAL = "lifecycle.handler_result"


class BusState(enum.Enum):
    OPEN = "open"
    """Accepting subscriptions and emits."""
    CLOSING = "closing"
    """``aclose`` is draining background handlers; new emits are refused."""
    CLOSED = "closed"
    """Closed for good; a bus cannot be reopened."""


class ResultHook(Handle):
    """A connected result hook; :meth:`disconnect` (or leaving the ``with``) removes it."""

    __slots__ = ("_bus", "_logs_failures", "_receiver")

    def __init__(self, bus: EventBus, receiver: Callable[..., Any], logs_failures: bool) -> None:
        self._bus: EventBus | None = bus
        self._receiver = receiver
        self._logs_failures = logs_failures

    def disconnect(self) -> None:
        """Disconnect the receiver. Disconnecting twice is harmless."""
        bus, self._bus = self._bus, None
        if bus is None:
            return
        bus._results.disconnect(self._receiver)
        if self._logs_failures:
            bus._failure_loggers -= 1

    def _release(self) -> None:
        self.disconnect()


def _blinker_receiver(receiver: Callable[..., Any], sender: Any) -> Handler:
    """Adapt a plain blinker receiver, ``receiver(sender, **kwargs)``, to a handler."""
    sent_by = None if sender is ANY else sender
    if is_async_callable(receiver):

        async def call_async(event: Event) -> Any:
            return await receiver(sent_by, event=event)

        return call_async

    def call(event: Event) -> Any:
        return receiver(sent_by, event=event)

    return call


class EventBus:
    """An async event bus for lifecycle events.

    Receivers live in blinker signals, one namespace per bus (:meth:`signal`). Each emit
    runs the blocking handlers concurrently, each isolated (an exception or a timeout is
    a result, never a crash) and bounded by its timeout, and returns an
    :class:`~lifecycle.EmitReport`. Background handlers are tracked and drained on close.

    Args:
        name: shown in logs and errors.
        default_timeout: seconds a handler may take unless its subscription says
            otherwise; ``None`` for no limit.
        max_background: background handlers in flight at once; past it, ``emit`` waits.
        max_depth: how deep handlers may emit from handlers before ``EmitDepthError``.
        max_threads: worker threads for plain (sync) handlers. A plain handler given up
            at its timeout runs on in an abandoned thread that no longer counts here.
        max_abandoned_per_handler: how many of one handler's calls may hang in abandoned
            threads (given up at their timeouts, still running). While that many do, the
            handler is not run: its calls fail at once with
            :exc:`~lifecycle.AbandonedThreadsError`, and the other handlers run as usual.
            2 lets a handler that overran its timeout once be called again meanwhile, and
            holds a handler that hangs on every event to two threads.
        max_abandoned_threads: the last resort, for many handlers hanging at once: while
            that many abandoned threads are alive on the bus, every plain handler is
            refused so. Hung handlers thus hold fewer than
            ``max_abandoned_threads + max_threads`` threads. Refusals are logged once per
            handler (and once when it runs again), and counted in :attr:`refused_calls`.
        close_grace: seconds ``aclose`` waits for background handlers by default.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        default_timeout: float | None = 10.0,
        max_background: int = 1000,
        max_depth: int = 8,
        max_threads: int = 32,
        max_abandoned_threads: int = 128,
        max_abandoned_per_handler: int = 2,
        close_grace: float | None = 30.0,
    ) -> None:
        self.name = name or f"bus-{id(self):x}"
        self.default_timeout = check_timeout(default_timeout, "default_timeout")
        self.close_grace = check_timeout(close_grace, "close_grace")
        for option, value in (("max_background", max_background), ("max_depth", max_depth)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{option} must be a positive int, not {value!r}")
        self.max_depth = max_depth
        self._state = BusState.OPEN
        self._signals = blinker.Namespace()
        self._plans = PlanCache()
        self._results = blinker.Signal("Announces every handler result: receiver(bus, result=...)")
        self._child_env: list[ChildEnvironment] = []
        self._wrappers: list[HandlerWrapper] = []
        # Result hooks connected with logs_failures=True; while any is, the bus stays quiet.
        self._failure_loggers = 0
        self._pool = WorkerPool(
            max_threads, max_abandoned_threads, self.name, max_abandoned_per_handler
        )
        self._background = Background(max_background, self._announce, self.name)
        # How handlers run on the loop this bus last emitted on (see _backend_here).
        self._backend: Backend | None = None

    def __repr__(self) -> str:
        return f"<EventBus {self.name!r} {self._state.value}>"

    # -- receivers -------------------------------------------------------------------

    @property
    def max_background(self) -> int:
        """Background handlers in flight at once; past it, ``emit`` waits."""
        return self._background.limit

    @max_background.setter
    def max_background(self, value: int) -> None:
        self._background.limit = value

    @property
    def state(self) -> BusState:
        return self._state

    @property
    def closed(self) -> bool:
        return self._state is not BusState.OPEN

    def signal(self, name: str) -> blinker.NamedSignal:
        """The blinker signal for ``name`` on this bus; plain blinker receivers may connect."""
        signal = self._signals.get(name)
        if signal is None:
            signal = self._signals.signal(name)
            signal.receiver_connected.connect(self._receivers_changed)
            signal.receiver_disconnected.connect(self._receivers_changed)
        return signal

    def _receivers_changed(self, signal: blinker.Signal, **_: Any) -> None:
        self._plans.clear()

    def subscribe(
        self,
        signal: str,
        handler: Handler,
        *,
        timeout: float | _Default | None = DEFAULT,
        background: bool = False,
        critical: bool = False,
        order: int = 0,
        inline: bool = False,
        sender: Any = ANY,
        labels: Iterable[str] = (),
        name: str | None = None,
    ) -> Subscription:
        """Subscribe ``handler`` to ``signal``; return a handle that unsubscribes.

        Args:
            signal: the signal name, such as :data:`~lifecycle.EXITED`.
            handler: ``async def h(event)`` or ``def h(event)``, or either taking no
                argument. Plain functions run in a worker thread unless ``inline``.
            timeout: seconds before the handler is given up (an async one cancelled, a
                sync one abandoned); the bus's ``default_timeout`` unless given; ``None``
                for no limit.
            background: the emitter does not wait; the bus tracks and drains it.
            critical: a failure of this ``environment.starting`` handler aborts the run.
            order: lower orders finish before higher ones start; equal orders run
                concurrently.
            inline: run a cheap plain function directly in the event loop (no thread,
                no timeout).
            sender: only events emitted by this sender (an ``Environment``).
            labels: only events whose environment carries all these labels.
            name: the name shown in reports and logs (default: the qualified name).

        Raises:
            TypeError: ``handler`` is not callable, or cannot take the event.
            ValueError: an option is out of range.
            BusClosedError: the bus is closed.
        """
        if self._state is not BusState.OPEN:
            raise BusClosedError(self.name, "subscribe to")
        if not isinstance(signal, str) or not signal:
            raise TypeError(f"signal must be a non-empty signal name string, not {signal!r}")
        subscription = Subscription(
            self.signal(signal),
            signal,
            handler,
            timeout=self.default_timeout if timeout is DEFAULT else timeout,
            background=background,
            critical=critical,
            order=order,
            inline=inline,
            sender=sender,
            labels=labels,
            name=name,
        )
        if self._wrappers:
            subscription.call = wrapped(self._wrappers, subscription)
        subscription.connect()
        return subscription

    def on(
        self,
        signal: str,
        *,
        timeout: float | _Default | None = DEFAULT,
        background: bool = False,
        critical: bool = False,
        order: int = 0,
        inline: bool = False,
        sender: Any = ANY,
        labels: Iterable[str] = (),
        name: str | None = None,
    ) -> Callable[[H], H]:
        """Decorator form of :meth:`subscribe`; returns the function unchanged.

        Use :meth:`unsubscribe` with the function to remove it.
        """

        def decorator(handler: H) -> H:
            self.subscribe(
                signal,
                handler,
                timeout=timeout,
                background=background,
                critical=critical,
                order=order,
                inline=inline,
                sender=sender,
                labels=labels,
                name=name,
            )
            return handler

        return decorator

    def subscriptions(self, signal: str | None = None) -> list[Subscription]:
        """The subscriptions made through this bus, for one signal or all, in order."""
        names = [signal] if signal is not None else list(self._signals)
        found: list[Subscription] = []
        for name in names:
            blinker_signal = self._signals.get(name)
            if blinker_signal is None:
                continue
            for receiver in blinker_signal.receivers.values():
                if isinstance(receiver, Subscription):
                    found.append(receiver)
        found.sort(key=lambda sub: (sub.order, sub.sequence))
        return found

    def unsubscribe(self, handler: Handler, signal: str | None = None) -> int:
        """Remove every subscription of ``handler`` (to ``signal``, or to any); return how many."""
        removed = 0
        for subscription in self.subscriptions(signal):
            if subscription.handler is handler or subscription.handler == handler:
                subscription.unsubscribe()
                removed += 1
        return removed

    def on_result(self, receiver: Callable[..., Any], *, logs_failures: bool = False) -> ResultHook:
        """Call ``receiver(bus, result=HandlerResult)`` after every handler finishes.

        This is the hook metrics adapters observe; it must be cheap and must not block.
        Background handlers are announced when they finish, time out or are cancelled.

        Args:
            logs_failures: the receiver logs failed results itself (a logging adapter), so
                while it is connected the bus does not log them a second time.
        """
        self._results.connect(receiver, weak=False)
        if logs_failures:
            self._failure_loggers += 1
        return ResultHook(self, receiver, logs_failures)

    def wrap_handlers(self, wrapper: HandlerWrapper) -> HandlerWrap:
        """Run every handler call of this bus inside ``wrapper(subscription, call)``.

        ``wrapper`` gets each subscription and its call, and returns the call to make
        instead: a coroutine function for an async handler (``subscription.is_async``),
        a plain one otherwise, which runs where the handler runs (the event loop, a
        worker thread). It is applied when a handler subscribes or the wrapper is added,
        not per emit, so a bus without wrappers dispatches exactly as before. The
        wrapper's call must call ``call(event)`` once and return or raise what it does;
        timeouts, isolation and results are the bus's as usual. A tracing adapter opens
        a span around each call so, and what the handler does nests under it.

        .. versionadded:: 0.2
        """
        return HandlerWrap(self, wrapper)

    def on_child_env(self, hook: ChildEnvironment) -> ChildEnvHook:
        """Add ``hook(starting) -> {name: value}`` to the environment of the runs' commands.

        A command run by :class:`~lifecycle.SubprocessEnvironment` (``lifecycle run``)
        for a run of this bus gets the variables the hooks return, called with the run's
        ``starting`` event after its handlers ran and just before the command starts;
        they override inherited ones. A hook that raises is logged and adds nothing.
        A tracing adapter passes the run's ``TRACEPARENT`` so. :meth:`child_env` may
        call it with a later event of the run too: answer for the run (``run_id``).

        .. versionadded:: 0.2
        """
        return ChildEnvHook(self._child_env, hook)

    def child_env(self, event: Event) -> dict[str, str]:
        """What the :meth:`on_child_env` hooks give the run of ``event``, for what it hands on.

        The variables a command of the run gets; a publisher that carries the run's
        events elsewhere (the NATS adapter) asks for each event it sends and keeps the
        trace context (``TRACEPARENT``/``TRACESTATE``) in the message, so that the
        handlers on the other side join the run's trace. Hooks may so be called with any
        event of the run, not only its ``starting``. Empty, at no cost, without hooks.

        .. versionadded:: 0.2
        """
        if not self._child_env:
            return {}
        return child_environment(self._child_env, event)

    # -- emitting --------------------------------------------------------------------

    def _plan(self, name: str, sender: Any) -> Plan:
        signal = self._signals.get(name)
        if signal is None or not signal.receivers:
            return NO_PLAN
        plan = self._plans.lookup(name, signal, sender)
        if plan is None:
            plan = self._build_plan(signal, name, sender)
            self._plans.store(name, signal, sender, plan)
        return plan

    def _build_plan(self, signal: blinker.Signal, name: str, sender: Any) -> Plan:
        subs: list[Subscription] = []
        takes_sender = False
        for receiver in signal.receivers_for(sender):
            if isinstance(receiver, Subscription):
                subs.append(receiver)
            else:
                takes_sender = True
                sub = Subscription(
                    None,
                    name,
                    _blinker_receiver(receiver, sender),
                    timeout=self.default_timeout,
                    name=handler_name(receiver),
                    takes_event=True,
                )
                if self._wrappers:
                    sub.call = wrapped(self._wrappers, sub)
                subs.append(sub)
        return Plan(subs, len(signal.receivers), takes_sender)

    async def emit(self, event: Event, *, sender: Any = ANY) -> EmitReport:
        """Deliver ``event`` to the receivers of ``event.name``; return one result per handler.

        Blocking handlers run concurrently, group by group in ``order``; background handlers
        are started and named in the report. A handler's exception or timeout is its result
        and is logged; it never reaches the emitter. Cancelling the emitter cancels the
        blocking handlers and propagates.

        Raises:
            BusClosedError: the bus is closing or closed.
            EmitDepthError: handlers emitting from handlers nested too deep.
        """
        if self._state is not BusState.OPEN:
            raise BusClosedError(self.name)
        depth = _depth.get()
        if depth >= self.max_depth:
            raise EmitDepthError(event.name, depth + 1, self.max_depth)
        name = event.name
        signal = self._signals.get(name)
        if signal is None or not signal.receivers:
            return EmitReport(event, ())
        plan = self._plans.lookup(name, signal, sender)
        if plan is None:
            plan = self._build_plan(signal, name, sender)
            self._plans.store(name, signal, sender, plan)
        selection = plan.everyone
        if selection is None:
            selection = plan.select(event.environment.labels)
        background = selection.background
        if not selection.steps and not background:
            return EmitReport(event, ())
        started = perf_counter()
        parts: list[ResultPart] = []
        token = _depth.set(depth + 1)
        if selection.inline_only:
            try:
                for subs, calls in selection.inline_only:
                    run_inline_group(subs, calls, event, parts)
            finally:
                _depth.reset(token)
            return self._reported(event, parts, selection, started)
        try:
            backend = self._backend
            if backend is None or backend.loop is not running_loop():
                backend = self._backend_here()
            if background:
                if self._background.has_room(len(background)):
                    # The common case: room for all of them, so no await at all.
                    backend.start_background(background, selection.background_timeouts, event)
                else:
                    await self._start_background_waiting(backend, background, event)
            for group in selection.steps:
                inline_calls = group.calls
                if inline_calls is not None:
                    run_inline_group(group.subs, inline_calls, event, parts)
                else:
                    await backend.run_group(group, event, parts)
        finally:
            _depth.reset(token)
        return self._reported(event, parts, selection, started)

    def _reported(
        self, event: Event, parts: list[ResultPart], selection: Selection, started: float
    ) -> EmitReport:
        """The report of an emit; its results announced to hooks, its failures logged."""
        report = EmitReport._lazy(
            event, parts, selection.background_names, perf_counter() - started
        )
        if self._results.receivers:
            for result in report.results:
                self._announce(result)
        elif not self._failure_loggers:
            for part in parts:
                if isinstance(part, InlineRun):
                    failed = bool(part.failures)
                else:
                    failed = part.status is not Status.OK
                if failed:
                    self._log_failures(report)
                    break
        return report

    def _log_failures(self, report: EmitReport) -> None:
        for result in report.results:
            if result.status is not Status.OK:
                log_failure(result, bus=self.name)

    def _announce(self, result: HandlerResult) -> None:
        if result.status is not Status.OK and not self._failure_loggers:
            log_failure(result, bus=self.name)
        if self._results.receivers:
            try:
                self._results.send(self, result=result)
            except Exception:
                logger.exception("result hook failed", bus=self.name, handler=result.handler)

    # -- background handlers ---------------------------------------------------------

    @property
    def abandoned_threads(self) -> int:
        """How many plain handlers given up at their timeouts are still running.

        Each holds a thread the bus has abandoned (see ``max_abandoned_threads``).

        .. versionadded:: 0.2
        """
        return self._pool.abandoned

    @property
    def refused_calls(self) -> int:
        """How many plain handler calls were refused (not run) since the bus was created.

        A call is refused while its handler has ``max_abandoned_per_handler`` calls hung
        in abandoned threads, or the bus ``max_abandoned_threads``; its result is an
        :exc:`~lifecycle.AbandonedThreadsError`.

        .. versionadded:: 0.2
        """
        return self._pool.refused

    @property
    def background_in_flight(self) -> int:
        """How many background handlers are running now."""
        return len(self._background)

    def _backend_here(self) -> Backend:
        """The backend of the running loop: the one kept, or a new one for a new loop.

        A bus used from another loop (another thread, a new ``asyncio.run``) gets a
        backend for that loop; the old one's timer stays with its own loop and handlers.
        """
        loop = running_loop()
        backend = self._backend
        if backend is None or backend.loop is not loop:
            backend = self._backend = backend_for(loop, self._pool, self._background)
        return backend

    async def _start_background_waiting(
        self, backend: Backend, subs: tuple[Subscription, ...], event: Event
    ) -> None:
        """Start background handlers one by one, each when there is room for it."""
        for sub in subs:
            await self._background.wait_for_room(backend.new_event)
            one = (sub,)
            backend.start_background(one, timeout_buckets(one), event)

    async def drain(self, grace: float | None = None) -> CloseReport:
        """Wait up to ``grace`` seconds for background handlers; cancel and report the rest.

        ``None`` waits until they finish (each is still bounded by its own timeout).
        """
        grace = check_timeout(grace, "grace")
        backend = self._backend_here()
        return await self._background.drain(grace, backend.new_event, backend.wait_for)

    # -- closing ---------------------------------------------------------------------

    async def aclose(self, grace: float | _Default | None = DEFAULT) -> CloseReport:
        """Refuse new emits, drain background handlers for ``grace`` seconds, and close.

        Returns the report of the handlers that had to be cancelled. Closing twice is
        harmless; the second call reports nothing.
        """
        if self._state is not BusState.OPEN:
            return CloseReport()
        self._state = BusState.CLOSING
        try:
            with self._backend_here().shielded():
                report = await self.drain(self.close_grace if grace is DEFAULT else grace)
        finally:
            self._state = BusState.CLOSED
        return report

    async def __aenter__(self) -> Self:
        if self._state is not BusState.OPEN:
            raise BusClosedError(self.name, "reopen")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
