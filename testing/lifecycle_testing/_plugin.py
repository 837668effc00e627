"""The pytest plug-in: fixtures and a marker for every test of the workspace."""

from __future__ import annotations

import signal
import socket
from typing import TYPE_CHECKING

import pytest
import structlog

from ._nats import NatsServer

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

BACKENDS = ("asyncio", "trio")
ASYNCIO_ONLY = "asyncio_only"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{ASYNCIO_ONLY}: run the anyio tests on asyncio alone (what they drive needs it: "
        "nats-py, dask); without it they run on asyncio and trio",
    )
    plain_tracebacks()


def plain_tracebacks() -> None:
    """Have structlog's default console renderer print a logged exception's traceback plainly.

    Its default is rich's traceback when rich is installed (Prefect brings it): a panel with
    the source lines of every frame, a few tenths of a second of CPU for each exception that
    code under test logs while structlog is unconfigured (8 s of the core tests' 33 s of
    CPU), for output no test reads. The renderer is the one instance in structlog's built-in defaults, which
    ``structlog.reset_defaults()`` restores, so the setting outlasts the tests that reset them.
    """
    for processor in structlog.get_config()["processors"]:
        if isinstance(processor, structlog.dev.ConsoleRenderer):
            processor.exception_formatter = structlog.dev.plain_traceback


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test that uses ``anyio_backend`` runs on both backends, or asyncio alone.

    Added as a ``parametrize`` mark, before pytest reads the marks: pytest then uses it
    instead of any ``anyio_backend`` fixture (anyio's own among them), whichever plug-in
    was loaded last. A test that parametrizes ``anyio_backend`` itself keeps its choice.
    Module-scoped, as anyio's own fixture is: a module-scoped async fixture (a cluster,
    a connection) then shares its tests' event loop.
    """
    if "anyio_backend" not in metafunc.fixturenames:
        return
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0] if mark.args else mark.kwargs.get("argnames", ())
        if isinstance(names, str):
            names = [name.strip() for name in names.split(",")]
        if "anyio_backend" in names:
            return
    only = metafunc.definition.get_closest_marker(ASYNCIO_ONLY) is not None
    backends = BACKENDS[:1] if only else BACKENDS
    metafunc.definition.add_marker(
        pytest.mark.parametrize("anyio_backend", backends, scope="module")
    )


@pytest.fixture(scope="module")
def shared_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One JetStream server for a whole module, for tests that leave it running.

    Each test keeps to streams (and subjects) of its own.
    """
    server = NatsServer(tmp_path_factory.mktemp("nats"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A JetStream server of this test's own, not started yet: for tests of broker faults."""
    server = NatsServer(tmp_path / "nats")
    yield server
    server.stop()


@pytest.fixture
def nats_server(own_nats: NatsServer) -> NatsServer:
    """A JetStream server of this test's own, started; it may stop and start it."""
    own_nats.start()
    return own_nats


@pytest.fixture(scope="module")
def no_jetstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A server that runs without JetStream (it keeps no state: one per module)."""
    server = NatsServer(tmp_path_factory.mktemp("nats-plain"), jetstream=False)
    server.start()
    yield server
    server.stop(signal.SIGTERM)


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port where nothing listens: held bound (never listening) for the test,
    so that connections to it are refused and no other server can take it meanwhile."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def nowhere(closed_port: int) -> str:
    """The NATS URL of :func:`closed_port`: every connection to it is refused."""
    return f"nats://127.0.0.1:{closed_port}"
