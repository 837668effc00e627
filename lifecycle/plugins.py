"""The plug-in contract: how another package adds an adapter or a ``lifecycle`` command.

Packages plug in through two entry-point groups (see docs/writing-an-adapter.md):

- :data:`ADAPTER_GROUP` (``lifecycle.adapters``): an :class:`Attach` function,
  ``attach(bus, **options) -> handle``, attached by the ``[[adapters]]`` entries of
  ``lifecycle.toml`` that name it. Its handle has ``detach()``; :class:`Attachment` is a
  ready one. An adapter whose ``attach`` has effects that ``lifecycle check`` must not have
  (binding a port the running job holds) declares an :class:`AdapterCheck` with
  :func:`adapter`.
- :data:`COMMAND_GROUP` (``lifecycle.commands``): a :class:`Command`, ``command(argv) ->
  exit status``, run as ``lifecycle <name>``; :func:`command` gives it its line in
  ``lifecycle --help`` and, for a command that reads a table of ``lifecycle.toml`` named
  after it (``[listen]``), the :class:`TableCheck` that ``lifecycle check`` runs on it.

The protocols are what mypy checks a plug-in against; the declarations set the optional
attributes without a ``type: ignore``::

    from lifecycle.plugins import Attachment, adapter

    def _check(bus: EventBus, *, port: int = 9464) -> None: ...

    @adapter(check=_check)
    def attach(bus: EventBus, *, port: int = 9464) -> Attachment: ...

This module imports neither importlib.metadata nor the adapters: ``lifecycle run`` with
no configuration imports it, and scans no entry point.

.. versionadded:: 0.2
"""

from __future__ import annotations

from types import FunctionType
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar, overload

from ._handle import Handle

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from importlib.metadata import EntryPoint

    from ._bus import EventBus
    from ._config import Config

__all__ = [
    "ADAPTER_GROUP",
    "COMMAND_GROUP",
    "AdapterCheck",
    "Attach",
    "Attachment",
    "Command",
    "Detachable",
    "InstalledAdapter",
    "TableCheck",
    "adapter",
    "claim_exports",
    "command",
    "installed_adapters",
]

ADAPTER_GROUP = "lifecycle.adapters"
"""The entry-point group of adapters: each names an :class:`Attach` function."""

COMMAND_GROUP = "lifecycle.commands"
"""The entry-point group of ``lifecycle`` subcommands: each names a :class:`Command`."""

_PROJECT_PLUGINS = {
    ADAPTER_GROUP: {
        "apprise": "lifecycle-apprise",
        "nats": "lifecycle-nats",
        "otel": "lifecycle-otel",
        "prometheus": "lifecycle-prometheus",
        "structlog": "lifecycle-structlog",
        "webhook": "lifecycle-webhook",
    },
    COMMAND_GROUP: {
        "flush": "lifecycle-nats",
        "listen": "lifecycle-nats",
        "runs": "lifecycle-watchdog",
        "watch": "lifecycle-watchdog",
    },
}
"""The entry points of this project's own packages, by group and name: the distribution to
install when one is missing. tests/test_plugins.py checks it against the workspace members'
``pyproject.toml``."""


class Detachable(Protocol):
    """What an adapter's ``attach`` returns: a handle that undoes the attaching."""

    def detach(self) -> None:
        """Remove everything the adapter attached; called once the bus is closed."""


class Attach(Protocol):
    """An adapter's entry point: ``attach(bus, **options)``, returning its handle.

    ``bus`` comes first and positionally; every option of the ``[[adapters]]`` entry is
    passed by keyword, so they are best keyword-only (``def attach(bus, *, url, ...)``):
    ``lifecycle check`` names an option that ``attach`` does not take. A bad option raises
    ``TypeError`` or ``ValueError`` (``OSError``, ``ImportError`` where that is the cause),
    with a message that starts with the option's name (``"url must be ..."``).
    """

    def __call__(self, bus: EventBus, /, *args: Any, **options: Any) -> Detachable: ...


class AdapterCheck(Protocol):
    """``check(bus, **options)``: what ``lifecycle check`` calls instead of ``attach``.

    It takes the options ``attach`` takes, raises as ``attach`` does, and leaves nothing
    attached or bound behind.
    """

    def __call__(self, bus: EventBus, /, *args: Any, **options: Any) -> None: ...


class Command(Protocol):
    """A ``lifecycle`` subcommand's entry point: ``command(argv)`` returns the exit status.

    ``argv`` is what follows the command's name; the command parses it itself. It is
    called with the working directory on ``sys.path``, so that ``module:function``
    handlers of the user's project import as they do under ``lifecycle run``.
    """

    def __call__(self, argv: list[str], /) -> int: ...


class TableCheck(Protocol):
    """``check(config)``: ``lifecycle check`` on the table named after the command.

    Returns readable lines about ``config.tables[name]``, or raises
    :exc:`~lifecycle.ConfigError` naming the file, key and value. It must not connect
    anywhere.
    """

    def __call__(self, config: Config, /) -> Iterable[str]: ...


_A = TypeVar("_A", bound=Attach)
_C = TypeVar("_C", bound=Command)


@overload
def adapter(attach: _A, /, *, check: AdapterCheck | None = None) -> _A: ...
@overload
def adapter(*, check: AdapterCheck | None = None) -> Callable[[_A], _A]: ...
def adapter(
    attach: _A | None = None, /, *, check: AdapterCheck | None = None
) -> _A | Callable[[_A], _A]:
    """Declare an adapter's ``attach``, with the ``check`` that ``lifecycle check`` uses.

    A decorator (``@adapter(check=_check)``), or a call on an ``attach`` defined before
    its check (``adapter(attach, check=_check)``). Returns ``attach`` itself: its
    signature and its callers are unchanged; mypy checks both against the protocols.
    """

    def declare(attach: _A) -> _A:
        if check is not None:
            # The attribute is the contract at run time; the protocols are for type checkers.
            setattr(attach, "check", check)  # noqa: B010
        return attach

    return declare if attach is None else declare(attach)


