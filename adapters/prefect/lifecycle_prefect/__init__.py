"""lifecycle-prefect: Prefect 3 flow runs as lifecycle runs.

``@lifecycle_prefect.observe`` above ``@flow`` turns every run of the flow into a lifecycle
run (``starting``, heartbeats, ``exited`` once), handled by the adapters and handlers of
``lifecycle.toml``; :func:`mark_crashed`, in the watchdog's configuration, sets a flow run
the watchdog declared lost to Crashed in Prefect.
"""

from lifecycle.plugins import claim_exports as _claim_exports

from ._crash import mark_crashed
from ._hooks import DEFAULT_HEARTBEAT, LABEL, observe
from ._states import FlowRunFailed, outcome_of

__all__ = ["DEFAULT_HEARTBEAT", "LABEL", "FlowRunFailed", "mark_crashed", "observe", "outcome_of"]

_claim_exports(globals())
