"""The ``lifecycle`` command, run as a user runs it: a real process wrapping real children."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import structlog

import lifecycle
import lifecycle._cli
import lifecycle._config
from lifecycle._cli import main
from lifecycle.plugins import COMMAND_GROUP, command

if TYPE_CHECKING:
    from collections.abc import Iterator

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

WIDE = 10.0
"""Bounds a hang; no healthy test comes near it."""

RECORDER = """
import os

def record(event):
    with open(os.environ["LIFECYCLE_TEST_EVENTS"], "a", encoding="utf-8") as file:
        file.write(event.to_json() + "\\n")
"""

CONFIG = """
[[handlers]]
target = "recorder:record"
signal = "environment.starting"
inline = true

[[handlers]]
target = "recorder:record"
signal = "environment.exited"
inline = true
"""


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


class Job:
    """A working directory with a configuration that records every event to a file."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.events_file = directory / "events.jsonl"
        (directory / "recorder.py").write_text(RECORDER)
        (directory / "lifecycle.toml").write_text(CONFIG)
        self.env = {**os.environ, "LIFECYCLE_TEST_EVENTS": str(self.events_file)}

    def command(self, *args: str) -> list[str]:
        # The console script, as users run it (its sys.path does not start with the cwd).
        script = Path(sys.executable).parent / "lifecycle"
        if script.exists():
            return [str(script), *args]
        return [sys.executable, "-m", "lifecycle", *args]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*args),
            cwd=self.directory,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=WIDE,
            check=False,
        )

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command(*args),
            cwd=self.directory,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def events(self) -> list[dict[str, Any]]:
        lines = self.events_file.read_text().splitlines()
        return [json.loads(line) for line in lines]

    def only_exit(self) -> dict[str, Any]:
        events = self.events()
        assert [e["name"] for e in events] == ["environment.starting", "environment.exited"]
        return events[1]


@pytest.fixture
def job(tmp_path: Path) -> Job:
    return Job(tmp_path)


@pytest.fixture
def structlog_reset() -> Iterator[None]:
    """``main`` in this process configures structlog to log to stderr: undo it."""
    yield
    structlog.reset_defaults()


READY_THEN_WAIT = "import time\n{setup}\nprint('ready', flush=True)\ntime.sleep(60)"


def wait_until_ready(process: subprocess.Popen[str]) -> None:
    """Block until the child, through the wrapper, prints its readiness line."""
    assert process.stdout is not None
    line = process.stdout.readline()  # bounded by pytest's per-test timeout
    assert line == "ready\n", line


# -- lifecycle run, as a real process --------------------------------------------------


def test_a_succeeding_command_exits_0_with_its_output_on_stdout(job: Job) -> None:
    done = job.run("run", "--name", "hello", "--label", "a", "--label", "b", "--", *py("print(42)"))
    assert done.returncode == 0, done.stderr
    assert done.stdout == "42\n"  # the command's stdout is the wrapper's, untouched
    exited = job.only_exit()
    assert (exited["outcome"], exited["exit_code"]) == ("succeeded", 0)
    assert exited["environment"]["name"] == "hello"
    assert exited["environment"]["labels"] == ["a", "b"]
    assert exited["attributes"]["output_tail"] == "42"


def test_a_failing_command_exits_with_its_status(job: Job) -> None:
    done = job.run("run", "--", *py("import sys; sys.exit('it broke')"))
    assert done.returncode == 1
    assert "it broke" in done.stderr
    exited = job.only_exit()
    assert (exited["outcome"], exited["exit_code"]) == ("failed", 1)
    assert exited["attributes"]["output_tail"] == "it broke"


def test_inherited_output_goes_straight_to_the_wrappers_streams(job: Job) -> None:
    done = job.run("run", "--inherit-output", "--", *py("print('direct')"))
    assert done.returncode == 0
    assert done.stdout == "direct\n"
    assert "output_tail" not in job.only_exit()["attributes"]


def test_a_command_killed_by_sigkill_exits_137(job: Job) -> None:
    done = job.run("run", "--", *py("import os, signal; os.kill(os.getpid(), signal.SIGKILL)"))
    assert done.returncode == 137
    exited = job.only_exit()
    assert (exited["outcome"], exited["exit_code"]) == ("killed", 137)
    assert exited["attributes"]["signal"] == "SIGKILL"


