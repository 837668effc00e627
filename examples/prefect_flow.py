"""Prefect flow runs as lifecycle runs: ``uv run --group prefect python examples/prefect_flow.py``.

With no argument: three flow runs (one succeeds, one fails, one calls a subflow) on a
temporary Prefect server, their ``starting`` and ``exited`` lines written by the structlog
adapter (``examples/prefect.toml``).

With ``zombie``: a flow run SIGKILLed mid-run, reported ``lost`` by a real ``lifecycle
watch`` about a second later and set to Crashed in Prefect. It needs a NATS server with
JetStream (``$NATS_URL``, default ``nats://127.0.0.1:4222``) and starts a Prefect server of
its own on a free port; it takes about half a minute, most of it Prefect starting.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lifecycle_prefect
from prefect import flow

if TYPE_CHECKING:
    from collections.abc import Callable

HERE = Path(__file__).parent
BEAT = 0.25


@lifecycle_prefect.observe(config=HERE / "prefect.toml")
@flow
def add(x: int, y: int) -> int:
    return x + y


@lifecycle_prefect.observe(config=HERE / "prefect.toml")
@flow
def divide(x: int, y: int) -> float:
    return x / y


@lifecycle_prefect.observe(config=HERE / "prefect.toml")
@flow
def report() -> int:
    return add(40, 2)


@lifecycle_prefect.observe(config=os.environ.get("LIFECYCLE_CONFIG"), heartbeat=BEAT)
@flow
def nightly_etl() -> None:
    print("RUNNING", flush=True)
    time.sleep(600)  # SIGKILLed long before


def events() -> None:
    print("add:", add(1, 2))
    try:
        divide(1, 0)
    except ZeroDivisionError:
        print("divide: failed, as it should")
    print("report:", report())


def zombie() -> None:
    nats = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
    work = Path(tempfile.mkdtemp(prefix="prefect-zombie-"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(work / "home"), "PREFECT_API_URL": api}
    tag = work.name.rsplit("-", 1)[-1].lower()  # a stream and bucket of this demo's own
    stream, prefix = f"ZOMBIE{tag.upper()}", f"zombie{tag}"
    (work / "flow.toml").write_text(
        f'[[adapters]]\nname = "nats"\noptions = {{ servers = ["{nats}"], '
        f'stream = "{stream}", subject_prefix = "{prefix}" }}\n'
    )
    (work / "watch.toml").write_text(
        f'[watch]\nservers = ["{nats}"]\nstream = "{stream}"\nsubject_prefix = "{prefix}"\n'
        f'bucket = "{prefix}"\nmisses = 3\ntick = 0.1\n\n'
        '[[handlers]]\ntarget = "lifecycle_prefect:mark_crashed"\n'
        'signal = "environment.exited"\nlabels = ["prefect"]\n\n'
        '[[adapters]]\nname = "structlog"\noptions = { render = "console" }\n'
    )
    started: list[subprocess.Popen[Any]] = []
    try:
        print(f"starting a Prefect server on {api} ...")
        started.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "prefect",
                    "server",
                    "start",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--no-services",
                    "--no-ui",
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        _wait(lambda: _get(f"{api}/health") is not None, 120)
        watch = subprocess.Popen(
            [sys.executable, "-m", "lifecycle", "watch", "--config", str(work / "watch.toml")],
            env=env,
        )
        started.append(watch)
        child = subprocess.Popen(
            [sys.executable, __file__, "child"],
            env={**env, "LIFECYCLE_CONFIG": str(work / "flow.toml")},
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(child)
        assert child.stdout is not None
        child.stdout.readline()  # RUNNING: the flow's body runs, its heartbeats go out
        time.sleep(3 * BEAT)
        run = _get(f"{api}/flow_runs/filter", {"limit": 1, "sort": "START_TIME_DESC"})[0]
        print(f"flow run {run['id']} is {run['state']['name']}; SIGKILL to its process")
        killed = time.monotonic()
        child.send_signal(signal.SIGKILL)
        child.wait()
        _wait(lambda: _get(f"{api}/flow_runs/{run['id']}")["state"]["name"] == "Crashed", 60)
        state = _get(f"{api}/flow_runs/{run['id']}")["state"]
        print(
            f"{time.monotonic() - killed:.1f} s after the SIGKILL, Prefect shows the flow run "
            f"{state['name']}: {state['message']}"
        )
    finally:
        for process in reversed(started):
            if process.poll() is None:
                process.terminate()
                process.wait(15)


def _get(url: str, body: object = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=2) as answer:
            return json.load(answer)
    except OSError:
        return None


def _wait(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit("gave up waiting")
        time.sleep(0.1)


if __name__ == "__main__":
    mode = sys.argv[1] if sys.argv[1:] else ""
    if mode == "zombie":
        zombie()
    elif mode == "child":
        nightly_etl()
    else:
        events()
