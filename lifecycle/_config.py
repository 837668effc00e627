"""The configuration file: adapters by entry-point name, handlers by ``module:function``.

A ``lifecycle.toml`` (or the ``[tool.lifecycle]`` table of a ``pyproject.toml``)::

    [[adapters]]
    name = "webhook"                      # an entry point in the group "lifecycle.adapters"
    options = { url = "${SLACK_WEBHOOK_URL}", format = "slack", outcomes = ["failed"] }

    [[handlers]]
    target = "myjobs.hooks:notify"        # module:attribute, imported when the file is loaded
    signal = "environment.exited"
    timeout = 5                           # seconds; inf for no limit
    background = true
    labels = ["nightly"]

A top-level table named after an installed ``lifecycle`` command (``[listen]`` for
``lifecycle listen`` from lifecycle-nats) is kept, expanded, in :attr:`Config.tables` for
that command to validate; ``[run]`` holds ``lifecycle run``'s own (``quiet = true``).

``${NAME}`` in any string is replaced by the environment variable ``NAME`` (``${NAME:-x}``
falls back to ``x``; ``$$`` is a literal ``$``). Loading checks everything it can without
touching a bus: every problem is a :exc:`~lifecycle.ConfigError` naming the file, the key
and the bad value, with expanded secrets shown as the ``${NAME}`` they came from.
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._event import EXITED, HEARTBEAT, MISSED, OVERDUE, RECOVERED, STARTING
from ._exceptions import ConfigError
from ._redact import redact_urls
from .plugins import (
    ADAPTER_GROUP,
    Attach,
    Attachment,
    _adapter_points,
    _command_points,
    _install_hint,
)

# importlib.metadata and tomllib are imported where they are used: ``lifecycle run`` with no
# configuration needs neither, and they are a good part of its start-up.

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from types import ModuleType

    from ._bus import EventBus

__all__ = ["AdapterSpec", "Config", "HandlerSpec", "find_config", "load_config"]

_TOP_KEYS = frozenset({"adapters", "handlers"})
_ADAPTER_KEYS = frozenset({"name", "options"})
_RUN_KEYS = frozenset({"quiet"})
_HANDLER_KEYS = frozenset(
    {"target", "signal", "timeout", "background", "critical", "labels", "order", "inline", "name"}
)
# A typo in these would subscribe to a signal nobody emits: refuse it. Other names are
# custom signals, which the bus allows.
_ENVIRONMENT_SIGNALS = (STARTING, EXITED, HEARTBEAT, MISSED, OVERDUE, RECOVERED)
_MIN_SECRET = 4
_SECRET_WORDS = ("auth", "key", "password", "secret", "token", "header", "cookie")
_VARIABLE = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\})")


def _toml() -> ModuleType:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on Python 3.10 only
        import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]
    module: ModuleType = tomllib
    return module


@dataclass(frozen=True)
class AdapterSpec:
    """One ``[[adapters]]`` entry, resolved: its ``attach`` function and expanded options."""

    name: str
    key: str
    attach: Attach = field(repr=False)
    options: Mapping[str, Any] = field(repr=False)
    shown_options: Mapping[str, Any]
    """The options as written (``${NAME}`` unexpanded, secrets masked), for display."""
    distribution: str | None = None
    version: str | None = None


@dataclass(frozen=True)
class HandlerSpec:
    """One ``[[handlers]]`` entry, resolved: the imported handler and its subscription options."""

    target: str
    key: str
    handler: Callable[..., Any] = field(repr=False)
    signal: str
    timeout: float | None = None
    default_timeout: bool = True
    background: bool = False
    critical: bool = False
    labels: tuple[str, ...] = ()
    order: int = 0
    inline: bool = False
    name: str | None = None


@dataclass(frozen=True)
class Config:
    """A loaded configuration file; :meth:`attach` subscribes it to a bus.

    .. versionadded:: 0.1
    """

    path: Path
    adapters: list[AdapterSpec]
    handlers: list[HandlerSpec]
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    """Expanded values of ``${NAME}`` references, mapped back to ``${NAME}`` for messages."""
    tables: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Top-level tables of installed commands (``[listen]`` for ``lifecycle listen``),
    ``${NAME}`` expanded; each command validates its own.

    .. versionadded:: 0.2"""
    quiet: bool = False
    """``[run] quiet = true``: ``lifecycle run`` shows its output only when a run did not
    succeed, as ``--quiet`` does.

    .. versionadded:: 0.2"""

    def attach(self, bus: EventBus, *, checking: bool = False) -> Attachment:
        """Attach every adapter, then subscribe every handler, to ``bus``.

        If one fails, whatever was attached is detached again before raising.
        ``checking``: for ``lifecycle check``, an adapter whose ``attach`` has a ``check``
        attribute is checked with it instead of attached.

        Raises:
            ConfigError: an adapter refused its options (naming the entry), or a
                handler's subscription options were rejected.
        """
        attachment = Attachment()
        try:
            for adapter in self.adapters:
                check = getattr(adapter.attach, "check", None) if checking else None
                try:
                    if check is not None:
                        check(bus, **adapter.options)
                        continue
                    handle = adapter.attach(bus, **adapter.options)
                except (TypeError, ValueError, ImportError, OSError) as exc:
                    option = _option_named(str(exc), adapter.options)
                    raise ConfigError(
                        str(self.path),
                        adapter.key if option is None else f"{adapter.key}.options.{option}",
                        f"adapter {adapter.name!r} could not be attached: "
                        f"{self._scrub(f'{type(exc).__name__}: {exc}')}",
                    ) from None
                try:
                    attachment.add(handle)
                except TypeError:
                    raise ConfigError(
                        str(self.path),
                        adapter.key,
                        f"adapter {adapter.name!r} returned {type(handle).__name__}, which "
                        "has no detach(); an adapter's attach must return a handle to detach",
                    ) from None
            for spec in self.handlers:
                options: dict[str, Any] = {}
                if not spec.default_timeout:
                    options["timeout"] = spec.timeout
                try:
                    subscription = bus.subscribe(
                        spec.signal,
                        spec.handler,
                        background=spec.background,
                        critical=spec.critical,
                        order=spec.order,
                        inline=spec.inline,
                        labels=spec.labels,
                        name=spec.name or spec.target,
                        **options,
                    )
                except (TypeError, ValueError) as exc:
                    raise ConfigError(
                        str(self.path), spec.key, f"cannot subscribe {spec.target}: {exc}"
                    ) from None
                attachment.add(subscription)
        except BaseException:
            attachment.detach()
            raise
        return attachment

    def describe(self) -> list[str]:
        """One readable line per adapter and handler (secrets never shown)."""
        lines: list[str] = []
        for adapter in self.adapters:
            origin = f" ({adapter.distribution} {adapter.version})" if adapter.distribution else ""
            options = ", ".join(f"{k}={_show(v)}" for k, v in adapter.shown_options.items())
            lines.append(f"adapter {adapter.name}{origin}" + (f": {options}" if options else ""))
        for spec in self.handlers:
            flags: list[str] = []
            if not spec.default_timeout:
                flags.append(
                    "no timeout" if spec.timeout is None else f"timeout {spec.timeout:g} s"
                )
            flags.extend(f for f in ("background", "critical", "inline") if getattr(spec, f))
            if spec.order:
                flags.append(f"order {spec.order}")
            if spec.labels:
                flags.append("labels " + ", ".join(spec.labels))
            suffix = f" ({'; '.join(flags)})" if flags else ""
            lines.append(f"handler {spec.target} on {spec.signal}{suffix}")
        return lines

    def _scrub(self, text: str) -> str:
        for value in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(value, self.secrets[value])
        # A URL written in the file itself is no ${NAME}: an adapter quoting it back would
        # show its path, where a webhook keeps its token.
        return redact_urls(text)


