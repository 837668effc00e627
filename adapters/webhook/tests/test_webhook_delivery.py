"""lifecycle-webhook against a real HTTP server on 127.0.0.1 that fails, throttles and hangs."""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import pytest
import structlog
from lifecycle_testing import QuietHandler, StandIn, serve_http
from lifecycle_webhook import NOT_SUCCEEDED, WebhookDeliveryError, attach, template_fields

from lifecycle import (
    EXITED,
    STARTING,
    Environment,
    Event,
    EventBus,
    HandlerResult,
    Status,
    load_config,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@dataclass(frozen=True)
class Answer:
    """What the server does with one request: answer ``status``, or hang until teardown."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False


HANG = Answer(hang=True)


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class WebhookServer:
    """The server's script (answers in order, then 200) and the requests it received."""

    def __init__(self, port: int) -> None:
        self.script: list[Answer] = []
        self.requests: list[Received] = []
        self.released = threading.Event()
        self.lock = threading.Lock()
        self.port = port
        self.url = f"http://127.0.0.1:{self.port}/hook"

    def answer(self, request: Received) -> Answer:
        with self.lock:
            self.requests.append(request)
            return self.script.pop(0) if self.script else Answer()


class _Handler(QuietHandler):
    server: StandIn[WebhookServer]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        received = Received(
            "POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body
        )
        answer = self.server.owner.answer(received)
        if answer.hang:
            # Never answer: the client's per-attempt timeout has to give up.
            self.server.owner.released.wait(10)
            self.close_connection = True
            return
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def webhook_server() -> Iterator[WebhookServer]:
    with serve_http(_Handler, WebhookServer, release=lambda owner: owner.released.set()) as owner:
        yield owner


# -- helpers -------------------------------------------------------------------------


async def run(bus: EventBus, *, fail: bool = True, name: str = "nightly") -> None:
    """One run of an environment on ``bus``: failing with ValueError, or succeeding."""
    env = Environment(name, ["batch"], bus=bus)
    if fail:
        with pytest.raises(ValueError, match="boom"):
            async with env.running(run_id="run-1"):
                raise ValueError("boom")
    else:
        async with env.running(run_id="run-1"):
            pass


async def deliver(bus: EventBus, *, fail: bool = True) -> list[HandlerResult]:
    """Run once and wait for the background delivery; return the webhook's results."""
    results: list[HandlerResult] = []
    bus.on_result(lambda _bus, result: results.append(result))
    with anyio.fail_after(5):
        await run(bus, fail=fail)
        report = await bus.drain()
    assert report.ok
    return [r for r in results if r.background]


def fast(**options: Any) -> dict[str, Any]:
    """Options with tiny waits, so retries take milliseconds."""
    return {"backoff": 0.001, "backoff_max": 0.01, "timeout": 2.0, "deadline": 5.0, **options}


# -- what is sent ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_exited_event_is_posted_as_its_json_form(webhook_server: WebhookServer) -> None:
    async with EventBus() as bus:
        attach(bus, url=webhook_server.url)
        results = await deliver(bus)
    assert [r.status for r in results] == [Status.OK]
    (request,) = webhook_server.requests
    assert request.path == "/hook"
    assert request.headers["content-type"] == "application/json"
    event = Event.from_json(request.body)
    assert (event.name, event.environment.name, event.outcome) == (EXITED, "nightly", "failed")
    assert event.error is not None
    assert event.error.message == "boom"


@pytest.mark.anyio
async def test_slack_format_posts_text_from_the_template(webhook_server: WebhookServer) -> None:
    async with EventBus() as bus:
        attach(
            bus,
            url=webhook_server.url,
            format="slack",
            template="{environment} [{labels}] {outcome} ({error_type}) exit={exit_code}",
        )
        await deliver(bus)
    (request,) = webhook_server.requests
    assert json.loads(request.body) == {"text": "nightly [batch] failed (ValueError) exit="}


@pytest.mark.anyio
async def test_default_slack_text_summarises_the_run(webhook_server: WebhookServer) -> None:
    async with EventBus() as bus:
        attach(bus, url=webhook_server.url, format="slack")
        await deliver(bus)
    text = json.loads(webhook_server.requests[0].body)["text"]
    assert text.startswith("nightly failed on ")
    assert "ValueError: boom (run run-1)" in text


@pytest.mark.anyio
async def test_slack_text_escapes_what_the_run_says(webhook_server: WebhookServer) -> None:
    # Slack reads <!channel> as a mention of everyone and <url|text> as a disguised link;
    # the template's own markup stays as written.
    async with EventBus() as bus:
        attach(bus, url=webhook_server.url, format="slack", template="*{environment}*: {error}")
        env = Environment("etl <!channel>", ["a&b"], bus=bus)
        with anyio.fail_after(5):
            with pytest.raises(RuntimeError):
                async with env.running(run_id="run-1"):
                    raise RuntimeError("see <https://evil.example|the docs> & <!here>")
            await bus.drain()
    text = json.loads(webhook_server.requests[0].body)["text"]
    assert text == (
        "*etl &lt;!channel&gt;*: RuntimeError: "
        "see &lt;https://evil.example|the docs&gt; &amp; &lt;!here&gt;"
    )


@pytest.mark.anyio
async def test_slack_escapes_attributes_and_the_summary(webhook_server: WebhookServer) -> None:
    async with EventBus() as bus:
        attach(
            bus,
            url=webhook_server.url,
            format="slack",
            template="{summary} | {attributes[note]} | {output_tail}",
        )
        env = Environment("etl", bus=bus)
        with anyio.fail_after(5):
            async with env.running(run_id="<@U123>") as running:
                running.attributes["note"] = "<!subteam^S1>"
                running.attributes["output_tail"] = "done <!everyone>\n"
            await bus.drain()
    text = json.loads(webhook_server.requests[0].body)["text"]
    assert "<" not in text
    assert text.endswith("(run &lt;@U123&gt;) | &lt;!subteam^S1&gt; | done &lt;!everyone&gt;\n")


@pytest.mark.anyio
async def test_outcome_filter_skips_succeeded_runs(webhook_server: WebhookServer) -> None:
    async with EventBus() as bus:
        attach(bus, url=webhook_server.url, outcomes=NOT_SUCCEEDED)
        await deliver(bus, fail=False)
        assert webhook_server.requests == []
        await deliver(bus, fail=True)
    assert len(webhook_server.requests) == 1


@pytest.mark.anyio
async def test_chosen_signals_are_posted(webhook_server: WebhookServer) -> None:
    async with EventBus() as bus:
        attach(bus, url=webhook_server.url, signals=[STARTING, EXITED], outcomes=["failed"])
        await deliver(bus)
    names = sorted(Event.from_json(r.body).name for r in webhook_server.requests)
    assert names == [EXITED, STARTING]


@pytest.mark.anyio
async def test_delivery_does_not_delay_the_run(webhook_server: WebhookServer) -> None:
    webhook_server.script = [HANG]
    async with EventBus() as bus:
        attach(bus, url=webhook_server.url, timeout=0.1, attempts=1)
        env = Environment("nightly", bus=bus)
        with anyio.fail_after(5):
            async with env.running() as running:
                pass
        # The exited emit returned while the server still hangs: the webhook is background.
        assert running.exit_report is not None
        assert running.exit_report.background == (
            f"lifecycle_webhook:{webhook_server.url[:-5]}/***",
        )
        assert bus.background_in_flight == 1
        with anyio.fail_after(5):
            await bus.drain()


# -- retrying ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_5xx_answers_are_retried_until_delivered(webhook_server: WebhookServer) -> None:
    webhook_server.script = [Answer(503), Answer(500)]
    async with EventBus() as bus:
        attach(bus, url=webhook_server.url, **fast())
        with structlog.testing.capture_logs() as logs:
            results = await deliver(bus)
    assert [r.status for r in results] == [Status.OK]
    assert len(webhook_server.requests) == 3
    attempts = [e for e in logs if e["event"] == "webhook attempt failed"]
    assert [(e["attempt"], e["status"]) for e in attempts] == [(1, 503), (2, 500)]
    (delivered,) = [e for e in logs if e["event"] == "webhook delivered"]
    assert delivered["attempt"] == 3


@pytest.mark.anyio
async def test_429_waits_as_long_as_retry_after_says(webhook_server: WebhookServer) -> None:
    # The backoff alone would wait 20 s or more: finishing in time means Retry-After won.
    webhook_server.script = [Answer(429, {"Retry-After": "0"})]
    async with EventBus() as bus:
        attach(bus, url=webhook_server.url, backoff=40.0, jitter=False)
        with structlog.testing.capture_logs() as logs:
            results = await deliver(bus)
    assert [r.status for r in results] == [Status.OK]
    (retry,) = [e for e in logs if e["event"] == "webhook attempt failed"]
    assert (retry["status"], retry["retry_in"]) == (429, 0)


@pytest.mark.anyio
async def test_retry_after_past_the_deadline_gives_up_at_once(
    webhook_server: WebhookServer,
) -> None:
    webhook_server.script = [Answer(429, {"Retry-After": "3600"})]
    async with EventBus() as bus:
        attach(bus, url=webhook_server.url, **fast(deadline=30.0))
        (result,) = await deliver(bus)
    assert result.status is Status.ERROR
    assert isinstance(result.exception, WebhookDeliveryError)
    assert "failed after 1 attempt: HTTP 429" in str(result.exception)
    assert "deadline" in str(result.exception)
    assert len(webhook_server.requests) == 1


@pytest.mark.parametrize("status", [400, 401, 404, 410])
@pytest.mark.anyio
async def test_other_4xx_answers_are_not_retried(
    webhook_server: WebhookServer, status: int
) -> None:
    webhook_server.script = [Answer(status)]
    async with EventBus() as bus:
        attach(bus, url=webhook_server.url, **fast())
        (result,) = await deliver(bus)
    assert len(webhook_server.requests) == 1
    assert isinstance(result.exception, WebhookDeliveryError)
    assert result.exception.status == status
    assert result.exception.attempts == 1


@pytest.mark.anyio
async def test_a_hanging_server_is_given_up_per_attempt(webhook_server: WebhookServer) -> None:
    webhook_server.script = [HANG, HANG]
    async with EventBus() as bus:
        attach(bus, url=webhook_server.url, **fast(timeout=0.25, attempts=2))
        (result,) = await deliver(bus)
    assert len(webhook_server.requests) == 2
    assert str(result.exception).endswith("failed after 2 attempts: no response within 0.25 s")


@pytest.mark.anyio
async def test_the_total_deadline_bounds_all_attempts(webhook_server: WebhookServer) -> None:
    webhook_server.script = [HANG]
    async with EventBus() as bus:
        attach(bus, url=webhook_server.url, **fast(timeout=5.0, deadline=0.3, attempts=10))
        (result,) = await deliver(bus)
    assert len(webhook_server.requests) == 1
    assert isinstance(result.exception, WebhookDeliveryError)
    assert "no response before the deadline (0.3 s)" in str(result.exception)


@pytest.mark.anyio
async def test_connection_errors_are_retried_then_reported(closed_port: int) -> None:
    async with EventBus() as bus:
        attach(bus, url=f"http://127.0.0.1:{closed_port}/hook", **fast(attempts=3))
        with structlog.testing.capture_logs() as logs:
            (result,) = await deliver(bus)
    assert isinstance(result.exception, WebhookDeliveryError)
    assert "failed after 3 attempts: ConnectError" in str(result.exception)
    assert [e["attempt"] for e in logs if e["event"] == "webhook attempt failed"] == [1, 2]


@pytest.mark.anyio
async def test_final_failure_is_the_handler_result_and_a_log_line(
    webhook_server: WebhookServer,
) -> None:
    webhook_server.script = [Answer(500)] * 3
    async with EventBus() as bus:
        attach(bus, url=webhook_server.url, **fast(attempts=3))
        with structlog.testing.capture_logs() as logs:
            (result,) = await deliver(bus)
    assert (result.status, result.background, result.run_id) == (Status.ERROR, True, "run-1")
    assert str(result.exception) == (
        f"webhook POST to http://127.0.0.1:{webhook_server.port}/*** failed after 3 attempts: "
        "HTTP 500 Internal Server Error"
    )
    (failed,) = [e for e in logs if e["event"] == "webhook delivery failed"]
    assert (failed["log_level"], failed["attempts"], failed["status"]) == ("error", 3, 500)
    assert any(e["event"] == "handler failed" for e in logs)  # the bus's own report


# -- secrets -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_no_secret_reaches_logs_or_errors(
    webhook_server: WebhookServer, caplog: pytest.LogCaptureFixture
) -> None:
    secrets = ["user-s3cret", "pass-s3cret", "path-s3cret", "query-s3cret", "header-s3cret"]
    url = (
        f"http://user-s3cret:pass-s3cret@127.0.0.1:{webhook_server.port}"
        "/hooks/path-s3cret?token=query-s3cret"
    )
    webhook_server.script = [Answer(503), Answer(500)]
    caplog.set_level(logging.DEBUG)
    async with EventBus() as bus:
        handle = attach(
            bus, url=url, headers={"X-Api-Key": "Token header-s3cret"}, **fast(attempts=2)
        )
        with structlog.testing.capture_logs() as logs:
            (result,) = await deliver(bus)
    # The secrets did go to the server: they were used, just never shown.
    assert "query-s3cret" in webhook_server.requests[0].path
    assert webhook_server.requests[0].headers["x-api-key"] == "Token header-s3cret"
    shown = "\n".join(
        [repr(logs), caplog.text, str(result.exception), result.handler, repr(handle)]
    )
    # httpx did log its requests, with the URL shown as the target.
    assert f"HTTP Request: POST http://127.0.0.1:{webhook_server.port}/*** " in caplog.text
    for secret in secrets:
        assert secret not in shown
    assert f"http://127.0.0.1:{webhook_server.port}/***" in str(result.exception)


