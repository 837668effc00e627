"""Prefect states as lifecycle outcomes, and what a run's ``exited`` says about them."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any
from uuid import UUID

import structlog

from lifecycle import Outcome

if TYPE_CHECKING:
    from prefect.client.schemas.objects import State

__all__ = ["FlowRunFailed", "final_state_of", "outcome_of", "task_run_counts"]

logger = structlog.get_logger("lifecycle.prefect")


class FlowRunFailed(Exception):
    """A flow run ended badly and Prefect kept no exception for it: its state message."""


def outcome_of(state: State[Any]) -> tuple[Outcome, BaseException | None, dict[str, Any]]:
    """The outcome, the error and the ``prefect_*`` attributes of a final Prefect state."""
    attributes: dict[str, Any] = {"prefect_state": state.name}
    if state.message:
        attributes["prefect_state_message"] = state.message
    if state.is_completed():
        return Outcome.SUCCEEDED, None, attributes
    if state.is_cancelled() or state.is_cancelling():
        return Outcome.CANCELLED, None, attributes
    error = _exception_of(state)
    if state.is_crashed():
        # Prefect says Crashed when something outside the flow stopped it: an interrupt,
        # SIGTERM, the infrastructure. lifecycle calls that terminated.
        return Outcome.TERMINATED, error, attributes
    if state.name == "TimedOut":
        return Outcome.TIMEOUT, error, attributes
    return Outcome.FAILED, error, attributes


def _exception_of(state: State[Any]) -> BaseException:
    # In the flow's own process a Failed state still holds the exception the flow raised;
    # elsewhere (or with results persisted away) it may not: the message says enough.
    try:
        value = state.result(raise_on_failure=False)
    except Exception:
        value = None
    if isinstance(value, BaseException):
        return value
    return FlowRunFailed(state.message or state.name or "flow run failed")


def task_run_counts(flow_run_id: str) -> dict[str, int]:
    """How many of the flow run's task runs ended in each state (empty if Prefect cannot say)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    try:
        with get_client(sync_client=True) as client:
            task_runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)]))
            )
    except Exception as exc:
        logger.warning("task runs not counted", run_id=flow_run_id, error=repr(exc))
        return {}
    counts = Counter(run.state.name or "" for run in task_runs if run.state is not None)
    return dict(sorted(counts.items()))


def final_state_of(flow_run_id: str) -> tuple[Outcome, BaseException | None, dict[str, Any]]:
    """Ask Prefect how a flow run ended, for a run whose end no hook reported."""
    from prefect import get_client

    try:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(UUID(flow_run_id)).state
    except Exception as exc:
        logger.warning("flow run state unknown at exit", run_id=flow_run_id, error=repr(exc))
        return Outcome.CANCELLED, FlowRunFailed(f"state unknown: {exc!r}"), {}
    if state is None or not state.is_final():
        name = None if state is None else state.name
        return (
            Outcome.CANCELLED,
            FlowRunFailed(f"the process exited while the flow run was {name}"),
            {"prefect_state": name},
        )
    return outcome_of(state)
