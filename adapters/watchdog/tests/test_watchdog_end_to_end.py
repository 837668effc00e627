"""The watchdog against a real nats-server and real `lifecycle run` wrappers.

Waits are bounded by generous ``fail_after``s, never assertions on time: each test waits
for the *thing* (a heartbeat in the table, the verdict on the bus, the watchdog having
read its own verdict back and judged again) and then counts what the stream holds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
import lifecycle_nats
import nats
import pytest
from lifecycle_nats import SPOOL_ENV
from lifecycle_testing import (
    RECORD_FILE,
    NatsServer,
    Recorder,
    poll_blocking,
    record_handlers,
    recorded,
)
from lifecycle_watchdog import (
    MISSED,
    RECOVERED,
    Expectation,
    JetStreamStore,
    Judge,
    Policy,
    RunRecord,
    RunState,
    Watchdog,
)
from lifecycle_watchdog._jetstream import Settings, run_watchdog
from lifecycle_watchdog._model import run_key

from lifecycle import (
    EXITED,
    HEARTBEAT,
    STARTING,
    Environment,
    EnvironmentInfo,
    Event,
    EventBus,
    Outcome,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from pathlib import Path

BEAT = 0.2
"""The wrappers' heartbeat interval."""


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    return nats_server.url


@pytest.fixture
def password_server(tmp_path: Path) -> Iterator[str]:
    """The URL of a nats-server that wants user ``alice`` with password ``right``."""
    server = NatsServer(tmp_path / "nats", "--user", "alice", "--pass", "right")
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@dataclass
class Wrapper:
    process: subprocess.Popen[bytes]

    def signal(self, number: int) -> None:
        os.killpg(self.process.pid, number)  # the wrapper and its command

    def kill_wrapper(self) -> None:
        """SIGKILL the wrapper alone (its command dies with it: PR_SET_PDEATHSIG)."""
        self.process.kill()


