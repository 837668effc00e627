"""The alternatives, each set up to deliver one event to the same N handlers.

Every handler is a distinct function (libraries that deduplicate receivers by identity
must see N of them) taking ``(*args, **kwargs)``, so each library calls it the way it
calls handlers, and each body does the same work. How each library is driven follows its
own documentation:

- blinker: ``await signal.send_async(sender, **kwargs)`` awaits the receivers one by one.
- Django: ``await signal.asend_robust(sender, **kwargs)`` gathers async receivers
  (``asyncio.gather``) and runs sync ones behind one ``sync_to_async``; it catches and logs
  each receiver's exception; there are no timeouts.
- pyee: ``AsyncIOEventEmitter.emit`` schedules coroutine handlers with ``ensure_future``
  and returns; ``await wait_for_complete()`` waits for them. Exceptions go to the
  ``error`` event, which is given a listener here.
- aiosignal: ``Signal(owner)``, handlers appended, ``freeze()``, then ``await send(...)``
  awaits them one by one.
- bubus: ``EventBus(parallel_handlers=True)``, ``bus.on(EventClass, handler)``, then
  ``await bus.dispatch(EventClass())`` waits for every handler; ``event_timeout`` bounds
  each handler; an exception becomes that handler's result.
"""

from __future__ import annotations

import asyncio
import contextlib
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.to_thread

from benchmarks._harness import Case, Flags

BENCH_SIGNAL = "bench"

FLOOR = Flags(isolates=False, concurrent=False, timeouts=False)
GATHER = Flags(isolates=False, concurrent=True, timeouts=False)
ISOLATED = Flags(isolates=True, concurrent=True, timeouts=True)
BLINKER = Flags(isolates=False, concurrent=False, timeouts=False)
DJANGO = Flags(isolates=True, concurrent=True, timeouts=False)
PYEE = Flags(isolates=True, concurrent=True, timeouts=False)
AIOSIGNAL = Flags(isolates=False, concurrent=False, timeouts=False)

Teardown = Callable[[], Awaitable[None]]

# -- handlers ------------------------------------------------------------------------------


def _named(fn: Any, index: int, kind: str) -> Any:
    fn.__name__ = fn.__qualname__ = f"{kind}_handler_{index}"
    return fn


def async_handlers(n: int) -> list[Any]:
    """Async handlers that finish without suspending."""

    def make(i: int) -> Any:
        async def handler(*args: Any, **kwargs: Any) -> None:
            return None

        return _named(handler, i, "async")

    return [make(i) for i in range(n)]


def suspending_handlers(
    n: int, checkpoint: Callable[[], Awaitable[None]] | None = None
) -> list[Any]:
    """Async handlers that suspend once (``asyncio.sleep(0)``, or ``checkpoint``)."""
    pause = checkpoint or (lambda: asyncio.sleep(0))

    def make(i: int) -> Any:
        async def handler(*args: Any, **kwargs: Any) -> None:
            await pause()

        return _named(handler, i, "suspending")

    return [make(i) for i in range(n)]


# How many times a "slow path" handler suspends: more than the bus's first yields (at most
# three; two that finish nothing end them), so it is still running when the bus starts
# waiting for it with done callbacks, timers and a waiter.
SLOW_STEPS = 4


def slow_handlers(n: int, checkpoint: Callable[[], Awaitable[None]] | None = None) -> list[Any]:
    """Async handlers still running after the bus's first yields (``SLOW_STEPS`` suspensions)."""
    pause = checkpoint or (lambda: asyncio.sleep(0))

    def make(i: int) -> Any:
        async def handler(*args: Any, **kwargs: Any) -> None:
            for _ in range(SLOW_STEPS):
                await pause()

        return _named(handler, i, "slow")

    return [make(i) for i in range(n)]


def sync_handlers(n: int) -> list[Any]:
    """Plain functions that return at once."""

    def make(i: int) -> Any:
        def handler(*args: Any, **kwargs: Any) -> None:
            return None

        return _named(handler, i, "sync")

    return [make(i) for i in range(n)]


async def _no_teardown() -> None:
    return None


# -- the floor and the standard library ------------------------------------------------------


def floor_async(handlers: list[Any], event: Any) -> Case:
    async def emit() -> None:
        for handler in handlers:
            await handler(event)

    return Case("plain loop (floor)", FLOOR, emit)


def floor_sync(handlers: list[Any], event: Any) -> Case:
    async def emit() -> None:
        for handler in handlers:
            handler(event)

    return Case("plain loop (floor)", FLOOR, emit)


def gather_async(handlers: list[Any], event: Any) -> Case:
    gather = asyncio.gather

    async def emit() -> None:
        await gather(*[handler(event) for handler in handlers])

    return Case("asyncio.gather", GATHER, emit)


def gather_threads(handlers: list[Any], event: Any) -> Case:
    async def emit() -> None:
        loop = asyncio.get_running_loop()
        await asyncio.gather(*[loop.run_in_executor(None, h, event) for h in handlers])

    return Case("asyncio.gather + run_in_executor", GATHER, emit)


# -- a naive isolated bus: one anyio task and one move_on_after per handler ------------------


async def _naive_one(handler: Any, event: Any, limit: float) -> None:
    with anyio.move_on_after(limit):
        with contextlib.suppress(Exception):
            await handler(event)


