"""lifecycle-apprise against a real HTTP server on 127.0.0.1 speaking two Apprise services.

Apprise's ``json://`` (its documented payload: version, title, message, attachments, type)
and Mattermost's incoming webhook (``mmost://``: ``POST /hooks/<token>`` with ``text``),
answering, failing or hanging as each test scripts it.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import pytest
import structlog
from lifecycle_apprise import AppriseDeliveryError, attach
from lifecycle_testing import QuietHandler, StandIn, serve_http

from lifecycle import Environment, EventBus, HandlerResult, Status, load_config

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


APPRISE_TYPES = {"info", "success", "warning", "failure"}


def apprise_json_errors(body: Any) -> list[str]:
    """Apprise's json:// payload, as its wiki documents it."""
    if not isinstance(body, dict):
        return ["not an object"]
    errors = [
        f"{name} is not a string"
        for name in ("version", "title", "message")
        if not isinstance(body.get(name), str)
    ]
    if body.get("type") not in APPRISE_TYPES:
        errors.append(f"type {body.get('type')!r} is not one of {sorted(APPRISE_TYPES)}")
    if not isinstance(body.get("attachments", []), list):
        errors.append("attachments is not a list")
    return errors


@dataclass
class Services:
    port: int = 0
    script: list[int] = field(default_factory=list)  # statuses to answer first, then 200
    hang: bool = False
    released: threading.Event = field(default_factory=threading.Event)
    received: list[tuple[str, Any]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(QuietHandler):
    server: StandIn[Services]

    def do_POST(self) -> None:
        owner = self.server.owner
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        with owner.lock:
            owner.received.append((self.path, body))
            if self.path.startswith("/json/"):
                errors = apprise_json_errors(body)
            elif self.path.startswith("/hooks/"):
                errors = [] if isinstance(body.get("text"), str) else ["text is missing"]
            else:
                errors = [f"unknown path {self.path}"]
            owner.refused += errors
            status = 400 if errors else owner.script.pop(0) if owner.script else 200
            hang = owner.hang
        if hang:
            owner.released.wait(10)
            self.close_connection = True
            return
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def services() -> Iterator[Services]:
    with serve_http(_Handler, Services, release=lambda owner: owner.released.set()) as owner:
        yield owner
    assert owner.refused == []


FAST: dict[str, Any] = {"backoff": 0.001, "backoff_max": 0.01, "timeout": 5.0, "deadline": 10.0}


async def run(bus: EventBus, *, fail: bool = True) -> list[HandlerResult]:
    results: list[HandlerResult] = []
    bus.on_result(lambda _bus, result: results.append(result))
    env = Environment("etl", ["nightly"], bus=bus)
    with anyio.fail_after(10):
        try:
            async with env.running(run_id="run-1"):
                if fail:
                    raise RuntimeError("disk full")
        except RuntimeError:
            assert fail
        await bus.drain()
    return [r for r in results if r.background]


@pytest.mark.anyio
async def test_a_failed_run_notifies_every_service(services: Services) -> None:
    async with EventBus() as bus:
        attach(
            bus,
            urls=[
                f"json://127.0.0.1:{services.port}/json/hook",
                f"mmost://127.0.0.1:{services.port}/s3cret-token-1234",
            ],
            **FAST,
        )
        (result,) = await run(bus)
    assert result.status is Status.OK
    by_path = dict(services.received)
    sent = by_path["/json/hook"]
    assert (sent["type"], sent["title"]) == ("failure", "etl failed")
    assert sent["message"].startswith("etl failed on ")
    assert "RuntimeError: disk full" in by_path["/hooks/s3cret-token-1234"]["text"]


@pytest.mark.anyio
async def test_a_success_is_of_type_success(services: Services) -> None:
    async with EventBus() as bus:
        attach(bus, urls=f"json://127.0.0.1:{services.port}/json/hook", **FAST)
        await run(bus, fail=False)
    assert services.received[0][1]["type"] == "success"


@pytest.mark.anyio
async def test_a_failing_service_is_retried_then_reported_without_its_token(
    services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    services.script = [500, 500, 500]
    caplog.set_level(logging.DEBUG)  # Apprise logs the full URL at DEBUG
    async with EventBus() as bus:
        handle = attach(
            bus, urls=[f"mmost://127.0.0.1:{services.port}/s3cret-token-1234"], attempts=3, **FAST
        )
        with structlog.testing.capture_logs() as logs:
            (result,) = await run(bus)
    assert len(services.received) == 3
    assert isinstance(result.exception, AppriseDeliveryError)
    assert result.exception.attempts == 3
    assert str(result.exception).startswith(
        f"Apprise notification failed after 3 attempts: mmost://127.0.0.1:{services.port}/***: "
    )
    assert "500" in str(result.exception)
    shown = "\n".join(
        [caplog.text, repr(logs), str(result.exception), repr(handle), result.handler]
    )
    assert "POST URL: http://127.0.0.1:" in caplog.text  # Apprise's own DEBUG line, scrubbed
    assert "s3cret-token-1234" not in shown
    assert [e["attempt"] for e in logs if e["event"] == "apprise attempt failed"] == [1, 2]


@pytest.mark.anyio
async def test_a_hanging_service_is_given_up_at_the_timeout(services: Services) -> None:
    services.hang = True
    async with EventBus() as bus:
        attach(
            bus,
            urls=f"json://127.0.0.1:{services.port}/json/hook",
            **{**FAST, "timeout": 0.3, "attempts": 1},
        )
        (result,) = await run(bus)
    assert isinstance(result.exception, AppriseDeliveryError)
    assert len(services.received) == 1


def test_lifecycle_check_refuses_a_url_apprise_does_not_know_without_quoting_it() -> None:
    check = attach.check  # type: ignore[attr-defined]
    with pytest.raises(
        ValueError, match=r"urls\[1\]: Apprise does not understand this nosuch://"
    ) as info:
        check(EventBus(), urls=["json://localhost/x", "nosuch://s3cret-token"])
    assert "s3cret-token" not in str(info.value)


@pytest.mark.anyio
async def test_a_url_apprise_does_not_know_is_reported_with_each_event() -> None:
    async with EventBus() as bus:
        handle = attach(bus, urls=["nosuch://s3cret-token"], **FAST)
        (result,) = await run(bus)
    assert isinstance(result.exception, AppriseDeliveryError)
    assert "urls[0]: Apprise does not understand this nosuch:// URL" in str(result.exception)
    assert "s3cret-token" not in str(result.exception) + repr(handle)


def test_importing_the_adapter_does_not_load_apprise() -> None:
    # Apprise takes over a second to load its plugins: `lifecycle run` loads the adapter
    # and attaches it before the job starts, and must not wait for that (a thread does).
    code = "import sys, lifecycle_apprise; print('apprise' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert done.stdout.strip() == "False"


def test_until_apprise_has_read_a_url_only_its_scheme_is_shown() -> None:
    adapter = attach(EventBus(), urls=["slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ"])
    assert adapter.targets == ("slack://***",)
    adapter.detach()


@pytest.mark.anyio
async def test_attached_from_a_config_file(services: Services, tmp_path: Path) -> None:
    path = tmp_path / "lifecycle.toml"
    path.write_text(
        "[[adapters]]\n"
        'name = "apprise"\n'
        f'options = {{ urls = ["json://127.0.0.1:{services.port}/json/hook"], '
        'title = "{environment}: {outcome}", outcomes = ["failed"] }\n'
    )
    config = load_config(path)
    async with EventBus() as bus:
        with config.attach(bus):
            (result,) = await run(bus)
    assert result.status is Status.OK
    assert services.received[0][1]["title"] == "etl: failed"
