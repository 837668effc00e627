"""``lifecycle run --quiet`` for cron, and where the configuration is found: real runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pathlib import Path

WIDE = 20.0

JSON_LOGS = '[[adapters]]\nname = "structlog"\noptions = { render = "json" }\n'
SAY_AND_EXIT = "echo out; echo err >&2; exit {status}"


def lifecycle(
    directory: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lifecycle", *args],
        cwd=directory,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=WIDE,
        check=False,
    )


# -- --quiet -------------------------------------------------------------------------------


def test_a_quiet_run_that_succeeds_prints_nothing(tmp_path: Path) -> None:
    done = lifecycle(tmp_path, "run", "--quiet", "--", "sh", "-c", SAY_AND_EXIT.format(status=0))
    assert done.returncode == 0
    assert (done.stdout, done.stderr) == ("", "")


def test_a_quiet_run_that_fails_prints_everything(tmp_path: Path) -> None:
    done = lifecycle(tmp_path, "run", "-q", "--", "sh", "-c", SAY_AND_EXIT.format(status=3))
    assert done.returncode == 3
    assert done.stdout == "out\n"
    lines = done.stderr.splitlines()
    assert "environment.starting" in lines[0]  # the lines held back, in their order
    assert "err" in lines
    assert "outcome=failed" in lines[-1]


def test_a_quiet_run_past_its_time_limit_prints_the_warning(tmp_path: Path) -> None:
    done = lifecycle(
        tmp_path, "run", "--quiet", "--timeout", "0.3", "--grace", "0.2", "--", "sleep", "10"
    )
    assert done.returncode == 124
    assert "command outlived its time limit" in done.stderr
    assert "outcome=timeout" in done.stderr


def test_a_quiet_run_stopped_by_sigterm_prints_even_with_status_0(tmp_path: Path) -> None:
    # The command exits 0 on SIGTERM, but the run did not succeed: it was stopped.
    ready = tmp_path / "ready"
    script = f"trap 'exit 0' TERM; touch {ready}; while :; do sleep 0.05; done"
    process = subprocess.Popen(
        [sys.executable, "-m", "lifecycle", "run", "--quiet", "--", "sh", "-c", script],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + WIDE
        while not ready.exists():
            assert time.monotonic() < deadline, "the command never started"
            assert process.poll() is None, process.communicate()
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=WIDE)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 0
    assert "outcome=terminated" in err


def test_quiet_from_the_run_table_of_the_configuration(tmp_path: Path) -> None:
    (tmp_path / "lifecycle.toml").write_text("[run]\nquiet = true\n" + JSON_LOGS)
    succeeded = lifecycle(tmp_path, "run", "--", "sh", "-c", SAY_AND_EXIT.format(status=0))
    assert (succeeded.returncode, succeeded.stdout, succeeded.stderr) == (0, "", "")
    failed = lifecycle(tmp_path, "run", "--", "sh", "-c", SAY_AND_EXIT.format(status=1))
    assert failed.returncode == 1
    assert failed.stdout == "out\n"
    events = [json.loads(line)["event"] for line in failed.stderr.splitlines() if "{" in line]
    assert events == ["environment.starting", "environment.exited"]


def test_a_bad_run_table_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "lifecycle.toml").write_text('[run]\nquiet = "yes"\n')
    done = lifecycle(tmp_path, "run", "--quiet", "--", "true")
    assert done.returncode == 125
    assert "lifecycle.toml: run.quiet: must be true or false" in done.stderr


# -- where the configuration is found ------------------------------------------------------


def first_event(done: subprocess.CompletedProcess[str]) -> dict[str, object]:
    """The first line of a run, which is JSON when the JSON configuration was found."""
    line: dict[str, object] = json.loads(done.stderr.splitlines()[0])
    return line


def test_lifecycle_config_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "elsewhere.toml").write_text(JSON_LOGS)
    work = tmp_path / "work"
    work.mkdir()
    (work / "lifecycle.toml").write_text("")  # LIFECYCLE_CONFIG wins over the directory's
    env = {"LIFECYCLE_CONFIG": str(tmp_path / "elsewhere.toml")}
    assert first_event(lifecycle(work, "run", "--", "true", env=env))["event"] == (
        "environment.starting"
    )
    check = lifecycle(work, "check", env=env)
    assert f"{tmp_path / 'elsewhere.toml'}: ok, 1 to attach" in check.stdout
    assert "named by $LIFECYCLE_CONFIG" in check.stdout


def test_lifecycle_config_naming_a_missing_file_is_a_configuration_error(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    env = {"LIFECYCLE_CONFIG": str(tmp_path / "nope.toml")}
    done = lifecycle(tmp_path, "run", "--", "touch", str(marker), env=env)
    assert done.returncode == 125
    assert not marker.exists()
    expected = "nope.toml: cannot read the file (named by $LIFECYCLE_CONFIG): No such file"
    assert expected in done.stderr


def test_the_users_configuration_directory_is_used_from_home(tmp_path: Path) -> None:
    # cron runs a job in $HOME, where no project's lifecycle.toml is.
    user = tmp_path / "config"
    (user / "lifecycle").mkdir(parents=True)
    (user / "lifecycle" / "lifecycle.toml").write_text(JSON_LOGS)
    home = tmp_path / "home"
    home.mkdir()
    env = {"XDG_CONFIG_HOME": str(user)}
    assert first_event(lifecycle(home, "run", "--", "true", env=env))["level"] == "info"
    check = lifecycle(home, "check", env=env)
    assert f"{user / 'lifecycle' / 'lifecycle.toml'}: ok" in check.stdout
    assert "in the user's configuration directory" in check.stdout


def test_the_working_directory_wins_over_the_users(tmp_path: Path) -> None:
    user = tmp_path / "config"
    (user / "lifecycle").mkdir(parents=True)
    (user / "lifecycle" / "lifecycle.toml").write_text(JSON_LOGS)
    (tmp_path / "lifecycle.toml").write_text("[run]\nquiet = true\n")
    done = lifecycle(tmp_path, "run", "--", "true", env={"XDG_CONFIG_HOME": str(user)})
    assert (done.returncode, done.stderr) == (0, "")


def test_the_systems_configuration_directory_comes_last(tmp_path: Path) -> None:
    system = tmp_path / "etc-xdg"
    (system / "lifecycle").mkdir(parents=True)
    (system / "lifecycle" / "lifecycle.toml").write_text(JSON_LOGS)
    env = {"XDG_CONFIG_DIRS": f"{tmp_path / 'none'}{os.pathsep}{system}"}
    assert first_event(lifecycle(tmp_path, "run", "--", "true", env=env))["level"] == "info"
    check = lifecycle(tmp_path, "check", env=env)
    assert "in the system's configuration directory" in check.stdout


@pytest.mark.parametrize("found", ["nowhere", "user"])
def test_check_without_a_file_lists_where_it_looked(tmp_path: Path, found: str) -> None:
    user = tmp_path / "config"
    env = {"XDG_CONFIG_HOME": str(user)}
    if found == "user":
        (user / "lifecycle").mkdir(parents=True)
        (user / "lifecycle" / "lifecycle.toml").write_text("")
    check = lifecycle(tmp_path, "check", env=env)
    assert check.returncode == 0
    if found == "nowhere":
        assert f"no {user / 'lifecycle' / 'lifecycle.toml'}" in check.stdout
    else:
        assert f"{user / 'lifecycle' / 'lifecycle.toml'}: ok, 0 to attach" in check.stdout
