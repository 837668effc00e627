"""lifecycle-structlog: run lines by outcome, handler failures, own renderings."""

from __future__ import annotations

import io
import json
import threading
from typing import TYPE_CHECKING, Any, Literal

import anyio
import ecs_logging
import pytest
import structlog
from lifecycle_structlog import attach

from lifecycle import EXITED, STARTING, Environment, EventBus, load_config

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

    from lifecycle import Event


async def failing_run(bus: EventBus) -> None:
    """One run of "nightly" (labels etl, batch) that sets exit code 3 and raises."""
    with pytest.raises(ValueError, match="boom"):
        await _fail(Environment("nightly", ["etl", "batch"], bus=bus))


async def _fail(env: Environment) -> None:
    async with env.running(run_id="run-1") as run:
        run.exit_code = 3
        raise ValueError("boom")


def lines(logs: Sequence[Mapping[str, Any]], name: str) -> list[Mapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


@pytest.mark.anyio
async def test_a_refused_call_of_a_hung_handler_is_no_failure_line_per_event() -> None:
    release = threading.Event()

    def hang() -> None:
        release.wait(10)

    bus = EventBus(max_abandoned_per_handler=1)
    try:
        attach(bus)
        bus.subscribe(STARTING, hang, timeout=0.01)
        with structlog.testing.capture_logs() as logs:
            for run in range(3):
                async with Environment("nightly", bus=bus).running(run_id=f"run-{run}"):
                    pass
    finally:
        release.set()
        await bus.aclose()
    # The first call timed out; the two after it were refused, which the pool says once.
    names = [str(line["event"]) for line in logs]
    assert names.count("lifecycle.handler_timed_out") == 1
    assert "lifecycle.handler_failed" not in names
    assert sum(name.startswith("sync handler refused") for name in names) == 1


@pytest.mark.anyio
async def test_starting_is_logged_with_environment_labels_and_run_id() -> None:
    async with EventBus() as bus:
        attach(bus)
        with structlog.testing.capture_logs() as logs:
            async with Environment("nightly", ["etl"], bus=bus).running(run_id="run-1"):
                pass
    (line,) = lines(logs, STARTING)
    assert line["log_level"] == "info"
    assert (line["environment"], line["labels"], line["run_id"]) == ("nightly", ["etl"], "run-1")


@pytest.mark.anyio
async def test_a_succeeded_run_is_logged_at_info() -> None:
    async with EventBus() as bus:
        attach(bus)
        with structlog.testing.capture_logs() as logs:
            async with Environment("nightly", bus=bus).running(attributes={"rows": 5}):
                pass
    (line,) = lines(logs, EXITED)
    assert (line["log_level"], line["outcome"], line["attributes"]) == (
        "info",
        "succeeded",
        {"rows": 5},
    )
    assert line["duration"] >= 0
    assert "error" not in line


@pytest.mark.anyio
async def test_a_failed_run_is_logged_at_error_with_its_error() -> None:
    async with EventBus() as bus:
        attach(bus)
        with structlog.testing.capture_logs() as logs:
            await failing_run(bus)
    (line,) = lines(logs, EXITED)
    assert (line["log_level"], line["outcome"], line["exit_code"]) == ("error", "failed", 3)
    assert line["error"] == {"type": "ValueError", "message": "boom"}
    assert 'raise ValueError("boom")' in line["exception"]
    assert line["labels"] == ["batch", "etl"]


@pytest.mark.anyio
async def test_a_timed_out_run_is_an_error() -> None:
    async with EventBus() as bus:
        attach(bus, tracebacks=False)
        with structlog.testing.capture_logs() as logs, pytest.raises(TimeoutError):
            async with Environment("nightly", bus=bus).running(timeout=0.01):
                await anyio.sleep(10)
    (line,) = lines(logs, EXITED)
    assert (line["log_level"], line["outcome"]) == ("error", "timeout")
    assert "exception" not in line


@pytest.mark.anyio
async def test_levels_can_be_overridden_per_outcome() -> None:
    async with EventBus() as bus:
        attach(bus, levels={"failed": "warning"})
        with structlog.testing.capture_logs() as logs:
            await failing_run(bus)
    assert lines(logs, EXITED)[0]["log_level"] == "warning"


@pytest.mark.anyio
async def test_handler_failures_are_logged_with_their_environment() -> None:
    async with EventBus() as bus:
        attach(bus)

        def broken() -> None:
            raise RuntimeError("handler broke")

        bus.subscribe(EXITED, broken, name="broken", inline=True)
        with structlog.testing.capture_logs() as logs:
            async with Environment("nightly", bus=bus).running(run_id="run-1"):
                pass
    (line,) = lines(logs, "lifecycle.handler_failed")
    assert line["log_level"] == "error"
    assert (line["handler"], line["signal"], line["environment"]) == ("broken", EXITED, "nightly")
    assert line["error"] == {"type": "RuntimeError", "message": "handler broke"}


@pytest.mark.anyio
async def test_handler_timeouts_are_logged() -> None:
    async with EventBus() as bus:
        attach(bus)

        async def slow() -> None:
            await anyio.sleep(10)

        bus.subscribe(STARTING, slow, name="slow", timeout=0.05)
        with structlog.testing.capture_logs() as logs:
            async with Environment("nightly", bus=bus).running():
                pass
    (line,) = lines(logs, "lifecycle.handler_timed_out")
    assert (line["handler"], line["status"], line["log_level"]) == ("slow", "timeout", "error")


@pytest.mark.anyio
async def test_json_rendering_writes_one_object_per_line() -> None:
    out = io.StringIO()
    before = structlog.get_config()
    async with EventBus() as bus:
        attach(bus, render="json", file=out)
        await failing_run(bus)
    starting, exited = (json.loads(line) for line in out.getvalue().splitlines())
    assert (starting["event"], starting["level"]) == (STARTING, "info")
    assert (exited["event"], exited["level"], exited["outcome"]) == (EXITED, "error", "failed")
    assert exited["timestamp"].endswith("Z")
    assert structlog.get_config() == before  # the global configuration is untouched


@pytest.mark.anyio
async def test_console_rendering_is_readable() -> None:
    out = io.StringIO()
    async with EventBus() as bus:
        attach(bus, render="console", file=out, level="error")
        await failing_run(bus)
    text = out.getvalue()
    assert STARTING not in text  # below the chosen level
    first = text.splitlines()[0]
    assert "[error" in first
    assert "environment.exited" in first
    assert "outcome=failed" in first
    assert "Traceback (most recent call last)" in text


@pytest.mark.anyio
async def test_labels_limit_which_environments_are_logged() -> None:
    async with EventBus() as bus:
        attach(bus, labels=["etl"])
        with structlog.testing.capture_logs() as logs:
            async with Environment("other", bus=bus).running():
                pass
            await failing_run(bus)
    assert {line["environment"] for line in logs if "environment" in line} == {"nightly"}


@pytest.mark.anyio
async def test_detach_stops_logging() -> None:
    async with EventBus() as bus:
        with attach(bus):
            pass
        with structlog.testing.capture_logs() as logs:
            async with Environment("nightly", bus=bus).running():
                pass
    assert logs == []
    assert bus.subscriptions() == []


def test_unknown_render_or_level_is_refused() -> None:
    with pytest.raises(ValueError, match="render must be"):
        attach(EventBus(), render="xml")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        attach(EventBus(), levels={"failed": "loud"})


@pytest.mark.anyio
async def test_attached_from_a_config_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = anyio.Path(tmp_path / "lifecycle.toml")
    await path.write_text('[[adapters]]\nname = "structlog"\noptions = { render = "json" }\n')
    async with EventBus() as bus:
        with load_config(path).attach(bus):
            await failing_run(bus)
    exited = json.loads(capsys.readouterr().err.splitlines()[-1])
    assert (exited["event"], exited["level"], exited["environment"]) == (EXITED, "error", "nightly")


def test_all_lists_the_public_names_sorted() -> None:
    import lifecycle_structlog

    public = {name for name in vars(lifecycle_structlog) if not name.startswith("_")}
    assert public == set(lifecycle_structlog.__all__)
    assert lifecycle_structlog.__all__ == sorted(lifecycle_structlog.__all__)


class Writes(io.StringIO):
    """A stream that remembers each write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


@pytest.mark.anyio
@pytest.mark.parametrize("render", ["console", "json"])
async def test_each_line_is_one_write_with_its_newline(render: Literal["console", "json"]) -> None:
    # Output written meanwhile (a callback's print in a worker thread) cannot split a line.
    out = Writes()
    async with EventBus() as bus:
        attach(bus, render=render, file=out, tracebacks=False)
        async with Environment("nightly", bus=bus).running():
            pass
    assert len(out.writes) == 2
    assert all(w.endswith("\n") and w.count("\n") == 1 for w in out.writes)


@pytest.mark.anyio
async def test_console_rendering_escapes_control_characters() -> None:
    out = io.StringIO()
    async with EventBus() as bus:
        attach(bus, render="console", file=out)
        with pytest.raises(ValueError, match="bad"):
            async with Environment("x\x1b]0;HIJACKED\x07y", ["\x1b[31m"], bus=bus).running():
                raise ValueError("bad \x1b[2J news")
    text = out.getvalue()
    assert "\x1b" not in text
    assert "\x07" not in text
    assert "environment=x\\x1b]0;HIJACKED\\x07y" in text
    assert "bad \\x1b[2J news" in text
    assert "Traceback (most recent call last)" in text  # line breaks kept


@pytest.mark.anyio
async def test_a_starting_line_has_no_empty_exit_fields() -> None:
    out = io.StringIO()
    async with EventBus() as bus:
        attach(bus, render="console", file=out)
        async with Environment("nightly", bus=bus).running():
            pass
    starting = out.getvalue().splitlines()[0]
    assert "environment.starting" in starting
    for field in ("outcome=", "duration=", "exit_code=", "error="):
        assert field not in starting


def ecs_logger(out: io.StringIO) -> Any:
    """A logger that renders through Elastic's own structlog formatter, as its docs set it up."""
    return structlog.wrap_logger(
        structlog.WriteLogger(out),
        # Its __call__ wants a dict where structlog passes a MutableMapping: a stub detail.
        processors=[ecs_logging.StructlogFormatter()],  # type: ignore[list-item]
        wrapper_class=structlog.make_filtering_bound_logger(0),
    )


@pytest.mark.anyio
async def test_elastics_formatter_gets_every_line_of_a_failed_run() -> None:
    # A string ``error`` made the formatter raise TypeError: every failed run's exited was lost.
    out = io.StringIO()
    async with EventBus() as bus:
        attach(bus, logger=ecs_logger(out))
        await failing_run(bus)
    exited = [json.loads(line) for line in out.getvalue().splitlines()][-1]
    assert exited["message"] == EXITED
    assert exited["error"]["type"] == "ValueError"
    assert 'raise ValueError("boom")' in exited["error"]["stack_trace"]


@pytest.mark.anyio
async def test_ecs_fields_through_elastics_formatter() -> None:
    out = io.StringIO()
    async with EventBus() as bus:
        attach(bus, logger=ecs_logger(out), fields="ecs")
        await failing_run(bus)
    starting, exited = (json.loads(line) for line in out.getvalue().splitlines())
    assert starting["event"]["action"] == STARTING
    assert exited["host"]["name"]
    assert exited["process"]["pid"] > 0
    assert exited["tags"] == ["batch", "etl"]
    assert (exited["event"]["outcome"], exited["lifecycle"]["outcome"]) == ("failure", "failed")
    assert exited["event"]["id"] != starting["event"]["id"]
    assert isinstance(exited["event"]["duration"], int)  # nanoseconds, as ECS counts
    assert (exited["error"]["type"], exited["error"]["message"]) == ("ValueError", "boom")
    assert "Traceback" in exited["error"]["stack_trace"]
    assert exited["lifecycle"]["run_id"] == "run-1"
    assert exited["log.level"] == "error"


@pytest.mark.anyio
async def test_own_ecs_rendering_matches_elastics_formatter() -> None:
    theirs, ours = io.StringIO(), io.StringIO()
    async with EventBus() as bus:
        attach(bus, logger=ecs_logger(theirs), fields="ecs")
        attach(bus, render="json", file=ours, fields="ecs")
        await failing_run(bus)
    for their_line, our_line in zip(
        theirs.getvalue().splitlines(), ours.getvalue().splitlines(), strict=True
    ):
        their, our = json.loads(their_line), json.loads(our_line)
        del their["@timestamp"], our["@timestamp"]
        assert our == their


@pytest.mark.anyio
async def test_a_handler_failure_names_its_event_and_keeps_its_traceback() -> None:
    out = io.StringIO()
    async with EventBus() as bus:
        attach(bus, render="json", file=out)

        def broken() -> None:
            raise RuntimeError("handler broke")

        bus.subscribe(EXITED, broken, name="broken", inline=True)
        async with Environment("nightly", bus=bus).running():
            pass
    logs = [json.loads(line) for line in out.getvalue().splitlines()]
    (failed,) = lines(logs, "lifecycle.handler_failed")
    (exited,) = lines(logs, EXITED)
    assert failed["event_id"] == exited["event_id"]
    assert 'raise RuntimeError("handler broke")' in failed["exception"]


@pytest.mark.anyio
async def test_a_huge_attribute_is_cut_in_the_line_but_not_in_the_event() -> None:
    out = io.StringIO()
    seen: list[Event] = []
    huge = "x" * 900_000
    async with EventBus() as bus:
        attach(bus, render="json", file=out)
        bus.subscribe(EXITED, seen.append, inline=True)
        async with Environment("nightly", bus=bus).running(attributes={"blob": huge, "rows": 5}):
            pass
    exited = json.loads(out.getvalue().splitlines()[-1])
    assert len(out.getvalue()) < 20_000
    assert exited["attributes"]["rows"] == 5  # the other attributes are whole
    assert len(exited["attributes"]["blob"]) == 4096
    assert "...[" in exited["attributes"]["blob"]
    assert "characters cut]..." in exited["attributes"]["blob"]
    assert seen[0].attributes["blob"] == huge


@pytest.mark.anyio
async def test_a_huge_nested_value_is_cut_on_the_console_too() -> None:
    out = io.StringIO()
    async with EventBus() as bus:
        attach(bus, render="console", file=out, max_value=1000)
        async with Environment("nightly", bus=bus).running(attributes={"rows": list(range(10**5))}):
            pass
    exited = out.getvalue().splitlines()[-1]
    assert len(exited) < 3000
    assert "characters cut]..." in exited


@pytest.mark.anyio
async def test_max_value_none_keeps_lines_whole() -> None:
    out = io.StringIO()
    async with EventBus() as bus:
        attach(bus, render="json", file=out, max_value=None)
        async with Environment("nightly", bus=bus).running(attributes={"blob": "x" * 10_000}):
            pass
    assert json.loads(out.getvalue().splitlines()[-1])["attributes"]["blob"] == "x" * 10_000


def test_bad_fields_or_max_value_are_refused() -> None:
    with pytest.raises(ValueError, match="fields must be 'lifecycle' or 'ecs', not 'otel'"):
        attach(EventBus(), fields="otel")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_value must be a whole number of characters >= 64"):
        attach(EventBus(), max_value=10)


@pytest.mark.anyio
async def test_the_librarys_lines_follow_render_while_the_bus_is_open() -> None:
    from lifecycle._logging import logger

    out = io.StringIO()
    async with EventBus() as bus:
        attach(bus, render="json", file=out)  # never detached: its bus's end ends it
        logger.warning("library line", n=1)
    with structlog.testing.capture_logs() as logs:
        logger.warning("after the bus closed")
    (line,) = (json.loads(text) for text in out.getvalue().splitlines())
    assert (line["event"], line["level"], line["n"]) == ("library line", "warning", 1)
    assert [entry["event"] for entry in logs] == ["after the bus closed"]
