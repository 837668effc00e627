"""The test-support package itself: the backends a test runs on, the NATS server harness."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

import nats
import pytest
import structlog
from lifecycle_testing import NatsServer, poll, poll_blocking

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.anyio
async def test_on_both(anyio_backend: str) -> None:
    assert anyio_backend in ("asyncio", "trio")


@pytest.mark.anyio
@pytest.mark.asyncio_only
async def test_on_asyncio(anyio_backend: str) -> None:
    assert anyio_backend == "asyncio"


def test_anyio_tests_run_on_asyncio_and_trio_unless_marked_asyncio_only(
    request: pytest.FixtureRequest,
) -> None:
    module = request.node.parent
    assert isinstance(module, pytest.Module)
    names = {item.name for item in module.collect() if item.name.startswith("test_on_")}
    assert names == {"test_on_both[asyncio]", "test_on_both[trio]", "test_on_asyncio[asyncio]"}


async def _server_answers(url: str) -> bool:
    client = await nats.connect(url, connect_timeout=2, allow_reconnect=False)
    try:
        js = client.jetstream()
        await js.add_stream(name="KEPT", subjects=["kept"])
        await js.publish("kept", b"x")
        return (await js.stream_info("KEPT")).state.messages >= 1
    finally:
        await client.close()


@pytest.mark.anyio
@pytest.mark.asyncio_only  # nats-py runs on asyncio only
async def test_a_restarted_server_keeps_its_port_and_its_store(own_nats: NatsServer) -> None:
    own_nats.start()
    url = own_nats.url
    assert await _server_answers(url)
    own_nats.restart()
    assert own_nats.url == url
    client = await nats.connect(url)
    try:
        info = await client.jetstream().stream_info("KEPT")
    finally:
        await client.close()
    assert info.state.messages == 1


def test_two_servers_pick_two_ports(nats_server: NatsServer, tmp_path: Path) -> None:
    other = NatsServer(tmp_path / "other")
    other.start()
    try:
        assert other.port != nats_server.port
    finally:
        other.stop(signal.SIGTERM)


def test_a_missing_binary_fails_saying_how_to_get_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NATS_SERVER", str(tmp_path / "absent"))
    with pytest.raises(pytest.fail.Exception, match=r"NATS_SERVER=.*absent: no executable"):
        NatsServer(tmp_path).start()
    monkeypatch.delenv("NATS_SERVER")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("os.access", lambda path, mode: False)
    with pytest.raises(pytest.fail.Exception, match="apt-get install nats-server"):
        NatsServer(tmp_path).start()


def test_a_server_that_cannot_start_says_where_its_log_is(tmp_path: Path) -> None:
    server = NatsServer(tmp_path, "--no-such-option")
    with pytest.raises(RuntimeError, match=r"nats-server exited with \d+: see .*nats.log"):
        server.start()


def test_the_url_of_a_server_never_started_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="start"):
        _ = NatsServer(tmp_path).url


def test_a_wait_that_never_ends_fails_naming_what_it_waited_for() -> None:
    with pytest.raises(AssertionError, match=r"gave up waiting for the moon after 0\.05 s: .log."):
        poll_blocking(lambda: False, "the moon", limit=0.05, context="log")
    assert poll_blocking(lambda: [1], "a list") == [1]


@pytest.mark.anyio
async def test_an_async_wait_returns_what_it_waited_for_or_fails_naming_it() -> None:
    assert await poll(lambda: "here", "a value") == "here"
    with pytest.raises(AssertionError, match=r"gave up waiting for the moon after 0\.05 s"):
        await poll(lambda: 0, "the moon", limit=0.05)


def test_structlogs_default_renderer_prints_a_logged_traceback_plainly(
    capsys: pytest.CaptureFixture[str],
) -> None:
    structlog.reset_defaults()  # as tests that configured structlog do afterwards
    try:
        raise ValueError("logged")
    except ValueError:
        structlog.get_logger().exception("failed")
    out = capsys.readouterr().out
    assert "Traceback (most recent call last):" in out
    assert "ValueError: logged" in out
    assert "\u256d" not in out  # the corner of rich's traceback panel
