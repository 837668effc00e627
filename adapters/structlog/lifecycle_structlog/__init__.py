"""Structured log lines for lifecycle-bus runs and handler failures, with structlog.

``attach(bus)`` logs every ``environment.starting`` and ``environment.exited`` event,
at a level that follows the run's outcome, and every handler failure or timeout the bus
reports. It logs through the application's own structlog configuration; programs that
have none can ask for a console or a JSON rendering of the adapter's lines alone
(``render="console"`` / ``render="json"``), without touching the global configuration.
``fields="ecs"`` names the fields as the Elastic Common Schema does.

.. versionadded:: 0.1
"""

# ``escape`` and ``escape_fields`` (.. versionadded:: 0.2) are lifecycle's own, re-exported:
# the console lines of ``lifecycle run``, ``listen``, ``watch`` and this adapter escape alike.
from lifecycle import escape, escape_fields
from lifecycle.plugins import claim_exports as _claim_exports

from ._adapter import DEFAULT_LEVELS, StructlogAdapter, attach
from ._render import ECS_VERSION, console_logger, ecs_document, ecs_fields, json_logger, to_ecs

__all__ = [
    "DEFAULT_LEVELS",
    "ECS_VERSION",
    "StructlogAdapter",
    "attach",
    "console_logger",
    "ecs_document",
    "ecs_fields",
    "escape",
    "escape_fields",
    "json_logger",
    "to_ecs",
]

_claim_exports(globals())
