"""The ``lifecycle`` command's grammar: argparse's parsers for every command.

Imported when a command line needs them (``--help``, a plugin command, a mistake, a form of
``lifecycle run``'s options that ``_cli`` does not read itself): argparse and its parsers are
a good part of a wrapped job's start-up.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from ._cli_values import STATUS_WRAPPER_FAILED, limit, path, seconds
from ._console import escape
from .plugins import ADAPTER_GROUP, _commands_by_distribution, _distribution

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from importlib.metadata import EntryPoint

__all__ = ["Parser", "parser"]

T = TypeVar("T")

_RUN_EPILOG = """\
exit status: the command's own; 124 when it outlived --timeout; 125 when lifecycle
itself failed (bad options or configuration, or a critical starting handler aborted
the run); 126 not executable; 127 not found; 128+n when it died of signal n.

Without --config: the file $LIFECYCLE_CONFIG names, else lifecycle.toml (or
[tool.lifecycle] in pyproject.toml) in the current directory, else lifecycle.toml in
the user's configuration directory (~/.config/lifecycle/), else in the system's
(/etc/xdg/lifecycle/); handler modules are imported from the current directory. With
no configuration at all, run events are logged to stderr. SIGTERM, SIGINT and SIGHUP
are forwarded to the command, which is killed if it is still alive --grace seconds
later.
"""


def _columns() -> int:
    """The terminal's width, as ``shutil.get_terminal_size`` tells it, without its import."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class _Formatter(argparse.HelpFormatter):
    """argparse's help layout. Its own formatter imports ``shutil`` (and with it ``bz2``,
    ``lzma`` and ``zlib``) for the terminal's width, and argparse makes one per option
    added: a wrapped job's start-up would pay for a help it never prints."""

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        super().__init__(prog, indent_increment, max_help_position, width or _columns() - 2)


class _RawDescriptionFormatter(_Formatter, argparse.RawDescriptionHelpFormatter):
    """The description and epilog as written (examples keep their lines)."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors exit with a chosen status, escaped."""

    def __init__(self, *args: Any, error_status: int = 2, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)
        self.error_status = error_status

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        # The message quotes the user's arguments, control characters and all.
        self.exit(self.error_status, f"{self.prog}: error: {escape(message)}\n")


def _argument(convert: Callable[[str], T]) -> Callable[[str], T]:
    """``convert``, with its ``ValueError`` told as argparse tells a bad option value."""

    def argument(text: str) -> T:
        try:
            return convert(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    argument.__name__ = convert.__name__
    return argument


_seconds = _argument(seconds)
_limit = _argument(limit)


def parser(
    handlers: Mapping[str, Callable[[Any], int]], plugins: Mapping[str, EntryPoint] | None = None
) -> tuple[Parser, dict[str, Parser]]:
    """The top-level parser, and the subcommands' parsers by name.

    Args:
        handlers: the function of each built-in command (``run``, ``check``, ``adapters``).
        plugins: the installed plugin commands, listed in ``--help``.
    """
    from . import __version__

    parser = Parser(
        prog="lifecycle",
        description="Reliable lifecycle events for jobs: wrap a command, check a "
        f"configuration. Installed packages add commands ({_commands_by_distribution()}).",
        # A mistyped ``lifecycle rnu -- job`` in a cron line must not look like the job's 2.
        error_status=STATUS_WRAPPER_FAILED,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="subcommand", metavar="COMMAND", parser_class=Parser)
    commands.required = True

    run = commands.add_parser(
        "run",
        help="run a command with lifecycle events; exit with its status",
        description="Run CMD as a child process, emitting environment.starting, "
        "environment.heartbeat and environment.exited on a bus with the configured adapters.",
        usage="%(prog)s [options] -- CMD [ARGS ...]",
        epilog=_RUN_EPILOG,
        formatter_class=_RawDescriptionFormatter,
        error_status=STATUS_WRAPPER_FAILED,
    )
    run.add_argument("--config", metavar="FILE", type=path, help="the configuration file")
    run.add_argument(
        "--name", help="the environment's name (default: the command's, or its script's, name)"
    )
    run.add_argument(
        "--label",
        metavar="L",
        action="append",
        default=[],
        help="a label of the environment (repeat for several)",
    )
    run.add_argument(
        "--heartbeat",
        metavar="SECONDS",
        type=_seconds,
        default=30.0,
        help="seconds between heartbeat events; 0 for none (default: 30)",
    )
    run.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_limit,
        help="stop the command after this long (> 0); exit status 124 (default: no limit)",
    )
    run.add_argument(
        "--grace",
        metavar="SECONDS",
        type=_seconds,
        default=10.0,
        help="seconds between SIGTERM and SIGKILL when stopping the command (default: 10)",
    )
    run.add_argument("--run-id", metavar="ID", help="the run's id (default: a random one)")
    run.add_argument(
        "--inherit-output",
        action="store_true",
        help="let the command write straight to this terminal (no output tail on exited)",
    )
    run.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="print nothing if the run succeeds; otherwise print everything, the command's "
        "output included (for cron; also [run] quiet = true in the configuration)",
    )
    run.add_argument("command", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    run.set_defaults(handler=handlers["run"])

    check = commands.add_parser(
        "check",
        help="validate a configuration and list what it attaches",
        description="Load a configuration file, report its mistakes, and list the adapters "
        "and handlers it would attach.",
        epilog="exit status: 0 when the configuration is valid (or there is none); 1 when it "
        "has a mistake (the message names the file, key and value); 2 on a usage mistake.",
    )
    check.add_argument("--config", metavar="FILE", type=path, help="the configuration file")
    check.set_defaults(handler=handlers["check"])

    adapters = commands.add_parser(
        "adapters",
        help="list the installed adapters",
        description=f"List the adapters installed in the entry-point group {ADAPTER_GROUP}.",
        epilog="exit status: 0; 2 on a usage mistake.",
    )
    adapters.set_defaults(handler=handlers["adapters"])
    for name, point in sorted((plugins or {}).items()):
        commands.add_parser(name, help=_command_help(point), add_help=False)
    return parser, {"run": run, "check": check, "adapters": adapters}


def _command_help(point: EntryPoint) -> str:
    """A plugin command's line in ``lifecycle --help``: its ``help`` and its package."""
    try:
        text = getattr(point.load(), "help", None)
    except Exception:  # a broken plugin must not break --help; running it says why
        text = None
    where = _distribution(point)
    return f"{text} ({where})" if isinstance(text, str) else f"from {where}"
