"""lifecycle-bus in one minute: callbacks, isolation, timeouts and the report.

Run it with ``uv run python examples/quickstart.py``.
"""

from __future__ import annotations

import anyio
import structlog

import lifecycle
from lifecycle import EXITED, STARTING, Environment, Event, EventBus

log = structlog.get_logger("quickstart")


async def main() -> None:
    async with EventBus(name="quickstart", default_timeout=2.0) as bus:
        # The design note's callbacks: plain functions, with or without the event.
        env = Environment(
            "nightly-etl",
            labels=["etl", "nightly"],
            on_start=lambda: print("on_start: warming the cache"),
            on_exit=lambda event: print(f"on_exit: run ended {event.outcome}"),
            bus=bus,
        )

        # A structured log line per event, for every environment on this bus.
        @bus.on(STARTING, inline=True)
        @bus.on(EXITED, inline=True)
        def log_event(event: Event) -> None:
            log.info(event.name, environment=event.environment.name, run_id=event.run_id,
                     outcome=event.outcome and event.outcome.value)  # fmt: skip

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
    print(f"lifecycle-bus {lifecycle.__version__}")
    anyio.run(main)
