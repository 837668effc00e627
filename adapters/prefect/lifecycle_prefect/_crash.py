"""Closing the loop in Prefect: a flow run the watchdog declared lost is marked Crashed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from uuid import UUID

import structlog

from lifecycle import Outcome

from ._hooks import LABEL

if TYPE_CHECKING:
    from prefect.client.schemas.responses import OrchestrationResult

    from lifecycle import Event

__all__ = ["mark_crashed"]

logger = structlog.get_logger("lifecycle.prefect")

_STILL_GOING = frozenset({"RUNNING", "PENDING"})
"""The state types a lost flow run may be taken out of; a final state is never overwritten."""


async def mark_crashed(event: Event) -> str:
    """Set a lost Prefect flow run to Crashed, if Prefect still shows it Running or Pending.

    A handler for the watchdog's configuration (``[[handlers]] target =
    "lifecycle_prefect:mark_crashed"``, signal ``environment.exited``): it acts on ``lost``
    verdicts of runs carrying the ``prefect`` label and ignores every other event. The
    watchdog announces each verdict once across its replicas, and the state is set only
    from Running or Pending (Prefect's orchestration also refuses to leave a final state),
    so a flow run is marked once. Returns what it did; a refused or failed call raises, so
    the handler's result in the report says why.
    """
    if event.outcome is not Outcome.LOST or LABEL not in event.environment.labels:
        return "not a lost Prefect flow run"
    from prefect import get_client
    from prefect.client.schemas.responses import SetStateStatus
    from prefect.states import Crashed

    flow_run_id = UUID(event.run_id)
    async with get_client() as client:
        flow_run = await client.read_flow_run(flow_run_id)
        state = flow_run.state
        if state is None or state.type.value not in _STILL_GOING:
            shown = None if state is None else state.name
            logger.info("lost flow run left as it is", run_id=event.run_id, prefect_state=shown)
            return f"left as {shown}"
        message = (
            f"lifecycle watchdog: no heartbeat from {event.environment.host} "
            f"since {event.attributes.get('last_heartbeat', 'the start')}"
        )
        result: OrchestrationResult[Any] = await client.set_flow_run_state(
            flow_run_id, Crashed(message=message)
        )
    if result.status is not SetStateStatus.ACCEPT:
        raise RuntimeError(
            f"Prefect refused to mark flow run {event.run_id} Crashed: {result.status.value} "
            f"({getattr(result.details, 'reason', '')})"
        )
    logger.warning("lost flow run marked Crashed", run_id=event.run_id)
    return "marked Crashed"