@pytest.mark.anyio
async def test_detach_stops_posting(webhook_server: WebhookServer) -> None:
    async with EventBus() as bus:
        with attach(bus, url=webhook_server.url):
            pass
        await deliver(bus)
    assert webhook_server.requests == []


# -- options -------------------------------------------------------------------------


def test_template_fields_are_checked_when_attaching() -> None:
    bus = EventBus()
    with pytest.raises(ValueError, match=r"\{nope\}.*its fields are signal, environment"):
        attach(bus, url="https://hooks.example/x", format="slack", template="{nope}")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"url": "ftp://example/x"}, "http:// or https://"),
        ({"url": "https://example/x", "outcomes": ["exploded"]}, "outcomes are succeeded"),
        ({"url": "https://example/x", "outcomes": "failed"}, "not the string"),
        ({"url": "https://example/x", "attempts": 0}, "attempts must be"),
        ({"url": "https://example/x", "deadline": -1}, "deadline must be greater than 0"),
        ({"url": "https://example/x", "format": "xml"}, "format must be"),
    ],
)
def test_bad_options_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        attach(EventBus(), **options)


def test_template_fields_of_an_event_before_exit() -> None:
    from lifecycle import EnvironmentInfo

    event = Event(STARTING, "r1", EnvironmentInfo("etl", frozenset({"b", "a"}), "h", 1))
    fields = template_fields(event)
    assert (fields["labels"], fields["outcome"], fields["duration"]) == ("a, b", "", 0.0)
    assert fields["summary"] == "etl: environment.starting on h (run r1)"


