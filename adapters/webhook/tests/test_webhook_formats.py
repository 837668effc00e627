"""The vendor formats against receivers that check each vendor's documented schema.

PagerDuty (Events API v2), Microsoft Teams Workflows (an Adaptive Card), healthchecks.io
and Cronitor are stood in for by a real HTTP server on 127.0.0.1 that validates what it
gets the way the vendor documents it and keeps the state the vendor would (an incident
open or resolved, a check up or down). Alertmanager is the real one, from Debian's
``prometheus-alertmanager``, on a free loopback port.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
import threading
import urllib.parse
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest
import structlog
from lifecycle_testing import QuietHandler, StandIn, serve_http, stop_process, wait_serving
from lifecycle_webhook import WebhookAdapter, attach

from lifecycle import (
    MISSED,
    RECOVERED,
    Environment,
    EnvironmentInfo,
    Event,
    EventBus,
    HandlerResult,
    Outcome,
    Status,
    SubprocessEnvironment,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path


# -- the vendors' schemas, from their documentation --------------------------------------

# PagerDuty Events API v2, "Send an Alert Event": the top-level and payload fields, the
# enums, and the length limits (routing_key 32, summary 1024, dedup_key 255).
PD_TOP = {
    "routing_key",
    "event_action",
    "dedup_key",
    "payload",
    "images",
    "links",
    "client",
    "client_url",
}
PD_PAYLOAD = {
    "summary",
    "source",
    "severity",
    "timestamp",
    "component",
    "group",
    "class",
    "custom_details",
}
PD_ACTIONS = {"trigger", "acknowledge", "resolve"}
PD_SEVERITIES = {"critical", "error", "warning", "info"}


def _iso8601(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def pagerduty_errors(event: Any) -> list[str]:
    if not isinstance(event, dict):
        return ["the event must be a JSON object"]
    errors = [f"unknown field {name!r}" for name in event if name not in PD_TOP]
    key = event.get("routing_key")
    if not isinstance(key, str) or len(key) != 32:
        errors.append("Length of 'routing_key' is incorrect (should be 32 characters)")
    action = event.get("event_action")
    if action not in PD_ACTIONS:
        errors.append(f"'event_action' is invalid (must be one of {sorted(PD_ACTIONS)})")
    dedup = event.get("dedup_key")
    if action in ("acknowledge", "resolve") and not dedup:
        errors.append("'dedup_key' is required for acknowledge and resolve")
    if dedup is not None and (not isinstance(dedup, str) or len(dedup) > 255):
        errors.append("'dedup_key' must be a string of at most 255 characters")
    if action == "trigger":
        payload = event.get("payload")
        if not isinstance(payload, dict):
            return [*errors, "'payload' is missing or not an object"]
        errors += [f"unknown payload field {name!r}" for name in payload if name not in PD_PAYLOAD]
        summary = payload.get("summary")
        if not isinstance(summary, str) or not summary or len(summary) > 1024:
            errors.append("'payload.summary' must be 1 to 1024 characters")
        if not isinstance(payload.get("source"), str) or not payload["source"]:
            errors.append("'payload.source' is missing")
        if payload.get("severity") not in PD_SEVERITIES:
            errors.append("'payload.severity' is invalid")
        if "timestamp" in payload and not _iso8601(payload["timestamp"]):
            errors.append("'payload.timestamp' is not ISO 8601")
        for name in ("component", "group", "class"):
            if name in payload and not isinstance(payload[name], str):
                errors.append(f"'payload.{name}' must be a string")
        if "custom_details" in payload and not isinstance(payload["custom_details"], dict):
            errors.append("'payload.custom_details' must be an object")
    return errors


# Adaptive Cards as Teams renders them (schema 1.0 to 1.5), and the message a Teams
# Workflows "when a webhook request is received" flow takes: {"type": "message",
# "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "content": card}]}.
AC_ENUMS = {
    "weight": {"Default", "Lighter", "Bolder"},
    "size": {"Default", "Small", "Medium", "Large", "ExtraLarge"},
    "color": {"Default", "Dark", "Light", "Accent", "Good", "Warning", "Attention"},
    "fontType": {"Default", "Monospace"},
}


def _enum_errors(where: str, element: dict[str, Any]) -> list[str]:
    return [
        f"{where}.{name} is not one of {sorted(values)}"
        for name, values in AC_ENUMS.items()
        if name in element and element[name] not in values
    ]


def adaptive_card_errors(message: Any) -> list[str]:
    if not isinstance(message, dict) or message.get("type") != "message":
        return ["the body must be an object of type 'message'"]
    attachments = message.get("attachments")
    if not isinstance(attachments, list) or not attachments:
        return ["'attachments' must be a non-empty list"]
    errors: list[str] = []
    for attachment in attachments:
        if attachment.get("contentType") != "application/vnd.microsoft.card.adaptive":
            errors.append("an attachment's contentType is not an Adaptive Card")
        card = attachment.get("content")
        if not isinstance(card, dict) or card.get("type") != "AdaptiveCard":
            errors.append("an attachment's content is not of type 'AdaptiveCard'")
            continue
        if not re.fullmatch(r"1\.[0-5]", str(card.get("version"))):
            errors.append(
                f"card version {card.get('version')!r} is not one Teams renders (1.0-1.5)"
            )
        body = card.get("body")
        if not isinstance(body, list):
            errors.append("the card's body must be a list")
            continue
        for index, element in enumerate(body):
            where = f"body[{index}]"
            kind = element.get("type")
            if kind == "TextBlock":
                if not isinstance(element.get("text"), str):
                    errors.append(f"{where}: a TextBlock needs text")
                errors += _enum_errors(where, element)
            elif kind == "RichTextBlock":
                for run in element.get("inlines", None) or [None]:
                    if not (
                        isinstance(run, str)
                        or (
                            isinstance(run, dict)
                            and run.get("type") == "TextRun"
                            and isinstance(run.get("text"), str)
                        )
                    ):
                        errors.append(f"{where}: inlines must be TextRuns with text")
                    elif isinstance(run, dict):
                        errors += _enum_errors(where, run)
            elif kind == "FactSet":
                facts = element.get("facts")
                if not isinstance(facts, list) or not all(
                    isinstance(f.get("title"), str) and isinstance(f.get("value"), str)
                    for f in facts
                ):
                    errors.append(f"{where}: facts must have string title and value")
            else:
                errors.append(f"{where}: unexpected element type {kind!r}")
    return errors


# healthchecks.io's pinging API: /<uuid>[/start|/fail|/log|/<0-255>], an optional rid
# that must be a UUID in canonical form, a body of at most 100 kB.
HC_PATH = re.compile(r"^/hc/(?P<check>[0-9a-f-]{36})(?:/(?P<kind>start|fail|log|\d{1,3}))?$")

# Cronitor's telemetry API: /p/<api key>/<monitor key>?state=run|complete|fail|ok and its
# documented parameters (message up to 2000 characters).
CRONITOR_PATH = re.compile(r"^/cronitor/p/(?P<key>[^/]+)/(?P<monitor>[^/]+)$")
CRONITOR_PARAMS = {"state", "env", "host", "message", "metric", "series", "status_code"}


# -- the receiver -------------------------------------------------------------------------


@dataclass
class Vendors:
    """What the stand-ins received, what they refused and why, and the state they keep."""

    port: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    bodies: list[tuple[str, Any]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    incidents: dict[str, str] = field(default_factory=dict)
    pings: list[tuple[str, str, str | None, str]] = field(default_factory=list)
    cronitor: list[dict[str, str]] = field(default_factory=list)
    unavailable: int = 0  # answer this many next requests 503, as an overloaded vendor would

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def handle(self, path: str, query: str, body: bytes) -> tuple[int, str]:
        params = urllib.parse.parse_qs(query, keep_blank_values=True)
        if self.unavailable:
            self.unavailable -= 1
            return 503, "try again"
        if path.startswith("/pagerduty/"):
            event = json.loads(body)
            self.bodies.append(("pagerduty", event))
            errors = pagerduty_errors(event)
            if errors:
                return 400, json.dumps({"status": "invalid event", "errors": errors})
            state = {"trigger": "triggered", "resolve": "resolved"}[event["event_action"]]
            if state == "triggered" or event["dedup_key"] in self.incidents:
                self.incidents[event["dedup_key"]] = state
            reply = {
                "status": "success",
                "message": "Event processed",
                "dedup_key": event["dedup_key"],
            }
            return 202, json.dumps(reply)
        if path.startswith("/teams/"):
            message = json.loads(body)
            self.bodies.append(("teams", message))
            errors = adaptive_card_errors(message)
            return (400, "; ".join(errors)) if errors else (202, "")
        if match := HC_PATH.match(path):
            rid = params.get("rid", [None])[0]
            kind = match["kind"] or "success"
            if kind.isdigit() and int(kind) > 255:
                return 400, "invalid url format"
            if rid is not None and str(uuid.UUID(rid)) != rid:
                return 400, "invalid url format"
            if len(body) > 100_000:
                return 400, "body too large"
            self.pings.append((match["check"], kind, rid, body.decode()))
            return 200, "OK"
        if match := CRONITOR_PATH.match(path):
            unknown = set(params) - CRONITOR_PARAMS
            single = {name: values[-1] for name, values in params.items()}
            if unknown or single.get("state") not in ("run", "complete", "fail", "ok"):
                return 400, f"bad telemetry parameters {sorted(params)}"
            if (
                len(single.get("message", "")) > 2000
                or not single.get("status_code", "0").isdigit()
            ):
                return 400, "bad message or status_code"
            self.cronitor.append(single)
            return 200, ""
        return 404, "not found"


class _Handler(QuietHandler):
    server: StandIn[Vendors]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        path, _, query = self.path.partition("?")
        owner = self.server.owner
        with owner.lock:
            try:
                status, reply = owner.handle(path, query, body)
            except (ValueError, KeyError, AttributeError, TypeError) as exc:
                status, reply = 400, f"malformed: {exc!r}"
            if status >= 400 and status != 503:
                owner.refused.append(f"{path}: {reply}")
        data = reply.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def vendors() -> Iterator[Vendors]:
    with serve_http(_Handler, Vendors) as owner:
        yield owner
    assert owner.refused == [], "the stand-in refused what was sent"


# -- helpers ------------------------------------------------------------------------------

ROUTING_KEY = "R0UT1NGK3Y0123456789abcdefABCDEF"  # 32 characters, like a real one
FAST: dict[str, Any] = {
    "backoff": 0.001,
    "backoff_max": 0.01,
    "timeout": 5.0,
    "deadline": 10.0,
    "attempts": 2,
}


def results_of(bus: EventBus) -> list[HandlerResult]:
    results: list[HandlerResult] = []
    bus.on_result(lambda _bus, result: results.append(result))
    return results


async def run(bus: EventBus, name: str, *, error: str | None = None, tail: str = "") -> None:
    """One run of ``name``: failing with ``error`` if given, else succeeding; then drain."""
    env = Environment(name, ["nightly"], bus=bus)
    with anyio.fail_after(10):
        try:
            async with env.running() as running:
                if tail:
                    running.attributes["output_tail"] = tail
                if error is not None:
                    raise RuntimeError(error)
        except RuntimeError:
            assert error is not None
        report = await bus.drain()
    assert report.ok


def delivered(results: list[HandlerResult]) -> list[Status]:
    return [r.status for r in results if r.background]


# -- PagerDuty ----------------------------------------------------------------------------


def attach_pagerduty(
    bus: EventBus, vendors: Vendors, routing_key: str = ROUTING_KEY
) -> WebhookAdapter:
    return attach(
        bus,
        format="pagerduty",
        url=vendors.url("/pagerduty/v2/enqueue"),
        routing_key=routing_key,
        **FAST,
    )


@pytest.mark.anyio
async def test_pagerduty_triggers_on_failure_and_the_next_success_resolves(
    vendors: Vendors,
) -> None:
    async with EventBus() as bus:
        results = results_of(bus)
        attach_pagerduty(bus, vendors)
        await run(bus, "etl", error="disk full", tail="writing part 7\nOSError: disk full")
        assert vendors.incidents == {"lifecycle/etl": "triggered"}
        await run(bus, "etl")
    assert vendors.incidents == {"lifecycle/etl": "resolved"}
    assert delivered(results) == [Status.OK, Status.OK]
    (_, trigger), (_, resolve) = vendors.bodies
    payload = trigger["payload"]
    assert (payload["source"], payload["component"], payload["class"]) == (
        EnvironmentInfo.current("x").host,
        "etl",
        "failed",
    )
    assert payload["summary"].startswith("etl failed on ")
    assert payload["custom_details"]["output_tail"] == "writing part 7\nOSError: disk full"
    assert resolve == {
        "routing_key": ROUTING_KEY,
        "event_action": "resolve",
        "dedup_key": "lifecycle/etl",
    }


@pytest.mark.anyio
async def test_pagerduty_dedup_key_is_per_environment(vendors: Vendors) -> None:
    async with EventBus() as bus:
        attach_pagerduty(bus, vendors)
        await run(bus, "etl", error="boom")
        await run(bus, "report")  # another job succeeding resolves nothing of etl's
    assert vendors.incidents == {"lifecycle/etl": "triggered"}


@pytest.mark.anyio
async def test_pagerduty_recovered_resolves_the_lost_run(vendors: Vendors) -> None:
    info = EnvironmentInfo("etl", frozenset(), "worker-1", 41)
    async with EventBus() as bus:
        attach_pagerduty(bus, vendors)
        with anyio.fail_after(10):
            await bus.emit(Event(MISSED, "slot-1", info))
            await bus.drain()
            assert vendors.incidents == {"lifecycle/etl": "triggered"}
            await bus.emit(Event(RECOVERED, "run-1", info))
            await bus.drain()
    assert vendors.incidents == {"lifecycle/etl": "resolved"}
    assert vendors.bodies[0][1]["payload"]["class"] == "missed"


@pytest.mark.anyio
async def test_pagerduty_routing_key_is_never_logged(
    vendors: Vendors, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with EventBus() as bus:
        results = results_of(bus)
        # The stand-in refuses a key of the wrong length: the failure path is logged too.
        handle = attach_pagerduty(bus, vendors, routing_key="short-s3cret-key")
        with structlog.testing.capture_logs() as logs:
            await run(bus, "etl", error="boom")
    vendors.refused.clear()
    (result,) = [r for r in results if r.background]
    assert result.status is Status.ERROR
    shown = "\n".join([repr(logs), caplog.text, str(result.exception), repr(handle)])
    assert "HTTP 400" in shown
    assert "short-s3cret-key" not in shown


def test_pagerduty_routing_key_is_masked_by_lifecycle_check(tmp_path: Path) -> None:
    from lifecycle import load_config

    path = tmp_path / "lifecycle.toml"
    path.write_text(
        "[[adapters]]\n"
        'name = "webhook"\n'
        f'options = {{ format = "pagerduty", routing_key = "{ROUTING_KEY}" }}\n'
    )
    (line,) = load_config(path).describe()
    assert "format='pagerduty'" in line
    assert ROUTING_KEY not in line


def test_pagerduty_needs_a_routing_key_and_defaults_to_pagerdutys_endpoint() -> None:
    with pytest.raises(ValueError, match="needs routing_key"):
        attach(EventBus(), format="pagerduty")
    adapter = attach(EventBus(), format="pagerduty", routing_key=ROUTING_KEY)
    assert adapter.target == "https://events.pagerduty.com/***"


# -- Teams --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_teams_posts_an_adaptive_card_that_disarms_links(vendors: Vendors) -> None:
    async with EventBus() as bus:
        results = results_of(bus)
        attach(bus, format="teams", url=vendors.url("/teams/workflows/hook"), **FAST)
        await run(bus, "etl", error="see [the fix](https://evil.example)", tail="a *b* c")
    assert delivered(results) == [Status.OK]
    ((_, message),) = vendors.bodies
    card = message["attachments"][0]["content"]
    title, facts, tail = card["body"]
    assert title["inlines"][0]["text"].startswith("etl failed on ")
    assert title["inlines"][0]["color"] == "Attention"
    values = {fact["title"]: fact["value"] for fact in facts["facts"]}
    assert values["Error"] == r"RuntimeError: see \[the fix\](https://evil.example)"
    assert values["Environment"] == "etl"
    assert tail["inlines"][0] == {"type": "TextRun", "text": "a *b* c", "fontType": "Monospace"}


# -- healthchecks.io and Cronitor ---------------------------------------------------------

CHECK = "5f1c1d4e-8a1b-4c36-9d35-0e9f9a7c3b21"


@pytest.mark.anyio
async def test_healthchecks_pings_start_then_the_exit_status_with_the_output_tail(
    vendors: Vendors, tmp_path: Path
) -> None:
    async with EventBus() as bus:
        results = results_of(bus)
        attach(bus, format="healthchecks", url=vendors.url(f"/hc/{CHECK}"), **FAST)
        code = "import sys; print('copied 3 files'); print('<!channel> quota', file=sys.stderr); sys.exit(3)"
        with (tmp_path / "out").open("wb") as sink:
            env = SubprocessEnvironment(
                [sys.executable, "-c", code],
                name="backup",
                bus=bus,
                stdout=sink,
                stderr=sink,
                heartbeat=None,
            )
            with anyio.fail_after(10):
                result = await env.execute()
                await bus.drain()
    assert result.exit_status == 3
    assert delivered(results) == [Status.OK, Status.OK]
    (start, end) = vendors.pings
    rid = start[2]
    assert rid is not None
    assert result.exited is not None
    assert uuid.UUID(rid).hex == result.exited.run_id
    assert start[:2] == (CHECK, "start")
    assert end[:3] == (CHECK, "3", rid)
    assert sorted(end[3].splitlines()) == ["<!channel> quota", "copied 3 files"]


def test_lifecycle_run_pings_healthchecks_with_the_exit_status(
    vendors: Vendors, tmp_path: Path
) -> None:
    # The way a cron job uses it: `lifecycle run` with the adapter in lifecycle.toml.
    config = tmp_path / "lifecycle.toml"
    config.write_text(
        "[[adapters]]\n"
        'name = "webhook"\n'
        f'options = {{ format = "healthchecks", url = "{vendors.url("/hc/" + CHECK)}" }}\n'
    )
    code = "import sys; print('3 rows rejected'); sys.exit(4)"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "lifecycle",
            "run",
            "--config",
            str(config),
            "--name",
            "load",
            "--",
            sys.executable,
            "-c",
            code,
        ],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 4, done.stderr
    assert [(kind, body) for _, kind, _, body in vendors.pings] == [
        ("start", ""),
        ("4", "3 rows rejected"),
    ]


@pytest.mark.anyio
async def test_healthchecks_success_and_failure_without_an_exit_code(vendors: Vendors) -> None:
    async with EventBus() as bus:
        attach(bus, format="healthchecks", url=vendors.url(f"/hc/{CHECK}/"), **FAST)
        await run(bus, "etl")
        await run(bus, "etl", error="boom")
    kinds = [(kind, body) for _, kind, _, body in vendors.pings]
    assert [kind for kind, _ in kinds] == ["start", "success", "start", "fail"]
    assert kinds[3][1].startswith("etl failed on ")  # no output tail: the summary


@pytest.mark.anyio
async def test_a_retried_start_ping_still_comes_before_the_end(vendors: Vendors) -> None:
    # The start ping's first attempt meets a 503 and waits 0.1 s or more to retry; the end
    # of this short run must not overtake it, or healthchecks.io sees a run that starts
    # after it ended and reports it hanging.
    vendors.unavailable = 1
    async with EventBus() as bus:
        results = results_of(bus)
        options: dict[str, Any] = {**FAST, "backoff": 0.2, "jitter": True}
        attach(bus, format="healthchecks", url=vendors.url(f"/hc/{CHECK}"), **options)
        await run(bus, "etl", error="boom")
    assert delivered(results) == [Status.OK, Status.OK]
    assert [kind for _, kind, _, _ in vendors.pings] == ["start", "fail"]


@pytest.mark.anyio
async def test_an_event_emitted_twice_is_delivered_twice_without_waiting(vendors: Vendors) -> None:
    # Each emit gets its own place in the order; the second must not wait for a turn
    # that the first already took (that wait would be the whole deadline).
    event = Event(MISSED, "slot-1", EnvironmentInfo("etl", frozenset(), "worker-1", 41))
    async with EventBus() as bus:
        results = results_of(bus)
        attach_pagerduty(bus, vendors)
        with anyio.fail_after(5):
            await bus.emit(event)
            await bus.emit(event)
            await bus.drain()
    assert delivered(results) == [Status.OK, Status.OK]


@pytest.mark.anyio
async def test_cronitor_telemetry_run_then_fail(vendors: Vendors) -> None:
    async with EventBus() as bus:
        results = results_of(bus)
        attach(
            bus, format="cronitor", url=vendors.url("/cronitor/p/k3y-s3cret/nightly-etl"), **FAST
        )
        await run(bus, "etl", error="boom", tail="x" * 5000)
    assert delivered(results) == [Status.OK, Status.OK]
    run_event, fail_event = vendors.cronitor
    assert run_event["state"] == "run"
    assert fail_event["state"] == "fail"
    assert fail_event["series"] == run_event["series"]
    assert fail_event["message"].endswith("x" * 100)
    assert len(fail_event["message"]) == 2000


# -- Alertmanager (the real one) ------------------------------------------------------------


@pytest.fixture(scope="module")
def alertmanager(
    tmp_path_factory: pytest.TempPathFactory, free_tcp_port_factory: Callable[[], int]
) -> Iterator[str]:
    """A real Alertmanager on a free loopback port, clustering off; its base URL."""
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if binary is None:
        pytest.skip("no Alertmanager here (apt-get install prometheus-alertmanager; .ci/run does)")
    home = tmp_path_factory.mktemp("alertmanager")
    config = home / "alertmanager.yml"
    config.write_text("route:\n  receiver: none\nreceivers:\n  - name: none\n")
    port = free_tcp_port_factory()
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.path={home}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_serving(f"{base}/-/ready", process)
        yield base
    finally:
        stop_process(process)


async def active_alerts(base: str, environment: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient() as client:
        response = await client.get(
            f"{base}/api/v2/alerts", params={"filter": f'lifecycle_environment="{environment}"'}
        )
    response.raise_for_status()
    alerts: list[dict[str, Any]] = response.json()
    return alerts


@pytest.mark.anyio
async def test_alertmanager_fires_on_failure_and_the_next_success_ends_it(
    alertmanager: str, anyio_backend: str
) -> None:
    environment = f"etl-{anyio_backend}"
    async with EventBus() as bus:
        results = results_of(bus)
        attach(
            bus,
            format="alertmanager",
            url=alertmanager,
            alert_labels={"team": "data"},
            severity="critical",
            **FAST,
        )
        await run(bus, environment, error="boom")
        (alert,) = await active_alerts(alertmanager, environment)
        assert alert["labels"] == {
            "alertname": "LifecycleRunFailed",
            "lifecycle_environment": environment,
            "severity": "critical",
            "team": "data",
        }
        assert alert["status"]["state"] == "active"
        assert alert["annotations"]["summary"].startswith(f"{environment} failed on ")
        # Firing until a success comes, not for Alertmanager's default 5 minutes.
        ends = datetime.fromisoformat(alert["endsAt"].replace("Z", "+00:00"))
        assert ends > datetime.now(timezone.utc) + timedelta(days=6)
        await run(bus, environment)
        assert await active_alerts(alertmanager, environment) == []
    assert delivered(results) == [Status.OK, Status.OK]


@pytest.mark.anyio
async def test_alertmanager_missed_fires_and_a_run_ends_it(
    alertmanager: str, anyio_backend: str
) -> None:
    environment = f"report-{anyio_backend}"
    info = EnvironmentInfo(environment, frozenset(), "worker-1", 41)
    async with EventBus() as bus:
        attach(bus, format="alertmanager", url=f"{alertmanager}/api/v2/alerts", **FAST)
        with anyio.fail_after(10):
            await bus.emit(Event(MISSED, "slot-1", info))
            await bus.drain()
        names = [a["labels"]["alertname"] for a in await active_alerts(alertmanager, environment)]
        assert names == ["LifecycleRunMissed"]
        await run(bus, environment)
    assert await active_alerts(alertmanager, environment) == []


def test_alertmanager_label_names_are_checked() -> None:
    with pytest.raises(ValueError, match="'team-name' is not a label name"):
        attach(
            EventBus(), format="alertmanager", url="http://am:9093", alert_labels={"team-name": "x"}
        )


def test_every_format_renders_every_outcome() -> None:
    from lifecycle_webhook import FORMATS

    info = EnvironmentInfo("etl", frozenset({"a"}), "h", 1)
    for name in FORMATS:
        options: dict[str, Any] = {"routing_key": ROUTING_KEY} if name == "pagerduty" else {}
        adapter = attach(EventBus(), url="https://hooks.example/x", format=name, **options)
        for outcome in Outcome:
            event = Event("environment.exited", "r1", info, outcome=outcome, duration=1.0)
            body = adapter.render(event)
            assert body is not None, (name, outcome)
