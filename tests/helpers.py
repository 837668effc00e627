"""Small builders shared by the core tests."""

from __future__ import annotations

from typing import Any

from lifecycle import EXITED, STARTING, EnvironmentInfo, Event, Outcome


def starting(run_id: str = "run-1", labels: tuple[str, ...] = (), **attributes: Any) -> Event:
    return Event(
        name=STARTING,
        run_id=run_id,
        environment=EnvironmentInfo.current("test", labels),
        attributes=attributes,
    )


def exited(run_id: str = "run-1", outcome: Outcome = Outcome.SUCCEEDED) -> Event:
    return Event(
        name=EXITED,
        run_id=run_id,
        environment=EnvironmentInfo.current("test"),
        outcome=outcome,
        duration=0.0,
    )