# -- configuration -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_attached_from_a_config_file_with_the_url_in_the_environment(
    webhook_server: WebhookServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIFECYCLE_TEST_WEBHOOK_URL", f"{webhook_server.url}?token=query-s3cret")
    path = anyio.Path(tmp_path / "lifecycle.toml")
    await path.write_text(
        "[[adapters]]\n"
        'name = "webhook"\n'
        'options = { url = "${LIFECYCLE_TEST_WEBHOOK_URL}", format = "slack", '
        'outcomes = ["failed"], backoff = 0.001 }\n'
    )
    webhook_server.script = [Answer(502)]
    config = load_config(path)
    assert config.describe() == [
        (
            "adapter webhook (lifecycle-webhook 0.1.0): url='${LIFECYCLE_TEST_WEBHOOK_URL}', "
            "format='slack', outcomes=['failed'], backoff=0.001"
        )
    ]
    async with EventBus() as bus:
        with config.attach(bus):
            results = await deliver(bus)
    assert [r.status for r in results] == [Status.OK]
    assert len(webhook_server.requests) == 2
    assert json.loads(webhook_server.requests[1].body)["text"].startswith("nightly failed")


def test_all_lists_the_names_the_module_defines() -> None:
    import lifecycle_webhook

    defined = {
        name
        for name, obj in vars(lifecycle_webhook).items()
        if not name.startswith("_") and getattr(obj, "__module__", None) == "lifecycle_webhook"
    }
    assert defined <= set(lifecycle_webhook.__all__)
    assert all(hasattr(lifecycle_webhook, name) for name in lifecycle_webhook.__all__)


@pytest.mark.anyio
async def test_a_template_failing_on_an_event_sends_the_summary(
    webhook_server: WebhookServer,
) -> None:
    async with EventBus() as bus:
        attach(bus, url=webhook_server.url, format="slack", template="rows: {attributes[rows]}")
        with structlog.testing.capture_logs() as logs:
            results = await deliver(bus)
    assert [r.status for r in results] == [Status.OK]
    assert json.loads(webhook_server.requests[0].body)["text"].startswith("nightly failed on ")
    (warning,) = [e for e in logs if e["event"].startswith("webhook template failed")]
    assert warning["error"] == "KeyError: 'rows'"


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("https://hooks.example/services/T000/SECRETPATH", "https://hooks.example/***"),
        ("https://hooks.example:8443/?token=SECRET", "https://hooks.example:8443/***"),
        ("http://[::1]:9000/hook", "http://[::1]:9000/***"),
        ("http://127.0.0.1:9000", "http://127.0.0.1:9000"),
    ],
)
def test_the_target_shows_scheme_host_and_port_only(url: str, target: str) -> None:
    adapter = attach(EventBus(), url=url)
    assert adapter.target == target
    assert repr(adapter) == f"<WebhookAdapter {target} format='json'>"
