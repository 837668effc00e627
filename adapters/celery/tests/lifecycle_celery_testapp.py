"""The Celery app the tests' real ``celery worker`` processes load (``-A lifecycle_celery_testapp``).

Its broker, lifecycle configuration and heartbeat come from the environment the test gives
the worker, so one module serves every test.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import lifecycle_celery
from celery import Celery, Task

app = Celery(
    "lifecycle_celery_testapp",
    broker=os.environ.get("LC_BROKER", "redis://127.0.0.1:6379/13"),
    backend=os.environ.get("LC_BROKER", "redis://127.0.0.1:6379/13"),
)
app.conf.update(
    worker_hijack_root_logger=False,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    result_expires=600,
)
if "LC_CONFIG" in os.environ:
    lifecycle_celery.install(
        app,
        config=os.environ["LC_CONFIG"],
        heartbeat=float(os.environ.get("LC_HEARTBEAT", "0.2")),
        start_timeout=float(os.environ.get("LC_START_TIMEOUT", "1")),
    )


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def boom() -> None:
    raise ValueError("boom")


@app.task(bind=True, max_retries=1)
def flaky(self: Task[Any, Any]) -> str:
    if self.request.retries == 0:
        raise self.retry(exc=KeyError("once more"), countdown=0.05)
    return "second time lucky"


@app.task
def sleepy(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@app.task
def handler_hangs(payload: dict[str, Any]) -> str:
    # The result a hanging handler must leave intact.
    return json.dumps(payload, sort_keys=True)


@app.task(bind=True, acks_late=True, reject_on_worker_lost=True)
def sleepy_once(self: Task[Any, Any], seconds: float) -> str:
    """Sleeps on its first delivery only: its worker is killed meanwhile, and it runs again."""
    if not (self.request.delivery_info or {}).get("redelivered"):
        time.sleep(seconds)
    return "ran again"