CONFIG_ENV = "LIFECYCLE_CONFIG"
"""The environment variable that names the configuration file, before any search."""


def find_config(directory: Path | None = None) -> Path | None:
    """The configuration file to use, or ``None``.

    With a ``directory``, only that directory is searched: its ``lifecycle.toml`` wins,
    otherwise a ``pyproject.toml`` that has a ``[tool.lifecycle]`` table (not its parents).
    Without one, the file named by ``$LIFECYCLE_CONFIG``, then the working directory, then
    ``lifecycle.toml`` in the user's configuration directory (``~/.config/lifecycle/`` on
    Linux), then in the system's (``/etc/xdg/lifecycle/``), as platformdirs names them: a
    cron job runs in ``$HOME``, not in its project. A file ``$LIFECYCLE_CONFIG`` names is
    returned even if it is not there: loading it says so.

    .. versionchanged:: 0.2 ``$LIFECYCLE_CONFIG``, the user's and the system's directories.
    """
    found = locate_config() if directory is None else _find_in(Path(directory))
    return None if found is None else found[0]


def locate_config() -> tuple[Path, str] | None:
    """The configuration file :func:`find_config` uses, and where it was found, for people."""
    named = os.environ.get(CONFIG_ENV, "")
    if named:
        return Path(named).expanduser(), f"named by ${CONFIG_ENV}"
    found = _find_in(Path.cwd())
    if found is not None:
        return found
    user, *system = config_dirs()
    for directory, where in [(user, "the user's"), *((d, "the system's") for d in system)]:
        candidate = directory / "lifecycle.toml"
        if candidate.is_file():
            return candidate, f"in {where} configuration directory"
    return None


