"""Flows the tests run in a child process: ``python prefect_flows.py NAME ...``.

Each named flow is called in turn and ``RET name value`` or ``RAISED name error`` is
printed. The handlers below are what the tests' ``lifecycle.toml`` names
(``prefect_flows:note`` ...); they record every event as a JSON line in ``$NOTES``.
"""

from __future__ import annotations

import atexit
import os
import sys
import time
from typing import TYPE_CHECKING, Any

import lifecycle_prefect
from prefect import flow
from prefect.states import Cancelled

if TYPE_CHECKING:
    from lifecycle import Event

BEAT = float(os.environ.get("BEAT", "30"))


def note(event: Event) -> None:
    with open(os.environ["NOTES"], "a", encoding="utf-8") as notes:
        notes.write(event.to_json() + "\n")


def hang(event: Event) -> None:
    time.sleep(60)  # a daemon thread, abandoned at the handler's timeout


def fail(event: Event) -> None:
    raise RuntimeError("this handler always fails")


@lifecycle_prefect.observe(heartbeat=BEAT)
@flow
def succeeds() -> int:
    return 42


@lifecycle_prefect.observe(heartbeat=BEAT)
@flow
def fails() -> None:
    raise ValueError("the flow's own error")


@lifecycle_prefect.observe(heartbeat=BEAT)
@flow(timeout_seconds=0.3)
def outlives_its_timeout() -> None:
    time.sleep(5)


@lifecycle_prefect.observe(heartbeat=BEAT)
@flow
def cancels_itself() -> Any:
    return Cancelled(message="nothing to do today")


@lifecycle_prefect.observe(heartbeat=BEAT)
@flow
def calls_a_subflow() -> int:
    return succeeds() + 1


@lifecycle_prefect.observe(heartbeat=BEAT)
@flow
def waits_to_be_killed() -> None:
    print("WAITING", flush=True)
    time.sleep(60)


@lifecycle_prefect.observe(heartbeat=BEAT)
@flow
def lingers_after_completion() -> int:
    # The process outlives its flow run by many heartbeat intervals, as a process
    # flushing logs or closing a pool does.
    atexit.register(time.sleep, 10 * BEAT)
    return 7


if __name__ == "__main__":
    if sys.argv[1:] == ["serve"]:
        # Prefect's runner polls for this deployment's runs and starts each in a process
        # of its own that imports this file.
        succeeds.serve(name="served")
    for name in sys.argv[1:]:
        try:
            print("RET", name, globals()[name](), flush=True)
        except Exception as exc:
            print("RAISED", name, repr(exc), flush=True)
