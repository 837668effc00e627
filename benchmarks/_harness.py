"""Timing machinery: cases alternated round by round, per-emit samples, gc runs.

A *case* is one way of delivering one event to N handlers (the bus, ``asyncio.gather``,
Django, ...). Its ``emit`` is an ``async`` callable; the harness times each call with
``perf_counter``, unless ``emit`` returns its own figures: a tuple ``(primary, secondary)``
of seconds, for scenarios that measure two moments of one emit (background: return and
all done; isolation: fast handlers done and emit returned).

Every case of a comparison runs one batch per round, in an order that rotates from round
to round, so a noisy neighbour on the machine hits all of them alike and the ratios hold.
"""

from __future__ import annotations

import gc
import math
import statistics
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from time import perf_counter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Self

Emit = Callable[[], Awaitable[Any]]


class GcCounter:
    """Counts garbage-collector runs (all generations) through ``gc.callbacks``."""

    def __init__(self) -> None:
        self.runs = 0
        self.by_generation = [0, 0, 0]

    def __enter__(self) -> Self:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.runs += 1
            self.by_generation[info["generation"]] += 1


GC = GcCounter()


@dataclass(frozen=True)
class Flags:
    """What an alternative offers: failure isolation, concurrency, timeouts."""

    isolates: bool
    concurrent: bool
    timeouts: bool

    def marks(self) -> str:
        return "".join(
            "y" if flag else "-" for flag in (self.isolates, self.concurrent, self.timeouts)
        )


@dataclass(eq=False)
class Case:
    """One alternative in one comparison, and what it measured."""

    name: str
    flags: Flags
    emit: Emit
    note: str = ""
    samples: list[float] = field(default_factory=list)
    secondary: list[float] = field(default_factory=list)
    round_medians: list[float] = field(default_factory=list)
    gc_runs: int = 0
    gc_full_runs: int = 0
    emits: int = 0
    batch: int = 1

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "flags": {
                "isolates": self.flags.isolates,
                "concurrent": self.flags.concurrent,
                "timeouts": self.flags.timeouts,
            },
            "emits": self.emits,
            "rounds": len(self.round_medians),
            "batch": self.batch,
            "gc_runs_per_1000_emits": 1000 * self.gc_runs / self.emits if self.emits else None,
            # Full (generation 2) collections: they walk the whole unfrozen heap, which is
            # where gc.freeze (see compare) makes them cheaper than in a real program.
            "gc_full_runs_per_1000_emits": (
                1000 * self.gc_full_runs / self.emits if self.emits else None
            ),
        }
        out.update(_stats(self.samples, self.round_medians))
        if self.secondary:
            second = _stats(self.secondary, [])
            out["secondary_median_s"] = second["median_s"]
            out["secondary_p99_s"] = second["p99_s"]
        if self.note:
            out["note"] = self.note
        return out


def _stats(samples: list[float], round_medians: list[float]) -> dict[str, Any]:
    if not samples:
        return {"median_s": None, "p99_s": None, "spread": None}
    ordered = sorted(samples)
    median = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
    spread = None
    if len(round_medians) > 1 and median > 0:
        # Spread between rounds: (slowest round median - fastest) / overall median.
        spread = (max(round_medians) - min(round_medians)) / median
    return {"median_s": median, "p99_s": p99, "spread": spread}


async def _batch(case: Case, count: int) -> list[float]:
    emit = case.emit
    clock = perf_counter
    taken: list[float] = []
    append = taken.append
    for _ in range(count):
        started = clock()
        figures = await emit()
        if figures is None:
            append(clock() - started)
        else:
            append(figures[0])
            case.secondary.append(figures[1])
    return taken


# A case whose single emit takes longer than this is measured on its warm-up emits only:
# bubus at N = 1000 takes seconds per emit, and more with every emit it has seen.
TOO_SLOW = 0.2


async def compare(
    cases: list[Case], rounds: int, budget: float, max_batch: int = 5000, freeze: bool = True
) -> None:
    """Run ``rounds`` rounds of every case; each batch takes about ``budget`` seconds.

    The heap is collected and frozen first (``gc.freeze``): objects left by earlier
    comparisons (bubus keeps its event history, Django and matplotlib their modules) then
    stay out of full collections, which walk only what the measured code allocates. A
    full collection during one comparison so costs the same whatever ran before it. That
    also hides what a full collection costs in a program with a big heap: ``freeze=False``
    measures with the heap as it is (scenario 12).
    """
    gc.collect()
    if freeze:
        gc.freeze()
    try:
        await _compare(cases, rounds, budget, max_batch)
    finally:
        if freeze:
            gc.unfreeze()


async def _compare(cases: list[Case], rounds: int, budget: float, max_batch: int) -> None:
    # Warm up (first-call costs, caches, thread start-up) and size each case's batch.
    slow: list[Case] = []
    for case in cases:
        started = perf_counter()
        warm = 0
        warm_times: list[float] = []
        while warm < 3 or (perf_counter() - started < budget / 2 and warm < max_batch):
            began = perf_counter()
            taken = await _batch(case, 1)
            warm_times.append(perf_counter() - began)
            warm += 1
            if perf_counter() - began > TOO_SLOW:
                slow.append(case)
                case.samples.extend(taken)
                case.emits += 1
                case.note = (case.note + "; " if case.note else "") + (
                    f"too slow for rounds (one emit took {perf_counter() - began:.2f} s): "
                    "one emit measured"
                )
                break
        if case in slow:
            continue
        # The median warm-up emit, not the mean: a first emit that builds caches (a bus's
        # dispatch plan over 10,000 subscribers) would make the batches a few emits long.
        per_emit = statistics.median(warm_times)
        case.batch = max(1, min(max_batch, int(budget / per_emit) if per_emit > 0 else max_batch))
        case.secondary.clear()
    cases = [case for case in cases if case not in slow]
    for round_index in range(rounds):
        shift = round_index % len(cases)
        for case in cases[shift:] + cases[:shift]:
            before, full_before = GC.runs, GC.by_generation[2]
            taken = await _batch(case, case.batch)
            case.gc_runs += GC.runs - before
            case.gc_full_runs += GC.by_generation[2] - full_before
            case.emits += len(taken)
            case.samples.extend(taken)
            case.round_medians.append(statistics.median(taken))
