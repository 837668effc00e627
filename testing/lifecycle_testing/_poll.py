"""Waiting for a condition that nothing signals: looked at again and again, but bounded."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, TypeVar

import anyio

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["poll", "poll_blocking"]

T = TypeVar("T")

LIMIT = 20.0
"""Seconds before a wait fails: generous, as it only turns a hang into a failure."""
EVERY = 0.01
"""Seconds between two looks."""


async def poll(
    check: Callable[[], T], what: str, *, limit: float = LIMIT, context: object = None
) -> T:
    """Look at ``check()`` until it is truthy and return it; fail naming ``what`` after ``limit``.

    Only for state that changes with no event to wait on (another process, a server's
    count, another thread); wait on the event where there is one. ``context`` is shown
    on failure (a log, say).
    """
    try:
        with anyio.fail_after(limit):
            while not (value := check()):  # noqa: ASYNC110  # nothing to wait on but the state
                await anyio.sleep(EVERY)
    except TimeoutError:
        raise AssertionError(_gave_up(what, limit, context)) from None
    return value


def poll_blocking(
    check: Callable[[], T], what: str, *, limit: float = LIMIT, context: object = None
) -> T:
    """:func:`poll` for synchronous tests that drive other processes."""
    deadline = time.monotonic() + limit
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(_gave_up(what, limit, context))
        time.sleep(EVERY)
    return value


def _gave_up(what: str, limit: float, context: object) -> str:
    return f"gave up waiting for {what} after {limit} s" + (
        "" if context is None else f": {context!r}"
    )
