"""``DaskEnvironment``: a run on a Dask cluster, with its resources and its workers' metrics.

Where things run (the design note's "awareness" consequence)::

    on_start / on_exit handlers,     the main process: the one that entered
    any bus subscriber, the body     ``DaskEnvironment.running()`` (its event loop, or a
                                     worker thread of it for plain handlers)
    WorkerPlugin.setup / teardown    on every worker: those present when ``broadcast`` is
                                     called, and those that join later in the run
    the resource and metric reads    the scheduler (identity, event log, a plugin counting
                                     the run's finished tasks) and each worker (a probe
                                     sent with ``Client.run``)

Every event's ``environment`` names the main process (host, pid), and its attributes
name the scheduler it talked to (``attributes["dask"]["scheduler"]``).
"""

from __future__ import annotations

import asyncio
import contextvars
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from distributed import Client
from distributed.deploy.cluster import Cluster
from distributed.diagnostics.plugin import NannyPlugin, SchedulerPlugin, WorkerPlugin

from lifecycle import Environment, EventBus, Outcome, Run

from ._cluster import Baseline, at_exit, baseline, forget_task_counter, log_tail, resources

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterable, Mapping

    from lifecycle._environment import Callback

__all__ = [
    "DaskEnvironment",
    "DaskSession",
    "NoDaskRunError",
    "broadcast",
    "current_client",
    "current_session",
]

Plugin = WorkerPlugin | NannyPlugin | SchedulerPlugin

logger = structlog.get_logger("lifecycle_dask")


class NoDaskRunError(RuntimeError):
    """Raised by :func:`current_session`, :func:`current_client` and :func:`broadcast`
    when called outside a :class:`DaskEnvironment` run.

    .. versionadded:: 0.2
    """

    def __init__(self, what: str, why: str = "none is") -> None:
        super().__init__(
            f"{what} needs a Dask run in progress ({why}): call it from the body of "
            "DaskEnvironment.running() or run_sync(), or from a handler of that run's events"
        )


@dataclass
class DaskSession:
    """The Dask side of one run: its client, the cluster it created, what it broadcast.

    Attributes:
        client: the asynchronous :class:`distributed.Client` of the run.
        cluster: the cluster object, when the environment was given or created one.
        owns_cluster: the environment created the cluster and closes it at exit.
        scheduler_address: the scheduler the run talks to.
        plugins: the names of the plugins :func:`broadcast` registered for this run, in
            order; they are unregistered when the run exits.

    .. versionadded:: 0.2
    """

    client: Client
    cluster: Cluster | None
    owns_cluster: bool
    scheduler_address: str
    plugins: list[str] = field(default_factory=list)
    _kinds: dict[str, str] = field(default_factory=dict, init=False, repr=False)

    async def broadcast(self, plugin: Plugin, name: str | None = None) -> str:
        """Register ``plugin`` for this run; see :func:`broadcast`."""
        if isinstance(plugin, type) or not isinstance(
            plugin, (WorkerPlugin, NannyPlugin, SchedulerPlugin)
        ):
            raise TypeError(
                "broadcast() takes an instance of a distributed WorkerPlugin, NannyPlugin "
                f"or SchedulerPlugin subclass, not {plugin!r}"
            )
        if name is None:
            name = getattr(plugin, "name", None) or f"lifecycle-{type(plugin).__name__}"
        kind = (
            "scheduler"
            if isinstance(plugin, SchedulerPlugin)
            else "nanny"
            if isinstance(plugin, NannyPlugin)
            else "worker"
        )
        # Recorded before the call: a registration cut off by its handler's timeout may
        # already sit on the scheduler, and must be unregistered at exit all the same.
        if name not in self._kinds:
            self.plugins.append(name)
        self._kinds[name] = kind
        client: Any = self.client
        await client.register_plugin(plugin, name=name)
        return name

    async def unregister_all(self, each: float) -> list[str]:
        """Unregister every plugin of the run, newest first; return the ones that failed."""
        failed: list[str] = []
        client: Any = self.client
        for name in reversed(self.plugins):
            kind = self._kinds[name]
            try:
                with anyio.fail_after(each):
                    if kind == "scheduler":
                        await client.unregister_scheduler_plugin(name)
                    else:
                        await client.unregister_worker_plugin(name, nanny=kind == "nanny")
            except Exception as exc:
                failed.append(f"{name}: {type(exc).__name__}: {exc}")
        return failed


