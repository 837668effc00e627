"""The batch alert against the real tools: Pushgateway, node-exporter's textfile collector,
a scrape endpoint, and Prometheus evaluating ``time() -
lifecycle_run_last_success_timestamp_seconds > 3600``.

Each test replays runs that ended in the past (as ``lifecycle listen`` replays a stream, or
a flushed spool delivers late): the last success two hours ago, a failure one hour ago.
The alert must fire, which it does only if the success was kept across the failure and
its time is the event's, not the handler's. Then a success now must clear it. In batch
modes each run has a bus and an adapter of its own, as each cron run is a new process.
"""

from __future__ import annotations

import re
import sys
import urllib.request
import uuid
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import pytest
from lifecycle_prometheus import attach

from lifecycle import EXITED, STARTING, Environment, Event, EventBus, Outcome

from .prometheus_servers import (  # type: ignore[import-not-found,unused-ignore]
    parse,
    promtool_check_metrics,
    promtool_check_rules,
    running_stack,
    value,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from .prometheus_servers import Stack  # type: ignore[import-not-found,unused-ignore]

    Attach = Callable[[EventBus], AbstractContextManager[object]]

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def stack(free_tcp_port_factory: Callable[[], int]) -> Iterator[Stack]:
    """One set of servers for the module: each test uses environment names of its own."""
    with running_stack(free_tcp_port_factory) as running:
        yield running


async def replay(
    bus: EventBus, name: str, outcome: Outcome, *, ended_ago: float, exit_code: int | None = None
) -> datetime:
    """Emit one run of ``name`` that ended ``ended_ago`` seconds ago; return its end."""
    env, run_id = Environment(name), uuid.uuid4().hex
    end = datetime.now(timezone.utc) - timedelta(seconds=ended_ago)
    await bus.emit(env.event(STARTING, run_id, timestamp=end - timedelta(seconds=5)))
    exited = env.event(
        EXITED, run_id, timestamp=end, outcome=outcome, duration=5.0, exit_code=exit_code
    )
    await bus.emit(exited)
    return end


async def until(condition: Callable[[], bool]) -> None:
    """Poll Prometheus (scraping and evaluating every 250 ms) until ``condition`` holds."""
    with anyio.fail_after(20):
        while True:
            if await anyio.to_thread.run_sync(condition):
                return
            await anyio.sleep(0.1)  # Prometheus has no event to wait on


async def batch_run(attach_to: Attach, name: str, outcome: Outcome, **options: Any) -> datetime:
    """One run in a process of its own: a new bus, a new adapter, no memory of earlier runs."""
    async with EventBus() as bus:
        with attach_to(bus):
            return await replay(bus, name, outcome, **options)


async def fires_then_clears(stack: Stack, attach_to: Attach, name: str) -> None:
    success = await batch_run(attach_to, name, Outcome.SUCCEEDED, ended_ago=7200)
    await batch_run(attach_to, name, Outcome.FAILED, ended_ago=3600, exit_code=3)
    selector = f'{{lifecycle_environment="{name}"}}'
    failed = f'lifecycle_run_last_outcome{{lifecycle_environment="{name}",outcome="failed"}} == 1'
    # The failed run scraped too, not only the success: the alert fires on a success 2 h
    # old alone, and a scrape can fall between the two runs' writes (the textfile's).
    await until(lambda: stack.firing(name) and bool(stack.query(failed)))
    (kept,) = stack.query(f"lifecycle_run_last_success_timestamp_seconds{selector}")
    assert float(kept["value"][1]) == pytest.approx(success.timestamp())
    (code,) = stack.query(f"lifecycle_run_last_exit_code{selector}")
    assert code["value"][1] == "3"
    (last,) = stack.query(f"lifecycle_run_last_outcome{selector} == 1")
    assert last["metric"]["outcome"] == "failed"
    await batch_run(attach_to, name, Outcome.SUCCEEDED, ended_ago=0)
    await until(lambda: not stack.firing(name))


@contextmanager
def _forward(bus: EventBus, listener: EventBus) -> Iterator[None]:
    """Deliver ``bus``'s events to ``listener`` too, as lifecycle-nats does across hosts."""

    async def forward(event: Event) -> None:
        await listener.emit(event)

    subscriptions = [bus.subscribe(signal, forward) for signal in (STARTING, EXITED)]
    try:
        yield
    finally:
        for subscription in subscriptions:
            subscription.unsubscribe()


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
    return body.decode()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_pushgateway_alert_fires_on_failures_and_clears_on_success(stack: Stack) -> None:
    name = f"push-{uuid.uuid4().hex[:8]}"
    await fires_then_clears(stack, lambda bus: attach(bus, pushgateway=stack.pushgateway), name)
    pushed = await anyio.to_thread.run_sync(_get, f"{stack.pushgateway}/metrics")
    assert f'job="lifecycle",lifecycle_environment="{name}"' in pushed


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_textfile_alert_fires_on_failures_and_clears_on_success(stack: Stack) -> None:
    name = f"textfile-{uuid.uuid4().hex[:8]}"
    path = stack.textfile_dir / f"{name}.prom"
    await fires_then_clears(stack, lambda bus: attach(bus, textfile=path), name)
    promtool_check_metrics(path.read_text())


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_listener_endpoint_alert_fires_on_failures_and_clears_on_success(
    stack: Stack,
) -> None:
    """The scrape endpoint of a long-lived ``lifecycle listen``, scraped by Prometheus."""
    name = f"listen-{uuid.uuid4().hex[:8]}"
    async with EventBus() as listener:
        with attach(listener, port=stack.listen_port, addr="127.0.0.1") as handle:
            await until(lambda: bool(stack.query('up{job="lifecycle-listen"} == 1')))
            # Every run reaches the one long-lived bus, as events reach lifecycle listen.
            await fires_then_clears(stack, lambda bus: _forward(bus, listener), name)
            assert handle.url is not None
            promtool_check_metrics(await anyio.to_thread.run_sync(_get, handle.url))


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_two_jobs_on_one_pushgateway_keep_their_own_groups(stack: Stack) -> None:
    first, second = (f"group-{uuid.uuid4().hex[:8]}" for _ in range(2))
    push = partial(attach, pushgateway=stack.pushgateway)
    await batch_run(push, first, Outcome.SUCCEEDED, ended_ago=60)
    await batch_run(push, second, Outcome.FAILED, ended_ago=30)
    pushed = await anyio.to_thread.run_sync(_get, f"{stack.pushgateway}/metrics")
    assert (
        f'lifecycle_run_last_success_timestamp_seconds{{instance="",job="lifecycle",lifecycle_environment="{first}"}}'
        in pushed
    )
    assert (
        f'lifecycle_run_last_outcome{{instance="",job="lifecycle",lifecycle_environment="{second}",outcome="failed"}} 1'
        in pushed
    )


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_readmes_alert_rules_pass_promtool(tmp_path: Path) -> None:
    """The rules users copy from the README are valid rule files."""
    readme = Path(__file__).parent.parent / "README.md"
    blocks = re.findall(r"```yaml\n(.*?)```", readme.read_text(), flags=re.DOTALL)
    assert len(blocks) == 2  # batch jobs and the listener
    for index, block in enumerate(blocks):
        rules = tmp_path / f"rules-{index}.yml"
        rules.write_text(block)
        promtool_check_rules(rules)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_lifecycle_run_exports_per_name_and_keeps_the_last_success(
    stack: Stack, tmp_path: Path
) -> None:
    """Two cron-like ``lifecycle run --name`` processes: a success, then a failure."""
    name = f"cron-{uuid.uuid4().hex[:8]}"
    textfile = stack.textfile_dir / f"{name}.prom"
    config = tmp_path / "lifecycle.toml"
    config.write_text(
        '[[adapters]]\nname = "prometheus"\n'
        f'options = {{ pushgateway = "{stack.pushgateway}", textfile = "{textfile}" }}\n'
    )
    wrapper = [sys.executable, "-m", "lifecycle", "run", "--config", str(config), "--name", name]
    for code in (0, 3):
        command = [*wrapper, "--", sys.executable, "-c", f"raise SystemExit({code})"]
        done = await anyio.run_process(command, check=False)
        assert done.returncode == code, done.stderr.decode()
    samples = parse(await anyio.to_thread.run_sync(_get, f"{stack.pushgateway}/metrics"))
    written = parse(textfile.read_text())
    group = {"job": "lifecycle", "instance": "", "lifecycle_environment": name}
    for found, labels in ((samples, group), (written, {"lifecycle_environment": name})):
        success = value(found, "lifecycle_run_last_success_timestamp_seconds", **labels)
        completion = value(found, "lifecycle_run_last_completion_timestamp_seconds", **labels)
        assert success is not None
        assert completion is not None
        assert completion > success  # the failed run is the last; the success is kept
        assert value(found, "lifecycle_run_last_exit_code", **labels) == 3
        assert value(found, "lifecycle_run_last_outcome", outcome="failed", **labels) == 1
