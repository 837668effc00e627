"""``observe``: a Prefect flow's runs as lifecycle runs, through Prefect's own state hooks."""

from __future__ import annotations

import functools
import inspect
from typing import TYPE_CHECKING, Any, TypeVar, overload

import structlog

from lifecycle import Environment

from ._runtime import OpenRun, runtime
from ._states import outcome_of, task_run_counts

if TYPE_CHECKING:
    import os
    from collections.abc import Callable
    from uuid import UUID

    from prefect import Flow
    from prefect.client.schemas.objects import FlowRun, State

__all__ = ["DEFAULT_HEARTBEAT", "LABEL", "observe"]

logger = structlog.get_logger("lifecycle.prefect")

F = TypeVar("F", bound="Flow[Any, Any]")

DEFAULT_HEARTBEAT = 30.0
"""Seconds between heartbeats of a flow run, as ``lifecycle run`` sends them."""

LABEL = "prefect"
"""A label every flow run's environment carries besides its tags, so handlers (and the
watchdog's :func:`~lifecycle_prefect.mark_crashed`) can pick Prefect runs out."""


@overload
def observe(flow: F, /) -> F: ...
@overload
def observe(
    *, config: str | os.PathLike[str] | None = None, heartbeat: float | None = DEFAULT_HEARTBEAT
) -> Callable[[F], F]: ...
def observe(
    flow: F | None = None,
    /,
    *,
    config: str | os.PathLike[str] | None = None,
    heartbeat: float | None = DEFAULT_HEARTBEAT,
) -> F | Callable[[F], F]:
    """Make every run of ``flow`` a lifecycle run; put it above ``@flow``.

    ``environment.starting`` goes out when the flow run enters Running, heartbeats every
    ``heartbeat`` seconds while it runs (``None``: none), and ``environment.exited`` exactly
    once when it ends, before its process may exit, with the outcome of its final state.
    The handlers and adapters are those of ``config`` (default: the ``lifecycle.toml`` that
    ``lifecycle run`` would use). They run in a thread of their own, each bounded by its
    timeout: a failing or hanging handler never changes the flow run's state or result.

    Returns the flow with Prefect state hooks added (its own hooks are kept, and run
    first)::

        @lifecycle_prefect.observe
        @flow
        def nightly_etl() -> None: ...
    """

    def decorate(flow: F) -> F:
        hooks = _Hooks(config, heartbeat)
        observed = flow.with_options(
            on_running=[*flow.on_running_hooks, hooks.running],
            on_completion=[*flow.on_completion_hooks, hooks.ended],
            on_failure=[*flow.on_failure_hooks, hooks.ended],
            on_cancellation=[*flow.on_cancellation_hooks, hooks.ended],
            on_crashed=[*flow.on_crashed_hooks, hooks.ended],
        )
        # Prefect runs state hooks after the state changed and only logs what they raise:
        # a critical starting handler's abort is carried out in the body, before the
        # flow's own code, so that the flow run fails with it.
        observed.fn = _guarded(flow.fn, hooks)
        return observed  # type: ignore[return-value]  # with_options keeps the flow's type

    return decorate if flow is None else decorate(flow)


def _guarded(fn: Callable[..., Any], hooks: _Hooks) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def guarded_async(*args: Any, **kwargs: Any) -> Any:
            hooks.raise_if_aborted()
            return await fn(*args, **kwargs)

        return guarded_async

    @functools.wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        hooks.raise_if_aborted()
        return fn(*args, **kwargs)

    return guarded