_SESSION: contextvars.ContextVar[DaskSession] = contextvars.ContextVar("lifecycle_dask_session")
# Every Dask run in progress in this process, for code in a thread that did not inherit
# the run's context: the body of ``Environment.run_sync`` runs in the caller's thread
# while the run itself lives in the blocking portal's event loop thread.
_ACTIVE: list[DaskSession] = []


def _lookup(what: str) -> DaskSession:
    try:
        return _SESSION.get()
    except LookupError:
        pass
    if len(_ACTIVE) == 1:
        return _ACTIVE[0]
    if _ACTIVE:
        raise NoDaskRunError(
            what,
            f"{len(_ACTIVE)} Dask runs are in progress in this process and this context "
            "belongs to none of them",
        )
    raise NoDaskRunError(what)


def current_session() -> DaskSession:
    """The :class:`DaskSession` of the Dask run in progress in this context.

    Available in the body of :meth:`DaskEnvironment.running` and in every handler of
    that run's events (``on_start``, ``on_exit``, any subscriber of the bus), async or
    plain: handlers run in a copy of the emitter's context. Elsewhere (the body of
    ``run_sync``, which runs in the caller's thread), it is the one Dask run in progress
    in the process, if there is exactly one.

    Raises:
        NoDaskRunError: no Dask run is in progress here.

    .. versionadded:: 0.2
    """
    return _lookup("current_session()")


def current_client() -> Client:
    """The asynchronous :class:`distributed.Client` of the Dask run in progress.

    Raises:
        NoDaskRunError: no Dask run is in progress here.

    .. versionadded:: 0.2
    """
    return _lookup("current_client()").client


async def broadcast(plugin: Plugin, name: str | None = None) -> str:
    """Register ``plugin`` on the cluster for the current run, with ``Client.register_plugin``.

    Call it from an ``async def`` ``on_start`` handler (or the body). The registration is
    held by the scheduler, so a :class:`~distributed.diagnostics.plugin.WorkerPlugin`
    reaches every worker present now *and* every worker that joins later in the run
    (its ``setup`` runs there); a ``NannyPlugin`` reaches the nannies, a
    ``SchedulerPlugin`` the scheduler. When the run exits, after the ``exited`` handlers,
    every plugin broadcast for it is unregistered (a worker plugin's ``teardown`` runs).
    Registering a name again replaces the plugin, as in Dask.

    Args:
        plugin: an instance of a ``WorkerPlugin``, ``NannyPlugin`` or ``SchedulerPlugin``
            subclass.
        name: the registration's name (default: the plugin's ``name`` attribute, else
            ``lifecycle-<class name>``).

    Returns:
        The name it was registered under.

    Raises:
        NoDaskRunError: no Dask run is in progress here.
        TypeError: ``plugin`` is not a plugin instance.

    .. versionadded:: 0.2
    """
    return await _lookup("broadcast()").broadcast(plugin, name)


@asynccontextmanager
async def _closed_even_if_cancelled(resource: Any, grace: float) -> AsyncIterator[Any]:
    """``async with resource``, its exit shielded from cancellation and bounded by ``grace``.

    A cancelled run must still close the Client and the cluster it opened: unshielded,
    their ``__aexit__`` would be cancelled at its first await, leaving the cluster running
    and Dask's close coroutines never awaited.
    """
    value = await resource.__aenter__()
    try:
        yield value
    except BaseException as exc:
        with anyio.CancelScope(shield=True), anyio.move_on_after(grace):
            await resource.__aexit__(type(exc), exc, exc.__traceback__)
        raise
    with anyio.CancelScope(shield=True), anyio.move_on_after(grace):
        await resource.__aexit__(None, None, None)


def _require_asyncio() -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            "DaskEnvironment needs asyncio: Dask's asynchronous Client runs on asyncio's "
            "event loop, so run it with anyio.run(..., backend='asyncio') or asyncio.run(), "
            "not trio"
        ) from None


