"""Each outcome Celery gives a task, as the lifecycle run's starting/exited, on real workers.

One prefork worker serves the module (its start is most of the cost); the solo and threads
pools get a worker each. Events are what the worker's own handlers recorded.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any

import pytest
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celery_harness import APP, Worker, celery_client, handlers_toml, run_ids
from lifecycle_testing import poll_blocking

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from celery import Celery
    from celery.result import AsyncResult

HANDLERS = handlers_toml(
    # A starting handler that hangs, and an exited one that raises, for one task.
    '[[handlers]]\ntarget = "lifecycle_celery_handlers:hang"\nsignal = "environment.starting"\n'
    "timeout = 0.3\n",
    '[[handlers]]\ntarget = "lifecycle_celery_handlers:fail"\nsignal = "environment.exited"\n',
)


client = pytest.fixture(scope="module", name="client")(celery_client)


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    worker = Worker(tmp_path_factory.mktemp("prefork"), HANDLERS, concurrency=2)
    worker.start()
    yield worker
    worker.stop()


def send(client: Celery, worker: Worker, name: str, *args: Any, **options: Any) -> AsyncResult[Any]:
    return client.send_task(f"{APP}.{name}", args, queue=worker.queue, **options)


def exited(worker: Worker, run_id: str) -> dict[str, Any]:
    return worker.wait_event("environment.exited", run_id)


def test_a_task_that_succeeds_is_one_run_named_after_the_task(
    client: Celery, worker: Worker
) -> None:
    result = send(client, worker, "add", 2, 3)
    assert result.get(timeout=20) == 5
    end = exited(worker, result.id)
    [start] = worker.events("environment.starting", result.id)
    assert end["outcome"] == "succeeded"
    assert end["environment"]["name"] == f"{APP}.add"
    assert sorted(end["environment"]["labels"]) == ["celery", f"queue:{worker.queue}"]
    assert start["attributes"]["celery_hostname"] == worker.node.replace(
        "%h", end["environment"]["host"]
    )
    assert start["attributes"]["celery_pid"] == start["environment"]["pid"]
    assert start["attributes"]["celery_queue"] == worker.queue
    assert start["attributes"]["heartbeat_interval"] == 0.2
    assert end["attributes"]["celery_state"] == "SUCCESS"


def test_a_task_that_raises_exits_failed_with_its_exception(client: Celery, worker: Worker) -> None:
    result = send(client, worker, "boom")
    with pytest.raises(ValueError, match="boom"):
        result.get(timeout=20)
    end = exited(worker, result.id)
    assert end["outcome"] == "failed"
    assert end["error"]["type"] == "ValueError"
    assert end["error"]["message"] == "boom"


def test_a_retry_is_a_new_run_naming_the_attempt_and_the_earlier_run(
    client: Celery, worker: Worker
) -> None:
    result = send(client, worker, "flaky")
    assert result.get(timeout=20) == "second time lucky"
    first = exited(worker, result.id)
    second_id = f"{result.id}.retry-1"
    second = exited(worker, second_id)
    [second_start] = worker.events("environment.starting", second_id)
    assert first["outcome"] == "failed"
    assert first["error"]["type"] == "KeyError"
    assert first["attributes"]["celery_state"] == "RETRY"
    assert first["attributes"]["celery_next_run"] == second_id
    assert second_start["attributes"]["celery_attempt"] == 2
    assert second_start["attributes"]["celery_previous_run"] == result.id
    assert second["outcome"] == "succeeded"


def test_a_soft_time_limit_exits_timeout(client: Celery, worker: Worker) -> None:
    result = send(client, worker, "sleepy", 30, soft_time_limit=0.3)
    with pytest.raises(SoftTimeLimitExceeded):
        result.get(timeout=20)
    end = exited(worker, result.id)
    assert end["outcome"] == "timeout"
    assert end["attributes"]["celery_time_limit"] == "soft"
    assert end["error"]["type"] == "billiard.exceptions.SoftTimeLimitExceeded"


def test_a_hard_time_limit_exits_timeout_from_the_main_process(
    client: Celery, worker: Worker
) -> None:
    result = send(client, worker, "sleepy", 30, time_limit=0.5)
    with pytest.raises(TimeLimitExceeded):
        result.get(timeout=20)
    end = exited(worker, result.id)
    [start] = worker.events("environment.starting", result.id)
    assert end["outcome"] == "timeout"
    assert end["attributes"]["celery_time_limit"] == "hard"
    # The child running it was killed: its worker process reports for it, naming it.
    assert end["attributes"]["celery_pid"] == start["attributes"]["celery_pid"]
    assert len(worker.events("environment.exited", result.id)) == 1


def test_a_running_task_revoked_with_terminate_exits_terminated_once(
    client: Celery, worker: Worker
) -> None:
    result = send(client, worker, "sleepy", 30)
    worker.wait_event("environment.starting", result.id)
    client.control.revoke(result.id, terminate=True)
    end = exited(worker, result.id)
    assert end["outcome"] == "terminated"
    assert end["attributes"]["celery_revoked"] == "terminated"
    # The next task runs as usual on the replaced child, and the revoked one said nothing more.
    later = send(client, worker, "add", 1, 1)
    assert later.get(timeout=20) == 2
    exited(worker, later.id)
    assert len(worker.events("environment.exited", result.id)) == 1


def test_an_expired_task_that_never_ran_exits_cancelled_without_starting(
    client: Celery, worker: Worker
) -> None:
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=10)
    result = send(client, worker, "add", 1, 2, expires=past)
    end = exited(worker, result.id)
    assert end["outcome"] == "cancelled"
    assert end["attributes"]["celery_revoked"] == "expired"
    assert worker.events("environment.starting", result.id) == []


def test_a_hanging_starting_handler_and_a_failing_exited_handler_leave_the_task_alone(
    client: Celery, worker: Worker
) -> None:
    """The handler hangs 60 s past its 0.3 s timeout: the result comes back long before."""
    payload = {"rows": [1, 2, 3], "name": "nightly"}
    result = send(client, worker, "handler_hangs", payload)
    assert result.get(timeout=10) == '{"name": "nightly", "rows": [1, 2, 3]}'
    assert result.status == "SUCCESS"
    end = exited(worker, result.id)
    assert end["outcome"] == "succeeded"


@pytest.mark.parametrize("pool", ["solo", "threads"])
def test_solo_and_threads_pools_give_the_same_runs(
    client: Celery, tmp_path: Path, pool: str
) -> None:
    worker = Worker(tmp_path, handlers_toml(), pool=pool, concurrency=2).start()
    try:
        good = send(client, worker, "add", 4, 5)
        bad = send(client, worker, "boom")
        assert good.get(timeout=20) == 9
        with pytest.raises(ValueError, match="boom"):
            bad.get(timeout=20)
        assert exited(worker, good.id)["outcome"] == "succeeded"
        assert exited(worker, bad.id)["outcome"] == "failed"
        poll_blocking(
            lambda: len(worker.events("environment.starting")) == 2, "two starts", context=worker
        )
        assert sorted(run_ids(worker.events("environment.starting"))) == sorted([good.id, bad.id])
    finally:
        worker.stop()
