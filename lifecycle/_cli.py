"""The ``lifecycle`` command: wrap a command in lifecycle events, check a configuration.

``lifecycle run -- CMD [ARGS ...]`` runs ``CMD`` as a child process with ``environment.starting``
before, ``environment.heartbeat`` while it runs and ``environment.exited`` after, however it
ends, and exits with the child's own status, so it drops into cron lines, CI steps and
container entrypoints unchanged. The statuses it can exit with:

=======  ============================================================================
0 - 123  the command's own exit status
124      the command outlived ``--timeout`` and was stopped (as GNU ``timeout``)
125      ``lifecycle`` itself failed: bad options, a bad configuration, or a critical
         ``starting`` handler aborted the run; the command did not run
126      the command was found but could not be executed
127      the command was not found
128 + n  the command died of signal n (137 for SIGKILL, 143 for SIGTERM)
=======  ============================================================================

SIGTERM, SIGINT and SIGHUP sent to the wrapper go to the command, and the run's outcome is
``terminated`` whatever the command then does: it was asked to stop. The status stays the
command's own, so a supervisor sees what the command said: 128 + n if it died of the
signal, or its chosen status if it caught it (0 for a clean shutdown). A signal during the
``starting`` handlers cancels them; the command never starts and the status is 128 + n.
On Linux, a wrapper killed outright (SIGKILL) takes the command with it.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

from ._cli_values import STATUS_WRAPPER_FAILED, limit, path, seconds
from ._console import escape, log_to_stderr, render, write_line
from ._exceptions import ConfigError

# Everything else is imported where it is used: a cron wrapper's start-up is mostly imports,
# and ``lifecycle run -- CMD`` with no configuration needs neither importlib.metadata (an
# entry-point scan), tomllib nor structlog. tests/test_cli.py guards this.

if TYPE_CHECKING:
    import argparse
    import types
    from collections.abc import Callable, Sequence
    from importlib.metadata import EntryPoint
    from pathlib import Path

    from ._bus import EventBus
    from ._config import Config
    from ._event import Event
    from ._quiet import Quiet
    from .plugins import Command

__all__ = ["main"]

_BUILTIN_COMMANDS = frozenset({"run", "check", "adapters"})


# -- the plain forms of lifecycle run's options ---------------------------------------
#
# argparse's module and parsers (_cli_parser) are a good part of a wrapped job's start-up.
# A run's options in their plain forms are read here without them; anything else (--help,
# --opt=value, an abbreviation, a mistake) goes to argparse, whose rules and messages then
# apply. tests/test_cli.py checks both give the same for each of the run parser's options.

_RUN_DEFAULTS: dict[str, Any] = {
    "config": None,
    "name": None,
    "label": [],
    "heartbeat": 30.0,
    "timeout": None,
    "grace": 10.0,
    "run_id": None,
    "inherit_output": False,
    "quiet": False,
}


_RUN_VALUES: dict[str, tuple[str, Callable[[str], Any]]] = {
    "--config": ("config", path),
    "--name": ("name", str),
    "--label": ("label", str),
    "--heartbeat": ("heartbeat", seconds),
    "--timeout": ("timeout", limit),
    "--grace": ("grace", seconds),
    "--run-id": ("run_id", str),
}
_RUN_FLAGS = {"--inherit-output": "inherit_output", "-q": "quiet", "--quiet": "quiet"}


def _plain_run_args(argv: Sequence[str]) -> dict[str, Any] | None:
    """``lifecycle run``'s options as argparse would read them, or ``None`` to ask argparse.

    Only ``run``, then options each spelled out in full with its value as the next argument,
    then ``--`` and the command.
    """
    if not argv or argv[0] != "run":
        return None
    args = {**_RUN_DEFAULTS, "label": []}
    at = 1
    while at < len(argv):
        arg = argv[at]
        if arg == "--":
            args["command"] = list(argv[at:])
            return args
        if arg in _RUN_FLAGS:
            args[_RUN_FLAGS[arg]] = True
            at += 1
            continue
        if arg not in _RUN_VALUES or at + 1 >= len(argv) or argv[at + 1].startswith("-"):
            return None
        dest, convert = _RUN_VALUES[arg]
        try:
            value = convert(argv[at + 1])
        except ValueError:
            return None  # argparse says what is wrong with it
        if dest == "label":
            args["label"].append(value)
        else:
            args[dest] = value
        at += 2
    return None  # no "--": argparse decides what the command is


def _plugin_commands() -> dict[str, EntryPoint]:
    """The installed commands of :data:`~lifecycle.plugins.COMMAND_GROUP`, less built-in names."""
    from .plugins import _command_points

    points = _command_points()
    return {name: point for name, point in points.items() if name not in _BUILTIN_COMMANDS}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``lifecycle`` command with ``argv`` (default: ``sys.argv[1:]``); return its status.

    .. versionadded:: 0.1
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    plugins: dict[str, EntryPoint] = {}
    # Built-in commands (and --version) never pay for an entry-point scan: it is most of a
    # cron wrapper's start-up cost when nothing else is installed. --help lists the others.
    first = argv[0] if argv else "--help"
    if first in ("-h", "--help") or not (first in _BUILTIN_COMMANDS or first.startswith("-")):
        plugins = _plugin_commands()
        if argv and argv[0] in plugins:
            return _run_plugin(argv[0], plugins[argv[0]], argv[1:])
        from .plugins import COMMAND_GROUP, _install_hint

        provider = _install_hint(COMMAND_GROUP, argv[0]) if argv else None
        if provider is not None:
            _say(
                f"error: 'lifecycle {argv[0]}' comes with the {provider} "
                f"package, which is not installed (pip install {provider})"
            )
            return STATUS_WRAPPER_FAILED
    plain = _plain_run_args(argv)
    if plain is not None:
        import types

        return _run(types.SimpleNamespace(subcommand="run", **plain))
    from ._cli_parser import parser as make_parser

    handlers = {"run": _run, "check": _check, "adapters": _adapters}
    parser, subcommands = make_parser(handlers, plugins)
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:
            # Left over by the subcommand: its mistake, told with its usage and status
            # (argparse would report it with the top-level usage and status 2).
            where = subcommands.get(args.subcommand, parser)
            where.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


def _run_plugin(name: str, point: EntryPoint, argv: list[str]) -> int:
    try:
        command: Command = point.load()
    except ImportError as exc:
        _say(f"error: 'lifecycle {name}' ({point.value}) cannot be loaded: {exc}")
        return STATUS_WRAPPER_FAILED
    # Their configurations name handlers in the user's project too, as lifecycle run's do.
    _import_from_cwd()
    return command(argv)


def _say(message: str) -> None:
    from ._logging import say

    # In the shape of the log lines when an adapter asked for one (JSON): one stream.
    if not say(message):
        # Messages quote commands, names and configuration values: escape them.
        write_line(f"lifecycle: {escape(message)}")


# -- lifecycle run -----------------------------------------------------------------


def _run(args: argparse.Namespace | types.SimpleNamespace) -> int:
    command: list[str] = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        _say("error: no command to run; usage: lifecycle run [options] -- CMD [ARGS ...]")
        return STATUS_WRAPPER_FAILED
    try:
        config = _load_config(args.config)
    except ConfigError as exc:
        _say(f"error: {exc}")
        return STATUS_WRAPPER_FAILED
    _log_to_stderr()
    # asyncio's own run, and the command run without anyio (see _command_asyncio): the
    # job starts sooner. Adapters that use anyio run on this loop all the same.
    import asyncio

    if not (args.quiet or (config is not None and config.quiet)):
        return asyncio.run(_run_async(args, command, config))
    from ._quiet import Quiet

    with Quiet() as quiet:
        return asyncio.run(_run_async(args, command, config, quiet))


async def _run_async(
    args: argparse.Namespace | types.SimpleNamespace,
    command: list[str],
    config: Config | None,
    quiet: Quiet | None = None,
) -> int:
    from ._bus import EventBus
    from ._command_asyncio import execute
    from ._exceptions import StartAborted
    from ._subprocess import SubprocessEnvironment

    bus = EventBus(name="lifecycle")
    try:
        attachment = config.attach(bus) if config is not None else _attach_default(bus)
    except ConfigError as exc:
        await bus.aclose()
        _say(f"error: {exc}")
        return STATUS_WRAPPER_FAILED
    try:
        environment = SubprocessEnvironment(
            command,
            name=args.name,
            labels=args.label,
            bus=bus,
            heartbeat=args.heartbeat,
            timeout=args.timeout,
            kill_grace=args.grace,
            output="inherit" if args.inherit_output else "forward",
        )
        try:
            result = await execute(environment, args.run_id)
        except StartAborted as exc:
            _say(f"error: {exc}")
            return STATUS_WRAPPER_FAILED
        if quiet is not None:
            quiet.succeeded = result.outcome.value == "succeeded"
        if result.error is not None:
            _say(f"{command[0]}: {result.describe()}")
        return result.exit_status
    finally:
        # Background handlers (a webhook, a metrics push) finish before the process ends.
        await bus.aclose()
        attachment.detach()


def _import_from_cwd() -> None:
    # Handlers are named ``module:function`` and live in the user's project, as apps do for
    # uvicorn and celery; the console script's sys.path[0] is its bin directory, not here.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def _load_config(path: Path | None) -> Config | None:
    """The given configuration, or the one found in the working directory, or ``None``."""
    if path is None and not _may_have_config(os.getcwd()):
        return None  # without importing the configuration module at all
    from ._config import find_config, load_config

    _import_from_cwd()
    if path is None:
        path = find_config()
        if path is None:
            return None
    return load_config(path)


def _may_have_config(directory: str) -> bool:
    """False when :func:`~lifecycle.find_config` would surely find nothing from ``directory``.

    With ``os.path``: ``pathlib`` (with ``urllib.parse`` and ``ipaddress``) would be a good
    part of a short run's start-up.
    """
    if os.environ.get("LIFECYCLE_CONFIG") or os.path.isfile(
        os.path.join(directory, "lifecycle.toml")
    ):
        return True
    try:
        with open(os.path.join(directory, "pyproject.toml"), encoding="utf-8") as pyproject:
            if "lifecycle" in pyproject.read():
                return True
    except (OSError, UnicodeDecodeError):
        pass
    if sys.platform != "linux":
        return True  # platformdirs knows where the configuration directories are there
    # platformdirs' XDG directories on Linux, looked at without importing it and the
    # configuration module (a good part of a short run's start-up).
    user = os.environ.get("XDG_CONFIG_HOME", "").strip() or os.path.expanduser("~/.config")
    system = os.environ.get("XDG_CONFIG_DIRS", "").strip() or "/etc/xdg"
    return any(
        os.path.isfile(os.path.join(d, "lifecycle", "lifecycle.toml"))
        for d in [user, *system.split(os.pathsep)]
        if d
    )


def _log_to_stderr() -> None:
    """Send the library's own structlog lines to stderr, in the console lines' format.

    The command's stdout is the wrapper's stdout: our log lines stay off it (unconfigured
    structlog prints to stdout). A configuration of the user's own (made by a handler module
    or an adapter) wins. structlog is configured when it is first needed: most runs log
    nothing of the library's own, and importing structlog is a good part of the start-up.
    """
    from . import _logging

    if "structlog" in sys.modules:
        log_to_stderr()  # a handler module or an adapter may log already
    else:
        _logging.before_first_use(log_to_stderr)


_LEVELS = {"succeeded": "info", "cancelled": "warning", "terminated": "warning"}
"""The level of an exited line by outcome (others: error), as the structlog adapter's."""