class DaskEnvironment(Environment):
    """An environment for runs on a Dask cluster.

    Each run connects an asynchronous :class:`distributed.Client` (see :func:`current_client`)
    and, before ``environment.starting``, reads the cluster's resources into
    ``attributes["dask"]``: ``scheduler`` (its address), ``scheduler_id``,
    ``dashboard_port``, ``n_workers``, ``workers`` (one entry per worker: ``address``,
    ``name``, ``host``, ``threads``, ``memory_limit``, ``resources``, ``gpus`` and, when
    NVML sees one, ``gpu`` with its ``name`` and ``memory_total``), ``total_threads``,
    ``total_memory`` (bytes) and ``gpus``, so an ``on_start`` handler (or the body) can
    size work from them. ``on_start`` handlers may :func:`broadcast` worker plugins.

    When the body ends, however it ends, ``attributes["dask"]`` gains what the workers did
    during the run: ``tasks_run`` (counted on the scheduler, so a worker lost during the
    run still counts), ``memory_peak`` (the largest worker process's peak
    resident memory, bytes), ``spilled_bytes`` (written to disk), ``workers_added``,
    ``workers_removed``, ``workers_lost`` (removed unexpectedly: killed, crashed),
    ``worker_metrics`` (the same per worker, with its ``pid``) and ``plugins``; on a run
    that did not succeed, ``worker_logs`` (the tail of each live worker's log). Reading
    them is bounded by ``probe_timeout``; what could not be read is named in
    ``metrics_error``. The run's outcome is the body's: a lost worker does not change it.

    Then ``environment.exited`` is emitted (its handlers can still use the client), the
    run's plugins are unregistered, the client is closed, and a cluster the environment
    created is closed, also when a critical ``starting`` handler aborted the run. If the
    cluster cannot be created or reached, ``running()`` raises before ``starting``: no
    run began, so no events are emitted.

    Dask's asynchronous API runs on asyncio: a run under trio raises ``RuntimeError``.

    Args:
        cluster: where to run. A scheduler address (``"tcp://host:8786"``); a running
            ``Client`` created with ``asynchronous=True`` (used as is, never closed); a
            cluster object (connected to, never closed); or a cluster class or factory,
            called with ``asynchronous=True`` and ``cluster_kwargs`` for each run and
            closed at its end. Default: :class:`distributed.LocalCluster`.
        cluster_kwargs: keyword arguments for the cluster the environment creates
            (``n_workers``, ``processes``, ``dashboard_address``...).
        name, labels, on_start, on_exit, bus, exit_grace: as for
            :class:`~lifecycle.Environment`.
        log_lines: lines of each worker's log attached to a run that did not succeed.
        probe_timeout: seconds each reading of the cluster (at start, at exit) and each
            plugin's unregistration may take.

    Raises:
        TypeError, ValueError: ``cluster`` or an option is of the wrong kind.

    .. versionadded:: 0.2
    """

    def __init__(
        self,
        cluster: str | Client | Cluster | Callable[..., Cluster] | None = None,
        *,
        cluster_kwargs: Mapping[str, Any] | None = None,
        name: str | None = None,
        labels: Iterable[str] = (),
        on_start: Callback = None,
        on_exit: Callback = None,
        bus: EventBus | None = None,
        exit_grace: float = 30.0,
        log_lines: int = 20,
        probe_timeout: float = 10.0,
    ) -> None:
        creates = cluster is None or (
            callable(cluster) and not isinstance(cluster, (Client, Cluster))
        )
        if not creates and not isinstance(cluster, (str, Client, Cluster)):
            raise TypeError(
                "cluster must be a scheduler address, an asynchronous Client, a cluster "
                f"object or a cluster class, not {cluster!r}"
            )
        if cluster_kwargs and not creates:
            raise ValueError(
                "cluster_kwargs only apply to a cluster the environment creates (cluster "
                f"left out, or a cluster class); cluster is {cluster!r}"
            )
        if isinstance(log_lines, bool) or not isinstance(log_lines, int) or log_lines < 0:
            raise ValueError(f"log_lines must be an int >= 0, not {log_lines!r}")
        if not isinstance(probe_timeout, (int, float)) or not probe_timeout > 0:
            raise ValueError(
                f"probe_timeout must be a number of seconds > 0, not {probe_timeout!r}"
            )
        super().__init__(name, labels, on_start, on_exit, bus, exit_grace=exit_grace)
        self.cluster = cluster
        self.cluster_kwargs = dict(cluster_kwargs or {})
        self.log_lines = log_lines
        self.probe_timeout = float(probe_timeout)
        self._runs: dict[Run, tuple[DaskSession, Baseline]] = {}

    async def _connect(self, stack: AsyncExitStack) -> DaskSession:
        target = self.cluster
        if isinstance(target, Client):
            client: Any = target
            if client.status == "newly-created":
                await client
            if not client.asynchronous:
                raise TypeError(
                    "DaskEnvironment needs an asynchronous Client on this event loop: create "
                    "it with Client(..., asynchronous=True), or pass its scheduler address "
                    f"({client.scheduler.address}) instead of {client!r}"
                )
            return DaskSession(target, None, False, client.scheduler.address)
        cluster: Cluster | None
        owns = False
        if isinstance(target, str):
            cluster, address = None, target
        elif isinstance(target, Cluster):
            cluster, address = target, target.scheduler_address
        else:
            owns = True
            from distributed import LocalCluster

            factory: Any = LocalCluster if target is None else target
            created: Cluster = await stack.enter_async_context(
                _closed_even_if_cancelled(
                    factory(asynchronous=True, **self.cluster_kwargs), self.exit_grace
                )
            )
            cluster, address = created, created.scheduler_address
        new_client: Any = Client
        client = await stack.enter_async_context(
            _closed_even_if_cancelled(new_client(address, asynchronous=True), self.exit_grace)
        )
        return DaskSession(client, cluster, owns, address)

    @asynccontextmanager
    async def lifespan(self, run: Run) -> AsyncIterator[None]:
        """Connect to the cluster (or create it) and read its resources, for one run.

        ``run.attributes["dask"]`` gets the resources, so ``starting`` carries them. Left
        after ``exited``: the run's plugins are unregistered, its client closed, and a
        cluster it created closed.

        Raises:
            RuntimeError: not running on asyncio.
            OSError, TimeoutError: the cluster could not be created or reached (no
                events were emitted).
        """
        _require_asyncio()
        async with AsyncExitStack() as stack:
            session = await self._connect(stack)
            stack.push_async_callback(self._unregister, session)
            with anyio.fail_after(self.probe_timeout):
                identity, start = await baseline(session.client)
            stack.push_async_callback(self._forget_task_counter, session, start)
            info = resources(identity)
            info["scheduler"] = info["scheduler"] or session.scheduler_address
            run.attributes["dask"] = info
            token = _SESSION.set(session)
            _ACTIVE.append(session)
            self._runs[run] = (session, start)
            try:
                yield
            finally:
                del self._runs[run]
                _ACTIVE.remove(session)
                _SESSION.reset(token)

    async def collect(self, run: Run, outcome: Outcome) -> None:
        """Add what the workers did to ``run.attributes["dask"]`` (bounded by ``probe_timeout``).

        A run that did not succeed also gets the tail of each worker's log.
        """
        session, start = self._runs[run]
        info: dict[str, Any] = dict(run.attributes.get("dask") or {})
        errors: list[str] = []
        client: Any = session.client
        with anyio.move_on_after(self.probe_timeout) as scope:
            if outcome is not Outcome.SUCCEEDED and self.log_lines:
                # Before the probe, whose own log lines would fill the tail.
                try:
                    logs = await client.get_worker_logs(n=self.log_lines + 5)
                    info["worker_logs"] = log_tail(logs, self.log_lines)
                except Exception as exc:
                    errors.append(f"worker logs: {type(exc).__name__}: {exc}")
            metrics, failed = await at_exit(session.client, start)
            info.update(metrics)
            errors.extend(failed)
        if scope.cancelled_caught:
            errors.append(f"reading the cluster took longer than {self.probe_timeout} s")
        if start.probe_error:
            errors.insert(0, f"at start: {start.probe_error}")
        if errors:
            info["metrics_error"] = "; ".join(errors)
        info["plugins"] = list(session.plugins)
        run.attributes["dask"] = info

    async def _forget_task_counter(self, session: DaskSession, start: Baseline) -> None:
        # Read and removed at exit, unless collect was cut off: then removed here, so
        # that no run leaves a plugin counting on a long-lived scheduler.
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.probe_timeout):
            try:
                await forget_task_counter(session.client, start)
            except Exception as exc:
                logger.warning(
                    "dask task counter not removed from the scheduler",
                    environment=self.name,
                    scheduler=session.scheduler_address,
                    error=f"{type(exc).__name__}: {exc}",
                )

    async def _unregister(self, session: DaskSession) -> None:
        with anyio.CancelScope(shield=True):
            failed = await session.unregister_all(self.probe_timeout)
        if failed:
            logger.warning(
                "dask plugins not unregistered",
                environment=self.name,
                scheduler=session.scheduler_address,
                plugins=failed,
            )