@pytest.fixture
def wrapper(nats_url: str, tmp_path: Path) -> Iterator[Callable[..., Wrapper]]:
    """Start `lifecycle run --heartbeat 0.2 -- sleep 60` publishing to the test's server."""
    config = tmp_path / "lifecycle.toml"
    # Reconnecting within 0.2 s (not the default 2 s): the server-restart test then waits a
    # shorter resume_grace for the wrapper's first heartbeat after the outage.
    config.write_text(
        f'[[adapters]]\nname = "nats"\noptions = {{ servers = ["{nats_url}"], reconnect_wait = 0.2 }}\n'
    )
    started: list[Wrapper] = []

    def start(name: str = "nightly-etl") -> Wrapper:
        command = [sys.executable, "-m", "lifecycle", "run", "--config", str(config)]
        command += ["--name", name, "--heartbeat", str(BEAT), "--", "sleep", "60"]
        process = subprocess.Popen(
            command,
            cwd=tmp_path,
            env={**os.environ, SPOOL_ENV: str(tmp_path / "spool")},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        started.append(Wrapper(process))
        return started[-1]

    yield start
    for one in started:
        if one.process.poll() is None:
            one.signal(signal.SIGKILL)
        one.process.wait()


pytestmark = [pytest.mark.anyio, pytest.mark.asyncio_only]  # nats-py runs on asyncio only
LIFECYCLE = [sys.executable, "-m", "lifecycle"]


@dataclass
class Watcher:
    """One watchdog running in this process, and what it emitted on its local bus."""

    emitted: Recorder | None = None
    dog: Watchdog | None = None
    ready: anyio.Event = field(default_factory=anyio.Event)

    def on_ready(self, dog: Watchdog) -> None:
        self.dog = dog
        self.ready.set()

    def named(self, name: str, outcome: Outcome | None = None) -> list[Event]:
        assert self.emitted is not None
        return self.emitted.named(name, outcome)

    def lost(self) -> list[Event]:
        return self.named(EXITED, Outcome.LOST)

    async def until(self, check: Callable[[], object], limit: float = 20) -> None:
        """Wait, one judgement at a time, until ``check()`` holds; fail after ``limit`` s.

        What the tests look at (the run table, the verdicts) changes as the watchdog reads
        and judges, and it judges every tick: each round is a point to look again.
        """
        assert self.dog is not None
        with anyio.fail_after(limit):
            while not check():
                await self.dog.wait_judged()


@asynccontextmanager
async def watchdog(
    url: str,
    *,
    misses: float = 3,
    expectations: tuple[Expectation, ...] = (),
    resume_grace: float = Settings.resume_grace,
) -> AsyncIterator[Watcher]:
    watcher = Watcher()
    settings = Settings(servers=(url,), tick=0.05, checkpoint_every=0.2, resume_grace=resume_grace)
    async with EventBus() as bus, anyio.create_task_group() as group:
        watcher.emitted = Recorder(bus, (EXITED, HEARTBEAT, MISSED, RECOVERED))
        judge = Judge(Policy(misses=misses), expectations)
        group.start_soon(lambda: run_watchdog(settings, judge, bus, ready=watcher.on_ready))
        with anyio.fail_after(20):
            await watcher.ready.wait()
        yield watcher
        group.cancel_scope.cancel()


async def settled(url: str, *watchers: Watcher) -> None:
    """Wait until each watchdog has read the whole stream and judged three more times."""
    nc = await nats.connect(url)
    try:
        last = (await nc.jetstream().stream_info("LIFECYCLE")).state.last_seq
    finally:
        await nc.close()
    marks = [w.dog.rounds if w.dog else 0 for w in watchers]
    for watcher, mark in zip(watchers, marks, strict=True):
        dog = watcher.dog
        assert dog is not None
        await watcher.until(lambda: dog.judge.consumed >= last and dog.rounds >= mark + 3)  # noqa: B023


async def stored(url: str) -> list[Event]:
    """Every event in the stream, in order."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        last = (await js.stream_info("LIFECYCLE")).state.last_seq
        events = []
        for seq in range(1, last + 1):
            msg = await js.get_msg("LIFECYCLE", seq)
            events.append(Event.from_json(msg.data or b""))
        return events
    finally:
        await nc.close()


def lost_in(events: list[Event]) -> list[Event]:
    return [e for e in events if e.name == EXITED and e.outcome is Outcome.LOST]


def beating(watcher: Watcher, beats: int = 1) -> Callable[[], bool]:
    """True once the watchdog has seen a run's heartbeats (a run is in its table)."""

    def check() -> bool:
        assert watcher.dog is not None
        return any(
            r.last_heartbeat is not None and r.state.value == "running"
            for r in watcher.dog.judge.table.values()
        )

    return check


async def test_a_killed_wrapper_is_lost_once_with_two_watchdogs_and_a_restarted_one(
    nats_url: str, wrapper: Callable[..., Wrapper]
) -> None:
    async with watchdog(nats_url) as one, watchdog(nats_url) as two:
        run = wrapper()
        await one.until(beating(one))
        await two.until(beating(two))
        run.kill_wrapper()
        # misses x interval = 0.6 s after the last beat; the bound is generous on purpose.
        await one.until(lambda: bool(one.lost() or two.lost()), limit=15)
        await settled(nats_url, one, two)
        assert len(one.lost()) + len(two.lost()) == 1
    async with watchdog(nats_url) as restarted:
        await settled(nats_url, restarted)
        assert restarted.lost() == []
    events = await stored(nats_url)
    [lost] = lost_in(events)
    assert lost.environment.name == "nightly-etl"
    assert lost.attributes["last_heartbeat"] is not None


async def test_a_run_that_died_while_no_watchdog_ran_is_lost_once_on_restart(
    nats_url: str, wrapper: Callable[..., Wrapper]
) -> None:
    async with watchdog(nats_url) as first:
        run = wrapper()
        await first.until(beating(first))
    run.signal(signal.SIGKILL)
    run.process.wait()
    async with watchdog(nats_url) as second:
        # It rebuilds from the bucket and the stream, then judges: lost, on restart.
        await second.until(lambda: bool(second.lost()), limit=15)
        await settled(nats_url, second)
    async with watchdog(nats_url) as third:
        await settled(nats_url, third)
        assert third.lost() == []
    assert len(lost_in(await stored(nats_url))) == 1


async def test_a_pause_within_the_allowance_is_no_alarm_and_one_past_it_is_lost_then_recovered(
    nats_url: str, wrapper: Callable[..., Wrapper]
) -> None:
    # 10 misses x 0.2 s: a 2 s allowance, against a 0.3 s pause.
    async with watchdog(nats_url, misses=10) as dog:
        run = wrapper()
        await dog.until(beating(dog))
        run.signal(signal.SIGSTOP)
        await anyio.sleep(0.3)  # the pause under test, well within the allowance
        run.signal(signal.SIGCONT)
        assert dog.dog is not None
        beats = dog.dog.judge.table
        seen = max(r.last_seen for r in beats.values())
        await dog.until(lambda: max(r.last_seen for r in beats.values()) > seen)  # beats again
        assert dog.lost() == []
        run.signal(signal.SIGSTOP)  # now past it
        await dog.until(lambda: bool(dog.lost()), limit=15)
        run.signal(signal.SIGTERM)  # delivered once it runs again: it ends, terminated
        run.signal(signal.SIGCONT)
        await dog.until(lambda: bool(dog.named(EXITED, Outcome.TERMINATED)), limit=15)
        await dog.until(lambda: bool(dog.named(RECOVERED)))
        await settled(nats_url, dog)
    [truth] = dog.named(EXITED, Outcome.TERMINATED)
    assert truth.attributes["after_lost"] is True
    assert truth.attributes["lost_event_id"] == dog.lost()[0].event_id
    assert len(dog.named(RECOVERED)) == 1
    events = await stored(nats_url)
    assert len(lost_in(events)) == 1
    assert len([e for e in events if e.name == RECOVERED]) == 1
    # The run's own exited is in the stream exactly as the wrapper sent it.
    [own] = [e for e in events if e.name == EXITED and e.outcome is Outcome.TERMINATED]
    assert own.event_id == truth.event_id
    assert "after_lost" not in own.attributes


async def test_a_server_restart_longer_than_the_allowance_is_no_alarm_and_is_survived(
    nats_server: NatsServer, wrapper: Callable[..., Wrapper]
) -> None:
    """NATS away for 2.5 allowances, then back: the watchdog reads on (its consumer is
    recreated), calls no live run lost for the silence the outage forced on it, and
    still reports the run that dies afterwards, once."""
    # The wrapper reconnects within 0.2 s: 2 s of grace (not the default 5 s) is ample.
    async with watchdog(nats_server.url, resume_grace=2.0) as dog:
        run = wrapper()
        await dog.until(beating(dog))
        assert dog.dog is not None
        table = dog.dog.judge.table
        nats_server.stop(signal.SIGKILL)
        await anyio.sleep(1.5)  # the outage under test: 2.5 x the 0.6 s allowance
        nats_server.start()
        back = time.time()
        # Reading again: a heartbeat stored after the restart reaches the table.
        await dog.until(lambda: max(r.last_seen for r in table.values()) > back, limit=15)
        await settled(nats_server.url, dog)
        assert dog.lost() == []
        assert dog.dog.judge.silence_from > back  # the outage's silence did not count
        run.kill_wrapper()
        await dog.until(lambda: bool(dog.lost()), limit=15)  # after resume_grace at most
        await settled(nats_server.url, dog)
    assert len(dog.lost()) == 1
    assert len(lost_in(await stored(nats_server.url))) == 1


async def test_one_missed_per_empty_slot_and_none_while_the_job_starts(nats_url: str) -> None:
    expect = (
        Expectation("absent", every=1.0, grace=0.3),
        Expectation("present", every=1.0, grace=0.3),
    )

    async def present(stop: anyio.Event) -> None:
        """The job that runs on time: a start every 0.1 s, through lifecycle-nats."""
        async with EventBus() as bus:
            with lifecycle_nats.attach(bus, servers=nats_url, signals=[STARTING]):
                env = Environment("present", bus=bus)
                while not stop.is_set():
                    async with env.running():
                        pass
                    await anyio.sleep(0.1)

    stop = anyio.Event()
    async with anyio.create_task_group() as group:
        group.start_soon(present, stop)
        async with watchdog(nats_url, expectations=expect) as dog:
            await dog.until(lambda: len(dog.named(MISSED)) >= 2, limit=15)
            await settled(nats_url, dog)
        stop.set()  # only once the watchdog is gone: no slot of "present" goes empty
    missed = dog.named(MISSED)
    assert {e.environment.name for e in missed} == {"absent"}
    dues = [e.attributes["due"] for e in missed]
    assert len(dues) == len(set(dues))  # one per slot
    in_stream = [e for e in await stored(nats_url) if e.name == MISSED]
    assert sorted(e.event_id for e in in_stream) == sorted(e.event_id for e in missed)


@contextmanager
def watch_service(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[str]]:
    """A real `lifecycle watch` process, once it says it is watching; killed if still up after."""
    service = subprocess.Popen(
        [*LIFECYCLE, "watch", *args], cwd=cwd, env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        assert service.stderr is not None
        for line in service.stderr:  # ends if the service dies: the assert below says so
            if "watching stream" in line:
                break
        assert service.poll() is None
        yield service
    finally:
        if service.poll() is None:
            service.kill()
            service.wait()
        if service.stderr is not None:
            service.stderr.close()


def test_watch_notifies_through_the_usual_handlers_and_runs_lists_the_live_run(
    nats_url: str, tmp_path: Path, wrapper: Callable[..., Wrapper]
) -> None:
    (tmp_path / "watch.toml").write_text(
        f'[watch]\nservers = ["{nats_url}"]\ntick = 0.05\n\n{record_handlers(EXITED)}'
    )
    notes = tmp_path / "notes.jsonl"
    env = {**os.environ, RECORD_FILE: str(notes)}
    with watch_service("--config", "watch.toml", cwd=tmp_path, env=env) as service:
        run = wrapper()

        def listed_beating() -> list[dict[str, object]]:
            rows = runs_listed("--server", nats_url, cwd=tmp_path)
            return rows if rows and rows[0]["last_heartbeat"] else []

        [row] = poll_blocking(listed_beating, "the run listed with a heartbeat")
        assert (row["environment"], row["state"], row["source"]) == (
            "nightly-etl",
            "running",
            "watchdog",
        )
        run.signal(signal.SIGKILL)
        [note] = poll_blocking(lambda: recorded(notes), "the lost run's notification")
        assert note["outcome"] == "lost"
        assert note["run_id"] == row["run_id"]
        service.send_signal(signal.SIGTERM)
        assert service.wait(20) == 0


def test_watch_stopped_while_the_server_is_away_exits_0(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    with watch_service("--server", nats_server.url, cwd=tmp_path) as service:
        assert service.stderr is not None
        nats_server.stop(signal.SIGKILL)
        for line in service.stderr:  # it noticed: draining would now find no server
            if "lost the NATS server" in line:
                break
        service.send_signal(signal.SIGTERM)
        assert service.wait(20) == 0
        assert "Traceback" not in service.stderr.read()


async def test_two_stores_racing_on_one_key_give_the_verdict_to_one(nats_url: str) -> None:
    """The compare-and-set itself, on a real bucket: many racers, one winner."""
    record = RunRecord(run_id="run-1", environment="etl", interval=1.0)
    clients = [await nats.connect(nats_url) for _ in range(4)]
    try:
        stores = [await JetStreamStore.open(nc.jetstream()) for nc in clients]
        await stores[0].transition(run_key("run-1"), lambda stored: record)

        def declare(stored: RunRecord | None) -> RunRecord | None:
            if stored is None or stored.state is not RunState.RUNNING:
                return None
            return stored.evolve(state=RunState.LOST, lost_count=stored.lost_count + 1)

        results: list[bool] = []

        async def race(store: JetStreamStore) -> None:
            won, _ = await store.transition(run_key("run-1"), declare)
            results.append(won)

        async with anyio.create_task_group() as group:
            for store in stores * 3:  # twelve racers on four connections
                group.start_soon(race, store)
        assert results.count(True) == 1
        stored = await stores[1].get(run_key("run-1"))
        assert stored is not None
        assert (stored.state, stored.lost_count) == (RunState.LOST, 1)
    finally:
        for nc in clients:
            await nc.close()


async def test_a_stream_that_also_holds_other_subjects_is_still_judged(nats_url: str) -> None:
    """The stream's last message may be one the watchdog never reads: it still judges.

    Both are stored before the watchdog's consumer starts, so the server moves the
    consumer's stream position past the other subject's message once it has delivered
    ours (``delivered.stream_seq`` 2, one message delivered): the case CI once met.
    """
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await js.add_stream(name="LIFECYCLE", subjects=["lifecycle.>", "other.>"])
        run = Event(
            name=STARTING,
            run_id="silent",
            environment=EnvironmentInfo(name="etl", host="box", pid=1),
            attributes={"heartbeat_interval": BEAT},
        )
        await js.publish(lifecycle_nats.subject_for(STARTING, "etl"), run.to_json().encode())
        await js.publish("other.noise", b"not ours")  # the stream's last message
        async with watchdog(nats_url) as dog:
            await dog.until(lambda: bool(dog.lost()), limit=15)
        assert [e.run_id for e in dog.lost()] == ["silent"]
    finally:
        await nc.close()


def lifecycle_failing(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """A `lifecycle` command expected to fail: exit 1 with a message and no traceback."""
    done = subprocess.run(
        [*LIFECYCLE, *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    return done


@pytest.mark.parametrize("command", ["watch", "runs"])
def test_a_server_without_jetstream_is_named_as_such(
    command: str, no_jetstream: NatsServer, tmp_path: Path
) -> None:
    done = lifecycle_failing(command, "--server", no_jetstream.url, cwd=tmp_path)
    assert f"--server: {'no watchdog answered, and ' if command == 'runs' else ''}" in done.stderr
    assert f"JetStream does not answer at {no_jetstream.url}" in done.stderr


def test_watch_says_which_servers_it_could_not_reach(nowhere: str, tmp_path: Path) -> None:
    url = nowhere
    config = tmp_path / "watch.toml"
    config.write_text(f'[watch]\nservers = ["{url}"]\nconnect_timeout = 0.5\n')
    done = lifecycle_failing("watch", "--config", str(config), cwd=tmp_path)
    assert f"{config}: watch.servers: cannot connect to NATS at {url}" in done.stderr


@pytest.mark.parametrize("command", ["watch", "runs"])
def test_refused_credentials_are_said_at_once_naming_the_option(
    command: str, password_server: str, tmp_path: Path
) -> None:
    config = tmp_path / "watch.toml"
    # connect_timeout is long: the refusal is said at once, not after trying that long.
    config.write_text(
        f'[watch]\nservers = ["{password_server}"]\nuser = "alice"\npassword = "wrong"\n'
        "connect_timeout = 20\n"
    )
    done = lifecycle_failing(command, "--config", str(config), cwd=tmp_path)
    assert (
        f"{config}: watch: cannot connect to NATS at {password_server} (check the option "
        "user/password): the server refused the credentials"
    ) in done.stderr
    assert "Authorization Violation" in done.stderr
    assert "wrong" not in done.stderr


def test_credentials_in_the_server_url_are_named_and_never_shown(
    password_server: str, tmp_path: Path
) -> None:
    url = password_server.replace("//", "//alice:SECRET@")
    done = lifecycle_failing("runs", "--server", url, cwd=tmp_path)
    assert (
        f"--server: cannot connect to NATS at {password_server} (check the option servers (the "
        "credentials in the URL))"
    ) in done.stderr
    assert "SECRET" not in done.stderr


def test_runs_logs_in_with_the_watch_credentials(password_server: str, tmp_path: Path) -> None:
    config = tmp_path / "watch.toml"
    config.write_text(
        f'[watch]\nservers = ["{password_server}"]\nuser = "alice"\npassword = "right"\n'
    )
    done = subprocess.run(
        [*LIFECYCLE, "runs", "--config", str(config)],
        cwd=tmp_path, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "(no live runs)" in done.stderr


def runs_listed(*args: str, cwd: Path) -> list[dict[str, object]]:
    listed = subprocess.run(
        [*LIFECYCLE, "runs", "--json", *args], cwd=cwd, capture_output=True, text=True, check=True
    )
    rows: list[dict[str, object]] = json.loads(listed.stdout)
    return rows


def test_runs_all_gives_the_same_answer_whether_a_watchdog_answers_or_not(
    nats_url: str, tmp_path: Path
) -> None:
    """Runs that ended recently, from the watchdog or the stored table; not older ones."""

    async def store_an_old_run() -> None:
        nc = await nats.connect(nats_url)
        try:
            store = await JetStreamStore.open(nc.jetstream())
            now = time.time()
            old = RunRecord(
                run_id="ended-an-hour-ago", environment="etl", started=now - 3700,
                last_seen=now - 3600, state=RunState.EXITED, outcome="succeeded",
            )  # fmt: skip
            await store.transition(run_key(old.run_id), lambda stored: old)
        finally:
            await nc.close()

    anyio.run(store_an_old_run)
    (tmp_path / "lifecycle.toml").write_text(
        f'[[adapters]]\nname = "nats"\noptions = {{ servers = ["{nats_url}"] }}\n'
    )
    env = {**os.environ, SPOOL_ENV: str(tmp_path / "spool")}
    with watch_service("--server", nats_url, cwd=tmp_path) as service:
        subprocess.run(
            [*LIFECYCLE, "run", "--name", "short", "--", "true"], cwd=tmp_path, env=env, check=True
        )
        from_watchdog = poll_blocking(
            lambda: runs_listed("--all", "--server", nats_url, cwd=tmp_path),
            "the ended run listed by the watchdog",
        )
        assert runs_listed("--server", nats_url, cwd=tmp_path) == []  # without --all: live only
        service.send_signal(signal.SIGTERM)
        assert service.wait(20) == 0
    from_store = runs_listed("--all", "--server", nats_url, cwd=tmp_path)

    def seen(rows: list[dict[str, object]]) -> list[tuple[object, ...]]:
        return [(r["environment"], r["run_id"], r["state"]) for r in rows]

    assert [r["source"] for r in from_watchdog + from_store] == ["watchdog", "store"]
    assert seen(from_watchdog) == seen(from_store)
    assert seen(from_store)[0][::2] == ("short", "exited")
