"""lifecycle-bus: reliable environment lifecycle callbacks on an async event bus."""

# The public names are imported from their modules when first used (PEP 562): a script that
# needs one part (``lifecycle --version``, ``lifecycle run`` with no configuration) does not
# pay for the import of every other (importlib.metadata, tomllib, structlog...). A new public
# name goes in the TYPE_CHECKING block (for type checkers), in ``_MODULES`` (for the import)
# and in ``__all__``; tests/test_exports.py checks that the three agree.

import typing as _typing

if _typing.TYPE_CHECKING:
    from ._bus import DEFAULT, BusState, EventBus, ResultHook
    from ._config import (
        AdapterSpec,
        Config,
        HandlerSpec,
        find_config,
        load_config,
    )
    from ._console import escape, escape_fields, log_to_stderr
    from ._environment import Environment, Run
    from ._event import (
        EXITED,
        HEARTBEAT,
        MISSED,
        OVERDUE,
        RECOVERED,
        SCHEMA_VERSION,
        STARTING,
        EnvironmentInfo,
        ErrorInfo,
        Event,
        Outcome,
    )
    from ._exceptions import (
        AbandonedThreadsError,
        BusClosedError,
        ConfigError,
        EmitDepthError,
        LifecycleError,
        RunTerminated,
        RunTimeoutError,
        StartAborted,
    )
    from ._heartbeat import heartbeats
    from ._redact import redact_url
    from ._results import CloseReport, EmitReport, HandlerResult, Status
    from ._subprocess import CommandResult, SubprocessEnvironment
    from ._subscription import Subscription
    from .plugins import Attachment, InstalledAdapter, installed_adapters

__version__ = "0.1.0"

__all__ = [
    "DEFAULT",
    "EXITED",
    "HEARTBEAT",
    "MISSED",
    "OVERDUE",
    "RECOVERED",
    "SCHEMA_VERSION",
    "STARTING",
    "AbandonedThreadsError",
    "AdapterSpec",
    "Attachment",
    "BusClosedError",
    "BusState",
    "CloseReport",
    "CommandResult",
    "Config",
    "ConfigError",
    "EmitDepthError",
    "EmitReport",
    "Environment",
    "EnvironmentInfo",
    "ErrorInfo",
    "Event",
    "EventBus",
    "HandlerResult",
    "HandlerSpec",
    "InstalledAdapter",
    "LifecycleError",
    "Outcome",
    "ResultHook",
    "Run",
    "RunTerminated",
    "RunTimeoutError",
    "StartAborted",
    "Status",
    "SubprocessEnvironment",
    "Subscription",
    "escape",
    "escape_fields",
    "find_config",
    "heartbeats",
    "installed_adapters",
    "load_config",
    "log_to_stderr",
    "redact_url",
]


_MODULES = {
    "AbandonedThreadsError": "_exceptions",
    "AdapterSpec": "_config",
    "Attachment": "plugins",
    "BusClosedError": "_exceptions",
    "BusState": "_bus",
    "CloseReport": "_results",
    "CommandResult": "_subprocess",
    "Config": "_config",
    "ConfigError": "_exceptions",
    "DEFAULT": "_bus",
    "EXITED": "_event",
    "EmitDepthError": "_exceptions",
    "EmitReport": "_results",
    "Environment": "_environment",
    "EnvironmentInfo": "_event",
    "ErrorInfo": "_event",
    "Event": "_event",
    "EventBus": "_bus",
    "HEARTBEAT": "_event",
    "MISSED": "_event",
    "OVERDUE": "_event",
    "RECOVERED": "_event",
    "HandlerResult": "_results",
    "HandlerSpec": "_config",
    "InstalledAdapter": "plugins",
    "LifecycleError": "_exceptions",
    "Outcome": "_event",
    "ResultHook": "_bus",
    "Run": "_environment",
    "RunTerminated": "_exceptions",
    "RunTimeoutError": "_exceptions",
    "SCHEMA_VERSION": "_event",
    "STARTING": "_event",
    "StartAborted": "_exceptions",
    "Status": "_results",
    "SubprocessEnvironment": "_subprocess",
    "Subscription": "_subscription",
    "escape": "_console",
    "escape_fields": "_console",
    "find_config": "_config",
    "heartbeats": "_heartbeat",
    "installed_adapters": "plugins",
    "load_config": "_config",
    "log_to_stderr": "_console",
    "redact_url": "_redact",
}
"""The private module of each public name."""


def __getattr__(name: str) -> object:
    """Import a public name from its module at its first use (PEP 562)."""
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module 'lifecycle' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    """The public names, imported or not yet, and the module's own."""
    return sorted({*globals(), *__all__} - {"_typing"})