def config_dirs() -> list[Path]:
    """Where a configuration is looked for after the working directory: the user's
    configuration directory for ``lifecycle``, then the system's, as platformdirs names them.
    """
    import platformdirs

    dirs = platformdirs.PlatformDirs("lifecycle", appauthor=False, multipath=True)
    system = [Path(d) for d in dirs.site_config_dir.split(os.pathsep) if d]
    return [Path(dirs.user_config_dir), *system]


def _find_in(directory: Path) -> tuple[Path, str] | None:
    found = _find_in_directory(directory)
    return None if found is None else (found, "in the working directory")


def _find_in_directory(directory: Path) -> Path | None:
    candidate = directory / "lifecycle.toml"
    if candidate.is_file():
        return candidate
    pyproject = directory / "pyproject.toml"
    if pyproject.is_file():
        try:
            text = pyproject.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None
        if "lifecycle" not in text:
            return None  # no [tool.lifecycle] table for sure: spare the TOML parser
        tomllib = _toml()
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError:
            return None
        tool = data.get("tool")
        if isinstance(tool, dict) and "lifecycle" in tool:
            return pyproject
    return None


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, validate and resolve a configuration file.

    Imports each handler's module and loads each adapter's entry point, so that every
    mistake shows here rather than when the bus first emits.

    Raises:
        ConfigError: the file is missing or not TOML, a key is unknown or has the wrong
            type, an environment variable is not set, a handler cannot be imported, or an
            adapter is not installed (the message lists the installed ones) or misses a
            package (the message names it).
    """
    file = Path(path)
    shown = str(file)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        named = os.environ.get(CONFIG_ENV, "")
        source = f" (named by ${CONFIG_ENV})" if named and Path(named).expanduser() == file else ""
        raise ConfigError(
            shown, None, f"cannot read the file{source}: {exc.strerror or exc}"
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(shown, None, f"the file is not UTF-8 text: {exc.reason}") from None
    tomllib = _toml()
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(shown, None, f"the file is not valid TOML: {exc}") from None
    prefix = ""
    if file.name == "pyproject.toml":
        tool = data.get("tool", {})
        if not isinstance(tool, dict) or "lifecycle" not in tool:
            raise ConfigError(shown, "tool.lifecycle", "the table is missing")
        data = tool["lifecycle"]
        prefix = "tool.lifecycle."
        if not isinstance(data, dict):
            raise ConfigError(shown, "tool.lifecycle", "must be a table", data)
    return _Loader(file, prefix).load(data)


class _Loader:
    def __init__(self, file: Path, prefix: str) -> None:
        self.file = file
        self.prefix = prefix
        self.secrets: dict[str, str] = {}

    def error(self, key: str, message: str, value: Any = None) -> ConfigError:
        # The bad value is shown as describe() would show it: secrets masked, URLs cut short.
        shown = None if value is None else _mask(key.rpartition(".")[2], value)
        return ConfigError(str(self.file), self.prefix + key, message, shown)

    def load(self, data: dict[str, Any]) -> Config:
        tables: dict[str, Mapping[str, Any]] = {}
        quiet = False
        for key, value in data.items():
            if key in _TOP_KEYS:
                continue
            if key == "run":  # lifecycle run's own table, as [listen] is lifecycle listen's
                quiet = self.run_table(value)
                continue
            # A package that adds ``lifecycle <command>`` may read a table of that name.
            commands = sorted(_command_points())
            if key not in commands:
                also = f", or the table of an installed command ({', '.join(commands)})"
                raise self.error(
                    key,
                    "unknown key; expected adapters, handlers or run" + (also if commands else ""),
                )
            if not isinstance(value, dict):
                raise self.error(key, f"must be a table ([{self.prefix}{key}])", value)
            tables[key] = self.expand(key, value)
        adapters = [
            self.adapter(f"adapters[{i}]", entry)
            for i, entry in enumerate(self.array(data, "adapters"))
        ]
        handlers = [
            self.handler(f"handlers[{i}]", entry)
            for i, entry in enumerate(self.array(data, "handlers"))
        ]
        return Config(self.file, adapters, handlers, self.secrets, tables, quiet=quiet)

    def run_table(self, value: Any) -> bool:
        """``[run]``: its ``quiet``."""
        if not isinstance(value, dict):
            raise self.error("run", f"must be a table ([{self.prefix}run])", value)
        self.check_keys("run", value, _RUN_KEYS)
        return self.boolean("run", value, "quiet")

    def array(self, data: dict[str, Any], key: str) -> list[dict[str, Any]]:
        entries = data.get(key, [])
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise self.error(key, f"must be an array of tables ([[{self.prefix}{key}]])", entries)
        return entries

    def check_keys(self, key: str, entry: dict[str, Any], allowed: frozenset[str]) -> None:
        for name in entry:
            if name not in allowed:
                raise self.error(
                    f"{key}.{name}", f"unknown key; expected one of {', '.join(sorted(allowed))}"
                )

    # -- values ------------------------------------------------------------------

    def expand(self, key: str, value: Any) -> Any:
        """Expand ``${NAME}`` in every string of ``value``, recursively."""
        if isinstance(value, str):
            return self.expand_string(key, value)
        if isinstance(value, list):
            return [self.expand(f"{key}[{i}]", item) for i, item in enumerate(value)]
        if isinstance(value, dict):
            return {k: self.expand(f"{key}.{k}", v) for k, v in value.items()}
        return value

    def expand_string(self, key: str, raw: str) -> str:
        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name is None:
                return "$"
            value = os.environ.get(name)
            if value is None or (value == "" and default is not None):
                if default is None:
                    raise self.error(key, f"environment variable {name} is not set", raw)
                return default
            if len(value) >= _MIN_SECRET:
                # Shorter values protect nothing, and replacing them would garble messages.
                self.secrets[value] = f"${{{name}}}"
            return value

        return _VARIABLE.sub(replace, raw)

    def string(self, key: str, entry: dict[str, Any], name: str, *, required: bool) -> str | None:
        value = entry.get(name)
        if value is None:
            if required:
                raise self.error(f"{key}.{name}", "is required")
            return None
        if not isinstance(value, str) or not value:
            raise self.error(f"{key}.{name}", "must be a non-empty string", value)
        expanded: str = self.expand_string(f"{key}.{name}", value)
        return expanded

    def boolean(self, key: str, entry: dict[str, Any], name: str) -> bool:
        value = entry.get(name, False)
        if not isinstance(value, bool):
            raise self.error(f"{key}.{name}", "must be true or false", value)
        return value

    # -- entries -----------------------------------------------------------------

    def adapter(self, key: str, entry: dict[str, Any]) -> AdapterSpec:
        self.check_keys(key, entry, _ADAPTER_KEYS)
        name = self.string(key, entry, "name", required=True)
        assert name is not None
        raw_options = entry.get("options", {})
        if not isinstance(raw_options, dict):
            raise self.error(
                f"{key}.options", "must be a table of the adapter's options", raw_options
            )
        options = self.expand(f"{key}.options", raw_options)
        points = {point.name: point for point in _adapter_points()}
        point = points.get(name)
        if point is None:
            installed = ", ".join(sorted(points)) or "none"
            provider = _install_hint(ADAPTER_GROUP, name)
            hint = f"; install it with: pip install {provider}" if provider else ""
            raise self.error(
                f"{key}.name",
                f"no adapter named {name!r} is installed{hint} (installed adapters: {installed})",
                name,
            )
        dist = getattr(point, "dist", None)
        distribution = dist.metadata["Name"] if dist is not None else None
        try:
            attach = point.load()
        except ImportError as exc:
            missing = getattr(exc, "name", None) or str(exc)
            raise self.error(
                f"{key}.name",
                f"adapter {name!r} ({point.value}) cannot be imported: it needs the package "
                f"{missing!r}; install it with: pip install "
                f"{distribution or _install_hint(ADAPTER_GROUP, name) or missing}",
                name,
            ) from None
        if not callable(attach):
            raise self.error(f"{key}.name", f"entry point {point.value} is not callable", name)
        self.check_options(key, name, attach, options)
        return AdapterSpec(
            name=name,
            key=key,
            attach=attach,
            options=options,
            shown_options={k: _mask(k, v) for k, v in raw_options.items()},
            distribution=distribution,
            version=dist.version if dist is not None else None,
        )

    def check_options(
        self, key: str, name: str, attach: Callable[..., Any], options: dict[str, Any]
    ) -> None:
        try:
            signature = inspect.signature(attach)
        except (TypeError, ValueError):
            return
        try:
            signature.bind(None, **options)
        except TypeError as exc:
            accepted = [
                p.name
                for p in list(signature.parameters.values())[1:]
                if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
            ]
            unknown = [option for option in options if option not in accepted]
            if unknown and not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
                raise self.error(
                    f"{key}.options.{unknown[0]}",
                    f"adapter {name!r} has no such option; its options are "
                    f"{', '.join(accepted) or 'none'}",
                ) from None
            raise self.error(f"{key}.options", f"adapter {name!r}: {exc}") from None

    def handler(self, key: str, entry: dict[str, Any]) -> HandlerSpec:
        self.check_keys(key, entry, _HANDLER_KEYS)
        target = self.string(key, entry, "target", required=True)
        signal = self.string(key, entry, "signal", required=True)
        assert target is not None
        assert signal is not None
        if signal.startswith("environment.") and signal not in _ENVIRONMENT_SIGNALS:
            raise self.error(
                f"{key}.signal",
                f"unknown environment signal; expected one of {', '.join(_ENVIRONMENT_SIGNALS)}",
                signal,
            )
        handler = self.resolve(f"{key}.target", target)
        timeout: float | None = None
        default_timeout = "timeout" not in entry
        if not default_timeout:
            raw = entry["timeout"]
            if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not raw > 0:
                raise self.error(
                    f"{key}.timeout",
                    "must be a number of seconds greater than 0 (inf for none)",
                    raw,
                )
            timeout = None if math.isinf(raw) else float(raw)
        labels = entry.get("labels", [])
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise self.error(f"{key}.labels", "must be an array of strings", labels)
        order = entry.get("order", 0)
        if isinstance(order, bool) or not isinstance(order, int):
            raise self.error(f"{key}.order", "must be an integer", order)
        background = self.boolean(key, entry, "background")
        inline = self.boolean(key, entry, "inline")
        if background and inline:
            raise self.error(
                f"{key}.inline", "a handler cannot be both inline and background", True
            )
        return HandlerSpec(
            target=target,
            key=key,
            handler=handler,
            signal=signal,
            timeout=timeout,
            default_timeout=default_timeout,
            background=background,
            critical=self.boolean(key, entry, "critical"),
            labels=tuple(self.expand(f"{key}.labels", labels)),
            order=order,
            inline=inline,
            name=self.string(key, entry, "name", required=False),
        )

    def resolve(self, key: str, target: str) -> Callable[..., Any]:
        module_name, colon, attribute = target.partition(":")
        if not colon or not module_name or not attribute:
            raise self.error(key, "must be 'package.module:function'", target)
        try:
            obj: Any = importlib.import_module(module_name)
        except ImportError as exc:
            raise self.error(key, f"cannot import module {module_name!r}: {exc}", target) from None
        except Exception as exc:
            raise self.error(
                key, f"importing module {module_name!r} raised {type(exc).__name__}: {exc}", target
            ) from None
        for part in attribute.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise self.error(
                    key, f"module {module_name!r} has no attribute {attribute!r}", target
                ) from None
        if not callable(obj):
            raise self.error(
                key, f"{target} is not callable (it is of type {type(obj).__name__})", target
            )
        handler: Callable[..., Any] = obj
        return handler


def _option_named(message: str, options: Mapping[str, Any]) -> str | None:
    """The option an adapter's error is about: the one it starts with, or the only one it names.

    Adapters word their errors as the core does ("url must be an http:// or https:// URL"),
    so the option can be named in the key (``adapters[0].options.url``).
    """
    words: list[str] = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", message)
    if words and words[0] in options:
        return words[0]
    named = {word for word in words if word in options}
    return named.pop() if len(named) == 1 else None


def _mask(key: str, value: Any) -> Any:
    """What ``describe`` shows of one option as written: secrets masked, ``${NAME}`` kept."""
    if isinstance(value, dict):
        return {k: _mask(k, v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(key, item) for item in value]
    if not isinstance(value, str):
        return value
    reference = _VARIABLE.fullmatch(value)
    if reference is not None and not reference.group(2):
        return value  # a bare ${NAME}: it names the secret, it does not hold it
    if any(word in key.lower() for word in _SECRET_WORDS):
        return "***"
    # Anywhere in the text, a ${NAME:-default} fallback included.
    return redact_urls(value)


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)
