"""The configuration loader: lifecycle.toml / [tool.lifecycle], adapters and handlers."""

from __future__ import annotations

import sys
import textwrap
from typing import TYPE_CHECKING, Any

import pytest

from lifecycle import (
    EXITED,
    Attachment,
    ConfigError,
    Environment,
    EventBus,
    find_config,
    installed_adapters,
    load_config,
    redact_url,
)
from lifecycle import _config as config_module

if TYPE_CHECKING:
    from pathlib import Path

ADAPTER = '''
from lifecycle import EXITED, Attachment

calls = []


def attach(bus, *, target, secret_header=None, retries=3):
    """A test adapter: records exited outcomes under ``target``."""
    if target.startswith("refuse"):
        raise ValueError(f"the target {target} is refused")
    handle = Attachment()
    handle.add(bus.subscribe(
        EXITED, lambda event: calls.append((target, event.outcome.value)), inline=True
    ))
    return handle


checked = []


def check(bus, *, target, secret_header=None, retries=3):
    """What lifecycle check calls instead of attach."""
    if target.startswith("refuse"):
        raise ValueError(f"the target {target} is refused")
    checked.append(target)


attach.check = check
'''

HANDLERS = """
calls = []


def record(event):
    calls.append(("record", event.name))


async def arecord(event):
    calls.append(("arecord", event.name))


class Hooks:
    @staticmethod
    def on_exit(event):
        calls.append(("on_exit", event.outcome.value))


NOT_CALLABLE = 3
"""


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory on sys.path with a fake adapter distribution and a handler module."""
    root = tmp_path / "site"
    dist = root / "fake_lifecycle_adapters-1.2.3.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: fake-lifecycle-adapters\nVersion: 1.2.3\n"
    )
    (dist / "entry_points.txt").write_text(
        "[lifecycle.adapters]\n"
        "recorder = fake_lifecycle_adapter:attach\n"
        "broken = fake_lifecycle_broken:attach\n"
    )
    (root / "fake_lifecycle_adapter.py").write_text(ADAPTER)
    (root / "fake_lifecycle_broken.py").write_text("import fake_dependency_that_is_missing\n")
    (root / "fake_lifecycle_handlers.py").write_text(HANDLERS)
    for name in ("fake_lifecycle_adapter", "fake_lifecycle_broken", "fake_lifecycle_handlers"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(root))
    return root


def write(directory: Path, text: str, name: str = "lifecycle.toml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def calls(module: str) -> list[Any]:
    found: list[Any] = sys.modules[module].calls
    return found


def error_of(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value


# -- finding the file ------------------------------------------------------------------


def test_find_config_prefers_lifecycle_toml(tmp_path: Path) -> None:
    write(tmp_path, "[tool.lifecycle]\n", "pyproject.toml")
    write(tmp_path, "")
    assert find_config(tmp_path) == tmp_path / "lifecycle.toml"


def test_find_config_takes_a_pyproject_with_tool_lifecycle(tmp_path: Path) -> None:
    write(tmp_path, "[project]\nname = 'x'\n[tool.lifecycle]\n", "pyproject.toml")
    assert find_config(tmp_path) == tmp_path / "pyproject.toml"


def test_find_config_ignores_a_pyproject_without_tool_lifecycle(tmp_path: Path) -> None:
    write(tmp_path, "[project]\nname = 'x'\n", "pyproject.toml")
    assert find_config(tmp_path) is None


def test_find_config_defaults_to_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert find_config() is None
    write(tmp_path, "")
    assert find_config() == tmp_path / "lifecycle.toml"


# -- handlers --------------------------------------------------------------------------


def test_handlers_are_subscribed_with_their_options(site: Path, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [[handlers]]
        target = "fake_lifecycle_handlers:record"
        signal = "environment.starting"
        timeout = 2.5
        critical = true
        order = -1
        labels = ["nightly"]

        [[handlers]]
        target = "fake_lifecycle_handlers:Hooks.on_exit"
        signal = "environment.exited"
        background = true
        timeout = inf
        """,
    )
    bus = EventBus(default_timeout=7.0)
    config = load_config(path)
    with config.attach(bus):
        starting, exited = bus.subscriptions()
        assert (starting.name, starting.timeout, starting.critical, starting.order) == (
            "fake_lifecycle_handlers:record",
            2.5,
            True,
            -1,
        )
        assert starting.labels == {"nightly"}
        assert (exited.signal_name, exited.background, exited.timeout) == (EXITED, True, None)
    assert bus.subscriptions() == []


