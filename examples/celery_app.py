"""A Celery app whose tasks are lifecycle runs, and whose killed worker's tasks are reported lost.

On a fresh clone, with Redis and nats-server on this machine (``apt-get install
redis-server nats-server``), four terminals::

    nats-server -js                                                  # 1: the event stream
    uv run lifecycle watch --config examples/celery_watch.toml       # 2: the watchdog
    uv run celery -A examples.celery_app worker --concurrency 2      # 3: a worker
    uv run python -m examples.celery_app                             # 4: send three tasks

Terminal 3 logs a line per task start and end (the structlog adapter). While the two long
tasks run, kill the whole worker, as the OOM killer would::

    pkill -KILL -f 'celery -A examples.celery_app'

and, one to two seconds later, ``lifecycle watch`` in terminal 2 reports each of the two
tasks ``lost``, once, with its task id, its task name and its host; the short one, which
finished, is not. ``uv run lifecycle runs`` lists what is running meanwhile.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import lifecycle_celery
from celery import Celery

BROKER = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")

app = Celery("examples.celery_app", broker=BROKER, backend=BROKER)
# Each task execution: starting, a heartbeat every second while it runs, exited.
lifecycle_celery.install(app, config=Path(__file__).with_name("celery.toml"), heartbeat=1)


@app.task
def resize(image: str) -> str:
    return f"{image}: resized"


@app.task
def nightly_report(seconds: float) -> str:
    time.sleep(seconds)  # long enough to kill the worker meanwhile
    return "report sent"


def main() -> int:
    short = resize.delay("cat.png")
    print(short.get(timeout=30))
    for _ in range(2):
        print("sent nightly_report", nightly_report.delay(120).id)
    print("now kill the worker: pkill -KILL -f 'celery -A examples.celery_app'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