@pytest.mark.parametrize(
    ("sent", "status", "name"),
    [
        (signal.SIGTERM, 143, "SIGTERM"),
        (signal.SIGINT, 130, "SIGINT"),
        (signal.SIGHUP, 129, "SIGHUP"),
    ],
)
def test_a_signal_to_the_wrapper_reaches_the_command(
    job: Job, sent: signal.Signals, status: int, name: str
) -> None:
    # The child dies of the signal (SIGINT: Python re-raises it after KeyboardInterrupt).
    with job.start("run", "--", *py(READY_THEN_WAIT.format(setup=""))) as wrapper:
        wait_until_ready(wrapper)
        wrapper.send_signal(sent)
        assert wrapper.wait(WIDE) == status
    exited = job.only_exit()
    assert (exited["outcome"], exited["exit_code"]) == ("terminated", status)
    assert exited["attributes"]["received_signal"] == name


def test_a_command_that_ignores_sigterm_is_killed_after_the_grace(job: Job) -> None:
    setup = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)"
    command = py(READY_THEN_WAIT.format(setup=setup))
    with job.start("run", "--grace", "0.1", "--", *command) as wrapper:
        wait_until_ready(wrapper)
        wrapper.send_signal(signal.SIGTERM)
        assert wrapper.wait(WIDE) == 137
    exited = job.only_exit()
    assert exited["outcome"] == "terminated"
    assert exited["attributes"]["killed_after_grace"] is True


def test_a_command_past_its_timeout_exits_124(job: Job) -> None:
    done = job.run("run", "--timeout", "0.2", "--", *py(READY_THEN_WAIT.format(setup="")))
    assert done.returncode == 124
    exited = job.only_exit()
    assert (exited["outcome"], exited["exit_code"]) == ("timeout", 124)


def test_a_command_that_does_not_exist_exits_127_with_a_clear_message(job: Job) -> None:
    done = job.run("run", "--", "lifecycle-no-such-command")
    assert done.returncode == 127
    assert "lifecycle-no-such-command: command not found" in done.stderr
    assert "Traceback" not in done.stderr
    exited = job.only_exit()
    assert (exited["outcome"], exited["exit_code"]) == ("failed", 127)
    assert exited["error"]["type"] == "FileNotFoundError"


def test_a_file_that_is_not_executable_exits_126(job: Job) -> None:
    script = job.directory / "job.sh"
    script.write_text("#!/bin/sh\necho never\n")
    script.chmod(0o644)
    done = job.run("run", "--", str(script))
    assert done.returncode == 126
    assert "not executable" in done.stderr
    assert job.only_exit()["exit_code"] == 126


