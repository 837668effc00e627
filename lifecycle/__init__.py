"""lifecycle-bus: reliable environment lifecycle callbacks on an async event bus."""

from ._bus import DEFAULT, BusState, EventBus, ResultHook
from ._config import (
    AdapterSpec,
    Attachment,
    Config,
    HandlerSpec,
    InstalledAdapter,
    find_config,
    installed_adapters,
    load_config,
)
from ._environment import Environment, Run
from ._event import (
    EXITED,
    HEARTBEAT,
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
from ._results import CloseReport, EmitReport, HandlerResult, Status
from ._subprocess import CommandResult, SubprocessEnvironment
from ._subscription import Subscription

__version__ = "0.1.0"

__all__ = [
    "DEFAULT",
    "EXITED",
    "HEARTBEAT",
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
    "find_config",
    "heartbeats",
    "installed_adapters",
    "load_config",
]