def test_a_handler_without_timeout_gets_the_bus_default(site: Path, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [[handlers]]
        target = "fake_lifecycle_handlers:arecord"
        signal = "environment.exited"
        """,
    )
    bus = EventBus(default_timeout=7.0)
    load_config(path).attach(bus)
    (subscription,) = bus.subscriptions()
    assert subscription.timeout == 7.0


@pytest.mark.parametrize(
    "signal", ["environment.missed", "environment.overdue", "environment.recovered"]
)
def test_a_handler_may_follow_the_watchdogs_signals(
    site: Path, tmp_path: Path, signal: str
) -> None:
    path = write(
        tmp_path,
        f"""
        [[handlers]]
        target = "fake_lifecycle_handlers:arecord"
        signal = "{signal}"
        """,
    )
    bus = EventBus()
    load_config(path).attach(bus)
    (subscription,) = bus.subscriptions()
    assert subscription.signal_name == signal


@pytest.mark.anyio
async def test_attached_handlers_run_on_a_real_run(site: Path, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [[handlers]]
        target = "fake_lifecycle_handlers:arecord"
        signal = "environment.starting"

        [[handlers]]
        target = "fake_lifecycle_handlers:Hooks.on_exit"
        signal = "environment.exited"
        """,
    )
    async with EventBus() as bus:
        load_config(path).attach(bus)
        with pytest.raises(RuntimeError):
            async with Environment("job", bus=bus).running():
                raise RuntimeError("boom")
    assert calls("fake_lifecycle_handlers") == [
        ("arecord", "environment.starting"),
        ("on_exit", "failed"),
    ]