class _ConsoleLog:
    """With no configuration: one console line per ``starting`` and ``exited`` on stderr.

    Built in rather than the structlog adapter: it costs no import of structlog or
    entry-point scan, which would be most of a short job's start-up.
    """

    def __init__(self, bus: EventBus) -> None:
        from ._event import EXITED, STARTING

        self.subscriptions = [
            bus.subscribe(signal, self.log, inline=True, name=f"lifecycle:console:{signal}")
            for signal in (STARTING, EXITED)
        ]

    def log(self, event: Event) -> None:
        info = event.environment
        fields: dict[str, Any] = {
            "environment": info.name,
            "run_id": event.run_id,
            "host": info.host,
            "pid": info.pid,
        }
        if info.labels:
            fields["labels"] = sorted(info.labels)
        if event.attributes:
            fields["attributes"] = event.to_dict()["attributes"]
        level = "info"
        if event.outcome is not None:
            level = _LEVELS.get(event.outcome.value, "error")
            fields["outcome"] = event.outcome.value
        if event.duration is not None:
            fields["duration"] = round(event.duration, 6)
        if event.exit_code is not None:
            fields["exit_code"] = event.exit_code
        if event.error is not None:
            fields["error"] = f"{event.error.type}: {event.error.message}"
        write_line(render(level, event.name, fields))

    def detach(self) -> None:
        for subscription in self.subscriptions:
            subscription.unsubscribe()


