"""lifecycle-celery: each Celery task execution a lifecycle run, and a dead worker's tasks lost.

``install(app, config="lifecycle.toml")`` connects Celery's signals: every task execution
emits ``environment.starting``, heartbeats while it runs, and ``environment.exited`` with
the outcome Celery gave it, from the worker process that runs it (each prefork child has
its own loop thread, bus and publisher). With the NATS adapter in the configuration,
``lifecycle watch`` reports the tasks of a worker that died, ``lost``, once.
"""

from lifecycle.plugins import claim_exports as _claim_exports

from ._install import Installation, install, outcome_of, run_id_for

__version__ = "0.1.0"

__all__ = ["Installation", "install", "outcome_of", "run_id_for"]

_claim_exports(globals())