def test_pyproject_tool_lifecycle_is_read_and_named_in_errors(site: Path, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [tool.lifecycle]
        [[tool.lifecycle.handlers]]
        target = "fake_lifecycle_handlers:record"
        signal = "environment.exited"
        timeout = "soon"
        """,
        "pyproject.toml",
    )
    error = error_of(path)
    assert error.key == "tool.lifecycle.handlers[0].timeout"
    assert str(error) == (
        f"{path}: tool.lifecycle.handlers[0].timeout: must be a number of seconds greater than "
        "0 (inf for none) (got 'soon')"
    )


@pytest.mark.parametrize(
    ("entry", "key", "message"),
    [
        ('target = "fake_lifecycle_handlers:record"', "handlers[0].signal", "is required"),
        (
            'target = "fake_lifecycle_handlers"\nsignal = "s"',
            "handlers[0].target",
            "module:function",
        ),
        ('target = "no_such_module_xyz:f"\nsignal = "s"', "handlers[0].target", "cannot import"),
        (
            'target = "fake_lifecycle_handlers:nope"\nsignal = "s"',
            "handlers[0].target",
            "no attribute",
        ),
        (
            'target = "fake_lifecycle_handlers:NOT_CALLABLE"\nsignal = "s"',
            "handlers[0].target",
            "is not callable (it is of type int)",
        ),
        (
            'target = "fake_lifecycle_handlers:record"\nsignal = "s"\nbackground = "yes"',
            "handlers[0].background",
            "must be true or false",
        ),
        (
            'target = "fake_lifecycle_handlers:record"\nsignal = "s"\nlabels = "nightly"',
            "handlers[0].labels",
            "array of strings",
        ),
        (
            'target = "fake_lifecycle_handlers:record"\nsignal = "s"\ntimeout = 0',
            "handlers[0].timeout",
            "greater than 0",
        ),
        (
            'target = "fake_lifecycle_handlers:record"\nsignal = "environment.exit"',
            "handlers[0].signal",
            "unknown environment signal; expected one of environment.starting",
        ),
        (
            'target = "fake_lifecycle_handlers:record"\nsignal = "s"\nretries = 3',
            "handlers[0].retries",
            "unknown key",
        ),
    ],
)
def test_handler_mistakes_name_the_key(
    site: Path, tmp_path: Path, entry: str, key: str, message: str
) -> None:
    error = error_of(write(tmp_path, f"[[handlers]]\n{entry}\n"))
    assert error.key == key
    assert error.file == str(tmp_path / "lifecycle.toml")
    assert message in str(error)


def test_unknown_top_level_key_is_an_error(tmp_path: Path) -> None:
    error = error_of(write(tmp_path, "[[hooks]]\ntarget = 'x'\n"))
    assert error.key == "hooks"
    # Installed commands (lifecycle listen, ...) may add their own tables, named after them.
    assert (
        str(error).split(": ", 2)[-1].startswith("unknown key; expected adapters, handlers or run")
    )


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    error = error_of(write(tmp_path, "[[handlers]\n"))
    assert error.key is None
    assert str(error).startswith(f"{tmp_path / 'lifecycle.toml'}: the file is not valid TOML")


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    error = error_of(tmp_path / "nope.toml")
    assert "cannot read the file" in str(error)


# -- environment variables -------------------------------------------------------------


def test_environment_variables_are_expanded(
    site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIFECYCLE_TEST_TARGET", "alpha")
    monkeypatch.delenv("LIFECYCLE_TEST_UNSET", raising=False)
    path = write(
        tmp_path,
        """
        [[adapters]]
        name = "recorder"
        options = { target = "${LIFECYCLE_TEST_TARGET}/${LIFECYCLE_TEST_UNSET:-beta}/$$HOME" }
        """,
    )
    (adapter,) = load_config(path).adapters
    assert adapter.options == {"target": "alpha/beta/$HOME"}


def test_a_missing_environment_variable_names_the_key(
    site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LIFECYCLE_TEST_UNSET", raising=False)
    path = write(
        tmp_path,
        """
        [[adapters]]
        name = "recorder"
        options = { target = "x", secret_header = "Bearer ${LIFECYCLE_TEST_UNSET}" }
        """,
    )
    error = error_of(path)
    assert error.key == "adapters[0].options.secret_header"
    assert "environment variable LIFECYCLE_TEST_UNSET is not set" in str(error)
    # The text around the reference may be a secret itself: masked, as describe() does.
    assert error.value == "***"


# -- adapters --------------------------------------------------------------------------


def test_installed_adapters_come_from_entry_points(site: Path) -> None:
    adapters = installed_adapters()
    assert adapters["recorder"] == (
        "fake-lifecycle-adapters",
        "1.2.3",
        "fake_lifecycle_adapter:attach",
    )
    assert list(adapters) == sorted(adapters)


@pytest.mark.anyio
async def test_adapters_are_attached_by_name_with_their_options(site: Path, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [[adapters]]
        name = "recorder"
        options = { target = "ops" }
        """,
    )
    config = load_config(path)
    async with EventBus() as bus:
        attachment = config.attach(bus)
        async with Environment("job", bus=bus).running():
            pass
        attachment.detach()
        async with Environment("job", bus=bus).running():
            pass
    assert calls("fake_lifecycle_adapter") == [("ops", "succeeded")]


def test_an_unknown_adapter_lists_the_installed_ones(site: Path, tmp_path: Path) -> None:
    error = error_of(write(tmp_path, "[[adapters]]\nname = 'recordr'\n"))
    assert error.key == "adapters[0].name"
    assert error.value == "recordr"
    assert "no adapter named 'recordr' is installed" in str(error)
    assert "broken, " in str(error)
    assert "recorder" in str(error)


