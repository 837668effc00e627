"""The ``[watch]`` table: where the events are, how patient to be, which starts to expect.

.. code-block:: toml

    [watch]
    servers = ["nats://127.0.0.1:4222"]
    misses = 3                       # silent intervals before a run is lost

    [watch.misses_by_environment]
    nightly-etl = 5

    [[watch.expect]]
    environment = "nightly-etl"
    cron = "0 2 * * *"
    timezone = "Europe/Paris"
    grace = 600
    max_duration = 7200

    [[adapters]]                     # the same file's adapters hear the verdicts
    name = "webhook"
    options = { url = "${SLACK_WEBHOOK_URL}", format = "slack", signals = [...] }

Every error is a :class:`lifecycle.ConfigError` naming the file, the key and the value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from lifecycle_nats import NatsOptions

from lifecycle import Config, ConfigError, find_config, load_config

from ._jetstream import Settings
from ._judge import Policy
from ._schedule import Expectation

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["WatchConfig", "describe_watch", "load_watch_config", "watch_config_from"]

_CREDENTIALS = ("user", "password", "token", "creds")
"""The credential keys, as lifecycle-nats' ``[listen]`` and adapter options take them."""
_WATCH_KEYS = frozenset(
    {
        "servers",
        "stream",
        "subject_prefix",
        "bucket",
        "misses",
        "misses_by_environment",
        "misses_by_label",
        "default_interval",
        "tick",
        "rebuild_window",
        "connect_timeout",
        "report_every",
        "resume_grace",
        "expect",
        *_CREDENTIALS,
    }
)
_EXPECT_KEYS = frozenset(
    {"environment", "name", "cron", "timezone", "every", "grace", "max_duration", "labels"}
)


@dataclass(frozen=True)
class WatchConfig:
    """A loaded ``[watch]`` table.

    .. versionadded:: 0.2
    """

    settings: Settings = field(default_factory=Settings)
    policy: Policy = field(default_factory=Policy)
    expectations: tuple[Expectation, ...] = ()
    notify: Config | None = None
    """The configuration's adapters and handlers, which hear the verdicts."""
    file: Path | None = None


def load_watch_config(path: str | Path | None) -> WatchConfig:
    """Read a configuration: its ``[watch]`` table, and the adapters that notify.

    The file is an ordinary ``lifecycle.toml`` (or ``pyproject.toml`` with
    ``[tool.lifecycle]``): its ``[[adapters]]`` and ``[[handlers]]`` hear the verdicts.
    With ``path=None``, ``lifecycle.toml`` in the working directory if there is one, else
    the defaults (and the verdicts logged to stderr).

    Raises:
        lifecycle.ConfigError: the file cannot be read, or a key is unknown or has a bad
            value; the message names the file, the key and the value.

    .. versionadded:: 0.2
    """
    if path is None:
        path = find_config()
        if path is None:
            return WatchConfig()
    return watch_config_from(load_config(path))


def watch_config_from(config: Config) -> WatchConfig:
    """The ``[watch]`` table of a configuration already loaded (see :func:`load_watch_config`).

    Raises:
        lifecycle.ConfigError: a key is unknown or has a bad value.
    """
    prefix = "tool.lifecycle.watch" if config.path.name == "pyproject.toml" else "watch"
    table = dict(config.tables.get("watch", {}))
    watch = _Reader(str(config.path), prefix).load(table)
    return replace(watch, notify=config, file=config.path)


def describe_watch(config: Config) -> list[str]:
    """``lifecycle check`` on a ``[watch]`` table: what the watchdog would watch, and how.

    Raises:
        lifecycle.ConfigError: as :func:`watch_config_from`.
    """
    watch = watch_config_from(config)
    settings, policy = watch.settings, watch.policy
    lines = [
        f"servers {settings.shown_servers}, stream {settings.stream}, run table in bucket {settings.bucket}"
    ]
    special = [f"{name}: {n:g}" for name, n in sorted(policy.environments.items())]
    special += [f"label {name}: {n:g}" for name, n in sorted(policy.labels.items())]
    lost = f"a run is lost after {policy.misses:g} silent heartbeat intervals"
    lines.append(lost + (f" ({'; '.join(special)})" if special else ""))
    for expect in watch.expectations:
        if expect.cron is not None:
            zone = expect.timezone.key if expect.timezone is not None else "UTC"
            when = f"cron {expect.cron!r} {zone}, grace {expect.grace:g} s"
        elif expect.every is not None:
            when = f"every {expect.every:g} s, grace {expect.grace:g} s"
        else:
            when = ""
        if expect.max_duration is not None:
            when += (", " if when else "") + f"overdue after {expect.max_duration:g} s"
        lines.append(f"expects {expect.environment}: {when}")
    return lines


