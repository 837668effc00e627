"""Environments: where a run happens, and the guarantee that ``exited`` fires once."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from time import perf_counter
from typing import TYPE_CHECKING, Any, TypeVar, overload

from ._bus import EventBus
from ._event import EXITED, STARTING, EnvironmentInfo, ErrorInfo, Event, Outcome, new_id
from ._exceptions import (
    LifecycleError,
    RunTerminated,
    RunTimeoutError,
    StartAborted,
    Terminated,
)
from ._heartbeat import check_interval, heartbeats
from ._logging import logger
from ._subscription import Handler, check_timeout, handler_name

if TYPE_CHECKING:
    import anyio

    from ._results import EmitReport

__all__ = ["Environment", "Run"]

T = TypeVar("T")

Callback = Handler | Iterable[Handler] | None


class Run:
    """One run of an environment, as seen from inside ``Environment.running``.

    The body may set ``attributes`` and ``exit_code``, which travel on the
    ``environment.exited`` event, and, when it ends normally but the work it supervised
    did not (a child process killed, say), ``outcome`` and ``error`` to say how it ended.
    """

    def __init__(
        self, environment: Environment, run_id: str, attributes: Mapping[str, Any]
    ) -> None:
        self.environment = environment
        self.run_id = run_id
        self.attributes: dict[str, Any] = dict(attributes)
        self.exit_code: int | None = None
        self.outcome: Outcome | None = None
        self.error: BaseException | None = None
        self.started_at = perf_counter()
        self.start_report: EmitReport | None = None
        self.exit_report: EmitReport | None = None
        self.exited: Event | None = None

    def __repr__(self) -> str:
        return f"<Run {self.run_id} of {self.environment.name!r}>"


def _callback_name(handler: Handler, option: str) -> str | None:
    # A lambda's name says nothing; the option it was given as says what it is for.
    return option if callable(handler) and handler_name(handler).endswith("<lambda>") else None


def _callbacks(value: Callback, option: str) -> list[Handler]:
    if value is None:
        return []
    if callable(value):
        return [value]
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{option} must be a callable or an iterable of callables, not {value!r}")
    try:
        handlers = list(value)
    except TypeError:
        raise TypeError(
            f"{option} must be a callable or an iterable of callables, not {value!r}"
        ) from None
    return handlers


class Environment:
    """Where a job runs, with ``on_start`` and ``on_exit`` callbacks.

    ``on_start`` and ``on_exit`` (a callable, or several) are subscribers of this
    environment's own ``environment.starting`` and ``environment.exited`` events on
    ``bus``; they may take the event or nothing. Any other subscriber of the bus listens
    alongside them. Without a ``bus`` the environment makes one of its own.

    Args:
        name: the environment's name (default: the class name).
        labels: an iterable of strings; subscriptions may filter on them.
        on_start: called before the body runs.
        on_exit: called after the body ends, however it ends.
        bus: the bus to emit on.
        exit_grace: seconds the ``exited`` emit may take once the body has ended.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        name: str | None = None,
        labels: Iterable[str] = (),
        on_start: Callback = None,
        on_exit: Callback = None,
        bus: EventBus | None = None,
        *,
        exit_grace: float = 30.0,
    ) -> None:
        if isinstance(labels, str):
            raise TypeError(f"labels must be an iterable of strings, not the string {labels!r}")
        self.name = name or type(self).__name__
        self.labels = frozenset(labels)
        for label in self.labels:
            if not isinstance(label, str):
                raise TypeError(f"labels must be strings, not {label!r}")
        self._owns_bus = bus is None
        self.bus = EventBus(name=self.name) if bus is None else bus
        self.exit_grace = check_timeout(exit_grace, "exit_grace") or 30.0
        self.info = EnvironmentInfo.current(self.name, self.labels)
        for handler in _callbacks(on_start, "on_start"):
            self.bus.subscribe(
                STARTING, handler, sender=self, name=_callback_name(handler, "on_start")
            )
        for handler in _callbacks(on_exit, "on_exit"):
            self.bus.subscribe(
                EXITED, handler, sender=self, name=_callback_name(handler, "on_exit")
            )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} labels={sorted(self.labels)}>"

    def event(self, name: str, run_id: str, **fields: Any) -> Event:
        """Build an event of this environment."""
        return Event(name=name, run_id=run_id, environment=self.info, **fields)

    async def emit(self, event: Event) -> EmitReport:
        """Emit an event of this environment on its bus (with this environment as sender)."""
        return await self.bus.emit(event, sender=self)

    def running(
        self,
        run_id: str | None = None,
        *,
        attributes: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        heartbeat: float | None = None,
    ) -> AbstractAsyncContextManager[Run]:
        """Run the body as one run of this environment.

        Emits ``environment.starting`` and waits for its blocking handlers, runs the body,
        then emits ``environment.exited`` exactly once, however the body ends: shielded
        from the body's cancellation and bounded by ``exit_grace``. The body's exception
        still reaches the caller.

        Args:
            run_id: the run's id (default: a new random one).
            attributes: JSON-safe data carried on both events.
            timeout: seconds the body may take; past it the body is cancelled, ``exited``
                says ``timeout`` and :exc:`~lifecycle.RunTimeoutError` is raised.
            heartbeat: emit ``environment.heartbeat`` every this many seconds while the
                body runs (see :func:`~lifecycle.heartbeats`); ``None`` sends none. The
                interval is also on the ``starting`` event, as the attribute
                ``heartbeat_interval``, so a watchdog knows what to expect from the start.

        Raises:
            StartAborted: a critical ``starting`` handler failed; the body did not run.
            RunTimeoutError: the body outlived ``timeout``.

        .. versionchanged:: 0.2
           ``starting`` carries ``heartbeat_interval`` when heartbeats are on.
        """
        return self._running(run_id, attributes=attributes, timeout=timeout, heartbeat=heartbeat)

    @asynccontextmanager
    async def lifespan(self, run: Run) -> AsyncIterator[None]:
        """What one run of this environment holds, from before ``starting`` to after ``exited``.

        Override it in a subclass whose runs need a resource of their own (a cluster to
        connect to, a container to start). It is entered before the ``starting`` event
        is built, so what it puts in ``run.attributes`` travels on ``starting``, and it is
        entered in the body's task, so a context variable it sets is seen by the body. It
        is left after ``exited`` was emitted, however the run ended, with the body's
        exception, if any. If entering it raises, there is no run and no event.

        .. versionadded:: 0.2
        """
        yield

    async def collect(self, run: Run, outcome: Outcome) -> None:
        """Add what the run did to ``run.attributes``, just before ``exited`` is built.

        Override it to read the resources the run used (metrics, log tails). It is called
        once per run, whatever the outcome (``aborted`` and ``cancelled`` too), shielded
        from cancellation and given at most ``exit_grace`` seconds; if it raises or runs
        out of time, the failure is logged and ``exited`` is emitted all the same.

        .. versionadded:: 0.2
        """

    @asynccontextmanager
    async def _running(
        self,
        run_id: str | None = None,
        *,
        attributes: Mapping[str, Any] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - a run's time limit, reported as outcome timeout
        heartbeat: float | None = None,
        heartbeat_interval: float | None = None,
        stop_starting: anyio.CancelScope | None = None,
    ) -> AsyncIterator[Run]:
        """:meth:`running`, plus what runners that handle signals need.

        Args:
            heartbeat_interval: announce this interval on ``starting`` although the beats
                are sent by the caller (default: ``heartbeat``).
            stop_starting: a scope around the ``starting`` emit that a stop request (a
                signal) cancels. The run then goes on without ``start_report`` and without
                checking critical handlers: the caller's body, told of the stop, must end
                at once, and ``exited`` follows.
        """
        import anyio

        timeout = check_timeout(timeout)
        heartbeat = check_interval(heartbeat)
        announced = check_interval(heartbeat_interval) or heartbeat
        run = Run(self, run_id or new_id(), attributes or {})
        async with self._lifespan(run):
            starting = self._starting_event(run, announced)
            try:
                with stop_starting or contextlib.nullcontext():
                    run.start_report = await self.emit(starting)
            except BaseException as exc:
                if is_cancellation(exc):
                    await self._exited(run, Outcome.CANCELLED)
                raise
            # No start report: a stop request cut the emit short (the caller logged it), and
            # the body, told of the stop, ends at once.
            if run.start_report is not None and run.start_report.critical_failures:
                aborted = StartAborted(self.name, run.start_report)
                await self._exited(run, Outcome.ABORTED, error=aborted)
                raise aborted
            deadline = anyio.current_time() + timeout if timeout is not None else float("inf")
            try:
                with anyio.CancelScope(deadline=deadline) as scope:
                    async with heartbeats(run, heartbeat):
                        yield run
            except BaseException as exc:
                outcome, exit_code = _classify(exc)
                await self._exited(run, outcome, error=exc, exit_code=exit_code)
                raise
            if scope.cancelled_caught:
                assert timeout is not None
                timed_out = RunTimeoutError(self.name, timeout)
                await self._exited(run, Outcome.TIMEOUT, error=timed_out)
                raise timed_out
            await self._exited(run, run.outcome or Outcome.SUCCEEDED, error=run.error)

    def _lifespan(self, run: Run) -> AbstractAsyncContextManager[None]:
        # Most environments hold nothing: no generator-based context per run for them.
        if type(self).lifespan is Environment.lifespan:
            return contextlib.nullcontext()
        return self.lifespan(run)

    def _starting_event(self, run: Run, heartbeat_interval: float | None) -> Event:
        attributes = run.attributes
        if heartbeat_interval is not None:
            attributes = {**attributes, "heartbeat_interval": heartbeat_interval}
        return self.event(STARTING, run.run_id, attributes=attributes)

    async def _exited(
        self,
        run: Run,
        outcome: Outcome,
        *,
        error: BaseException | None = None,
        exit_code: int | None = None,
        within: Within | None = None,
    ) -> None:
        """Collect and emit ``exited``, each step shielded and bounded by ``exit_grace``.

        ``within(step, seconds)`` runs a step so, and says whether it ended in time
        (default: with anyio's cancel scopes; ``lifecycle run``'s runner gives asyncio's).
        """
        within = within or _within
        outcome, exit_code = self._final(run, outcome, exit_code)
        collects = type(self).collect is not Environment.collect
        if collects and not await within(self._collect_safely(run, outcome), self.exit_grace):
            self._cut_off(run, "collect", outcome)
        event = self._exit_event(run, outcome, error, exit_code)
        if not await within(self._deliver_exited(run, event), self.exit_grace):
            self._cut_off(run, "exited handlers", outcome)

    def _final(
        self, run: Run, outcome: Outcome, exit_code: int | None
    ) -> tuple[Outcome, int | None]:
        if exit_code is None:
            exit_code = run.exit_code
        if outcome is Outcome.SUCCEEDED and exit_code:
            outcome = Outcome.FAILED
        return outcome, exit_code

    async def _collect_safely(self, run: Run, outcome: Outcome) -> None:
        try:
            await self.collect(run, outcome)
        except Exception:
            # What the run did is worth less than telling that it ended.
            logger.exception("collect failed", environment=self.name, run_id=run.run_id)

    def _exit_event(
        self, run: Run, outcome: Outcome, error: BaseException | None, exit_code: int | None
    ) -> Event:
        run.exited = self.event(
            EXITED,
            run.run_id,
            attributes=run.attributes,
            outcome=outcome,
            duration=perf_counter() - run.started_at,
            exit_code=exit_code,
            error=_error_info(error, outcome),
        )
        return run.exited

    async def _deliver_exited(self, run: Run, event: Event) -> None:
        try:
            run.exit_report = await self.emit(event)
        except LifecycleError as exc:
            # The run's own outcome (and exception) matters more than this failure, so
            # say loudly that the event was not delivered, and why, instead of raising.
            logger.error(
                "exited event not delivered",
                environment=self.name,
                run_id=run.run_id,
                outcome=event.outcome.value if event.outcome else None,
                reason=str(exc),
            )
            return
        if self._owns_bus:
            # Nobody else will close this bus: its background handlers end with the run.
            await self.bus.drain(self.exit_grace)

    def _cut_off(self, run: Run, what: str, outcome: Outcome) -> None:
        logger.error(
            f"{what} cut off by the exit grace period",
            environment=self.name,
            run_id=run.run_id,
            outcome=outcome.value,
            grace=self.exit_grace,
        )

    @overload
    async def run(
        self, fn: Callable[..., Awaitable[T]], *args: Any, run_id: str | None = None
    ) -> T: ...
    @overload
    async def run(self, fn: Callable[..., T], *args: Any, run_id: str | None = None) -> T: ...
    async def run(self, fn: Callable[..., Any], *args: Any, run_id: str | None = None) -> Any:
        """Run ``fn(*args)`` (async, or sync in a worker thread) as one run; return its result."""
        import anyio.to_thread

        async with self.running(run_id):
            if inspect.iscoroutinefunction(fn):
                return await fn(*args)
            result = await anyio.to_thread.run_sync(_call, fn, args, abandon_on_cancel=True)
            if inspect.isawaitable(result):
                return await result
            return result

    @overload
    def run_sync(
        self,
        fn: Callable[..., Awaitable[T]],
        *args: Any,
        run_id: str | None = None,
        backend: str = "asyncio",
    ) -> T: ...
    @overload
    def run_sync(
        self, fn: Callable[..., T], *args: Any, run_id: str | None = None, backend: str = "asyncio"
    ) -> T: ...
    def run_sync(
        self,
        fn: Callable[..., Any],
        *args: Any,
        run_id: str | None = None,
        backend: str = "asyncio",
    ) -> Any:
        """Run ``fn(*args)`` as one run from a program that is not async.

        SIGTERM and SIGINT (in the main thread) end the run with outcome ``terminated``
        and raise :exc:`~lifecycle.RunTerminated`; background handlers are drained before
        it is raised. During the ``starting`` emit, a signal cancels the emit and the body
        never runs. ``RunTerminated`` is a ``SystemExit`` whose code is 128 + the signal
        number: a program that does not catch it ends quietly with status 143 (SIGTERM)
        or 130 (SIGINT), as a supervisor expects, and no traceback.

        .. versionchanged:: 0.2
           A signal cancels a ``starting`` emit in flight; ``RunTerminated`` exits 128 + n.
        """
        from ._runner import run_blocking

        return run_blocking(self, fn, args, run_id=run_id, backend=backend)


