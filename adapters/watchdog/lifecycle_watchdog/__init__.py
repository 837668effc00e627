"""lifecycle-watchdog: zombie runs and missed starts, from the events on NATS JetStream.

``lifecycle watch`` reads the stream that ``lifecycle-nats`` fills and says, exactly once,
what no run can say about itself:

- a run whose heartbeats stopped for ``misses x interval`` is *lost*: an
  ``environment.exited`` event with outcome ``lost``, its last heartbeat and its host;
- a run declared lost that speaks again (its own ``exited``, a heartbeat) is delivered
  as it is, marked ``after_lost``, followed by ``environment.recovered``;
- an ``[[expect]]``-ed start that did not come is ``environment.missed``, one per slot;
- a run longer than its ``max_duration`` is ``environment.overdue``, once.

The run table lives in a JetStream key-value bucket; every verdict is a compare-and-set
on it and carries a deterministic ``Nats-Msg-Id``, so two watchdogs, or one restarted,
declare each verdict once.

.. versionadded:: 0.2
"""

from lifecycle.plugins import claim_exports as _claim_exports

from ._judge import Change, Judge, Policy
from ._model import MISSED, OVERDUE, RECOVERED, RunRecord, RunState, verdict_id
from ._schedule import Expectation, Slot
from ._service import Publish, Watchdog
from ._store import JetStreamStore, MemoryStore, RunStore

__all__ = [
    "MISSED",
    "OVERDUE",
    "RECOVERED",
    "Change",
    "Expectation",
    "JetStreamStore",
    "Judge",
    "MemoryStore",
    "Policy",
    "Publish",
    "RunRecord",
    "RunState",
    "RunStore",
    "Slot",
    "Watchdog",
    "verdict_id",
]

__version__ = "0.1.0"

_claim_exports(globals())
