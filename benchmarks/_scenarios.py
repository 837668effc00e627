"""The scenarios of issue 5, on asyncio (all alternatives) and on trio (the bus).

Each latency scenario returns ``{N: {case name: summary}}``; summaries are
:meth:`benchmarks._harness.Case.summary` dicts (median, p99, spread, gc runs per 1000 emits).
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import tracemalloc
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import anyio

from benchmarks import _alternatives as alt
from benchmarks._harness import Case, compare

TIMEOUT_50MS = 0.05
IDLE_SUFFIX = " [no slow handlers, after 50 ms idle]"


@dataclass(frozen=True)
class Config:
    sizes: tuple[int, ...]
    isolation_sizes: tuple[int, ...]
    rounds: int
    budget: float
    isolation_rounds: int
    sustain_seconds: float
    memory_size: int
    trio: bool
    label_sizes: tuple[int, ...] = (10, 1000, 10000)
    big_size: int = 10000


Results = dict[int, dict[str, Any]]


async def _run(
    cases: list[Case],
    teardowns: list[Any],
    cfg: Config,
    rounds: int | None = None,
    freeze: bool = True,
) -> dict[str, Any]:
    try:
        await compare(cases, rounds or cfg.rounds, cfg.budget, freeze=freeze)
    finally:
        for teardown in teardowns:
            await teardown()
    return {case.name: case.summary() for case in cases}


async def _async_cases(handlers: list[Any], event: Any) -> tuple[list[Case], list[Any]]:
    cases = [
        alt.floor_async(handlers, event),
        alt.gather_async(handlers, event),
        alt.bus_case(handlers, event)[0],
        alt.django_case(handlers, event),
        alt.naive_anyio(handlers, event),
        alt.blinker_async(handlers, event),
        alt.pyee_case(handlers, event),
        alt.aiosignal_case(handlers, event),
    ]
    teardowns: list[Any] = []
    bubus = alt.bubus_case(handlers, event)
    if bubus is not None:
        cases.append(bubus[0])
        teardowns.append(bubus[1])
    return cases, teardowns


async def async_no_suspend(cfg: Config) -> Results:
    """Scenario 1: async handlers that finish without suspending."""
    event = alt.make_event()
    out: Results = {}
    for n in cfg.sizes:
        cases, teardowns = await _async_cases(alt.async_handlers(n), event)
        out[n] = await _run(cases, teardowns, cfg)
    return out


async def async_suspend(cfg: Config) -> Results:
    """Scenario 2: async handlers that suspend once."""
    event = alt.make_event()
    out: Results = {}
    for n in cfg.sizes:
        cases, teardowns = await _async_cases(alt.suspending_handlers(n), event)
        out[n] = await _run(cases, teardowns, cfg)
    return out


async def sync_handlers(cfg: Config) -> Results:
    """Scenario 3: plain functions, in worker threads and inline where offered."""
    event = alt.make_event()
    out: Results = {}
    for n in cfg.sizes:
        handlers = alt.sync_handlers(n)
        cases = [
            alt.floor_sync(handlers, event),
            alt.bus_case(handlers, event, label="lifecycle-bus inline=True", inline=True)[0],
            alt.blinker_sync(handlers, event),
            alt.bus_case(handlers, event, label="lifecycle-bus (threads)")[0],
            alt.gather_threads(handlers, event),
            alt.django_case(handlers, event),
            alt.naive_anyio(handlers, event, threads=True),
            alt.pyee_case(handlers, event),
        ]
        cases[-1].name = "pyee (sync handlers, inline)"
        cases[-3].name = "django asend_robust (one sync_to_async thread)"
        teardowns: list[Any] = []
        bubus = alt.bubus_case(handlers, event)
        if bubus is not None:
            cases.append(bubus[0])
            teardowns.append(bubus[1])
        out[n] = await _run(cases, teardowns, cfg)
    return out


async def slow_path(cfg: Config) -> Results:
    """Scenario 9: async handlers still running after the bus's first yields.

    Each handler suspends ``SLOW_STEPS`` times, so the bus gives up yielding and waits for
    it with done callbacks, a timer and a waiter: the path of handlers that do real I/O.
    """
    event = alt.make_event()
    out: Results = {}
    for n in cfg.sizes:
        handlers = alt.slow_handlers(n)
        cases = [
            alt.floor_async(handlers, event),
            alt.gather_async(handlers, event),
            alt.bus_case(handlers, event)[0],
            alt.naive_anyio(handlers, event),
        ]
        out[n] = await _run(cases, [], cfg)
    return out


MATCHING = "lifecycle-bus, the matching subscriber alone"


def _label_cases(others: int) -> list[Case]:
    from lifecycle import EnvironmentInfo, Event

    event = Event(
        name=alt.BENCH_SIGNAL,
        run_id="bench",
        environment=EnvironmentInfo.current("bench", labels=["web"]),
    )
    (handler,) = alt.async_handlers(1)
    alone, _ = alt.bus_case([handler], event, label=MATCHING, labels=["web"])
    crowded, bus = alt.bus_case(
        [handler], event, label=f"lifecycle-bus, 1 matching among {others}", labels=["web"]
    )
    for index, other in enumerate(alt.async_handlers(others)):
        bus.subscribe(alt.BENCH_SIGNAL, other, labels=[f"other-{index}"])
    return [alt.floor_async([handler], event), alone, crowded]


async def label_scaling(cfg: Config) -> Results:
    """Scenario 10: one subscriber whose labels match, among K whose labels do not.

    An emit should cost what its matching handlers cost, however many subscribers wait
    for other labels: the ratio of the crowded bus to the lone subscriber tells.
    """
    out: Results = {}
    for others in cfg.label_sizes:
        out[others] = await _run(_label_cases(others), [], cfg)
    return out


async def big(cfg: Config) -> Results:
    """Scenario 11: ``big_size`` non-suspending async handlers (set against trio's figure)."""
    if not cfg.big_size:
        return {}
    handlers = alt.async_handlers(cfg.big_size)
    event = alt.make_event()
    cases = [
        alt.floor_async(handlers, event),
        alt.gather_async(handlers, event),
        alt.bus_case(handlers, event)[0],
    ]
    return {cfg.big_size: await _run(cases, [], cfg, rounds=max(3, cfg.rounds // 3))}


async def unfrozen(cfg: Config) -> Results:
    """Scenario 12: scenario 1's bus and gather at the largest N, the heap not frozen.

    Every other comparison freezes the heap first, so full collections walk only what
    the measured code allocated. Here they walk everything this process holds (Django,
    matplotlib, bubus's history...), as in a real program with a big heap: the figures
    show what a full collection triggered by the emits' allocations costs.
    """
    n = max(cfg.sizes)
    handlers = alt.async_handlers(n)
    event = alt.make_event()
    cases = [alt.gather_async(handlers, event), alt.bus_case(handlers, event)[0]]
    for case in cases:
        case.name += " (heap not frozen)"
    return {n: await _run(cases, [], cfg, freeze=False)}


class _Finish:
    """Tells when the last of ``expected`` fast handlers finished (isolation scenario)."""

    def __init__(self) -> None:
        self.left = 0
        self.done_at = 0.0

    def fast_handler(self, index: int, pause: Any) -> Any:
        async def fast(*args: Any, **kwargs: Any) -> None:
            await pause()
            self.left -= 1
            if not self.left:
                self.done_at = perf_counter()

        fast.__name__ = fast.__qualname__ = f"fast_{index}"
        return fast

    def timed(self, inner: Any, expected: int, idle: float = 0.0) -> Any:
        """Time ``inner``; sleep ``idle`` seconds first, untimed, if given.

        The runs with the slow handlers start right after 50 ms of waiting for the
        hanging one, with caches and clocks cooled down; the runs without them get the
        same untimed pause, so the two start alike and the ratio compares dispatch only.
        """

        async def emit() -> tuple[float, float]:
            if idle:
                await anyio.sleep(idle)
            self.left = expected
            started = perf_counter()
            await inner()
            return perf_counter() - started, self.done_at - started

        return emit


async def _raises(*args: Any, **kwargs: Any) -> None:
    raise RuntimeError("this handler fails")


async def _hangs(*args: Any, **kwargs: Any) -> None:
    await asyncio.sleep(3600)


def _create_tasks_case(handlers: list[Any], event: Any) -> Case:
    tasks: set[asyncio.Task[Any]] = set()

    async def emit() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        started = perf_counter()
        for handler in handlers:
            task = loop.create_task(handler(event))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        returned = perf_counter() - started
        await asyncio.wait(tasks)
        return returned, perf_counter() - started

    return Case("create_task + set (baseline)", alt.FLOOR, emit)


def _bus_background_case(handlers: list[Any], event: Any) -> Case:
    case, bus = alt.bus_case(handlers, event, background=True)

    async def emit() -> tuple[float, float]:
        started = perf_counter()
        await bus.emit(event)
        returned = perf_counter() - started
        await bus.drain(None)
        return returned, perf_counter() - started

    case.emit = emit
    return case


def _pyee_background_case(handlers: list[Any], event: Any) -> Case:
    from pyee.asyncio import AsyncIOEventEmitter

    emitter = AsyncIOEventEmitter()
    emitter.on("error", lambda exc: None)
    for handler in handlers:
        emitter.on(alt.BENCH_SIGNAL, handler)

    async def emit() -> tuple[float, float]:
        started = perf_counter()
        emitter.emit(alt.BENCH_SIGNAL, event)
        returned = perf_counter() - started
        await emitter.wait_for_complete()
        return returned, perf_counter() - started

    return Case("pyee emit (scheduled)", alt.PYEE, emit)


def _bubus_background_case(handlers: list[Any], n: int) -> tuple[Case, Any] | None:
    if not alt.bubus_available():
        return None
    import warnings

    import bubus

    from benchmarks._bubus_events import BenchEvent

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bus = bubus.EventBus(name=f"background_{n}", parallel_handlers=True)
        for handler in handlers:
            bus.on(BenchEvent, handler)

    async def emit() -> tuple[float, float]:
        started = perf_counter()
        pending = bus.dispatch(BenchEvent())
        returned = perf_counter() - started
        await pending
        return returned, perf_counter() - started

    async def stop() -> None:
        await bus.stop(clear=True)

    return Case("bubus dispatch (queued)", alt.ISOLATED, emit), stop


async def background(cfg: Config) -> Results:
    """Scenario 4: background handlers: time for emit to return, and until all are done.

    The primary figure is the return of emit; the secondary one is when every handler
    has finished. The baseline creates the tasks with ``loop.create_task`` and keeps them
    in a set with a ``discard`` done callback, the documented fire-and-forget idiom.
    """
    event = alt.make_event()
    out: Results = {}
    for n in cfg.sizes:
        handlers = alt.suspending_handlers(n)
        cases = [
            _create_tasks_case(handlers, event),
            _bus_background_case(handlers, event),
            _pyee_background_case(handlers, event),
        ]
        teardowns: list[Any] = []
        bubus = _bubus_background_case(handlers, n)
        if bubus is not None:
            cases.append(bubus[0])
            teardowns.append(bubus[1])
        out[n] = await _run(cases, teardowns, cfg)
    return out


def _gather_wait_for(handlers: list[Any], event: Any) -> Any:
    async def emit() -> None:
        await asyncio.gather(
            *[asyncio.wait_for(h(event), TIMEOUT_50MS) for h in handlers],
            return_exceptions=True,
        )

    return emit


def _isolation_cases(n: int, event: Any) -> tuple[list[Case], list[Any]]:
    finish = _Finish()
    fast = [finish.fast_handler(i, _sleep0) for i in range(n - 2)]
    cases: list[Case] = []
    teardowns: list[Any] = []
    for with_slow in (True, False):
        handlers = [*fast, _raises, _hangs] if with_slow else list(fast)
        suffix = "" if with_slow else " [no slow handlers]"
        inner: list[tuple[str, Any]] = [
            ("lifecycle-bus", alt.bus_case(handlers, event, limit=TIMEOUT_50MS)[0].emit),
            (
                "naive anyio TG + move_on_after",
                alt.naive_anyio(handlers, event, limit=TIMEOUT_50MS).emit,
            ),
            ("asyncio.gather + wait_for", _gather_wait_for(handlers, event)),
        ]
        bubus = alt.bubus_case(handlers, event, limit=TIMEOUT_50MS)
        if bubus is not None:
            inner.append((bubus[0].name, bubus[0].emit))
            teardowns.append(bubus[1])
        for name, emit in inner:
            cases.append(Case(name + suffix, alt.ISOLATED, finish.timed(emit, n - 2)))
            if not with_slow:
                cases.append(
                    Case(name + IDLE_SUFFIX, alt.ISOLATED, finish.timed(emit, n - 2, TIMEOUT_50MS))
                )
    return cases, teardowns


def _sleep0() -> Any:
    return asyncio.sleep(0)


async def isolation(cfg: Config) -> Results:
    """Scenario 5: N-2 fast handlers, one that raises, one that hangs; 50 ms timeout.

    Primary figure: emit returned; secondary: the last fast handler finished. Each
    alternative that isolates failures and enforces timeouts runs with and without the
    two slow handlers.
    """
    out: Results = {}
    event = alt.make_event()
    for n in cfg.isolation_sizes:
        cases, teardowns = _isolation_cases(n, event)
        out[n] = await _run(cases, teardowns, cfg, rounds=cfg.isolation_rounds)
    return out


def _environment_cases(n: int) -> list[Case]:
    from lifecycle import EXITED, STARTING, Environment, EventBus

    starting = alt.async_handlers(n)
    exited = alt.async_handlers(n)
    bus = EventBus("env-bench")
    env = Environment("bench", bus=bus)
    for handler in starting:
        bus.subscribe(STARTING, handler, sender=env)
    for handler in exited:
        bus.subscribe(EXITED, handler, sender=env)
    start_event = env.event(STARTING, "r")
    exit_event = env.event(EXITED, "r")

    async def floor() -> None:
        for handler in starting:
            await handler(start_event)
        for handler in exited:
            await handler(exit_event)

    async def two_emits() -> None:
        await env.emit(env.event(STARTING, "r"))
        await env.emit(env.event(EXITED, "r"))

    async def running() -> None:
        async with env.running():
            pass

    return [
        Case("plain loops (floor, prebuilt events)", alt.FLOOR, floor),
        Case("lifecycle-bus: 2 emits (new events)", alt.ISOLATED, two_emits),
        Case("Environment.running() empty body", alt.ISOLATED, running),
    ]


async def environment_run(cfg: Config) -> Results:
    """Scenario 6: ``async with env.running(): pass`` with N handlers on each signal."""
    out: Results = {}
    for n in cfg.sizes:
        out[n] = await _run(_environment_cases(n), [], cfg)
    return out


def _rss_kib() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError):
        return 0


async def sustained(cfg: Config) -> dict[int, dict[str, Any]]:
    """Scenario 8: events per second for ``sustain_seconds`` with a steady subscriber set.

    Memory is read after the first fifth (the warm-up) and at the end: the growth of the
    resident set and of the interpreter's allocated blocks tells whether it stays flat.
    """
    event = alt.make_event()
    out: dict[int, dict[str, Any]] = {}
    for n in cfg.sizes:
        handlers = alt.async_handlers(n)
        cases = [
            alt.floor_async(handlers, event),
            alt.gather_async(handlers, event),
            alt.django_case(handlers, event),
            alt.bus_case(handlers, event)[0],
        ]
        out[n] = {}
        for case in cases:
            emit = case.emit
            count = 0
            started = perf_counter()
            warm_end = started + cfg.sustain_seconds / 5
            end = started + cfg.sustain_seconds
            while perf_counter() < warm_end:
                await emit()
                count += 1
            gc.collect()
            rss0, blocks0, count0, t0 = _rss_kib(), sys.getallocatedblocks(), count, perf_counter()
            while perf_counter() < end:
                for _ in range(16):
                    await emit()
                count += 16
            elapsed = perf_counter() - t0
            gc.collect()
            out[n][case.name] = {
                "events_per_s": (count - count0) / elapsed,
                "seconds": elapsed,
                "rss_growth_kib": _rss_kib() - rss0,
                "allocated_blocks_growth": sys.getallocatedblocks() - blocks0,
            }
    return out


async def memory(cfg: Config) -> dict[str, Any]:
    """Scenario 7: bytes per subscription and per in-flight background handler."""
    n = cfg.memory_size
    event = alt.make_event()
    per_sub: dict[str, float] = {}

    def measure(label: str, build: Any) -> None:
        handlers = alt.async_handlers(n)
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        keep = build(handlers)
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        per_sub[label] = (after - before) / n
        del keep

    from lifecycle import EventBus

    def build_bus(handlers: list[Any]) -> Any:
        bus = EventBus("mem")
        for handler in handlers:
            bus.subscribe(alt.BENCH_SIGNAL, handler)
        bus._plan(alt.BENCH_SIGNAL, None)  # the dispatch plan is part of the cost
        return bus

    measure("lifecycle-bus subscribe", build_bus)
    measure("blinker connect", lambda hs: alt.blinker_async(hs, event))
    measure("django connect", lambda hs: alt.django_case(hs, event))
    measure("pyee on", lambda hs: alt.pyee_case(hs, event))
    measure("aiosignal append", lambda hs: alt.aiosignal_case(hs, event))

    in_flight: dict[str, float] = {}
    gate = asyncio.Event()

    def blocked(i: int) -> Any:
        async def handler(*args: Any, **kwargs: Any) -> None:
            await gate.wait()

        handler.__name__ = f"blocked_{i}"
        return handler

    async def measure_in_flight(label: str, start: Any, finish: Any) -> None:
        handlers = [blocked(i) for i in range(n)]
        gate.clear()
        target = await start(handlers, setup=True)
        await asyncio.sleep(0)
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        await start(handlers, setup=False, target=target)
        await asyncio.sleep(0)
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        in_flight[label] = (after - before) / n
        gate.set()
        await finish(target)

    async def bus_start(handlers: list[Any], setup: bool, target: Any = None) -> Any:
        if setup:
            bus = EventBus("mem-bg", max_background=2 * n)
            for handler in handlers:
                bus.subscribe(alt.BENCH_SIGNAL, handler, background=True)
            bus._plan(alt.BENCH_SIGNAL, None)
            return bus
        await target.emit(event)
        return None

    async def bus_finish(bus: Any) -> None:
        await bus.aclose()

    tasks: set[asyncio.Task[Any]] = set()

    async def tasks_start(handlers: list[Any], setup: bool, target: Any = None) -> Any:
        if setup:
            return handlers
        loop = asyncio.get_running_loop()
        for handler in target:
            task = loop.create_task(handler(event))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        return None

    async def tasks_finish(_: Any) -> None:
        await asyncio.wait(tasks)

    async def pyee_start(handlers: list[Any], setup: bool, target: Any = None) -> Any:
        if setup:
            from pyee.asyncio import AsyncIOEventEmitter

            emitter = AsyncIOEventEmitter()
            for handler in handlers:
                emitter.on(alt.BENCH_SIGNAL, handler)
            return emitter
        target.emit(alt.BENCH_SIGNAL, event)
        return None

    async def pyee_finish(emitter: Any) -> None:
        await emitter.wait_for_complete()

    await measure_in_flight("create_task + set (baseline)", tasks_start, tasks_finish)
    await measure_in_flight("lifecycle-bus background", bus_start, bus_finish)
    await measure_in_flight("pyee emit", pyee_start, pyee_finish)
    return {"size": n, "bytes_per_subscription": per_sub, "bytes_per_in_flight_handler": in_flight}


# -- trio --------------------------------------------------------------------------------------


async def trio_suite(cfg: Config) -> dict[str, Results]:
    """The bus on trio (through anyio), beside the plain loop and the naive anyio bus."""
    import trio

    event = alt.make_event()
    out: dict[str, Results] = {
        "async": {},
        "suspend": {},
        "slow": {},
        "sync": {},
        "isolation": {},
    }
    for n in cfg.sizes:
        for key, handlers in (
            ("async", alt.async_handlers(n)),
            ("suspend", alt.suspending_handlers(n, trio.lowlevel.checkpoint)),
            ("slow", alt.slow_handlers(n, trio.lowlevel.checkpoint)),
        ):
            cases = [
                alt.floor_async(handlers, event),
                alt.bus_case(handlers, event)[0],
                alt.native_trio(handlers, event),
                alt.naive_anyio(handlers, event),
            ]
            out[key][n] = await _run(cases, [], cfg)
        sync = alt.sync_handlers(n)
        cases = [
            alt.floor_sync(sync, event),
            alt.bus_case(sync, event, label="lifecycle-bus inline=True", inline=True)[0],
            alt.bus_case(sync, event, label="lifecycle-bus (threads)")[0],
        ]
        out["sync"][n] = await _run(cases, [], cfg)
    if cfg.big_size:
        handlers = alt.async_handlers(cfg.big_size)
        cases = [
            alt.floor_async(handlers, event),
            alt.bus_case(handlers, event)[0],
            alt.native_trio(handlers, event),
        ]
        out["async"][cfg.big_size] = await _run(cases, [], cfg, rounds=max(3, cfg.rounds // 3))
    for n in cfg.isolation_sizes:
        finish = _Finish()
        fast = [finish.fast_handler(i, trio.lowlevel.checkpoint) for i in range(n - 2)]
        cases = []
        for with_slow in (True, False):
            handlers = [*fast, _raises, _trio_hangs] if with_slow else list(fast)
            inner = alt.bus_case(handlers, event, limit=TIMEOUT_50MS)[0].emit
            name = "lifecycle-bus" + ("" if with_slow else " [no slow handlers]")
            cases.append(Case(name, alt.ISOLATED, finish.timed(inner, n - 2)))
            if not with_slow:
                cases.append(
                    Case(
                        "lifecycle-bus" + IDLE_SUFFIX,
                        alt.ISOLATED,
                        finish.timed(inner, n - 2, TIMEOUT_50MS),
                    )
                )
        out["isolation"][n] = await _run(cases, [], cfg, rounds=cfg.isolation_rounds)
    return out


async def _trio_hangs(*args: Any, **kwargs: Any) -> None:
    import trio

    await trio.sleep(3600)
