"""Dispatch plans: who receives one signal, grouped for dispatch, indexed by label.

A :class:`Plan` is built from a signal's receivers when they change and kept until they
change again. Emitting then costs what the matching handlers cost, not what all
subscribers cost:

- subscriptions with labels are indexed under one of their labels, so an event's labels
  pick the few buckets that can match; the handlers an event's label set reaches are
  worked out once per distinct label set (a :class:`Selection`) and remembered;
- subscriptions bound to a sender are found through blinker's own index by sender, and a
  sender without receivers of its own shares the plan of every such sender.

Both caches are bounded: :data:`MAX_PLANS` plans per bus and :data:`MAX_SELECTIONS` label
sets per plan, the oldest dropped first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from blinker import ANY

try:  # blinker's index of receivers by sender; private, so its absence is survivable
    from blinker._utilities import make_id as _make_id
except ImportError:  # pragma: no cover - another blinker: every sender gets its own plan
    _make_id = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from collections.abc import Callable

    import blinker

    from ._event import Event
    from ._subscription import Subscription

__all__ = [
    "MAX_PLANS",
    "MAX_SELECTIONS",
    "Group",
    "Plan",
    "PlanCache",
    "Selection",
    "TimeoutBuckets",
    "timeout_buckets",
]

MAX_PLANS = 256
"""Plans one bus keeps of each kind: per signal, for senders without receivers of their
own; and per signal and sender, for senders with some (or for every sender, when plain
blinker receivers are connected: they are handed the sender)."""

MAX_SELECTIONS = 64
"""Distinct event label sets one plan remembers the selected handlers of."""


def _order(sub: Subscription) -> tuple[int, int]:
    return (sub.order, sub.sequence)


TimeoutBuckets = tuple[tuple[float | None, tuple[int, ...]], ...]
"""Handlers by timeout: ``(timeout, indexes of the handlers)`` pairs."""


def timeout_buckets(subs: tuple[Subscription, ...]) -> TimeoutBuckets:
    """The handlers of ``subs`` that run as tasks or threads, by timeout, as indexes.

    The one place a handler's timeout is read for dispatch: handlers sharing a timeout
    share a deadline (one timer entry on asyncio, one cancel scope on trio). Buckets come
    in the order of their first handler; inline handlers have no timeout and are left out.
    """
    buckets: dict[float | None, list[int]] = {}
    for index, sub in enumerate(subs):
        if not sub.inline:
            buckets.setdefault(sub.timeout, []).append(index)
    return tuple((timeout, tuple(indexes)) for timeout, indexes in buckets.items())


class Group:
    """The handlers of one ``order`` in a selection: they run concurrently.

    ``calls`` holds the handlers' callables when every one of them is inline (the group
    then runs without tasks), else ``None``; ``timeouts`` holds the others by timeout
    (:func:`timeout_buckets`).
    """

    __slots__ = ("calls", "inline", "skip_yields", "subs", "timeouts")

    def __init__(self, subs: tuple[Subscription, ...]) -> None:
        self.subs = subs
        self.inline = any(sub.inline for sub in subs)
        self.calls: tuple[Callable[[Event], Any], ...] | None = (
            tuple(sub.call for sub in subs) if all(sub.inline for sub in subs) else None
        )
        self.timeouts = timeout_buckets(subs)
        # How many more emits go straight to waiting for its handlers instead of first
        # yielding to the loop for them (asyncio): set when the handlers were still
        # running after the yields, so a group of slow handlers does not pay for yields
        # that never finish them, and counted down so that it tries again.
        self.skip_yields = 0


class Selection:
    """The handlers one event reaches: blocking groups in ``order``, and background ones."""

    __slots__ = (
        "background",
        "background_names",
        "background_timeouts",
        "inline_only",
        "steps",
    )

    def __init__(self, subs: list[Subscription]) -> None:
        # ``subs`` is sorted by (order, sequence).
        groups: list[list[Subscription]] = []
        background: list[Subscription] = []
        for sub in subs:
            if sub.background:
                background.append(sub)
            elif groups and groups[-1][0].order == sub.order:
                groups[-1].append(sub)
            else:
                groups.append([sub])
        self.steps = tuple(Group(tuple(group)) for group in groups)
        self.background = tuple(background)
        self.background_names = tuple(sub.name for sub in background)
        self.background_timeouts = timeout_buckets(self.background)
        # When every handler is inline, the steps again, as (subscriptions, calls): the
        # emit then needs no loop, no task and no await. Empty otherwise.
        self.inline_only: tuple[
            tuple[tuple[Subscription, ...], tuple[Callable[[Event], Any], ...]], ...
        ] = ()
        if not background and all(group.calls is not None for group in self.steps):
            self.inline_only = tuple(
                (group.subs, group.calls) for group in self.steps if group.calls is not None
            )


class Plan:
    """Who receives one signal from one sender (or from any sender without its own).

    Args:
        subs: the subscriptions, in any order.
        receivers: how many receivers the signal had when this was built: a weakly held
            blinker receiver vanishes without a disconnect signal, and the count tells.
        takes_sender: some receiver is a plain blinker receiver, handed the sender.
    """

    __slots__ = ("by_label", "everyone", "receivers", "selections", "takes_sender", "unfiltered")

    def __init__(self, subs: list[Subscription], receivers: int, takes_sender: bool) -> None:
        subs = sorted(subs, key=_order)
        self.receivers = receivers
        self.takes_sender = takes_sender
        self.selections: dict[frozenset[str], Selection] = {}
        self.by_label: dict[str, list[Subscription]] = {}
        self.unfiltered: list[Subscription] = []
        for sub in subs:
            if sub.labels:
                # Any one of its labels will do: an event lacking it cannot match. The
                # smallest keeps the choice stable from one build to the next.
                self.by_label.setdefault(min(sub.labels), []).append(sub)
            else:
                self.unfiltered.append(sub)
        # Without label filters, every event reaches the same handlers.
        self.everyone: Selection | None = None if self.by_label else Selection(subs)

    def select(self, labels: frozenset[str]) -> Selection:
        """The handlers an event whose environment carries ``labels`` reaches."""
        if self.everyone is not None:
            return self.everyone
        try:
            selection = self.selections.get(labels)
        except TypeError:  # a set given to EnvironmentInfo directly
            return self.select(frozenset(labels))
        if selection is not None:
            return selection
        chosen = list(self.unfiltered)
        for label in labels:
            bucket = self.by_label.get(label)
            if bucket:
                chosen.extend(sub for sub in bucket if sub.labels <= labels)
        chosen.sort(key=_order)
        selection = Selection(chosen)
        if len(self.selections) >= MAX_SELECTIONS:
            del self.selections[next(iter(self.selections))]
        self.selections[labels] = selection
        return selection


NO_PLAN = Plan([], 0, False)


def has_own_receivers(signal: blinker.Signal, sender: Any) -> bool:
    """True if some receiver of ``signal`` is connected to ``sender`` itself (not ANY)."""
    if sender is ANY:
        return False
    by_sender = getattr(signal, "_by_sender", None)
    if by_sender is None or _make_id is None:
        return True  # cannot tell: give the sender its own plan, as the cache bound allows
    try:
        return bool(by_sender.get(_make_id(sender)))
    except TypeError:  # an unhashable id: blinker could not have indexed it either
        return False


class PlanCache:
    """Plans by signal for senders without receivers of their own, and by signal and
    ``id(sender)`` for the others; at most :data:`MAX_PLANS` of each, oldest dropped.

    A plan keyed by a sender's id either holds the sender (a plain blinker receiver's
    adapter is handed it) or exists because blinker indexes receivers under that sender,
    which a new object reusing a dead one's id only gets by connecting one: that clears
    the cache. So an id never picks up a dead sender's plan.
    """

    __slots__ = ("by_sender", "shared")

    def __init__(self) -> None:
        self.shared: dict[str, Plan] = {}
        self.by_sender: dict[tuple[str, int], Plan] = {}

    def __len__(self) -> int:
        return len(self.shared) + len(self.by_sender)

    def clear(self) -> None:
        self.shared.clear()
        self.by_sender.clear()

    def lookup(self, name: str, signal: blinker.Signal, sender: Any) -> Plan | None:
        """The plan for ``sender`` if one is cached and still current, else ``None``."""
        count = len(signal.receivers)
        if sender is ANY or not has_own_receivers(signal, sender):
            plan = self.shared.get(name)
            if plan is not None and plan.receivers == count:
                return plan
        plan = self.by_sender.get((name, id(sender)))
        if plan is not None and plan.receivers == count:
            return plan
        return None

    def store(self, name: str, signal: blinker.Signal, sender: Any, plan: Plan) -> None:
        """Keep ``plan``, built for ``sender``, for every sender it is good for."""
        if not plan.takes_sender and (sender is ANY or not has_own_receivers(signal, sender)):
            _bounded_put(self.shared, name, plan)
        else:
            _bounded_put(self.by_sender, (name, id(sender)), plan)


def _bounded_put(plans: dict[Any, Plan], key: Any, plan: Plan) -> None:
    plans.pop(key, None)
    if len(plans) >= MAX_PLANS:
        del plans[next(iter(plans))]
    plans[key] = plan
