"""``lifecycle listen`` and ``lifecycle flush``: the commands lifecycle-nats adds.

``lifecycle listen [--config FILE]`` consumes the stream into a local bus with the
configuration's adapters and handlers; its ``[listen]`` table holds the NATS options and
the filters (see :func:`lifecycle_nats.source`). SIGTERM or SIGINT: the messages being
handled are finished, background handlers drained, exit 0.

``lifecycle flush [--config FILE]`` sends the spool now, with the options of the
configuration's ``[[adapters]] name = "nats"`` entry.

Exit statuses, as ``lifecycle watch`` and ``lifecycle runs``:

=======  ==============================================================
0        ``listen`` stopped by SIGTERM or SIGINT; ``flush`` sent the spool
1        NATS could not be reached, or ``flush`` ran out of time
2        bad options or a bad configuration (the message names file and key)
=======  ==============================================================
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from lifecycle import ConfigError, EventBus, escape, find_config, load_config, log_to_stderr
from lifecycle.plugins import command

from ._exceptions import NatsError
from ._options import NatsOptions
from ._publisher import Publisher
from ._source import Source, source

if TYPE_CHECKING:
    from collections.abc import Sequence

    from lifecycle import Config

__all__ = ["flush", "listen"]

_STATUS_FAILED = 1
_STATUS_USAGE = 2
_PUBLISHER_KEYS = frozenset(NatsOptions.names()) | {
    "max_pending",
    "max_in_flight",
    "reconnect_wait",
    "spool_dir",
}


def _say(command: str, message: str) -> None:
    # Messages quote file names, configuration values and server replies: escaped.
    print(f"lifecycle {command}: {escape(message)}", file=sys.stderr, flush=True)


def _positive_seconds(text: str) -> float:
    # 0, a negative number or nan would give up at once; inf would never give up.
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def _parse(
    command: str, parser: argparse.ArgumentParser, argv: Sequence[str]
) -> tuple[argparse.Namespace, Config | None] | int:
    """The arguments and the configuration (``--config``, else the one found here, if
    any); or the exit status when either is wrong (the message is said)."""
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0
    # Handler modules import from the working directory: the lifecycle command put it on
    # sys.path before calling us.
    path: Path | None = args.config or find_config()
    try:
        return args, None if path is None else load_config(path)
    except ConfigError as exc:
        _say(command, f"error: {exc}")
        return _STATUS_USAGE


def listen(argv: Sequence[str]) -> int:
    """``lifecycle listen``: consume lifecycle events from NATS into local handlers.

    .. versionadded:: 0.2
    """
    parser = argparse.ArgumentParser(
        prog="lifecycle listen",
        description="Consume lifecycle events from NATS JetStream and run the configured "
        "adapters and handlers on them, as if the runs were local. NATS options and filters "
        "come from the [listen] table of the configuration; up to its concurrency (16) "
        "messages are handled at once, the events of one run in order.",
        epilog="exit status: 0 when stopped by SIGTERM or SIGINT; 1 when NATS cannot be "
        "reached (the message names the servers); 2 on a usage mistake or a bad "
        "configuration (the message names the file, key and value).",
    )
    parser.add_argument("--config", metavar="FILE", type=Path, help="the configuration file")
    parsed = _parse("listen", parser, argv)
    if isinstance(parsed, int):
        return parsed
    _, config = parsed
    log_to_stderr()  # off stdout, escaped: values come from the network
    status: int = anyio.run(_listen, config)
    return status


def _listen_source(config: Config | None, bus: EventBus) -> Source:
    """The consumer that the ``[listen]`` table asks for, not yet connected.

    Raises:
        ConfigError: an option is unknown or wrong; the message names file, table and value.
    """
    if config is None:
        return source(bus)
    try:
        return source(bus, **config.tables.get("listen", {}))
    except (TypeError, ValueError) as exc:
        table = "tool.lifecycle.listen" if config.path.name == "pyproject.toml" else "listen"
        raise ConfigError(str(config.path), table, str(exc)) from None


def _check_listen(config: Config) -> list[str]:
    """``lifecycle check`` on a ``[listen]`` table: what the listener would consume."""

    async def build() -> Source:
        async with EventBus(name="lifecycle-check") as bus:
            return _listen_source(config, bus)

    consumer: Source = anyio.run(build)
    options = consumer.options
    where = f"servers {options.shown_servers}, stream {options.stream}"
    reads = f"consumer {consumer.durable!r} on {consumer.filter_subject!r}"
    lines = [f"{where}, {reads} (deliver {consumer.deliver})"]
    for name, values in (
        ("signals", consumer.signals),
        ("environments", consumer.environments),
        ("labels", consumer.labels),
    ):
        if values:
            lines.append(f"only {name}: {', '.join(sorted(values))}")
    shared = consumer.handled_bucket
    kept = [f"bucket {shared} for {consumer.handled_ttl:g} s"] if shared else []
    kept.append(str(consumer.state_dir) if consumer.state_dir else "memory")
    lines.append("handled event ids kept in " + " and in ".join(kept))
    return lines


async def _listen(config: Config | None) -> int:
    bus = EventBus(name="lifecycle-listen")
    where = str(config.path) if config is not None else "(no configuration)"
    try:
        consumer = _listen_source(config, bus)
    except ConfigError as exc:
        await bus.aclose()
        _say("listen", f"error: {exc}")
        return _STATUS_USAGE
    attachment = None
    failure: NatsError | None = None
    try:
        if config is not None:
            attachment = config.attach(bus)
        async with anyio.create_task_group() as group:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:

                async def stop_on_signal() -> None:
                    async for signum in signals:
                        structlog.get_logger("lifecycle.nats").info(
                            "stopping: finishing the messages being handled",
                            signal=signal.Signals(signum).name,
                        )
                        consumer.stop()
                        return

                group.start_soon(stop_on_signal)
                try:
                    await consumer.run()
                except NatsError as exc:
                    failure = exc
                finally:
                    group.cancel_scope.cancel()
    except ConfigError as exc:
        _say("listen", f"error: {exc}")
        return _STATUS_USAGE
    finally:
        await bus.aclose()
        if attachment is not None:
            attachment.detach()
    if failure is not None:
        _say("listen", f"error: {where}: listen: {failure}")
        return _STATUS_FAILED
    return 0


def flush(argv: Sequence[str]) -> int:
    """``lifecycle flush``: send the spooled events now.

    .. versionadded:: 0.2
    """
    parser = argparse.ArgumentParser(
        prog="lifecycle flush",
        description="Send the events that lifecycle processes spooled while NATS was "
        "unreachable, with the options of the configuration's nats adapter.",
        epilog="exit status: 0 when the spool was sent (or was empty); 1 when NATS cannot be "
        "reached or --timeout ran out (what is unsent stays spooled); 2 on a usage mistake or "
        "a bad configuration (the message names the file, key and value).",
    )
    parser.add_argument("--config", metavar="FILE", type=Path, help="the configuration file")
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_positive_seconds,
        default=30.0,
        help="give up after this long; what is unsent stays spooled (default: 30)",
    )
    parsed = _parse("flush", parser, argv)
    if isinstance(parsed, int):
        return parsed
    args, config = parsed
    options: dict[str, Any] = {}
    where = "(no configuration)"
    if config is not None:
        where = str(config.path)
        for adapter in config.adapters:
            if adapter.name == "nats":
                where = f"{config.path}: {adapter.key}.options"
                options = {k: v for k, v in adapter.options.items() if k in _PUBLISHER_KEYS}
                break
    log_to_stderr()  # off stdout, escaped: values come from the network
    try:
        publisher = Publisher(**options)
    except (TypeError, ValueError) as exc:
        _say("flush", f"error: {where}: {exc}")
        return _STATUS_USAGE
    status: int = anyio.run(_flush, publisher, args.timeout, where)
    return status


async def _flush(publisher: Publisher, seconds: float, where: str) -> int:
    count = publisher.load_spool()
    if not count:
        print(escape(f"nothing to send: the spool ({publisher.spool.directory}) is empty"))
        return 0
    # Fail fast with a clear message when the server is not there at all.
    try:
        client = await publisher.options.connect()
    except NatsError as exc:
        _say("flush", f"error: {where}: {exc}; {count} event(s) stay spooled")
        return _STATUS_FAILED
    await client.close()
    publisher.start()
    done = await publisher.flush(seconds)
    await publisher.aclose()
    sent = publisher.published
    if not done:
        _say(
            "flush",
            f"sent {sent} of {count} spooled event(s) in {seconds:g} s; the rest stay spooled",
        )
        return _STATUS_FAILED
    print(escape(f"sent {sent} spooled event(s) to {publisher.options.shown_servers}"))
    return 0


command(
    listen, help="run the configured handlers on the events of NATS JetStream", check=_check_listen
)
command(flush, help="send the events spooled while NATS was unreachable")