@pytest.mark.parametrize("name", ["webhook", "nats"])
def test_a_known_adapter_not_installed_says_what_to_install(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # nats was missing from the core's own table: it got no hint.
    monkeypatch.setattr(config_module, "_adapter_points", lambda: ())
    error = error_of(write(tmp_path, f"[[adapters]]\nname = '{name}'\n"))
    assert f"install it with: pip install lifecycle-{name} (installed adapters: none)" in str(error)


def test_an_adapter_missing_a_dependency_names_the_package(site: Path, tmp_path: Path) -> None:
    error = error_of(write(tmp_path, "[[adapters]]\nname = 'broken'\n"))
    assert error.key == "adapters[0].name"
    assert "needs the package 'fake_dependency_that_is_missing'" in str(error)
    assert "pip install fake-lifecycle-adapters" in str(error)


def test_an_unknown_adapter_option_lists_the_options(site: Path, tmp_path: Path) -> None:
    path = write(
        tmp_path, "[[adapters]]\nname = 'recorder'\noptions = { target = 'x', retry = 1 }\n"
    )
    error = error_of(path)
    assert error.key == "adapters[0].options.retry"
    assert "its options are target, secret_header, retries" in str(error)


def test_a_missing_adapter_option_is_reported(site: Path, tmp_path: Path) -> None:
    error = error_of(write(tmp_path, "[[adapters]]\nname = 'recorder'\n"))
    assert error.key == "adapters[0].options"
    assert "missing a required argument: 'target'" in str(error)


def test_a_refused_adapter_shows_the_variable_not_the_secret(
    site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIFECYCLE_TEST_TARGET", "refuse-s3cret-token")
    path = write(
        tmp_path,
        "[[adapters]]\nname = 'recorder'\noptions = { target = '${LIFECYCLE_TEST_TARGET}' }\n",
    )
    config = load_config(path)
    with pytest.raises(ConfigError) as caught:
        config.attach(EventBus())
    assert caught.value.key == "adapters[0].options.target"
    assert "the target ${LIFECYCLE_TEST_TARGET} is refused" in str(caught.value)
    assert "s3cret" not in str(caught.value)


def test_a_refused_option_is_named_in_the_key(site: Path, tmp_path: Path) -> None:
    path = write(tmp_path, "[[adapters]]\nname = 'recorder'\noptions = { target = 'refuse' }\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path).attach(EventBus())
    assert caught.value.key == "adapters[0].options.target"
    assert str(caught.value).startswith(f"{path}: adapters[0].options.target: ")


def test_a_url_in_a_refusal_shows_only_scheme_host_and_port(site: Path, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[[adapters]]\nname = 'recorder'\n"
        "options = { target = 'refuse:https://hooks.example:8443/services/T0/SECRETPATH?a=b' }\n",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path).attach(EventBus())
    assert "https://hooks.example:8443/***" in str(caught.value)
    assert "SECRETPATH" not in str(caught.value)


def test_a_bad_value_in_an_error_is_masked_like_describe(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[[adapters]]\nname = 'webhook'\n"
        "options = { url = 'https://hooks.example/services/SECRETPATH/${LIFECYCLE_TEST_UNSET}' }\n",
    )
    error = error_of(path)
    assert error.key == "adapters[0].options.url"
    assert "LIFECYCLE_TEST_UNSET is not set (got 'https://hooks.example/***')" in str(error)
    assert "SECRETPATH" not in str(error)


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("${HOOK_URL}", "${HOOK_URL}"),
        (
            "${HOOK_URL:-https://hooks.example/services/SECRET}",
            "${HOOK_URL:-https://hooks.example/***}",
        ),
        ("https://hooks.example/services/${TOKEN}", "https://hooks.example/***"),
        (
            "see https://hooks.example/x?token=SECRET, then retry",
            "see https://hooks.example/***, then retry",
        ),
    ],
)
def test_describe_cuts_every_url_in_an_option_short(value: str, shown: str) -> None:
    assert config_module._mask("url", value) == shown


def test_a_secret_option_with_a_fallback_is_masked() -> None:
    assert config_module._mask("token", "${TOKEN:-s3cret}") == "***"
    assert config_module._mask("token", "${TOKEN}") == "${TOKEN}"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hooks.example/services/T000/SECRETPATH", "https://hooks.example/***"),
        ("https://hooks.example/x?token=SECRET", "https://hooks.example/***"),
        ("https://user:SECRET@hooks.example:8443", "https://hooks.example:8443/***"),
        ("http://[::1]:9091/metrics/job#SECRET", "http://[::1]:9091/***"),
        ("http://pushgateway:9091", "http://pushgateway:9091"),
        ("http://pushgateway:9091/", "http://pushgateway:9091"),
        ("not a url", "***"),
    ],
)
def test_a_url_is_shown_as_scheme_host_and_port(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_a_failed_attach_detaches_what_was_attached(site: Path, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [[adapters]]
        name = "recorder"
        options = { target = "ok" }

        [[adapters]]
        name = "recorder"
        options = { target = "refused" }
        """,
    )
    bus = EventBus()
    with pytest.raises(ConfigError):
        load_config(path).attach(bus)
    assert bus.subscriptions() == []


def test_checking_calls_an_adapters_check_instead_of_attaching_it(
    site: Path, tmp_path: Path
) -> None:
    path = write(
        tmp_path,
        """
        [[adapters]]
        name = "recorder"
        options = { target = "ok" }
        """,
    )
    bus = EventBus()
    load_config(path).attach(bus, checking=True).detach()
    assert sys.modules["fake_lifecycle_adapter"].checked == ["ok"]
    assert bus.subscriptions() == []  # never attached
    refused = write(
        tmp_path,
        """
        [[adapters]]
        name = "recorder"
        options = { target = "refused" }
        """,
        name="refused.toml",
    )
    with pytest.raises(ConfigError, match=r"adapters\[0\].*the target refused is refused"):
        load_config(refused).attach(bus, checking=True)


# -- describing ------------------------------------------------------------------------


def test_describe_shows_one_line_each_without_secrets(
    site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIFECYCLE_TEST_TARGET", "https://hooks.example/s3cret")
    path = write(
        tmp_path,
        """
        [[adapters]]
        name = "recorder"
        options = { target = "${LIFECYCLE_TEST_TARGET}", secret_header = "s3cret", retries = 2 }

        [[adapters]]
        name = "recorder"
        options = { target = "https://user:s3cret@hooks.example/x?token=s3cret&v=1" }

        [[handlers]]
        target = "fake_lifecycle_handlers:record"
        signal = "environment.exited"
        timeout = 5
        background = true
        labels = ["nightly", "etl"]
        """,
    )
    lines = load_config(path).describe()
    assert lines == [
        (
            "adapter recorder (fake-lifecycle-adapters 1.2.3): "
            "target='${LIFECYCLE_TEST_TARGET}', secret_header='***', retries=2"
        ),
        ("adapter recorder (fake-lifecycle-adapters 1.2.3): target='https://hooks.example/***'"),
        (
            "handler fake_lifecycle_handlers:record on environment.exited "
            "(timeout 5 s; background; labels nightly, etl)"
        ),
    ]


def test_attachment_detaches_everything_once() -> None:
    undone: list[str] = []
    attachment = Attachment()
    attachment.add(lambda: undone.append("first"))
    attachment.add(lambda: undone.append("second"))
    with attachment:
        pass
    attachment.detach()
    assert undone == ["second", "first"]


def test_attachment_refuses_what_it_cannot_undo() -> None:
    with pytest.raises(TypeError, match=r"detach\(\), unsubscribe\(\) or disconnect\(\)"):
        Attachment().add(42)


def test_an_adapter_must_return_a_handle(site: Path, tmp_path: Path) -> None:
    (site / "fake_lifecycle_adapter.py").write_text(
        "def attach(bus, *, target):\n    return None\n"
    )
    path = write(tmp_path, "[[adapters]]\nname = 'recorder'\noptions = { target = 'x' }\n")
    with pytest.raises(ConfigError, match="returned NoneType, which has no detach"):
        load_config(path).attach(EventBus())
