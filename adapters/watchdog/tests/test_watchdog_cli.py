"""`lifecycle watch` and `lifecycle runs` as real processes, and their configuration errors."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import pytest
from lifecycle_watchdog._cli import runs, watch
from lifecycle_watchdog._config import load_watch_config

from lifecycle import ConfigError

if TYPE_CHECKING:
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
        ("user = 3", "watch.user", "3"),
        ('creds = "/no/such.creds"', "watch.creds", "'/no/such.creds'"),
    ],
)
def test_a_bad_watch_configuration_names_the_file_the_key_and_the_value(
    tmp_path: Path, table: str, key: str, shown: str
) -> None:
    file = tmp_path / "lifecycle.toml"
    file.write_text(f"[watch]\n{table}\n")
    with pytest.raises(ConfigError) as caught:
        load_watch_config(file)
    message = str(caught.value)
    assert message.startswith(f"{file}: {key}")
    assert shown in message


def test_watch_exits_2_on_a_bad_configuration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "lifecycle.toml"
    file.write_text("[watch]\nmisses = 'three'\n")
    assert watch(["--config", str(file)]) == 2
    assert runs(["--config", str(file)]) == 2
    assert "watch.misses" in capsys.readouterr().err


def test_check_describes_what_a_watch_table_would_watch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lifecycle._cli import main

    file = tmp_path / "lifecycle.toml"
    file.write_text(
        '[watch]\nservers = ["nats://ops:s3cret@nats.internal:4222"]\n'
        "[watch.misses_by_environment]\nnightly-etl = 5\n"
        '[[watch.expect]]\nenvironment = "nightly-etl"\ncron = "0 2 * * *"\n'
        'timezone = "Europe/Paris"\ngrace = 600\nmax_duration = 7200\n'
        '[[watch.expect]]\nenvironment = "hourly"\nevery = 3600\n'
    )
    assert main(["check", "--config", str(file)]) == 0  # nothing is connected to
    out = capsys.readouterr().out
    assert out.endswith(
        "  [watch]: ok:\n"
        "    servers nats://nats.internal:4222, stream LIFECYCLE, run table in bucket "
        "lifecycle_runs\n"
        "    a run is lost after 3 silent heartbeat intervals (nightly-etl: 5)\n"
        "    expects nightly-etl: cron '0 2 * * *' Europe/Paris, grace 600 s, "
        "overdue after 7200 s\n"
        "    expects hourly: every 3600 s, grace 60 s\n"
    )


def test_check_names_a_bad_watch_key_with_status_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lifecycle._cli import main

    file = tmp_path / "lifecycle.toml"
    file.write_text("[watch]\nmisses = 0\n")
    assert main(["check", "--config", str(file)]) == 1
    assert f"{file}: watch.misses:" in capsys.readouterr().err


def test_runs_says_which_servers_it_could_not_reach(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], nowhere: str
) -> None:
    (tmp_path / "watch.toml").write_text(
        f'[watch]\nservers = ["{nowhere}"]\nconnect_timeout = 0.5\n'
    )
    assert runs(["--config", str(tmp_path / "watch.toml")]) == 1
    error = capsys.readouterr().err
    assert nowhere in error
    assert f"{tmp_path / 'watch.toml'}: watch.servers: cannot connect" in error


def test_runs_never_shows_the_credentials_of_a_server_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], nowhere: str
) -> None:
    url = nowhere.replace("nats://", "nats://someone:SECRET@")
    (tmp_path / "watch.toml").write_text(f'[watch]\nservers = ["{url}"]\nconnect_timeout = 0.5\n')
    assert runs(["--config", str(tmp_path / "watch.toml")]) == 1
    error = capsys.readouterr().err
    assert "SECRET" not in error
    assert f"cannot connect to NATS at {nowhere} (" in error


def test_runs_escapes_control_characters_in_the_table(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A run's environment name and host come from the network: a name that carries an
    # escape sequence must not retitle the terminal of whoever lists the runs.
    from lifecycle_watchdog._cli import _print_table

    row = {
        "environment": "x\x1b]0;HIJACKED\x07y",
        "host": "h\x1b[2Jost",
        "run_id": "r\x07un",
        "started": 1.0,
        "last_heartbeat": 2.0,
        "state": "running",
    }
    _print_table([row], "watchdog")
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert "\x07" not in out
    assert "x\\x1b]0;HIJACKED\\x07y" in out
    assert "h\\x1b[2Jost" in out


def test_runs_json_keeps_stdout_for_the_json_when_nats_is_away(
    tmp_path: Path, nowhere: str
) -> None:
    # A script reads stdout as JSON: the connection warnings belong on stderr.
    import subprocess

    (tmp_path / "watch.toml").write_text(
        f'[watch]\nservers = ["{nowhere}"]\nconnect_timeout = 0.5\n'
    )
    done = subprocess.run(
        [*LIFECYCLE, "runs", "--json", "--config", str(tmp_path / "watch.toml")],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert nowhere in done.stderr
