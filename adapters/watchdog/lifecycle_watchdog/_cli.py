"""``lifecycle watch`` (the service) and ``lifecycle runs`` (its table, for a person or a script).

Both are ``lifecycle.commands`` entry points: ``command(argv) -> exit status``.

=======  ==============================================================
0        ``watch`` stopped by SIGTERM or SIGINT; ``runs`` printed the table
1        NATS could not be reached (the message names the servers)
2        bad options or a bad configuration (the message names file and key)
=======  ==============================================================
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from datetime import datetime, timezone
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from lifecycle_nats import NatsConnectError, NatsError, jetstream_required

from lifecycle import EXITED, ConfigError, EventBus, escape, log_to_stderr
from lifecycle.plugins import ADAPTER_GROUP, command

from ._config import WatchConfig, describe_watch, load_watch_config
from ._jetstream import Settings, connect, run_watchdog, status_subject
from ._judge import ENDED_KEPT, Judge
from ._model import MISSED, OVERDUE, RECOVERED, RunState
from ._store import JetStreamStore

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._service import Watchdog

__all__ = ["runs", "watch"]

STATUS_UNREACHABLE = 1
STATUS_USAGE = 2

VERDICT_SIGNALS = (EXITED, MISSED, OVERDUE, RECOVERED)


def _say(command: str, message: str) -> None:
    # Messages quote configuration values and server replies: escaped, like lifecycle run's.
    print(f"lifecycle {command}: {escape(message)}", file=sys.stderr, flush=True)


_EPILOG = {
    "watch": "exit status: 0 when stopped by SIGTERM or SIGINT; 1 when NATS cannot be reached "
    "(the message names the servers) or refuses the credentials (said at once, naming the "
    "option); 2 on a usage mistake or a bad configuration (the message names the file, key "
    "and value).",
    "runs": "exit status: 0 when the table was printed; 1 when NATS cannot be reached (the "
    "message names the servers) or refuses the credentials (said at once, naming the "
    "option); 2 on a usage mistake or a bad configuration (the message names the file, key "
    "and value).",
}


def _parser(command: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"lifecycle {command}", description=description, epilog=_EPILOG[command]
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="the configuration: its [watch] table (servers, user/password/token/creds, "
        "misses, [[watch.expect]]) and the [[adapters]]/[[handlers]] that hear the verdicts "
        "(default: ./lifecycle.toml)"
        if command == "watch"
        else "the configuration whose [watch] table names the servers, credentials "
        "(user/password/token/creds), stream and bucket (default: ./lifecycle.toml)",
    )
    parser.add_argument(
        "--server",
        metavar="URL",
        action="append",
        help="a NATS server URL (repeatable; overrides [watch] servers)",
    )
    return parser


def _load(command: str, args: argparse.Namespace) -> WatchConfig | None:
    # Handler modules import from the working directory: the lifecycle command put it on
    # sys.path before calling us.
    try:
        config = load_watch_config(args.config)
    except ConfigError as exc:
        _say(command, f"error: {exc}")
        return None
    if args.server:
        from dataclasses import replace

        config = replace(config, settings=replace(config.settings, servers=tuple(args.server)))
    return config


def _where(config: WatchConfig, args: argparse.Namespace, failure: Exception) -> str:
    """Where what failed came from: the file's servers key, or --server; the ``[watch]``
    table for refused credentials (the message names the option)."""
    table = f"{config.file}: watch" if config.file is not None else "watch"
    if isinstance(failure, NatsConnectError) and not failure.option.startswith("servers"):
        return table
    if args.server:
        return "--server"
    return f"{table}.servers"


def _console(bus: EventBus) -> Any:
    """With no ``notify`` configuration: the verdicts as console lines on stderr."""
    for point in entry_points(group=ADAPTER_GROUP, name="structlog"):
        return point.load()(bus, render="console", signals=VERDICT_SIGNALS)
    log = structlog.get_logger("lifecycle.watchdog")

    def line(event: Any) -> None:
        log.warning(event.name, environment=event.environment.name, run_id=event.run_id)

    for name in VERDICT_SIGNALS:
        bus.subscribe(name, line, inline=True)
    return None


def watch(argv: list[str]) -> int:
    """``lifecycle watch [--config FILE] [--server URL]``: run the watchdog until SIGTERM.

    .. versionadded:: 0.2
    """
    parser = _parser(
        "watch",
        "Watch the lifecycle events on NATS JetStream: declare silent runs lost, report "
        "missed and overdue runs, each exactly once; notify through the adapters and "
        "handlers of the same configuration.",
    )
    args = parser.parse_args(argv)
    config = _load("watch", args)
    if config is None:
        return STATUS_USAGE
    status, failure = anyio.run(_watch, config, backend="asyncio")
    if failure is not None:
        _say("watch", f"error: {_where(config, args, failure)}: {failure}")
    return status


async def _watch(config: WatchConfig) -> tuple[int, Exception | None]:
    """Watch until a signal; the exit status, and why NATS could not be watched if so."""
    failure: Exception | None = None
    async with EventBus() as bus:
        if config.notify is not None and (config.notify.adapters or config.notify.handlers):
            try:
                attachment = config.notify.attach(bus)
            except ConfigError as exc:
                _say("watch", f"error: {exc}")
                return STATUS_USAGE, None
        else:
            attachment = _console(bus)
        log_to_stderr()  # after the handler modules' import: their configuration wins
        judge = Judge(config.policy, config.expectations)
        settings = config.settings

        def ready(dog: Watchdog) -> None:
            _say(
                "watch",
                f"watching stream {settings.stream} on {settings.shown_servers}: "
                f"{len(dog.live())} live runs, {len(config.expectations)} expected schedules",
            )

        try:
            async with anyio.create_task_group() as group:

                async def stop_on_signal() -> None:
                    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                        async for number in signals:
                            _say("watch", f"{signal.Signals(number).name}: stopping")
                            group.cancel_scope.cancel()
                            return

                group.start_soon(stop_on_signal)
                try:
                    await run_watchdog(settings, judge, bus, ready=ready)
                except (ConnectionError, NatsError) as exc:
                    # Caught here, not around the task group, which would wrap it.
                    failure = exc
                    group.cancel_scope.cancel()
        finally:
            if attachment is not None:
                attachment.detach()
    return (0, None) if failure is None else (STATUS_UNREACHABLE, failure)


# -- lifecycle runs ----------------------------------------------------------------


def runs(argv: list[str]) -> int:
    """``lifecycle runs [--config FILE] [--server URL] [--json] [--all]``: the live runs.

    Asks a running watchdog for its table; with none answering, reads the stored table
    (whose heartbeat times are only as fresh as the last start or verdict). ``--all`` adds
    the runs that ended in the last ``ENDED_KEPT`` seconds, from either.

    .. versionadded:: 0.2
    """
    parser = _parser("runs", "List the live runs the watchdog knows: one line per run.")
    parser.add_argument("--json", action="store_true", help="a JSON array, for scripts")
    parser.add_argument(
        "--all",
        action="store_true",
        help=f"include runs that ended in the last {ENDED_KEPT / 60:g} minutes",
    )
    args = parser.parse_args(argv)
    config = _load("runs", args)
    if config is None:
        return STATUS_USAGE
    log_to_stderr()  # stdout is the table's, or the JSON's a script reads
    try:
        source, rows = anyio.run(_table, config.settings, backend="asyncio")
    except (ConnectionError, NatsError) as exc:
        _say("runs", f"error: {_where(config, args, exc)}: {exc}")
        return STATUS_UNREACHABLE
    # The same answer whether a watchdog answered or the stored table did (which keeps
    # ended runs for days): the live runs, and with --all those that ended recently.
    ended_since = datetime.now(timezone.utc).timestamp() - ENDED_KEPT
    rows = [
        r
        for r in rows
        if r.get("state") != RunState.EXITED.value
        or (args.all and r.get("last_seen", 0) >= ended_since)
    ]
    if args.json:
        print(json.dumps([_public(row, source) for row in rows], indent=2))
    else:
        _print_table(rows, source)
    return 0


async def _table(settings: Settings) -> tuple[str, list[dict[str, Any]]]:
    nc = await connect(settings)
    try:
        try:
            reply = await nc.request(status_subject(settings), b"", timeout=2.0)
        except Exception:  # no watchdog answering (no responders, or a timeout)
            js = nc.jetstream()
            try:
                with jetstream_required(settings.shown_servers):
                    store = await JetStreamStore.open(js, settings.bucket)
            except NatsError as exc:
                raise NatsError(f"no watchdog answered, and {exc}") from None
            return "store", [record.to_dict() for record in await store.records()]
        data = json.loads(reply.data)
        rows: list[dict[str, Any]] = data["runs"]
        return "watchdog", rows
    finally:
        await nc.close()


def _when(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds")


def _public(row: dict[str, Any], source: str) -> dict[str, Any]:
    return {
        "environment": row["environment"],
        "labels": row.get("labels", []),
        "host": row.get("host", ""),
        "pid": row.get("pid", 0),
        "run_id": row["run_id"],
        "started": _when(row.get("started")),
        "last_heartbeat": _when(row.get("last_heartbeat")),
        "heartbeat_interval": row.get("interval"),
        "state": row.get("state"),
        "lost_at": _when(row.get("lost_at")),
        "overdue": row.get("overdue", False),
        "source": source,
    }


def _age(seconds: float | None, now: float) -> str:
    if seconds is None:
        return "-"
    ago = max(0.0, now - seconds)
    stamp = datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    return f"{stamp} ({ago:.0f}s ago)"


def _print_table(rows: Sequence[dict[str, Any]], source: str) -> None:
    now = datetime.now(timezone.utc).timestamp()
    header = ("ENVIRONMENT", "HOST", "RUN ID", "STARTED", "LAST HEARTBEAT", "STATE")
    lines = [header]
    for row in sorted(rows, key=lambda r: (r["environment"], r.get("started", 0))):
        state = row.get("state", "")
        if row.get("overdue"):
            state += ", overdue"
        # Names, hosts and ids come from the runs' own events: escaped for the terminal.
        lines.append(
            (
                escape(str(row["environment"])),
                escape(str(row.get("host", ""))),
                escape(str(row["run_id"])),
                _age(row.get("started"), now),
                _age(row.get("last_heartbeat"), now),
                escape(str(state)),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        )
    if source == "store":
        print(
            "(no watchdog answered: read from the stored table; heartbeat times may be stale)",
            file=sys.stderr,
        )
    if len(lines) == 1:
        print("(no live runs)", file=sys.stderr)


command(
    watch,
    help="watch the NATS event stream for lost, missed and overdue runs",
    check=describe_watch,
)
command(runs, help="list the live runs the watchdog knows")
