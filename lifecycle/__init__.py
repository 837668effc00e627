"""lifecycle-bus: reliable environment lifecycle callbacks on an async event bus."""

# The public surface is the import block below, and nothing else: ``__all__`` and the lazy
# imports are read from it. Type checkers read the block as written (``X as X`` marks a
# re-export). It never runs: each name is imported from its module at its first use
# (PEP 562), so that a script that needs one part (``lifecycle --version``, ``lifecycle run``
# with no configuration) does not pay for the import of every other (importlib.metadata,
# tomllib, structlog...). tests/test_exports.py checks the result.

import types as _types
import typing as _typing

if _typing.TYPE_CHECKING:
    import importlib.abc

    # ruff's isort would give every ``X as X`` an import statement of its own:
    # isort: off
    from ._bus import (
        DEFAULT as DEFAULT,
        BusState as BusState,
        EventBus as EventBus,
        ResultHook as ResultHook,
    )
    from ._childenv import (
        ChildEnvHook as ChildEnvHook,
    )
    from ._wrap import (
        HandlerWrap as HandlerWrap,
    )
    from ._config import (
        AdapterSpec as AdapterSpec,
        Config as Config,
        HandlerSpec as HandlerSpec,
        find_config as find_config,
        load_config as load_config,
    )
    from ._console import (
        escape as escape,
        escape_fields as escape_fields,
        log_to_stderr as log_to_stderr,
    )
    from ._environment import (
        Environment as Environment,
        Run as Run,
    )
    from ._event import (
        EXITED as EXITED,
        HEARTBEAT as HEARTBEAT,
        MISSED as MISSED,
        OVERDUE as OVERDUE,
        RECOVERED as RECOVERED,
        SCHEMA_VERSION as SCHEMA_VERSION,
        STARTING as STARTING,
        EnvironmentInfo as EnvironmentInfo,
        ErrorInfo as ErrorInfo,
        Event as Event,
        Outcome as Outcome,
    )
    from ._exceptions import (
        AbandonedThreadsError as AbandonedThreadsError,
        BusClosedError as BusClosedError,
        ConfigError as ConfigError,
        EmitDepthError as EmitDepthError,
        LifecycleError as LifecycleError,
        RunTerminated as RunTerminated,
        RunTimeoutError as RunTimeoutError,
        StartAborted as StartAborted,
    )
    from ._heartbeat import (
        heartbeats as heartbeats,
    )
    from ._redact import (
        redact_url as redact_url,
    )
    from ._results import (
        CloseReport as CloseReport,
        EmitReport as EmitReport,
        HandlerResult as HandlerResult,
        Status as Status,
    )
    from ._subprocess import (
        CommandResult as CommandResult,
        SubprocessEnvironment as SubprocessEnvironment,
    )
    from ._subscription import (
        Subscription as Subscription,
    )
    from .plugins import (
        Attachment as Attachment,
        InstalledAdapter as InstalledAdapter,
        installed_adapters as installed_adapters,
    )
    # isort: on

__version__ = "0.1.0"

_PUBLIC_MODULES = frozenset({"plugins"})
"""Submodules that are public themselves: ``lifecycle.plugins``, the plug-in contract."""

_exports: dict[str, str] = {}
"""The module of each public name, read from the import block at the first lookup."""


def _read_exports() -> dict[str, str]:
    """The import block as ``{name: module}``, read from this module's compiled code.

    The block never runs, but it is compiled: each ``from .module import a as a, ...``
    loads the tuple of the names it takes, then imports the module. Reading the code
    object, rather than the source, works where only ``.pyc`` files are installed.
    """
    import dis

    loader = _typing.cast("importlib.abc.InspectLoader", __spec__.loader)
    code = loader.get_code(__name__)
    if code is None:  # pragma: no cover - a package always has code
        raise ImportError(f"cannot read the public names of {__name__}: no code object")
    exports: dict[str, str] = {}
    names: tuple[str, ...] = ()
    for instruction in dis.get_instructions(code):
        if instruction.opname == "IMPORT_NAME" and names:
            exports.update(dict.fromkeys(names, instruction.argval))
        taken = instruction.argval if instruction.opname == "LOAD_CONST" else None
        names = taken if isinstance(taken, tuple) else ()
    return exports


def _names() -> dict[str, str]:
    if not _exports:
        _exports.update(_read_exports())
    return _exports


def __getattr__(name: str) -> object:
    """Import a public name from its module at its first use (PEP 562)."""
    if name.startswith("_") and name != "__all__":
        # Probes for dunders, and ``from . import _module`` asking first: not ours.
        raise AttributeError(f"module 'lifecycle' has no attribute {name!r}")
    import importlib

    if name == "__all__":
        value: object = sorted(_names(), key=_all_order)
    elif name in _PUBLIC_MODULES:
        value = importlib.import_module(f".{name}", __name__)
    elif name in _names():
        home = _exports[name]
        module = importlib.import_module(f".{home}", __name__)
        # Documented as lifecycle.X, shown and pickled as lifecycle.X; the module's names
        # all at once, so that they never disagree.
        for public in (public for public, where in _exports.items() if where == home):
            _claim(getattr(module, public))
        value = getattr(module, name)
    else:
        raise AttributeError(f"module 'lifecycle' has no attribute {name!r}")
    globals()[name] = value  # the next access is a plain attribute
    return value


def _all_order(name: str) -> tuple[int, str]:
    """Constants, then classes, then functions, each alphabetical: isort's order, ruff's."""
    return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)


def _claim(value: object) -> None:
    if isinstance(value, (type, _types.FunctionType)):
        value.__module__ = __name__


def __dir__() -> list[str]:
    """The public names, imported or not yet, the public submodules, and the dunders."""
    dunders = {name for name in globals() if name.startswith("__")}
    return sorted({*_names(), *_PUBLIC_MODULES, *dunders})


def _claim_exceptions() -> None:
    """Claim the exceptions from the start: they are named in events (``error.type``), and
    an exception's name must not depend on which names the program happened to import."""
    import importlib

    module = importlib.import_module("._exceptions", __name__)
    for name, value in vars(module).items():
        if isinstance(value, type) and issubclass(value, Exception) and name[0] != "_":
            _claim(value)


_claim_exceptions()