def test_without_configuration_run_events_are_logged_to_stderr(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lifecycle", "run", "--name", "plain", "--", *py("print('out')")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=WIDE,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "out\n"
    assert "environment.starting" in done.stderr
    assert "environment.exited" in done.stderr
    assert "succeeded" in done.stderr


# -- lifecycle run, in this process: user mistakes --------------------------------------


@pytest.mark.usefixtures("structlog_reset")
def test_a_bad_configuration_stops_the_run_with_125(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[[adapters]]\nname = 'no-such-adapter'\n")
    marker = tmp_path / "ran"
    status = main(["run", "--config", str(config), "--", "touch", str(marker)])
    assert status == 125
    err = capfd.readouterr().err
    assert "no-such-adapter" in err
    assert "Traceback" not in err
    assert not marker.exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run"], "no command to run"),
        (["run", "--"], "no command to run"),
        (["run", "--heartbeat", "soon", "--", "true"], "expected a number of seconds"),
        (["run", "--timeout", "-1", "--", "true"], "seconds >= 0"),
        (["run", "--timeout", "0", "--", "true"], "argument --timeout: must be > 0 seconds"),
        (["run", "--no-such-option", "--", "true"], "unrecognized arguments: --no-such-option"),
    ],
)
def test_run_usage_mistakes_exit_125_without_a_traceback(
    argv: list[str], message: str, capfd: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 125
    err = capfd.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_an_unknown_command_is_a_usage_error_with_125(capfd: pytest.CaptureFixture[str]) -> None:
    # A mistyped ``lifecycle rnu -- job`` in a cron line must not pass for the job's status.
    assert main(["launch"]) == 125
    assert "invalid choice: 'launch'" in capfd.readouterr().err


def test_an_unknown_run_option_exits_125_with_the_run_usage(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    done = subprocess.run(
        [sys.executable, "-m", "lifecycle", "run", "--bogus", "--", "touch", str(marker)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=WIDE,
        check=False,
    )
    assert done.returncode == 125
    assert done.stderr.startswith("usage: lifecycle run [options] -- CMD [ARGS ...]\n")
    assert "lifecycle run: error: unrecognized arguments: --bogus" in done.stderr
    assert not marker.exists()


def test_a_check_usage_mistake_keeps_the_conventional_2(
    capfd: pytest.CaptureFixture[str],
) -> None:
    assert main(["check", "--bogus"]) == 2
    assert "usage: lifecycle check" in capfd.readouterr().err


@pytest.mark.parametrize(
    "argv", [["--help"], ["run", "--help"], ["check", "--help"], ["adapters", "--help"]]
)
def test_every_command_has_help(argv: list[str], capfd: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 0
    assert "usage: lifecycle" in capfd.readouterr().out


def test_run_help_documents_the_exit_statuses(capfd: pytest.CaptureFixture[str]) -> None:
    main(["run", "--help"])
    out = capfd.readouterr().out
    for status in ("124", "125", "126", "127", "128+n"):
        assert status in out


# -- lifecycle check, lifecycle adapters -------------------------------------------------


def test_check_lists_what_a_configuration_attaches(
    job: Job, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(job.directory)
    monkeypatch.syspath_prepend(str(job.directory))
    assert main(["check"]) == 0
    out = capfd.readouterr().out
    assert "lifecycle.toml: ok, 2 to attach" in out
    assert "handler recorder:record on environment.starting" in out
    assert "handler recorder:record on environment.exited" in out


def test_check_reports_a_mistake_with_status_1(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "lifecycle.toml"
    config.write_text(
        "[[handlers]]\ntarget = 'recorder:record'\nsignal = 'environment.exited'\ntimeout = 'soon'\n"
    )
    assert main(["check", "--config", str(config)]) == 1
    err = capfd.readouterr().err
    assert str(config) in err
    assert "Traceback" not in err


def test_check_without_a_configuration_says_what_run_would_do(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # As ``lifecycle run`` works without one, no configuration is not a mistake.
    monkeypatch.chdir(tmp_path)
    assert main(["check"]) == 0
    out = capfd.readouterr().out
    assert f"no configuration in {tmp_path}" in out
    assert "lifecycle.toml" in out
    assert "lifecycle run would attach the default console logger" in out


def test_adapters_lists_the_installed_adapters(capfd: pytest.CaptureFixture[str]) -> None:
    from lifecycle import installed_adapters

    assert main(["adapters"]) == 0
    out = capfd.readouterr().out
    installed = installed_adapters()
    if not installed:
        assert "no adapters installed" in out
    for name, adapter in installed.items():
        assert name in out
        assert adapter.value in out


def test_python_dash_m_lifecycle_runs_the_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lifecycle", "--version"],
        capture_output=True,
        text=True,
        timeout=WIDE,
        check=False,
    )
    assert done.returncode == 0
    assert done.stdout.startswith("lifecycle ")


# -- examples/ ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("job", "options", "status"),
    [("succeed.py", [], 0), ("fail.py", [], 2), ("hang.py", ["--timeout", "0.2"], 124)],
)
def test_the_example_jobs_end_as_documented(
    tmp_path: Path, job: str, options: list[str], status: int
) -> None:
    script = str(EXAMPLES / "jobs" / job)
    done = subprocess.run(
        [sys.executable, "-m", "lifecycle", "run", *options, "--", sys.executable, script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=WIDE,
        check=False,
    )
    assert done.returncode == status, done.stderr
    assert f"environment={job}" in done.stderr


def test_the_quickstart_prints_whole_lines_without_empty_fields() -> None:
    # Unbuffered, into one pipe: a callback's line and a log line written at the same time
    # must still come out as two lines.
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py")],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=WIDE,
        check=False,
    )
    assert done.returncode == 0, done.stdout
    lines = done.stdout.splitlines()
    assert "on_start: warming the cache" in lines
    assert "on_exit: run ended succeeded" in lines
    stamp = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
    assert all(len(stamp.findall(line)) <= 1 for line in lines), done.stdout
    assert "=None" not in done.stdout


def test_the_example_configuration_attaches_the_three_adapters(
    capfd: pytest.CaptureFixture[str],
) -> None:
    missing = {"structlog", "prometheus", "webhook"} - set(lifecycle.installed_adapters())
    if missing:
        pytest.skip(f"adapters not installed: {', '.join(sorted(missing))}")
    assert main(["check", "--config", str(EXAMPLES / "lifecycle.toml")]) == 0
    out = capfd.readouterr().out
    for name in ("structlog", "prometheus", "webhook"):
        assert f"adapter {name}" in out


@pytest.mark.anyio
async def test_without_configuration_one_console_line_per_event_is_written(
    capfd: pytest.CaptureFixture[str],
) -> None:
    async with lifecycle.EventBus() as bus:
        attachment = lifecycle._cli._attach_default(bus)
        env = lifecycle.Environment("nightly", bus=bus)
        with pytest.raises(RuntimeError):
            async with env.running(run_id="r9"):
                raise RuntimeError("disk full")
        attachment.detach()
        async with env.running():
            pass  # detached: not logged
    err = capfd.readouterr().err
    assert err.count("environment.starting") == 1
    assert err.count("environment.exited") == 1
    assert "outcome=failed" in err
    assert "RuntimeError: disk full" in err
    assert "run_id=r9" in err


def echo_command(argv: list[str]) -> int:
    """A subcommand another package would register in ``lifecycle.commands``."""
    print("echo:", *argv)
    return 7


def test_a_registered_subcommand_gets_its_arguments_and_sets_the_status(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from importlib.metadata import EntryPoint

    point = EntryPoint(name="echo", value=f"{__name__}:echo_command", group=COMMAND_GROUP)
    monkeypatch.setattr(lifecycle._cli, "_plugin_commands", lambda: {"echo": point})
    assert main(["echo", "--flag", "x"]) == 7
    assert capsys.readouterr().out == "echo: --flag x\n"


def test_a_subcommand_of_a_missing_package_names_the_package(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(lifecycle._cli, "_plugin_commands", dict)
    assert main(["watch"]) == 125
    assert "lifecycle-watchdog" in capsys.readouterr().err


# -- what reaches the terminal -------------------------------------------------------------

HIJACK = "x\x1b]0;HIJACKED\x07y"
"""A job name that would retitle the terminal (an OSC sequence), were it written raw."""


@pytest.mark.parametrize(
    "argv",
    [
        # the console lines of starting and exited, and the library's own warning line
        ["run", "--name", HIJACK, "--label", "\x1b[31mred", "--timeout", "0.1", "--", "sleep", "5"],
        ["run", "--", f"lifecycle-no-such-{HIJACK}"],  # lifecycle's own message
        ["run", f"--{HIJACK}", "--", "true"],  # a usage error quoting the argument
    ],
    ids=["event-lines", "message", "usage-error"],
)
def test_no_control_character_reaches_the_terminal(tmp_path: Path, argv: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lifecycle", *argv],
        cwd=tmp_path,
        capture_output=True,
        timeout=WIDE,
        check=False,
    )
    assert done.returncode in (124, 125, 127), done.stderr
    assert b"HIJACKED" in done.stderr  # it was shown...
    assert b"\x1b" not in done.stderr  # ...escaped
    assert b"\x07" not in done.stderr
    assert b"x\\x1b]0;HIJACKED\\x07y" in done.stderr


def test_one_run_shows_one_timestamp_format(tmp_path: Path) -> None:
    # The event lines and the library's own warning ("command outlived its time limit").
    done = subprocess.run(
        [sys.executable, "-m", "lifecycle", "run", "--timeout", "0.1", "--", "sleep", "5"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=WIDE,
        check=False,
    )
    assert done.returncode == 124
    lines = done.stderr.splitlines()
    assert "environment.starting" in lines[0]
    assert any("outlived its time limit" in line for line in lines), done.stderr
    assert "environment.exited" in lines[-1]
    for line in lines:
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z \[", line), line


def test_check_shows_a_webhook_url_as_scheme_host_and_port(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    if "webhook" not in lifecycle.installed_adapters():
        pytest.skip("lifecycle-webhook is not installed")
    config = tmp_path / "lifecycle.toml"
    config.write_text(
        "[[adapters]]\nname = 'webhook'\n"
        "options = { url = 'https://hooks.example/services/T000/SECRETPATH?token=abc' }\n"
    )
    assert main(["check", "--config", str(config)]) == 0
    out = capfd.readouterr().out
    assert "url='https://hooks.example/***'" in out
    assert "SECRETPATH" not in out
    assert "T000" not in out


# -- start-up cost ---------------------------------------------------------------------------

IMPORTS_OF = """
import sys
before = set(sys.modules)
from lifecycle._cli import main
status = main(sys.argv[1:])
print(" ".join(sorted(set(sys.modules) - before)), file=sys.stderr)
sys.exit(status)
"""


def imports_of(directory: Path, *argv: str) -> set[str]:
    """The modules one ``lifecycle`` command imports, in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", IMPORTS_OF, *argv],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=WIDE,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return set(done.stderr.splitlines()[-1].split())


def test_a_run_without_configuration_imports_no_metadata_toml_or_structlog(
    tmp_path: Path,
) -> None:
    # A pyproject.toml without [tool.lifecycle] is no reason to parse TOML either.
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'job'\n")
    imported = imports_of(tmp_path, "run", "--", "true")
    assert "lifecycle._subprocess" in imported  # it did run
    for module in (
        "importlib.metadata",
        "tomllib",
        "structlog",
        "lifecycle._config",
        "platformdirs",
    ):
        assert module not in imported


def test_a_run_without_configuration_imports_no_anyio_pathlib_or_shutil(tmp_path: Path) -> None:
    """Issue 19: the command runs on asyncio alone, and argparse's help costs nothing."""
    imported = imports_of(tmp_path, "run", "--timeout", "5", "--", "true")
    assert "lifecycle._command_asyncio" in imported  # it did run, the asyncio way
    for module in ("anyio", "typing_extensions", "pathlib", "shutil", "trio", "argparse"):
        assert module not in imported


# -- lifecycle run's options read without argparse ----------------------------------------

PLAIN_RUNS = [
    ["run", "--", "true"],
    ["run", "--name", "nightly", "--label", "a", "--label", "b", "--", "backup", "-v"],
    ["run", "--heartbeat", "0", "--timeout", "2.5", "--grace", "1", "--", "sh", "-c", "x"],
    ["run", "--config", "job.toml", "--run-id", "r-1", "-q", "--inherit-output", "--", "x"],
    ["run", "--quiet", "--", "--", "x"],
]


@pytest.mark.parametrize("argv", PLAIN_RUNS, ids=" ".join)
def test_plain_run_options_read_as_argparse_reads_them(argv: list[str]) -> None:
    from lifecycle._cli import _adapters, _check, _plain_run_args, _run
    from lifecycle._cli_parser import parser

    plain = _plain_run_args(argv)
    assert plain is not None
    parsed = vars(parser({"run": _run, "check": _check, "adapters": _adapters})[0].parse_args(argv))
    del parsed["handler"], parsed["subcommand"]
    assert plain == parsed


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--help"],
        ["run", "--timeout=5", "--", "x"],
        ["run", "--time", "5", "--", "x"],  # argparse's abbreviation
        ["run", "--timeout", "0", "--", "x"],  # argparse says what is wrong
        ["run", "--heartbeat", "soon", "--", "x"],
        ["run", "--name", "-x", "--", "x"],
        ["run", "--bogus", "--", "x"],
        ["run", "true"],
        ["run", "--name"],
        ["check"],
    ],
    ids=" ".join,
)
def test_every_other_command_line_goes_to_argparse(argv: list[str]) -> None:
    from lifecycle._cli import _plain_run_args

    assert _plain_run_args(argv) is None


def test_each_run_option_is_read_the_plain_way_with_argparses_dest_and_default() -> None:
    """An option added to the run parser alone would send every run through argparse."""
    from lifecycle._cli import _RUN_DEFAULTS, _RUN_FLAGS, _RUN_VALUES, _adapters, _check, _run
    from lifecycle._cli_parser import parser

    run = parser({"run": _run, "check": _check, "adapters": _adapters})[1]["run"]
    for action in run._actions:
        if not action.option_strings or action.dest == "help":
            continue
        for option in action.option_strings:
            known = _RUN_FLAGS.get(option) or _RUN_VALUES.get(option, (None,))[0]
            assert known == action.dest, option
        assert _RUN_DEFAULTS[action.dest] == action.default, action.dest


def test_version_imports_no_event_loop(tmp_path: Path) -> None:
    imported = imports_of(tmp_path, "--version")
    for module in ("asyncio", "anyio", "importlib.metadata", "structlog", "lifecycle._bus"):
        assert module not in imported


def test_help_lists_each_installed_command_with_its_own_help(
    capfd: pytest.CaptureFixture[str],
) -> None:
    # The workspace installs lifecycle-nats and lifecycle-watchdog: their commands say what
    # they do (their ``help`` attribute) and which package they come from.
    assert main(["--help"]) == 0
    out = " ".join(capfd.readouterr().out.split())  # argparse wraps the lines
    assert "lost, missed and overdue runs (lifecycle-watchdog)" in out
    assert "send the events spooled while NATS was unreachable" in out


@pytest.mark.parametrize("command", ["check", "adapters"])
def test_check_and_adapters_help_document_the_exit_statuses(
    command: str, capfd: pytest.CaptureFixture[str]
) -> None:
    assert main([command, "--help"]) == 0
    assert "exit status:" in capfd.readouterr().out


def plain_command(argv: list[str]) -> int:
    """A subcommand with a table of its own and no ``check``."""
    return 0


def checked_command(argv: list[str]) -> int:
    """A subcommand whose package checks its table for ``lifecycle check``."""
    return 0


def _check_checked(config: lifecycle.Config) -> list[str]:
    table = config.tables["checked"]
    if table.get("size", 1) < 1:
        raise lifecycle.ConfigError(str(config.path), "checked.size", "must be >= 1", 0)
    return [f"size {table.get('size', 1)}"]


command(checked_command, check=_check_checked)


@pytest.fixture
def table_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two installed commands that read tables: ``[plain]`` and ``[checked]``."""
    from importlib.metadata import EntryPoint

    points = {
        name: EntryPoint(name=name, value=f"{__name__}:{name}_command", group=COMMAND_GROUP)
        for name in ("plain", "checked")
    }
    monkeypatch.setattr(lifecycle._cli, "_plugin_commands", lambda: points)
    monkeypatch.setattr(lifecycle._config, "_command_points", lambda: points)


@pytest.mark.usefixtures("table_commands")
def test_check_runs_a_commands_own_check_on_its_table(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "lifecycle.toml"
    config.write_text("[checked]\nsize = 4\n")
    assert main(["check", "--config", str(config)]) == 0
    assert "  [checked]: ok:\n    size 4\n" in capfd.readouterr().out


@pytest.mark.usefixtures("table_commands")
def test_check_reports_a_bad_command_table_with_status_1_before_saying_ok(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "lifecycle.toml"
    config.write_text("[checked]\nsize = 0\n")
    assert main(["check", "--config", str(config)]) == 1
    out, err = capfd.readouterr()
    assert out == ""
    assert f"{config}: checked.size: must be >= 1 (got 0)" in err


def test_check_names_a_command_that_cannot_be_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    from importlib.metadata import EntryPoint

    point = EntryPoint(name="broken", value="no_such_module_here:main", group=COMMAND_GROUP)
    monkeypatch.setattr(lifecycle._cli, "_plugin_commands", lambda: {"broken": point})
    monkeypatch.setattr(lifecycle._config, "_command_points", lambda: {"broken": point})
    config = tmp_path / "lifecycle.toml"
    config.write_text("[broken]\nx = 1\n")
    assert main(["check", "--config", str(config)]) == 1
    assert "broken: lifecycle broken (no_such_module_here:main) cannot be loaded" in (
        capfd.readouterr().err
    )


@pytest.mark.usefixtures("table_commands")
def test_check_says_it_leaves_a_table_without_a_check_to_its_command(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "lifecycle.toml"
    config.write_text("[plain]\nanything = true\n")
    assert main(["check", "--config", str(config)]) == 0
    assert "[plain]: read by lifecycle plain, which checks it when it starts" in (
        capfd.readouterr().out
    )


def test_log_to_stderr_writes_escaped_iso_lines_to_stderr() -> None:
    # The one configuration every lifecycle command logs with (listen and watch included).
    import subprocess

    code = (
        "import lifecycle, structlog; lifecycle.log_to_stderr(); "
        "structlog.get_logger().info('hello\\x1b]0;T\\x07', host='h\\x1bost')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=20, check=True
    )
    assert done.stdout == ""
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z \[info", done.stderr)
    assert "hello\\x1b]0;T\\x07" in done.stderr
    assert "host=h\\x1bost" in done.stderr
    assert "\x1b" not in done.stderr
