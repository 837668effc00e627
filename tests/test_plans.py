"""Dispatch plans: bounded per sender, and indexed by label so an emit skips other labels."""

from __future__ import annotations

from typing import Any

import pytest

from lifecycle import STARTING, Environment, EnvironmentInfo, Event, EventBus
from lifecycle._plan import MAX_PLANS, MAX_SELECTIONS

from .helpers import starting

pytestmark = pytest.mark.anyio


class _Sender:
    """A sender object, weakly referenceable like an Environment."""


class _CountingLabels(frozenset[str]):
    """A label set that counts how often a filter looks at it."""

    looks = 0

    def _look(self) -> None:
        type(self).looks += 1

    def __le__(self, other: Any) -> bool:
        self._look()
        return super().__le__(other)

    def issubset(self, other: Any) -> bool:
        self._look()
        return super().issubset(other)

    def __iter__(self) -> Any:
        self._look()
        return super().__iter__()

    def __contains__(self, item: object) -> bool:
        self._look()
        return super().__contains__(item)


async def test_senders_without_receivers_of_their_own_share_one_plan() -> None:
    bus = EventBus()
    seen: list[str] = []
    bus.subscribe(STARTING, lambda e: seen.append(e.run_id), inline=True)
    senders = [_Sender() for _ in range(5000)]
    for index, sender in enumerate(senders):
        await bus.emit(starting(f"run-{index}"), sender=sender)
    del senders
    assert len(seen) == 5000
    assert len(bus._plans) == 1


async def test_environment_runs_leave_a_bounded_plan_cache() -> None:
    bus = EventBus()
    bus.subscribe(STARTING, lambda e: None, inline=True)
    for index in range(300):
        env = Environment(f"job-{index}", bus=bus, on_start=[lambda: None])
        async with env.running():
            pass
    del env
    assert len(bus._plans) <= 2


async def test_plans_for_plain_blinker_receivers_are_bounded_per_sender() -> None:
    bus = EventBus()
    got: list[object] = []

    def receiver(sender: object, event: Any) -> None:
        got.append(sender)

    bus.signal(STARTING).connect(receiver, weak=False)
    senders = [_Sender() for _ in range(MAX_PLANS + 50)]
    for sender in senders:
        await bus.emit(starting(), sender=sender)
    assert got == senders  # each receiver call was handed its own sender
    assert len(bus._plans) <= MAX_PLANS


async def test_a_sender_with_its_own_subscription_gets_it_and_others_do_not() -> None:
    bus = EventBus()
    mine, other = _Sender(), _Sender()
    seen: list[str] = []
    bus.subscribe(STARTING, lambda e: seen.append("any"), inline=True)
    bus.subscribe(STARTING, lambda e: seen.append("mine"), inline=True, sender=mine)
    await bus.emit(starting(), sender=other)
    await bus.emit(starting(), sender=mine)
    await bus.emit(starting(), sender=other)
    assert seen == ["any", "any", "mine", "any"]


async def test_an_emit_looks_only_at_subscriptions_that_can_match_its_labels() -> None:
    bus = EventBus()
    seen: list[str] = []
    for index in range(1000):
        sub = bus.subscribe(STARTING, lambda e: seen.append("other"), labels=[f"other-{index}"])
        sub.labels = _CountingLabels(sub.labels)
    match = bus.subscribe(STARTING, lambda e: seen.append("web"), labels=["web"], inline=True)
    match.labels = _CountingLabels(match.labels)
    await bus.emit(starting(labels=("web", "eu")))  # builds the plan
    _CountingLabels.looks = 0
    for _ in range(10):
        await bus.emit(starting(labels=("web", "eu")))
    assert seen == ["web"] * 11
    assert _CountingLabels.looks <= 10


async def test_label_matching_keeps_order_and_subset_semantics() -> None:
    bus = EventBus()
    seen: list[str] = []

    def record(tag: str) -> Any:
        return lambda e: seen.append(tag)

    bus.subscribe(STARTING, record("late-any"), order=2, inline=True)
    bus.subscribe(STARTING, record("gpu+nightly"), labels=["gpu", "nightly"], inline=True)
    bus.subscribe(STARTING, record("early-gpu"), labels=["gpu"], order=-1, inline=True)
    bus.subscribe(STARTING, record("any"), inline=True)
    bus.subscribe(STARTING, record("cpu"), labels=["cpu"], inline=True)
    await bus.emit(starting(labels=("gpu",)))
    assert seen == ["early-gpu", "any", "late-any"]
    seen.clear()
    await bus.emit(starting(labels=("nightly", "gpu")))
    assert seen == ["early-gpu", "gpu+nightly", "any", "late-any"]
    seen.clear()
    await bus.emit(starting())
    assert seen == ["any", "late-any"]


async def test_many_distinct_label_sets_keep_a_bounded_selection_cache() -> None:
    bus = EventBus()
    seen: list[str] = []
    bus.subscribe(STARTING, lambda e: seen.append(e.run_id), labels=["web"], inline=True)
    for index in range(MAX_SELECTIONS * 2):
        await bus.emit(starting(f"r{index}", labels=("web", f"host-{index}")))
    assert len(seen) == MAX_SELECTIONS * 2
    plan = bus._plan(STARTING, None)
    assert len(plan.selections) <= MAX_SELECTIONS


async def test_a_new_subscription_reaches_the_next_emit_with_the_same_labels() -> None:
    bus = EventBus()
    seen: list[str] = []
    bus.subscribe(STARTING, lambda e: seen.append("first"), labels=["web"], inline=True)
    await bus.emit(starting(labels=("web",)))
    bus.subscribe(STARTING, lambda e: seen.append("second"), labels=["web"], inline=True)
    await bus.emit(starting(labels=("web",)))
    assert seen == ["first", "first", "second"]


async def test_an_environment_built_with_a_plain_set_of_labels_still_matches() -> None:
    bus = EventBus()
    seen: list[str] = []
    bus.subscribe(STARTING, lambda e: seen.append(e.run_id), labels=["web"], inline=True)
    event = Event(
        name=STARTING,
        run_id="r",
        environment=EnvironmentInfo(name="x", labels={"web", "eu"}),  # type: ignore[arg-type]
    )
    await bus.emit(event)
    await bus.emit(event)
    assert seen == ["r", "r"]