def _attach_default(bus: EventBus) -> _ConsoleLog:
    """With no configuration: the built-in console lines."""
    return _ConsoleLog(bus)


# -- lifecycle check, lifecycle adapters -----------------------------------------------


def _check(args: argparse.Namespace) -> int:
    from ._config import config_dirs, load_config, locate_config

    _import_from_cwd()
    path: Path | None = args.config
    where = "given with --config"
    try:
        if path is None:
            located = locate_config()
            if located is None:
                # Not a mistake: ``lifecycle run`` works here too, with its default logging.
                looked = ", ".join(str(d / "lifecycle.toml") for d in config_dirs())
                _print(
                    f"no configuration in {os.getcwd()} (looked for lifecycle.toml, and a "
                    "[tool.lifecycle] table in pyproject.toml), none named by "
                    f"$LIFECYCLE_CONFIG, and no {looked}; lifecycle run would attach the "
                    "default console logger (one line per starting and exited event, on stderr)"
                )
                return 0
            path, where = located
        config = load_config(path)
        # Attach for real, to a bus that never emits: an adapter refusing its options
        # shows here, not at the first run.
        import anyio

        anyio.run(_attach_and_detach, config)
        tables = _check_tables(config)
    except ConfigError as exc:
        _say(f"error: {exc}")
        return 1
    lines = config.describe()
    _print(f"{path}: ok, {len(lines)} to attach" + (":" if lines else ""))
    _print(f"  the configuration used here, {where}")
    if config.quiet:
        _print("  [run]: quiet (lifecycle run prints nothing for a run that succeeds)")
    for line in lines:
        _print(f"  {line}")
    for name, found in tables.items():
        if found is None:
            # The command's package offers no check: saying "ok" about its table would
            # promise what check did not do.
            _print(f"  [{name}]: read by lifecycle {name}, which checks it when it starts")
            continue
        _print(f"  [{name}]: ok" + (":" if found else ""))
        for line in found:
            _print(f"    {line}")
    return 0


