"""`lifecycle watch` and `lifecycle runs` as real processes, and their configuration errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import pytest
from lifecycle_watchdog._cli import runs, watch
from lifecycle_watchdog._config import load_watch_config

from lifecycle import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


LIFECYCLE = [sys.executable, "-m", "lifecycle"]


@pytest.mark.parametrize(
    ("table", "key", "shown"),
    [
        ("misses = 0", "watch.misses", "0"),
        ('servers = ["localhost:4222"]', "watch.servers[0]", "'localhost:4222'"),
        ("colour = 1", "watch.colour", ""),
        (
            '[[watch.expect]]\nenvironment = "etl"\ncron = "61 * * * *"',
            "watch.expect[0].cron",
            "'61 * * * *'",
        ),
        (
            '[[watch.expect]]\nenvironment = "etl"\nevery = 60\ntimezone = "Mars/Olympus"',
            "watch.expect[0].timezone",
            "'Mars/Olympus'",
        ),
        ('[[watch.expect]]\nenvironment = "etl"', "watch.expect[0]", ""),
    ],
)
def test_a_bad_watch_configuration_names_the_file_the_key_and_the_value(
    tmp_path: Path, table: str, key: str, shown: str
) -> None:
    file = tmp_path / "watch.toml"
    file.write_text(f"[watch]\n{table}\n")
    with pytest.raises(ConfigError) as caught:
        load_watch_config(file)
    message = str(caught.value)
    assert message.startswith(f"{file}: {key}")
    assert shown in message


def test_watch_exits_2_on_a_bad_configuration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "watch.toml"
    file.write_text("[watch]\nmisses = 'three'\n")
    assert watch(["--config", str(file)]) == 2
    assert runs(["--config", str(file)]) == 2
    assert "watch.misses" in capsys.readouterr().err


def test_runs_says_which_servers_it_could_not_reach(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], free_tcp_port: int
) -> None:
    url = f"nats://127.0.0.1:{free_tcp_port}"
    (tmp_path / "watch.toml").write_text(f'[watch]\nservers = ["{url}"]\nconnect_timeout = 0.5\n')
    assert runs(["--config", str(tmp_path / "watch.toml")]) == 1
    assert url in capsys.readouterr().err


def test_watch_notifies_through_the_usual_handlers_and_runs_lists_the_live_run(
    nats_url: str, tmp_path: Path, wrapper: Callable[..., Any]
) -> None:
    (tmp_path / "notes.py").write_text(
        "import json, os\n"
        "def note(event):\n"
        "    with open(os.environ['NOTES'], 'a') as f:\n"
        "        f.write(event.to_json() + '\\n')\n"
    )
    (tmp_path / "notify.toml").write_text(
        '[[handlers]]\ntarget = "notes:note"\nsignal = "environment.exited"\n'
    )
    (tmp_path / "watch.toml").write_text(
        f'[watch]\nservers = ["{nats_url}"]\nnotify = "notify.toml"\ntick = 0.05\n'
    )
    notes = tmp_path / "notes.jsonl"
    env = {**os.environ, "NOTES": str(notes)}
    service = subprocess.Popen(
        [*LIFECYCLE, "watch", "--config", "watch.toml"],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert service.stderr is not None
        for line in service.stderr:  # ends if the service dies: the assert below says so
            if "watching stream" in line:
                break
        assert service.poll() is None
        run = wrapper()
        deadline = time.monotonic() + 20
        while True:  # ask until the run is listed with a heartbeat (bounded)
            listed = subprocess.run(
                [*LIFECYCLE, "runs", "--server", nats_url, "--json"],
                capture_output=True,
                text=True,
                check=True,
            )
            rows = json.loads(listed.stdout)
            if rows and rows[0]["last_heartbeat"]:
                break
            assert time.monotonic() < deadline, listed
        [row] = rows
        assert (row["environment"], row["state"], row["source"]) == (
            "nightly-etl",
            "running",
            "watchdog",
        )
        run.signal(signal.SIGKILL)
        while not (notes.exists() and notes.read_text()):
            assert time.monotonic() < deadline + 10, "no notification of the lost run"
            time.sleep(0.05)
        [note] = [json.loads(line) for line in notes.read_text().splitlines()]
        assert note["outcome"] == "lost"
        assert note["run_id"] == row["run_id"]
        service.send_signal(signal.SIGTERM)
        assert service.wait(20) == 0
    finally:
        if service.poll() is None:
            service.kill()
            service.wait()
        if service.stderr is not None:
            service.stderr.close()
