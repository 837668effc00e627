"""lifecycle-bus in one minute: callbacks, isolation, timeouts and the report.

Run it with ``uv run python examples/quickstart.py``.
"""

from __future__ import annotations

import sys

import anyio
import structlog

import lifecycle
from lifecycle import EXITED, STARTING, Environment, Event, EventBus

log = structlog.get_logger("quickstart")


def show(line: str) -> None:
    """Print ``line`` and its newline in one write.

    Plain callbacks run in worker threads while the log is written; ``print`` writes the
    newline apart, so another line could land between the two.
    """
    sys.stdout.write(line + "\n")


async def main() -> None:
    async with EventBus(name="quickstart", default_timeout=2.0) as bus:
        # The design note's callbacks: plain functions, with or without the event.
        env = Environment(
            "nightly-etl",
            labels=["etl", "nightly"],
            on_start=lambda: show("on_start: warming the cache"),
            on_exit=lambda event: show(f"on_exit: run ended {event.outcome}"),
            bus=bus,
        )

        # A structured log line per event, for every environment on this bus.
        @bus.on(STARTING, inline=True)
        @bus.on(EXITED, inline=True)
        def log_event(event: Event) -> None:
            fields = {"environment": event.environment.name, "run_id": event.run_id}
            if event.outcome is not None:  # exited only: a starting line has no outcome
                fields["outcome"] = event.outcome.value
            log.info(event.name, **fields)

        # One handler too slow for its timeout, and one that fails: both are isolated.
        @bus.on(STARTING, timeout=0.3)
        async def slow_inventory(event: Event) -> None:
            await anyio.sleep(30)

        @bus.on(STARTING)
        async def flaky_probe(event: Event) -> None:
            raise ConnectionError("probe endpoint refused the connection")

        async with env.running(attributes={"table": "orders"}) as run:
            await anyio.sleep(0.05)  # the job itself
            run.attributes["rows"] = 1200

        print()
        print(run.start_report)
        print(run.exit_report)


if __name__ == "__main__":
    # Log lines on stderr, each in one write, with the timestamps `lifecycle run` shows.
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.dev.ConsoleRenderer(
                colors=False, exception_formatter=structlog.dev.plain_traceback
            ),
        ],
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
    )
    show(f"lifecycle-bus {lifecycle.__version__}")
    anyio.run(main)