@overload
def command(run: _C, /, *, help: str | None = None, check: TableCheck | None = None) -> _C: ...
@overload
def command(*, help: str | None = None, check: TableCheck | None = None) -> Callable[[_C], _C]: ...
def command(
    run: _C | None = None, /, *, help: str | None = None, check: TableCheck | None = None
) -> _C | Callable[[_C], _C]:
    """Declare a ``lifecycle`` subcommand: its line in ``lifecycle --help``, its table's check.

    A decorator (``@command(help="...")``), or a call on a command defined before its
    check (``command(listen, help="...", check=_check_listen)``). Returns the command
    itself. ``lifecycle --help`` shows ``help`` followed by the command's distribution
    (without ``help``, only the distribution).
    """

    def declare(run: _C) -> _C:
        if help is not None:
            setattr(run, "help", help)  # noqa: B010 - see adapter()
        if check is not None:
            setattr(run, "check", check)  # noqa: B010
        return run

    return declare if run is None else declare(run)


def claim_exports(namespace: dict[str, Any]) -> None:
    """Present a package's public names as the package's own, not its private modules'.

    Call it last in the package's ``__init__.py``: ``claim_exports(globals())``. Each class
    and function in ``__all__`` that comes from one of the package's private modules gets
    the package as its ``__module__``, so that it is shown, documented and pickled as
    ``lifecycle_x.Name`` (``lifecycle_x._impl.Name`` would break when ``_impl`` moves).
    Names it re-exports from elsewhere are left alone.
    """
    package = namespace["__name__"]
    for name in namespace["__all__"]:
        value = namespace[name]
        if isinstance(value, (type, FunctionType)) and value.__module__.startswith(f"{package}."):
            value.__module__ = package


class Attachment(Handle):
    """Adapters and handlers attached to a bus; :meth:`detach` (or leaving ``with``) removes them.

    Adapters may use it as their handle: ``add`` takes anything with ``detach()``,
    ``unsubscribe()`` or ``disconnect()`` (a subscription, a result hook), or a callable.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2
       Also ``lifecycle.plugins.Attachment``, with the rest of the plug-in contract.
    """

    def __init__(self) -> None:
        self._undo: list[Callable[[], Any]] = []
        self.detached = False

    def add(self, part: Any) -> None:
        """Remember ``part`` to undo at :meth:`detach`."""
        for method in ("detach", "unsubscribe", "disconnect"):
            undo = getattr(part, method, None)
            if callable(undo):
                self._undo.append(undo)
                return
        if callable(part):
            self._undo.append(part)
            return
        raise TypeError(
            f"cannot attach {part!r}: expected an object with detach(), unsubscribe() or "
            "disconnect(), or a callable"
        )

    def detach(self) -> None:
        """Undo everything, last attached first. Detaching twice is harmless.

        Every part is detached even if one raises; the first error is raised after.
        """
        if self.detached:
            return
        self.detached = True
        error: Exception | None = None
        while self._undo:
            try:
                self._undo.pop()()
            except Exception as exc:
                error = error or exc
        if error is not None:
            raise error

    def _release(self) -> None:
        self.detach()


class InstalledAdapter(NamedTuple):
    """An adapter found in the ``lifecycle.adapters`` entry-point group."""

    distribution: str | None
    version: str | None
    value: str


def installed_adapters() -> dict[str, InstalledAdapter]:
    """The installed adapters by name, sorted: distribution, version and entry-point value."""
    found: dict[str, InstalledAdapter] = {}
    for point in _adapter_points():
        dist = getattr(point, "dist", None)
        found.setdefault(
            point.name,
            InstalledAdapter(
                dist.metadata["Name"] if dist is not None else None,
                dist.version if dist is not None else None,
                point.value,
            ),
        )
    return dict(sorted(found.items()))


# importlib.metadata is imported where it is used: an entry-point scan is most of the
# start-up of a short job, and ``lifecycle run`` without configuration needs none.


def _adapter_points() -> tuple[EntryPoint, ...]:
    """Every entry point of :data:`ADAPTER_GROUP`."""
    from importlib.metadata import entry_points

    return tuple(entry_points(group=ADAPTER_GROUP))


def _command_points() -> dict[str, EntryPoint]:
    """The entry points of :data:`COMMAND_GROUP` by name, the first of each name."""
    from importlib.metadata import entry_points

    found: dict[str, EntryPoint] = {}
    for point in entry_points(group=COMMAND_GROUP):
        found.setdefault(point.name, point)
    return found


def _install_hint(group: str, name: str) -> str | None:
    """The distribution of this project that provides ``name`` in ``group``, if one does."""
    return _PROJECT_PLUGINS[group].get(name)


def _commands_by_distribution() -> str:
    """``lifecycle-nats: flush, listen; ...``: the commands this project's packages add."""
    by_distribution: dict[str, list[str]] = {}
    for name, distribution in _PROJECT_PLUGINS[COMMAND_GROUP].items():
        by_distribution.setdefault(distribution, []).append(name)
    return "; ".join(f"{dist}: {', '.join(names)}" for dist, names in by_distribution.items())


def _distribution(point: EntryPoint) -> str:
    dist = point.dist
    return dist.name if dist is not None else point.value