class _Reader:
    def __init__(self, file: str, prefix: str) -> None:
        self.file = file
        self.prefix = prefix

    def error(self, key: str, message: str, value: Any = None) -> ConfigError:
        return ConfigError(self.file, f"{self.prefix}.{key}", message, value)

    def keys(self, key: str, table: Any, allowed: frozenset[str]) -> dict[str, Any]:
        if not isinstance(table, dict):
            raise ConfigError(self.file, f"{self.prefix}{key}", "must be a table", table)
        for name in table:
            if name not in allowed:
                raise ConfigError(
                    self.file,
                    f"{self.prefix}{key}.{name}",
                    f"unknown key; expected one of {', '.join(sorted(allowed))}",
                )
        return table

    def seconds(self, key: str, value: Any, *, zero: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(key, "must be a number of seconds", value)
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
            low = ">= 0" if zero else "> 0"
            raise self.error(key, f"must be a finite number of seconds {low}", value)
        return float(value)

    def string(self, key: str, value: Any) -> str:
        if not isinstance(value, str) or not value:
            raise self.error(key, "must be a non-empty string", value)
        return value

    def misses(self, key: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 1:
            raise self.error(key, "must be a number of heartbeat intervals >= 1", value)
        if not math.isfinite(value):
            raise self.error(key, "must be finite", value)
        return float(value)

    def load(self, table: Any) -> WatchConfig:
        table = self.keys("", table, _WATCH_KEYS)
        servers = table.get("servers", list(Settings.servers))
        if isinstance(servers, str):
            servers = [servers]
        if not isinstance(servers, list) or not servers:
            raise self.error("servers", "must be a URL or a non-empty array of URLs", servers)
        for index, url in enumerate(servers):
            if not isinstance(url, str) or "://" not in url:
                raise self.error(f"servers[{index}]", "must be a URL like nats://host:4222", url)
        options: dict[str, Any] = {"servers": tuple(servers)}
        for name in ("stream", "subject_prefix", "bucket"):
            if name in table:
                options[name] = self.string(name, table[name])
        for name in ("tick", "rebuild_window", "connect_timeout", "report_every", "resume_grace"):
            if name in table:
                options[name] = self.seconds(name, table[name])
        for name in _CREDENTIALS:
            if name in table:
                try:  # checked as lifecycle-nats checks them (a creds file must exist)
                    NatsOptions.build(**{name: table[name]})
                except (TypeError, ValueError) as exc:
                    raise self.error(name, str(exc)) from None
                options[name] = table[name]
        settings = Settings(**options)

        by_env = self.number_table("misses_by_environment", table)
        by_label = self.number_table("misses_by_label", table)
        default_interval = None
        if "default_interval" in table:
            default_interval = self.seconds("default_interval", table["default_interval"])
        policy = Policy(
            misses=self.misses("misses", table.get("misses", 3)),
            environments=by_env,
            labels=by_label,
            default_interval=default_interval,
        )
        entries = table.get("expect", [])
        if not isinstance(entries, list):
            raise self.error("expect", "must be an array of tables ([[watch.expect]])", entries)
        expectations = tuple(self.expect(index, entry) for index, entry in enumerate(entries))
        names = [e.name for e in expectations]
        for index, name in enumerate(names):
            if name in names[:index]:
                raise self.error(
                    f"expect[{index}].name",
                    "two expectations have this name; give each its own name",
                    name,
                )
        return WatchConfig(settings, policy, expectations)

    def number_table(self, key: str, table: dict[str, Any]) -> dict[str, float]:
        values = table.get(key, {})
        if not isinstance(values, dict):
            raise self.error(key, "must be a table of name = number", values)
        return {name: self.misses(f"{key}.{name}", value) for name, value in values.items()}

    def expect(self, index: int, entry: Any) -> Expectation:
        key = f"expect[{index}]"
        entry = self.keys(f".{key}", entry, _EXPECT_KEYS)
        if "environment" not in entry:
            raise self.error(f"{key}.environment", "is required")
        environment = self.string(f"{key}.environment", entry["environment"])
        cron = entry.get("cron")
        if cron is not None:
            cron = self.string(f"{key}.cron", cron)
        every = None
        if "every" in entry:
            every = self.seconds(f"{key}.every", entry["every"])
        if cron is not None and every is not None:
            raise self.error(f"{key}.every", "give either cron or every, not both", every)
        zone = None
        if "timezone" in entry:
            name = self.string(f"{key}.timezone", entry["timezone"])
            try:
                zone = ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError):
                raise self.error(
                    f"{key}.timezone", "unknown time zone; use an IANA name like Europe/Paris", name
                ) from None
        grace = self.seconds(f"{key}.grace", entry.get("grace", 60), zero=True)
        max_duration = None
        if "max_duration" in entry:
            max_duration = self.seconds(f"{key}.max_duration", entry["max_duration"])
        if cron is None and every is None and max_duration is None:
            raise self.error(key, "needs a schedule (cron or every), a max_duration, or both")
        labels = entry.get("labels", [])
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise self.error(f"{key}.labels", "must be an array of strings", labels)
        try:
            return Expectation(
                environment,
                cron=cron,
                every=every,
                timezone=zone,
                grace=grace,
                max_duration=max_duration,
                name=self.string(f"{key}.name", entry["name"]) if "name" in entry else "",
                labels=tuple(labels),
            )
        except ValueError as exc:
            raise self.error(f"{key}.cron", str(exc).split(": ", 1)[-1], cron) from None
