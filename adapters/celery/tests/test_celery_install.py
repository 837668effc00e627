"""install's options and configuration errors, the run ids, the outcome mapping: no worker."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import lifecycle_celery
import pytest
from billiard.exceptions import SoftTimeLimitExceeded
from celery import Celery
from celery.exceptions import Retry
from lifecycle_celery import outcome_of, run_id_for
from lifecycle_testing import recorded

from lifecycle import ConfigError, Outcome

if TYPE_CHECKING:
    from pathlib import Path


AT = datetime.datetime(2026, 12, 6, 23, 0, tzinfo=datetime.timezone.utc)


@pytest.fixture
def app() -> Celery:
    return Celery("install-tests", broker="memory://", set_as_current=False)


def test_all_lists_exactly_the_public_names() -> None:
    public = {name for name in dir(lifecycle_celery) if not name.startswith("_")}
    assert set(lifecycle_celery.__all__) == public - {"annotations"}
    assert lifecycle_celery.__all__ == sorted(lifecycle_celery.__all__)


def test_run_ids_name_the_attempt_and_the_delivery() -> None:
    assert run_id_for("t1") == "t1"
    assert run_id_for("t1", 2) == "t1.retry-2"
    assert run_id_for("t1", 0, redelivered=True, host="h", pid=7) == "t1.redelivered-7@h"


@pytest.mark.parametrize(
    ("state", "retval", "outcome"),
    [
        ("SUCCESS", 42, Outcome.SUCCEEDED),
        ("IGNORED", None, Outcome.SUCCEEDED),
        ("FAILURE", ValueError("x"), Outcome.FAILED),
        ("FAILURE", SoftTimeLimitExceeded(), Outcome.TIMEOUT),
        ("RETRY", Retry(exc=KeyError("k"), when=AT), Outcome.FAILED),
        ("REJECTED", None, Outcome.FAILED),
    ],
)
def test_celery_states_map_to_outcomes(state: str, retval: Any, outcome: Outcome) -> None:
    assert outcome_of(state, retval)[0] is outcome


def test_a_retry_reports_its_cause_and_when() -> None:
    cause = KeyError("k")
    _, error, attributes = outcome_of("RETRY", Retry(exc=cause, when=AT))
    assert error is cause
    assert attributes == {"celery_state": "RETRY", "celery_retry_when": str(AT)}


@pytest.mark.parametrize(
    ("option", "value", "error", "message"),
    [
        ("heartbeat", -1, ValueError, "heartbeat must be a finite number of seconds > 0"),
        ("heartbeat", "10", TypeError, "heartbeat must be a number of seconds"),
        ("start_timeout", 0, ValueError, "start_timeout must be a finite number"),
        ("close_timeout", float("inf"), ValueError, "close_timeout must be a finite number"),
    ],
)
def test_a_bad_option_is_refused_naming_it(
    app: Celery, tmp_path: Path, option: str, value: Any, error: type[Exception], message: str
) -> None:
    config = tmp_path / "lifecycle.toml"
    config.write_text("")
    with pytest.raises(error, match=message):
        lifecycle_celery.install(app, config=config, **{option: value})


def test_a_configuration_mistake_fails_install_naming_file_and_key(
    app: Celery, tmp_path: Path
) -> None:
    config = tmp_path / "lifecycle.toml"
    config.write_text(
        '[[handlers]]\ntarget = "no_such_module_here:fn"\nsignal = "environment.exited"\n'
    )
    with pytest.raises(ConfigError, match=r"lifecycle\.toml.*handlers\[0\]\.target"):
        lifecycle_celery.install(app, config=config)


def test_uninstall_disconnects_the_signals(app: Celery, tmp_path: Path) -> None:
    from celery import signals

    config = tmp_path / "lifecycle.toml"
    config.write_text("")
    before = len(signals.task_prerun.receivers)
    installation = lifecycle_celery.install(app, config=config)
    assert len(signals.task_prerun.receivers) == before + 1
    installation.uninstall()
    assert len(signals.task_prerun.receivers) == before


def test_a_process_that_ends_with_a_run_in_flight_exits_it_terminated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What worker_process_shutdown and worker_shutdown do: end the runs still in flight."""
    from celery_harness import handlers_toml
    from lifecycle_celery._runtime import Runtime, TaskRun

    from lifecycle import load_config

    record = tmp_path / "events.jsonl"
    monkeypatch.setenv("RECORD_FILE", str(record))
    config = tmp_path / "lifecycle.toml"
    config.write_text(handlers_toml())
    runtime = Runtime(load_config(config), heartbeat=None, start_timeout=5, close_timeout=5)
    runtime.start()
    runtime.begin(TaskRun("run-1", "jobs.long", frozenset({"celery"}), {"celery_attempt": 1}))
    runtime.close()
    events = recorded(record)
    assert [(event["name"], event["outcome"]) for event in events] == [
        ("environment.starting", None),
        ("environment.exited", "terminated"),
    ]
    assert events[1]["attributes"]["celery_state"] == "WORKER_SHUTDOWN"
    assert not runtime.alive


EAGER = """
from celery import Celery
import lifecycle_celery

app = Celery("eager", broker="memory://", backend="cache+memory://")
app.conf.task_always_eager = True
lifecycle_celery.install(app, config="lifecycle.toml", heartbeat=None)

@app.task
def add(x, y):
    return x + y

print(add.delay(1, 2).get())
"""


def test_a_process_that_ends_without_a_worker_signal_still_hands_its_events_over(
    tmp_path: Path,
) -> None:
    """Tasks run eagerly, and an exited handler in the background: emitted before exit."""
    from celery_harness import HERE, handlers_toml

    (tmp_path / "eager.py").write_text(EAGER)
    # Background, so that only the drain at exit can have run it.
    (tmp_path / "lifecycle.toml").write_text(
        handlers_toml().replace("inline = true", "background = true")
    )
    record = tmp_path / "events.jsonl"
    done = subprocess.run(
        [sys.executable, "eager.py"],
        cwd=tmp_path, env={**os.environ, "RECORD_FILE": str(record), "PYTHONPATH": str(HERE)},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == "3\n"
    events = recorded(record)
    assert sorted(event["name"] for event in events) == [
        "environment.exited",
        "environment.starting",
    ]
