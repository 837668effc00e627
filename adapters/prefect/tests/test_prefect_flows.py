"""Prefect flow runs as lifecycle runs, against a real Prefect server and real NATS.

One ``prefect server start`` (its own SQLite database in a temporary PREFECT_HOME) serves
the module; every flow runs in a child process as a user's would, with the handlers of a
real ``lifecycle.toml`` recording what they receive. The zombie tests add the machine's
NATS server (a stream and a bucket of their own) and two real ``lifecycle watch``
processes. Waits are bounded polls on the thing awaited, never assertions on time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from lifecycle_testing import poll_blocking, recorded, stop_process, wait_serving

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from lifecycle_testing import NatsServer

pytest.importorskip(
    "lifecycle_prefect",
    reason="lifecycle-prefect is not installed: uv sync --all-packages --group prefect",
)

# The first test also waits for the Prefect server to start (about 15 s on an idle machine).
pytestmark = pytest.mark.timeout(120)

FLOWS = Path(__file__).with_name("prefect_flows.py")
BEAT = 0.2
MISSES = 3


@pytest.fixture(scope="module")
def prefect_api(
    tmp_path_factory: pytest.TempPathFactory, free_tcp_port_factory: Callable[[], int]
) -> Iterator[str]:
    """A real Prefect server on a free loopback port, for this module."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_tcp_port_factory()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
    }
    log = (home / "server.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
         "--port", str(port), "--no-services", "--no-ui"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_serving(f"{url}/health", server, log=home / "server.log", limit=90)
        yield url
    finally:
        stop_process(server, grace=15)
        log.close()


def flow_run(api: str, run_id: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{api}/flow_runs/{run_id}", timeout=5) as answer:
        data: dict[str, Any] = json.load(answer)
        return data


def states_of(api: str, run_id: str) -> list[str]:
    with urllib.request.urlopen(f"{api}/flow_run_states/?flow_run_id={run_id}", timeout=5) as a:
        return [state["name"] for state in json.load(a)]


class Flows:
    """Runs ``prefect_flows.py`` in child processes against one configuration."""

    def __init__(self, directory: Path, api: str, config: str) -> None:
        self.directory = directory
        self.notes = directory / "notes.jsonl"
        (directory / "lifecycle.toml").write_text(config)
        self.env = {
            **os.environ,
            "PREFECT_API_URL": api,
            "PREFECT_HOME": str(directory / "prefect-client"),
            "PREFECT_LOGGING_LEVEL": "WARNING",
            "NOTES": str(self.notes),
            "BEAT": str(BEAT),
        }

    output = ""

    def start(self, *names: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, str(FLOWS), *names],
            cwd=self.directory, env=self.env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip

    def run(self, *names: str) -> str:
        child = self.start(*names)
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        return out

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        return [event for event in recorded(self.notes) if name is None or event["name"] == name]


NOTE_ALL = "".join(
    f'[[handlers]]\ntarget = "prefect_flows:note"\nsignal = "environment.{signal}"\n\n'
    for signal in ("starting", "exited")
)


@pytest.fixture(scope="module")
def flows(tmp_path_factory: pytest.TempPathFactory, prefect_api: str) -> Flows:
    """One child process that runs a flow of each kind, for the tests that read its events.

    (A child process costs seconds: Prefect's import and its client's start.)
    """
    flows = Flows(tmp_path_factory.mktemp("flows"), prefect_api, NOTE_ALL)
    flows.output = flows.run(
        "succeeds", "fails", "outlives_its_timeout", "cancels_itself", "calls_a_subflow"
    )
    return flows


def by_flow(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        found.setdefault(event["environment"]["name"], []).append(event)
    return found


def test_each_final_state_gives_one_starting_and_one_exited_with_its_outcome(
    flows: Flows, prefect_api: str
) -> None:
    assert "RET succeeds 42" in flows.output
    starting, exited = (
        by_flow(flows.events("environment.starting")),
        by_flow(flows.events("environment.exited")),
    )
    outcomes = {name: [event["outcome"] for event in events] for name, events in exited.items()}
    assert outcomes == {
        "succeeds": ["succeeded", "succeeded"],  # once on its own, once as the subflow
        "fails": ["failed"],
        "outlives-its-timeout": ["timeout"],
        "cancels-itself": ["cancelled"],
        "calls-a-subflow": ["succeeded"],
    }
    assert {name: len(events) for name, events in starting.items()} == {
        name: len(exits) for name, exits in outcomes.items()
    }
    failed = exited["fails"][0]
    assert failed["error"]["type"] == "ValueError"
    assert failed["error"]["message"] == "the flow's own error"
    assert failed["attributes"]["prefect_state"] == "Failed"
    assert exited["outlives-its-timeout"][0]["attributes"]["prefect_state"] == "TimedOut"
    assert exited["cancels-itself"][0]["attributes"]["prefect_state_message"] == (
        "nothing to do today"
    )
    run = exited["succeeds"][0]
    assert run["run_id"] == starting["succeeds"][0]["run_id"]
    assert "prefect" in run["environment"]["labels"]
    assert run["attributes"]["prefect_flow_run_url"].endswith(run["run_id"])
    # The run id is the flow run's own id in Prefect.
    assert flow_run(prefect_api, run["run_id"])["state"]["type"] == "COMPLETED"


def test_a_subflow_is_a_run_of_its_own_that_names_its_parent(flows: Flows) -> None:
    assert "RET calls_a_subflow 43" in flows.output
    exited = by_flow(flows.events("environment.exited"))
    parent, child = exited["calls-a-subflow"][0], exited["succeeds"][1]
    assert child["attributes"]["parent_run_id"] == parent["run_id"]
    assert parent["attributes"]["task_runs"] == {"Completed": 1}  # the subflow's task run
    assert [event["outcome"] for event in (parent, child)] == ["succeeded", "succeeded"]


def test_failing_and_hanging_handlers_change_neither_the_state_nor_the_result(
    tmp_path: Path, prefect_api: str
) -> None:
    flows = Flows(
        tmp_path,
        prefect_api,
        NOTE_ALL
        + '[[handlers]]\ntarget = "prefect_flows:fail"\nsignal = "environment.starting"\n\n'
        '[[handlers]]\ntarget = "prefect_flows:hang"\nsignal = "environment.exited"\n'
        "timeout = 0.3\n",
    )
    assert "RET succeeds 42" in flows.run("succeeds")
    (exited,) = flows.events("environment.exited")
    assert exited["outcome"] == "succeeded"
    assert flow_run(prefect_api, exited["run_id"])["state"]["type"] == "COMPLETED"


def test_a_critical_starting_handler_that_fails_aborts_the_flow_run_before_its_body(
    tmp_path: Path, prefect_api: str
) -> None:
    flows = Flows(
        tmp_path,
        prefect_api,
        NOTE_ALL + '[[handlers]]\ntarget = "prefect_flows:fail"\nsignal = "environment.starting"\n'
        "critical = true\n",
    )
    out = flows.run("succeeds")
    assert "RAISED succeeds StartAborted(" in out
    (exited,) = flows.events("environment.exited")
    assert exited["outcome"] == "aborted"
    assert flow_run(prefect_api, exited["run_id"])["state"]["type"] == "FAILED"


def post(api: str, path: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        f"{api}{path}", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        return json.load(answer)


def test_a_served_flow_run_is_a_run_of_its_deployment(tmp_path: Path, prefect_api: str) -> None:
    flows = Flows(tmp_path, prefect_api, NOTE_ALL)
    flows.env["PREFECT_RUNNER_POLL_FREQUENCY"] = "1"
    runner = flows.start("serve")
    try:
        (deployment,) = poll_blocking(
            lambda: post(
                prefect_api, "/deployments/filter", {"deployments": {"name": {"any_": ["served"]}}}
            ),
            "the served deployment",
            limit=30,
        )
        flow_run_id = post(prefect_api, f"/deployments/{deployment['id']}/create_flow_run", {})[
            "id"
        ]
        (exited,) = poll_blocking(
            lambda: flows.events("environment.exited"), "the served run's exited", limit=30
        )
    finally:
        runner.terminate()
        runner.communicate(timeout=30)
    assert exited["run_id"] == flow_run_id
    assert exited["environment"]["name"] == "served"
    assert exited["outcome"] == "succeeded"
    assert exited["attributes"]["prefect_deployment_id"] == deployment["id"]


# -- zombies: the watchdog, NATS, and Prefect's own state ---------------------------------


@pytest.fixture(scope="module")
def names() -> dict[str, str]:
    """A stream, subjects and a bucket of their own (the module shares one NATS server)."""
    tag = uuid.uuid4().hex[:8].upper()
    return {
        "stream": f"LCPREFECT{tag}",
        "subject_prefix": f"lcprefect{tag.lower()}",
        "bucket": f"lcprefect{tag.lower()}",
    }


@pytest.fixture(scope="module")
def watchdogs(
    tmp_path_factory: pytest.TempPathFactory,
    prefect_api: str,
    names: dict[str, str],
    shared_nats: NatsServer,
) -> Iterator[Path]:
    """Two ``lifecycle watch`` replicas that mark lost flow runs Crashed; yields their notes."""
    directory = tmp_path_factory.mktemp("watch")
    notes = directory / "verdicts.jsonl"
    (directory / "watch.toml").write_text(
        f'[watch]\nservers = ["{shared_nats.url}"]\nstream = "{names["stream"]}"\n'
        f'subject_prefix = "{names["subject_prefix"]}"\nbucket = "{names["bucket"]}"\n'
        f"tick = 0.05\nmisses = {MISSES}\n\n"
        '[[handlers]]\ntarget = "lifecycle_prefect:mark_crashed"\n'
        'signal = "environment.exited"\n\n'
        '[[handlers]]\ntarget = "prefect_flows:note"\nsignal = "environment.exited"\n'
    )
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_api,
        "PREFECT_HOME": str(directory / "prefect-client"),
        "NOTES": str(notes),
        "PYTHONPATH": str(FLOWS.parent),
    }
    replicas = []
    try:
        # Both start before either is awaited: each spends seconds importing Prefect (for
        # mark_crashed), and neither needs the other to be up.
        command = [sys.executable, "-m", "lifecycle", "watch", "--config", "watch.toml"]
        for _ in range(2):
            replicas.append(
                subprocess.Popen(command, cwd=directory, env=env, stderr=subprocess.PIPE, text=True)
            )
        for replica in replicas:
            assert replica.stderr is not None
            for line in replica.stderr:  # ends if it dies: the assert below says so
                if "watching stream" in line:
                    break
            assert replica.poll() is None, "lifecycle watch did not start"
        yield notes
    finally:
        for replica in replicas:
            replica.terminate()
        for replica in replicas:
            try:
                replica.wait(10)
            except subprocess.TimeoutExpired:
                replica.kill()
                replica.wait()
            if replica.stderr is not None:
                replica.stderr.close()


@pytest.fixture
def published(
    tmp_path: Path, prefect_api: str, names: dict[str, str], shared_nats: NatsServer
) -> Flows:
    """Flows whose events go to NATS, where the watchdogs read them."""
    return Flows(
        tmp_path,
        prefect_api,
        f'[[adapters]]\nname = "nats"\noptions = {{ servers = ["{shared_nats.url}"], '
        f'stream = "{names["stream"]}", subject_prefix = "{names["subject_prefix"]}" }}\n\n'
        + NOTE_ALL,
    )


def verdicts(notes: Path, run_id: str) -> list[dict[str, Any]]:
    return [e for e in recorded(notes) if e["run_id"] == run_id and e.get("outcome") == "lost"]


def test_a_killed_flow_run_is_lost_once_and_marked_crashed_once(
    published: Flows, watchdogs: Path, prefect_api: str
) -> None:
    child = published.start("waits_to_be_killed")
    assert child.stdout is not None
    assert child.stdout.readline().startswith("WAITING")
    (starting,) = poll_blocking(
        lambda: published.events("environment.starting"), "starting", limit=30
    )
    run_id = starting["run_id"]
    child.send_signal(signal.SIGKILL)
    child.communicate()

    (lost,) = poll_blocking(lambda: verdicts(watchdogs, run_id), "the lost verdict", limit=30)
    assert lost["environment"]["name"] == "waits-to-be-killed"
    poll_blocking(
        lambda: "Crashed" in states_of(prefect_api, run_id), "Crashed in Prefect", limit=30
    )
    # Both replicas judged the run; one announced it, and Prefect was told once.
    assert len(verdicts(watchdogs, run_id)) == 1
    assert states_of(prefect_api, run_id).count("Crashed") == 1
    assert published.events("environment.exited") == []


def test_a_process_that_lingers_after_its_flow_completed_is_not_lost(
    published: Flows, watchdogs: Path, prefect_api: str
) -> None:
    # The flow run's exited goes out before the process's exit lags 10 heartbeat intervals.
    assert "RET lingers_after_completion 7" in published.run("lingers_after_completion")
    (exited,) = published.events("environment.exited")
    assert exited["outcome"] == "succeeded"
    assert verdicts(watchdogs, exited["run_id"]) == []
    assert flow_run(prefect_api, exited["run_id"])["state"]["type"] == "COMPLETED"
