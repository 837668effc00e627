"""The plug-in contract: every installed adapter and command keeps it (lifecycle.plugins)."""

from __future__ import annotations

import inspect
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lifecycle_apprise
import lifecycle_nats
import lifecycle_nats._cli
import lifecycle_otel
import lifecycle_prometheus
import lifecycle_structlog
import lifecycle_watchdog._cli
import lifecycle_webhook
import pytest

from lifecycle import Attachment, ConfigError, EventBus
from lifecycle._config import _toml
from lifecycle.plugins import (
    _PROJECT_PLUGINS,
    ADAPTER_GROUP,
    COMMAND_GROUP,
    Attach,
    Command,
    adapter,
    command,
)

if TYPE_CHECKING:
    from lifecycle import Config

ROOT = Path(__file__).resolve().parent.parent

# Typed, so that mypy checks each of this project's plug-ins against the protocols; the
# tests below check that these are all the installed entry points, so a new one must be
# added here, and so checked.
ADAPTERS: dict[str, Attach] = {
    "apprise": lifecycle_apprise.attach,
    "nats": lifecycle_nats.attach,
    "otel": lifecycle_otel.attach,
    "prometheus": lifecycle_prometheus.attach,
    "structlog": lifecycle_structlog.attach,
    "webhook": lifecycle_webhook.attach,
}
COMMANDS: dict[str, Command] = {
    "flush": lifecycle_nats._cli.flush,
    "listen": lifecycle_nats._cli.listen,
    "runs": lifecycle_watchdog._cli.runs,
    "watch": lifecycle_watchdog._cli.watch,
}


def workspace_entry_points() -> dict[str, dict[str, str]]:
    """The entry points that the workspace members declare: group -> name -> distribution."""
    toml = _toml()
    declared: dict[str, dict[str, str]] = {ADAPTER_GROUP: {}, COMMAND_GROUP: {}}
    members = toml.loads((ROOT / "pyproject.toml").read_text())["tool"]["uv"]["workspace"]
    for pattern in members["members"]:
        for pyproject in sorted(ROOT.glob(f"{pattern}/pyproject.toml")):
            project = toml.loads(pyproject.read_text())["project"]
            for group, points in project.get("entry-points", {}).items():
                if not group.startswith("lifecycle."):
                    continue  # another program's plug-ins (lifecycle-testing's pytest11)
                for name in points:
                    declared.setdefault(group, {})[name] = project["name"]
    return declared


def test_the_install_hints_are_the_workspace_members_entry_points() -> None:
    # One table says which package to install for a missing adapter or command; a new
    # member, or a new entry point, that it misses fails here.
    assert workspace_entry_points() == _PROJECT_PLUGINS


@pytest.mark.parametrize("group", [ADAPTER_GROUP, COMMAND_GROUP])
def test_the_typed_tables_are_every_installed_entry_point(group: str) -> None:
    typed: dict[str, Any] = dict(ADAPTERS) if group == ADAPTER_GROUP else dict(COMMANDS)
    installed = {point.name: point.load() for point in entry_points(group=group)}
    assert installed == typed


def positional(parameter: inspect.Parameter) -> bool:
    return parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD)


def keyword_options(function: Any) -> set[str]:
    return {
        name
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.kind in (parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD)
    }


@pytest.mark.parametrize("point", entry_points(group=ADAPTER_GROUP), ids=lambda p: p.name)
def test_each_installed_adapter_keeps_the_contract(point: Any) -> None:
    attach = point.load()
    parameters = list(inspect.signature(attach).parameters.values())
    # attach(bus, **options): the bus positionally, every option by keyword, none required
    # positionally after the bus.
    assert parameters, point.value
    assert positional(parameters[0]), point.value
    for parameter in parameters[1:]:
        assert parameter.kind is not parameter.POSITIONAL_ONLY, (point.value, parameter.name)
        if positional(parameter):
            assert parameter.default is not parameter.empty, (point.value, parameter.name)
    check = getattr(attach, "check", None)
    if check is not None:
        # lifecycle check calls it with the options attach would get: it takes them all.
        assert callable(check), point.value
        takes = inspect.signature(check).parameters.values()
        if not any(p.kind is p.VAR_KEYWORD for p in takes):
            assert keyword_options(attach) - {parameters[0].name} <= keyword_options(check)