def _check_tables(config: Config) -> dict[str, list[str] | None]:
    """Each command table through its command's ``check``; ``None`` where it has none.

    Raises:
        ConfigError: a table is wrong (the command's check names the file, key and value).
    """
    if not config.tables:
        return {}
    from .plugins import _distribution

    commands = _plugin_commands()
    checked: dict[str, list[str] | None] = {}
    for name in sorted(config.tables):
        point = commands.get(name)
        check = None
        if point is not None:
            try:
                check = getattr(point.load(), "check", None)
            except Exception as exc:  # a broken package: say so, as running it would
                raise ConfigError(
                    str(config.path),
                    name,
                    f"lifecycle {name} ({_distribution(point)}) cannot be loaded to check "
                    f"this table: {type(exc).__name__}: {exc}",
                ) from None
        checked[name] = None if check is None else [str(line) for line in check(config)]
    return checked


def _print(line: str) -> None:
    print(escape(line))


async def _attach_and_detach(config: Config) -> None:
    from ._bus import EventBus

    async with EventBus(name="lifecycle-check") as bus:
        config.attach(bus, checking=True).detach()


def _adapters(args: argparse.Namespace) -> int:
    from .plugins import ADAPTER_GROUP, installed_adapters

    found = installed_adapters()
    if not found:
        print(f"no adapters installed (entry-point group {ADAPTER_GROUP})")
        return 0
    width = max(len(name) for name in found)
    for name, adapter in found.items():
        origin = f"{adapter.distribution or '?'} {adapter.version or '?'}"
        _print(f"{name:<{width}}  {origin}  ({adapter.value})")
    return 0