class _Hooks:
    """The state hooks of one observed flow (Prefect calls them with flow, run and state)."""

    def __init__(self, config: str | os.PathLike[str] | None, heartbeat: float | None) -> None:
        self.config = config
        self.heartbeat = heartbeat
        self.__name__ = "lifecycle_prefect"  # the name Prefect's log lines give a hook

    def running(self, flow: Flow[Any, Any], flow_run: FlowRun, state: State[Any]) -> None:
        # Never raise into Prefect (it would only log it): say what went wrong instead.
        try:
            process = runtime(self.config)
            environment = Environment(
                _environment_name(flow, flow_run),
                labels=[LABEL, *flow_run.tags],
                bus=process.bus,
            )
            record = OpenRun(str(flow_run.id), environment)
            process.start(record, _start_attributes(flow, flow_run), self.heartbeat)
        except Exception:
            logger.exception("flow run not reported as started", run_id=str(flow_run.id))

    def raise_if_aborted(self) -> None:
        from prefect.context import FlowRunContext

        context = FlowRunContext.get()
        if context is None or context.flow_run is None:
            return
        error = runtime(self.config).take_abort(str(context.flow_run.id))
        if error is not None:
            raise error

    def ended(self, flow: Flow[Any, Any], flow_run: FlowRun, state: State[Any]) -> None:
        run_id = str(flow_run.id)
        try:
            outcome, error, attributes = outcome_of(state)
            counts = task_run_counts(run_id)
            if counts:
                attributes["task_runs"] = counts
            process = runtime(self.config)
            if not process.end(run_id, outcome, error, attributes):
                # Its start was reported by another process (Prefect's runner calls the
                # cancellation and crash hooks itself after stopping the flow's process):
                # say how it ended all the same, under the same run id.
                environment = Environment(
                    _environment_name(flow, flow_run),
                    labels=[LABEL, *flow_run.tags],
                    bus=process.bus,
                )
                process.portal.call(_emit_exited, environment, run_id, outcome, error, attributes)
        except Exception:
            logger.exception("flow run not reported as ended", run_id=run_id)


async def _emit_exited(
    environment: Environment,
    run_id: str,
    outcome: Any,
    error: BaseException | None,
    attributes: dict[str, Any],
) -> None:
    from lifecycle import EXITED, ErrorInfo

    await environment.emit(
        environment.event(
            EXITED,
            run_id,
            attributes=attributes,
            outcome=outcome,
            error=None if error is None else ErrorInfo.from_exception(error),
        )
    )


def _environment_name(flow: Flow[Any, Any], flow_run: FlowRun) -> str:
    """The deployment's name for a deployed flow run, else the flow's."""
    if flow_run.deployment_id is None:
        return flow.name
    from prefect import get_client

    try:
        with get_client(sync_client=True) as client:
            return client.read_deployment(flow_run.deployment_id).name
    except Exception as exc:
        logger.warning("deployment name unknown", run_id=str(flow_run.id), error=repr(exc))
        return flow.name


def _start_attributes(flow: Flow[Any, Any], flow_run: FlowRun) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "prefect_flow_run_id": str(flow_run.id),
        "prefect_flow_run_name": flow_run.name,
        "prefect_flow": flow.name,
    }
    if flow_run.parent_task_run_id is not None:
        parent = _parent_flow_run_id(flow_run.parent_task_run_id)
        if parent is not None:
            attributes["parent_run_id"] = parent
    if flow_run.deployment_id is not None:
        attributes["prefect_deployment_id"] = str(flow_run.deployment_id)
    url = _ui_url()
    if url:
        attributes["prefect_flow_run_url"] = f"{url}/flow-runs/flow-run/{flow_run.id}"
    return attributes


def _parent_flow_run_id(parent_task_run_id: UUID) -> str | None:
    """The run id of a subflow's parent: the flow run of the task run that called it."""
    from prefect import get_client

    try:
        with get_client(sync_client=True) as client:
            return str(client.read_task_run(parent_task_run_id).flow_run_id)
    except Exception as exc:
        logger.warning(
            "parent flow run unknown", task_run_id=str(parent_task_run_id), error=repr(exc)
        )
        return None


def _ui_url() -> str | None:
    # From the settings, not prefect.runtime: the hook does not always run inside the flow
    # run's context, and a flow run with no UI (an ephemeral server) has no URL to show.
    from prefect.settings import get_current_settings

    url = get_current_settings().ui_url
    return str(url).rstrip("/") if url else None