@pytest.mark.parametrize("point", entry_points(group=COMMAND_GROUP), ids=lambda p: p.name)
def test_each_installed_command_keeps_the_contract(point: Any) -> None:
    run = point.load()
    inspect.signature(run).bind(["--help"])  # command(argv)
    text = getattr(run, "help", None)
    assert text is None or (isinstance(text, str) and text.strip()), point.value
    check = getattr(run, "check", None)
    if check is not None:
        inspect.signature(check).bind(object())  # check(config)


# -- the declarations ------------------------------------------------------------------


def _check_recording(bus: EventBus, *, target: str = "ops") -> None:
    if not target:
        raise ValueError("target must not be empty")


@adapter(check=_check_recording)
def attach_recording(bus: EventBus, *, target: str = "ops") -> Attachment:
    return Attachment()


def test_adapter_declares_the_check_on_attach_itself() -> None:
    # vars(): the attribute is set at run time, which the protocols leave to the loader.
    assert vars(attach_recording)["check"] is _check_recording
    assert attach_recording.__name__ == "attach_recording"  # the function, not a wrapper
    assert adapter(attach_recording) is attach_recording


def report_table(config: Config) -> list[str]:
    return [f"{len(config.tables)} tables"]


def run_report(argv: list[str]) -> int:
    return len(argv)


def test_command_declares_help_and_check_on_the_command_itself() -> None:
    assert command(run_report, help="print a report", check=report_table) is run_report
    assert vars(run_report) == {"help": "print a report", "check": report_table}
    assert run_report(["a", "b"]) == 2


def test_command_as_a_decorator_without_a_check_sets_no_check() -> None:
    @command(help="do nothing")
    def idle(argv: list[str]) -> int:
        return 0

    assert vars(idle) == {"help": "do nothing"}


@pytest.mark.anyio
async def test_a_declared_check_is_what_lifecycle_check_calls(tmp_path: Path) -> None:
    from lifecycle._config import AdapterSpec, Config

    spec = AdapterSpec(
        name="recording",
        key="adapters[0]",
        attach=attach_recording,
        options={"target": ""},
        shown_options={"target": ""},
    )
    config = Config(tmp_path / "lifecycle.toml", [spec], [])
    async with EventBus() as bus:
        with pytest.raises(ConfigError, match="target must not be empty"):
            config.attach(bus, checking=True)


# -- docs/writing-an-adapter.md ------------------------------------------------------------


def python_blocks(page: Path) -> list[str]:
    text = page.read_text(encoding="utf-8")
    return [block.split("```", 1)[0] for block in text.split("```python\n")[1:]]


@pytest.mark.anyio
async def test_the_adapter_of_the_guide_works_as_its_own_test_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The page's adapter module (its first block) and its test (the last one), as a third
    # party would copy them into a package of their own.
    import importlib

    blocks = python_blocks(ROOT / "docs" / "writing-an-adapter.md")
    package = tmp_path / "site" / "lifecycle_jsonl"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(blocks[0], encoding="utf-8")
    (tmp_path / "site" / "guide_test_jsonl.py").write_text(blocks[-1], encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for name in ("lifecycle_jsonl", "guide_test_jsonl"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    guide_test = importlib.import_module("guide_test_jsonl")
    await guide_test.test_one_line_per_start_and_exit(tmp_path)
    jsonl = importlib.import_module("lifecycle_jsonl")
    with pytest.raises(ValueError, match=r"^path '.*' is in a directory that does not exist"):
        jsonl.attach(EventBus(), path=str(tmp_path / "nope" / "events.jsonl"))
