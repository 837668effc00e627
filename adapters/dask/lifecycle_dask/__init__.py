"""lifecycle-dask: runs on a Dask cluster, with its resources on start and its workers' metrics on exit.

``DaskEnvironment`` connects each run to a cluster (a scheduler address, a ``Client``, or a
cluster it creates, ``LocalCluster`` by default), puts the cluster's resources on
``environment.starting`` and what the workers did on ``environment.exited``. ``on_start``
handlers :func:`broadcast` worker plugins that reach every worker, later ones too, and are
unregistered when the run exits.
"""

from lifecycle.plugins import claim_exports as _claim_exports

from ._environment import (
    DaskEnvironment,
    DaskSession,
    NoDaskRunError,
    broadcast,
    current_client,
    current_session,
)

__version__ = "0.1.0"

__all__ = [
    "DaskEnvironment",
    "DaskSession",
    "NoDaskRunError",
    "broadcast",
    "current_client",
    "current_session",
]

_claim_exports(globals())