Within = Callable[[Awaitable[object], float], Awaitable[bool]]
"""Runs a step shielded from cancellation for at most so many seconds; did it end?"""


async def _within(step: Awaitable[object], seconds: float) -> bool:
    import anyio

    with anyio.CancelScope(shield=True), anyio.move_on_after(seconds) as scope:
        await step
    return not scope.cancelled_caught


def is_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` is the event loop's cancellation (asyncio's, or trio's)."""
    if isinstance(exc, asyncio.CancelledError):
        return True
    trio = sys.modules.get("trio")  # imported already wherever trio runs
    return trio is not None and isinstance(exc, trio.Cancelled)


def _error_info(error: BaseException | None, outcome: Outcome) -> ErrorInfo | None:
    # Cancellation and a clean SystemExit are not errors; their exceptions are plumbing.
    if error is None or outcome in (Outcome.SUCCEEDED, Outcome.CANCELLED):
        return None
    return ErrorInfo.from_exception(error)


def _call(fn: Callable[..., T], args: tuple[Any, ...]) -> T:
    return fn(*args)


def _classify(exc: BaseException) -> tuple[Outcome, int | None]:
    """How an exception ending the body maps to an outcome and an exit code."""
    if isinstance(exc, Terminated):
        return Outcome.TERMINATED, 128 + exc.signum
    if isinstance(exc, RunTerminated):  # a nested blocking run; before SystemExit, its base
        return Outcome.TERMINATED, exc.exit_status
    if is_cancellation(exc):
        return Outcome.CANCELLED, None
    if isinstance(exc, KeyboardInterrupt):
        return Outcome.TERMINATED, 130
    if isinstance(exc, SystemExit):
        code = exc.code
        if code is None or code == 0:
            return Outcome.SUCCEEDED, 0
        return Outcome.FAILED, code if isinstance(code, int) else 1
    return Outcome.FAILED, None