async def _naive_one_thread(handler: Any, event: Any, limit: float) -> None:
    with anyio.move_on_after(limit):
        with contextlib.suppress(Exception):
            await anyio.to_thread.run_sync(handler, event, abandon_on_cancel=True)


def naive_anyio(
    handlers: list[Any], event: Any, limit: float = 10.0, threads: bool = False
) -> Case:
    one = _naive_one_thread if threads else _naive_one

    async def emit() -> None:
        async with anyio.create_task_group() as tg:
            for handler in handlers:
                tg.start_soon(one, handler, event, limit)

    name = "naive anyio TG + move_on_after" + (" + to_thread" if threads else "")
    return Case(name, ISOLATED, emit)


# -- native trio: a nursery and one move_on_after per handler -------------------------------


async def _trio_one(handler: Any, event: Any, limit: float) -> None:
    import trio

    with trio.move_on_after(limit):
        with contextlib.suppress(Exception):
            await handler(event)


def native_trio(handlers: list[Any], event: Any, limit: float = 10.0) -> Case:
    """What the bus does on trio, written directly against trio (the floor for trio)."""
    import trio

    async def emit() -> None:
        async with trio.open_nursery() as nursery:
            for handler in handlers:
                nursery.start_soon(_trio_one, handler, event, limit)

    return Case("native trio nursery + move_on_after", ISOLATED, emit)


# -- lifecycle-bus ------------------------------------------------------------------------------


def make_event(name: str = BENCH_SIGNAL) -> Any:
    from lifecycle import EnvironmentInfo, Event

    return Event(name=name, run_id="bench", environment=EnvironmentInfo.current("bench"))


def bus_case(
    handlers: list[Any],
    event: Any,
    *,
    label: str = "lifecycle-bus",
    limit: float | None = 10.0,
    **options: Any,
) -> tuple[Case, Any]:
    from lifecycle import EventBus

    bus = EventBus("bench", default_timeout=limit, max_background=max(1000, 2 * len(handlers)))
    for handler in handlers:
        bus.subscribe(BENCH_SIGNAL, handler, **options)
    emit_on_bus = bus.emit

    async def emit() -> None:
        await emit_on_bus(event)

    return Case(label, ISOLATED, emit), bus


# -- third-party alternatives -------------------------------------------------------------------


def blinker_async(handlers: list[Any], event: Any) -> Case:
    import blinker

    signal = blinker.Signal()
    for handler in handlers:
        signal.connect(handler, weak=False)
    send = signal.send_async

    async def emit() -> None:
        await send(None, event=event)

    return Case("blinker send_async", BLINKER, emit)


def blinker_sync(handlers: list[Any], event: Any) -> Case:
    import blinker

    signal = blinker.Signal()
    for handler in handlers:
        signal.connect(handler, weak=False)
    send = signal.send

    async def emit() -> None:
        send(None, event=event)

    return Case("blinker send (sync, inline)", BLINKER, emit)


def configure_django() -> None:
    from django.conf import settings

    if not settings.configured:
        settings.configure(DEBUG=False, USE_TZ=True, LOGGING_CONFIG=None)


def django_case(handlers: list[Any], event: Any) -> Case:
    configure_django()
    from django.dispatch import Signal

    signal = Signal()
    for handler in handlers:
        signal.connect(handler, weak=False, dispatch_uid=handler.__name__)
    send = signal.asend_robust

    async def emit() -> None:
        await send(None, event=event)

    return Case("django asend_robust", DJANGO, emit)


def pyee_case(handlers: list[Any], event: Any) -> Case:
    from pyee.asyncio import AsyncIOEventEmitter

    emitter = AsyncIOEventEmitter()
    emitter.on("error", lambda exc: None)  # pyee routes handler exceptions here
    for handler in handlers:
        emitter.on(BENCH_SIGNAL, handler)
    fire = emitter.emit
    wait = emitter.wait_for_complete

    async def emit() -> None:
        fire(BENCH_SIGNAL, event)
        await wait()

    return Case("pyee AsyncIOEventEmitter", PYEE, emit)


def aiosignal_case(handlers: list[Any], event: Any) -> Case:
    from aiosignal import Signal

    signal: Any = Signal(owner=None)
    signal.extend(handlers)
    signal.freeze()
    send = signal.send

    async def emit() -> None:
        await send(event)

    return Case("aiosignal", AIOSIGNAL, emit)


def bubus_available() -> bool:
    try:
        import bubus  # noqa: F401
    except ImportError:
        return False
    return True


_bubus_sequence = 0


def bubus_case(
    handlers: list[Any], event: Any, limit: float = 10.0
) -> tuple[Case, Teardown] | None:
    """bubus, if installed (it needs Python 3.11+)."""
    if not bubus_available():
        return None
    import bubus

    global _bubus_sequence
    _bubus_sequence += 1

    from benchmarks._bubus_events import BenchEvent

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bus = bubus.EventBus(name=f"bench_{_bubus_sequence}", parallel_handlers=True)
        for handler in handlers:
            bus.on(BenchEvent, handler)

    async def emit() -> None:
        await bus.dispatch(BenchEvent(event_timeout=limit))

    async def teardown() -> None:
        with contextlib.suppress(Exception):
            await bus.stop(clear=True)

    return Case(
        "bubus (parallel_handlers)", ISOLATED, emit, note="event model built per emit"
    ), teardown
