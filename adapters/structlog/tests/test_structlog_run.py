"""lifecycle-structlog under a real ``lifecycle run``: one stream of JSON, checked by jq."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

WIDE = 20.0

HOOKS = """\
import time

def hang(event):
    time.sleep(5)  # past its timeout: its thread is abandoned, which the library warns about

def broken(event):
    raise RuntimeError("handler broke")
"""

HANDLERS = """
[[handlers]]
target = "hooks:hang"
signal = "environment.starting"
timeout = 0.05

[[handlers]]
target = "hooks:broken"
signal = "environment.exited"
"""

jq = shutil.which("jq")
needs_jq = pytest.mark.skipif(jq is None, reason="jq is not installed (.ci/run installs it)")


def lifecycle(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "lifecycle"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "lifecycle"]
    return subprocess.run(
        [*command, *args],
        cwd=directory,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=WIDE,
        check=False,
    )


def configure(directory: Path, options: str, handlers: str = HANDLERS) -> None:
    (directory / "hooks.py").write_text(HOOKS)
    (directory / "lifecycle.toml").write_text(
        f'[[adapters]]\nname = "structlog"\noptions = {{ {options} }}\n{handlers}'
    )


def through_jq(text: str) -> list[dict[str, Any]]:
    """Each line of ``text`` through ``jq -e .``, which fails on any line that is not JSON."""
    assert jq is not None
    lines = text.splitlines()
    assert lines
    for line in lines:
        done = subprocess.run(
            [jq, "-e", "-c", "."], input=line, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, f"jq refused {line!r}: {done.stderr}"
    return [json.loads(line) for line in lines]


@needs_jq
def test_every_line_of_a_json_run_is_json(tmp_path: Path) -> None:
    configure(tmp_path, 'render = "json"')
    done = lifecycle(tmp_path, "run", "--timeout", "0.5", "--grace", "0.2", "--", "sleep", "10")
    assert done.returncode == 124
    events = {line["event"]: line for line in through_jq(done.stderr)}
    # The library's own warnings, in the adapter's shape:
    given_up = events["sync handler given up while running; its thread is abandoned and replaced"]
    assert given_up["level"] == "warning"
    assert events["command outlived its time limit; stopping it"]["timestamp"].endswith("Z")
    # A failing handler keeps its traceback; the error is an object.
    failed = events["lifecycle.handler_failed"]
    assert failed["error"] == {"type": "RuntimeError", "message": "handler broke"}
    assert 'raise RuntimeError("handler broke")' in failed["exception"]
    assert failed["event_id"] == events["environment.exited"]["event_id"]


@needs_jq
def test_the_wrappers_own_errors_are_json_too(tmp_path: Path) -> None:
    configure(tmp_path, 'render = "json"', handlers="")
    done = lifecycle(tmp_path, "run", "--", "no-such-command-here")
    assert done.returncode == 127
    last = through_jq(done.stderr)[-1]
    assert (last["level"], last["event"]) == (
        "error",
        "no-such-command-here: command not found (No such file or directory)",
    )


@needs_jq
def test_file_from_the_configuration_gets_every_line(tmp_path: Path) -> None:
    configure(tmp_path, 'render = "json", file = "logs/run.jsonl"')
    (tmp_path / "logs").mkdir()
    done = lifecycle(tmp_path, "run", "--", "false")
    assert done.returncode == 1
    assert done.stderr == ""
    lines = through_jq((tmp_path / "logs" / "run.jsonl").read_text())
    assert [line["event"] for line in lines if line["event"].startswith("environment.")] == [
        "environment.starting",
        "environment.exited",
    ]
    # Appended, not replaced: a second run adds its lines.
    lifecycle(tmp_path, "run", "--", "true")
    assert len((tmp_path / "logs" / "run.jsonl").read_text().splitlines()) > len(lines)


def test_a_file_that_cannot_be_opened_is_a_configuration_error(tmp_path: Path) -> None:
    configure(tmp_path, 'render = "json", file = "missing/run.jsonl"', handlers="")
    marker = tmp_path / "ran"
    done = lifecycle(tmp_path, "run", "--", "touch", str(marker))
    assert done.returncode == 125
    assert not marker.exists()
    assert "lifecycle.toml: adapters[0].options.file:" in done.stderr
    assert "'missing/run.jsonl' cannot be opened for appending" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_file_that_is_no_path_is_a_configuration_error(tmp_path: Path) -> None:
    configure(tmp_path, 'render = "json", file = 5', handlers="")
    done = lifecycle(tmp_path, "check")
    assert done.returncode == 1
    assert "adapters[0].options.file:" in done.stderr
    assert "file must be a path or a text stream, not int" in done.stderr


@needs_jq
def test_ecs_documents_of_a_real_run(tmp_path: Path) -> None:
    configure(tmp_path, 'render = "json", fields = "ecs"')
    done = lifecycle(tmp_path, "run", "--", "sh", "-c", "exit 3")
    assert done.returncode == 3
    lines = through_jq(done.stderr)
    exited = next(line for line in lines if line["message"] == "environment.exited")
    assert exited["log.level"] == "error"
    assert exited["event"]["outcome"] == "failure"
    assert exited["process"]["exit_code"] == 3
    assert exited["lifecycle"]["outcome"] == "failed"
    failed = next(line for line in lines if line["message"] == "lifecycle.handler_failed")
    assert failed["error"]["type"] == "RuntimeError"
    assert "handler broke" in failed["error"]["stack_trace"]
    assert all("@timestamp" in line and line["ecs.version"] for line in lines)


def test_check_does_not_create_the_log_file(tmp_path: Path) -> None:
    configure(tmp_path, 'render = "json", file = "run.jsonl"', handlers="")
    done = lifecycle(tmp_path, "check")
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "run.jsonl").exists()


def test_check_refuses_a_file_in_a_missing_directory(tmp_path: Path) -> None:
    configure(tmp_path, 'render = "json", file = "missing/run.jsonl"', handlers="")
    done = lifecycle(tmp_path, "check")
    assert done.returncode == 1
    assert "adapters[0].options.file:" in done.stderr
    assert "'missing/run.jsonl' cannot be opened for appending: No such file" in done.stderr
