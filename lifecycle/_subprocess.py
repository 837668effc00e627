"""Subprocess environments: a command run as a child process, with the same lifecycle events.

``SubprocessEnvironment.execute`` emits ``environment.starting``, runs the command with its
output passed through live, and emits ``environment.exited`` exactly once however the
command ends. How it ends maps to an outcome and to the shell's exit status conventions,
so a wrapper can exit with the status the command would have given::

    exited 0                   succeeded    0
    exited n                   failed       n
    died of signal n           killed       128 + n
    TERM/INT/HUP forwarded     terminated   the child's status (128 + n if it died of it,
                                            0 if it caught it and exited cleanly)
    TERM/INT/HUP in starting   terminated   128 + n (starting cancelled, never started)
    past its time limit        timeout      124 (as GNU ``timeout``)
    command not found          failed       127
    found but not executable   failed       126
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections import deque
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from time import perf_counter
from typing import IO, TYPE_CHECKING, Any, Literal, Protocol

from . import _deathsig
from ._childenv import child_environment
from ._environment import Environment, Run
from ._event import Event, Outcome
from ._heartbeat import check_interval, send_heartbeats, sidecar
from ._logging import logger
from ._subscription import check_timeout

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

    import anyio
    import anyio.abc

    from ._backends._background import WaitFor

    # Protocols for the type checker alone: making their classes costs start-up time.
    class Child(Protocol):
        """A started child process: anyio's, or asyncio's (``lifecycle run``'s)."""

        @property
        def pid(self) -> int: ...

        @property
        def returncode(self) -> int | None: ...

        def send_signal(self, signal: signal.Signals) -> None: ...

        async def wait(self) -> int: ...

    class Flag(Protocol):
        """An event of the running loop."""

        def set(self) -> None: ...

        def is_set(self) -> bool: ...

        async def wait(self) -> object: ...

    from ._bus import EventBus
    from ._environment import Callback

__all__ = ["CommandResult", "SubprocessEnvironment"]

STATUS_TIMEOUT = 124
"""Exit status of a command stopped at its time limit (GNU ``timeout``'s convention)."""
STATUS_NOT_EXECUTABLE = 126
"""Exit status of a command that exists but cannot be executed (the shell's convention)."""
STATUS_NOT_FOUND = 127
"""Exit status of a command that does not exist (the shell's convention)."""

# SIGHUP too: the child runs in its own session, so a closed terminal would otherwise
# end the wrapper and leave the child running.
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

# After the child exits, how long its output may keep flowing (from grandchildren that
# inherited the pipes) before the wrapper stops reading and reports.
_OUTPUT_DRAIN_SECONDS = 1.0


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


# Programs that run a script given as their first argument: the script names the job.
# With a version after the name (``python3.12``, ``bash5``), and ``.exe`` after that.
_INTERPRETERS = frozenset(
    [
        "python",
        "pypy",
        "ruby",
        "perl",
        "node",
        "php",
        "Rscript",
        "sh",
        "bash",
        "dash",
        "zsh",
        "ksh",
        "mksh",
        "fish",
    ]
)


def _is_interpreter(program: str) -> bool:
    # Not a regular expression: compiling one is a good part of a short run's start-up.
    name = program.removesuffix(".exe").rstrip("0123456789.")
    return name in _INTERPRETERS


def default_name(command: Sequence[str]) -> str:
    """The environment name for ``command``: the program's base name, or its script's.

    ``["/usr/bin/backup", "-v"]`` is ``backup``; ``["python3", "jobs/etl.py"]`` is ``etl.py``.
    """
    program = os.path.basename(command[0]) or command[0]
    if len(command) > 1 and _is_interpreter(program) and not command[1].startswith("-"):
        return os.path.basename(command[1]) or program
    return program


def exit_status(returncode: int) -> int:
    """The shell's status for a ``returncode`` (negative for a signal: 128 + its number)."""
    return 128 - returncode if returncode < 0 else returncode


@dataclass(frozen=True)
class CommandResult:
    """How one run of a command ended (what :meth:`SubprocessEnvironment.execute` returns).

    Attributes:
        run_id: the run's id, as on its events.
        outcome: the outcome on the ``exited`` event.
        exit_status: the status a wrapper should exit with (see the module's table).
        returncode: the child's raw return code (negative: the signal that ended it), or
            ``None`` when it never started.
        signal: the name of the signal the child died of, if it did.
        output_tail: the last lines of the child's output (empty when output is inherited).
        error: the ``OSError`` that kept the command from starting, if one did.
        exited: the ``environment.exited`` event.
        duration: seconds from the start of the run to its end.

    .. versionadded:: 0.1
    """

    run_id: str
    outcome: Outcome
    exit_status: int
    returncode: int | None
    signal: str | None
    output_tail: str
    error: OSError | None
    exited: Event | None
    duration: float

    def describe(self) -> str:
        """One line saying how the command ended, for people."""
        if self.error is not None:
            what = "command not found" if self.exit_status == STATUS_NOT_FOUND else "not executable"
            return f"{what} ({self.error.strerror or self.error})"
        if self.outcome is Outcome.TIMEOUT:
            return "stopped at its time limit"
        if self.signal is not None:
            return f"{self.outcome.value} by {self.signal}"
        return f"{self.outcome.value} with exit status {self.exit_status}"


class OutputTail:
    """The last lines of a child's output, bounded in lines and in bytes.

    Chunks from each stream are split into lines separately (so stdout and stderr never
    splice into one line) and kept in arrival order.
    """

    def __init__(self, max_lines: int, max_bytes: int) -> None:
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.truncated = False
        self._lines: deque[bytes] = deque()
        self._size = 0
        self._partial: dict[str, bytes] = {}

    def feed(self, stream: str, chunk: bytes) -> None:
        *lines, rest = (self._partial.get(stream, b"") + chunk).split(b"\n")
        for line in lines:
            self._push(line)
        if len(rest) > self.max_bytes:
            rest = rest[-self.max_bytes :]
            self.truncated = True
        self._partial[stream] = rest

    def _push(self, line: bytes) -> None:
        if len(line) > self.max_bytes:
            line = line[-self.max_bytes :]
            self.truncated = True
        self._lines.append(line)
        self._size += len(line) + 1
        # ``_size`` counts a newline after every line; the text has one fewer.
        while self._lines and (
            len(self._lines) > self.max_lines or self._size - 1 > self.max_bytes
        ):
            self._size -= len(self._lines.popleft()) + 1
            self.truncated = True

    def text(self) -> str:
        """The kept lines, decoded (invalid UTF-8 replaced), joined by newlines."""
        lines = list(self._lines) + [rest for rest in self._partial.values() if rest]
        lines = lines[-self.max_lines :] if self.max_lines else []
        size = sum(len(line) + 1 for line in lines) - 1
        while lines and size > self.max_bytes:
            # Unfinished lines were not counted in the budget yet.
            size -= len(lines.pop(0)) + 1
            self.truncated = True
        return "\n".join(line.decode("utf-8", "replace").rstrip("\r") for line in lines)


def _nothing() -> None:
    pass


class Supervision:
    """What happened to one run's child, filled in as it happens.

    Args:
        new_event: makes an event of the running loop.
        wait_for: the loop's bounded wait (``_backends.wait_for_here()``).
    """

    def __init__(self, new_event: Callable[[], Flag], wait_for: WaitFor) -> None:
        self.process: Child | None = None
        self.received: list[int] = []
        self.stop_requested = new_event()
        # Cancels the ``starting`` emit: a signal before the child exists stops it, so a
        # slow or hung starting handler cannot hold up the stop. Set by the runner.
        self.cancel_starting: Callable[[], object] = _nothing
        self.exited = new_event()
        self.wait_for = wait_for
        self.start_error: OSError | None = None
        self.timed_out = False
        self.killed_after_grace = False


def _check_positive(value: int, option: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{option} must be an int >= 0, not {value!r}")
    return value


class SubprocessEnvironment(Environment):
    """An environment that runs a command as a child process.

    :meth:`execute` emits ``environment.starting``, starts the command, passes its output
    through live and emits ``environment.exited`` exactly once when it ends, with the exit
    code, the duration, the outcome (see the module docstring) and these attributes:
    ``command``, ``child_pid``, ``returncode``, ``signal`` (when the child died of one),
    ``received_signal`` (when a signal was forwarded), ``killed_after_grace``,
    ``timeout`` (when the limit was hit) and ``output_tail`` (the last lines of output).

    SIGTERM, SIGINT and SIGHUP received while a run is alive (main thread only) go to
    the child; if it is still alive ``kill_grace`` seconds later it is killed, and the
    outcome is ``terminated``. The child runs in a new session by default, so a terminal's
    Ctrl-C reaches it once (through the wrapper) and signals reach its whole process group,
    grandchildren included.

    Args:
        command: the program and its arguments (no shell; use ``["sh", "-c", ...]``).
        name: the environment's name (default: the program's base name, or the script's
            when the program is an interpreter such as ``python`` or ``sh``).
        labels, on_start, on_exit, bus, exit_grace: as for :class:`~lifecycle.Environment`.
        timeout: seconds the command may run; past it, it is stopped (SIGTERM, then
            SIGKILL after ``kill_grace``) and the outcome is ``timeout``.
        kill_grace: seconds between asking the child to stop and killing it.
        heartbeat: seconds between ``environment.heartbeat`` events; ``None`` or ``0``: none.
            When on, ``starting`` carries it as the attribute ``heartbeat_interval``.
        output: ``"forward"`` reads the child's stdout and stderr through pipes, writes
            them through to ``stdout``/``stderr`` as they come and keeps their tail;
            ``"inherit"`` lets the child write to the wrapper's own streams (a terminal
            stays a terminal) and keeps no tail. A pipe is not a terminal, so programs
            may buffer what they write to it: ``"forward"`` sets ``PYTHONUNBUFFERED=1``
            for the child (unless set) so Python jobs stay live; for others, use their
            own option or ``stdbuf -oL``.
        stdout, stderr: binary streams to forward to (default: this process's own).
        tail_lines, tail_bytes: how much of the output's end ``exited`` carries.
        forward_signals: forward SIGTERM, SIGINT and SIGHUP to the child.
        new_session: start the child in a new session (its own process group).
        die_with_parent: on Linux (asyncio backend), the child gets SIGKILL if this
            process dies without stopping it (killed with SIGKILL, say), so the command
            never runs on unsupervised (``PR_SET_PDEATHSIG``, set in the forked child
            when this process has a single thread, else by a shim that costs one
            short-lived Python start). Elsewhere it does nothing: supervise the wrapper
            itself.
        cwd, env: the child's working directory and environment variables.

    Raises:
        TypeError, ValueError: ``command`` is empty or an option is out of range.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        command: Sequence[str | os.PathLike[str]],
        *,
        name: str | None = None,
        labels: Iterable[str] = (),
        on_start: Callback = None,
        on_exit: Callback = None,
        bus: EventBus | None = None,
        exit_grace: float = 30.0,
        timeout: float | None = None,
        kill_grace: float = 10.0,
        heartbeat: float | None = 30.0,
        output: Literal["forward", "inherit"] = "forward",
        stdout: IO[bytes] | None = None,
        stderr: IO[bytes] | None = None,
        tail_lines: int = 20,
        tail_bytes: int = 4096,
        forward_signals: bool = True,
        new_session: bool = True,
        die_with_parent: bool = True,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if isinstance(command, (str, bytes)) or not command:
            raise TypeError(
                f"command must be a non-empty sequence of program and arguments, such as "
                f"['ls', '-l'], not {command!r}"
            )
        self.command = [os.fspath(part) for part in command]
        super().__init__(
            name or default_name(self.command),
            labels,
            on_start,
            on_exit,
            bus,
            exit_grace=exit_grace,
        )
        self.timeout = check_timeout(timeout, "timeout")
        self.kill_grace = check_timeout(kill_grace, "kill_grace") or 0.0
        self.heartbeat = check_interval(heartbeat)
        if output not in ("forward", "inherit"):
            raise ValueError(f"output must be 'forward' or 'inherit', not {output!r}")
        self.output = output
        self.stdout = stdout
        self.stderr = stderr
        self.tail_lines = _check_positive(tail_lines, "tail_lines")
        self.tail_bytes = _check_positive(tail_bytes, "tail_bytes")
        self.forward_signals = forward_signals
        self.new_session = new_session
        self.die_with_parent = die_with_parent
        self.cwd = cwd
        self.env = env

    async def execute(
        self, run_id: str | None = None, *, attributes: Mapping[str, Any] | None = None
    ) -> CommandResult:
        """Run the command once, as one run of this environment; return how it ended.

        The command's own failures are outcomes, not exceptions: a non-zero exit, a
        signal, a timeout or a missing program all return a :class:`CommandResult`.

        Args:
            run_id: the run's id (default: a new random one).
            attributes: JSON-safe data carried on both events (``command`` is added).

        Raises:
            StartAborted: a critical ``starting`` handler failed; the command never ran.
        """
        import anyio

        from ._backends import wait_for_here

        supervision = Supervision(anyio.Event, wait_for_here())
        starting = anyio.CancelScope()
        supervision.cancel_starting = starting.cancel
        attrs = {**(attributes or {}), "command": list(self.command)}
        started = perf_counter()
        async with (
            self._signals_forwarded(supervision),
            self._running(
                run_id,
                attributes=attrs,
                heartbeat_interval=self.heartbeat,
                stop_starting=starting,
            ) as run,
        ):
            await self._supervise(run, supervision)
        return self._result(run, supervision, perf_counter() - started)

    # -- signals ---------------------------------------------------------------------

    def _signals_forwarded(self, supervision: Supervision) -> AbstractAsyncContextManager[None]:
        """Receive the forwarded signals for the whole run, ``starting`` and ``exited`` too."""
        if not self.forward_signals or threading.current_thread() is not threading.main_thread():
            # Only the main thread may receive signals; elsewhere the caller must stop us.
            return contextlib.nullcontext()

        import anyio

        async def receive(
            *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
        ) -> None:
            with anyio.open_signal_receiver(*_FORWARDED) as signals:
                task_status.started()
                async for signum in signals:
                    self._on_signal(supervision, signum)

        return sidecar(receive)

    def _on_signal(self, supervision: Supervision, signum: int) -> None:
        if supervision.exited.is_set():
            logger.warning(
                "signal noted while the run exits",
                environment=self.name,
                signal=signal_name(signum),
            )
            return
        supervision.received.append(signum)
        process = supervision.process
        if process is None:
            logger.warning(
                "signal received before the command started; stopping the run",
                environment=self.name,
                signal=signal_name(signum),
            )
            supervision.cancel_starting()
        else:
            logger.info(
                "forwarding signal to the command",
                environment=self.name,
                signal=signal_name(signum),
                child_pid=process.pid,
            )
            self._signal(process, signum)
        supervision.stop_requested.set()

    def _signal(self, process: Child, signum: int) -> None:
        if process.returncode is not None:
            return  # reaped: its pid may already belong to someone else
        try:
            if self.new_session:
                os.killpg(process.pid, signum)
            else:
                process.send_signal(signal.Signals(signum))
        except ProcessLookupError:
            pass  # exited meanwhile

    # -- the run ---------------------------------------------------------------------

    async def _supervise(self, run: Run, supervision: Supervision) -> None:
        import anyio

        if self._never_started(run, supervision):
            return
        forward = self.output == "forward"
        try:
            spawn = (
                _deathsig.open_process
                if self.die_with_parent and _deathsig.available()
                else anyio.open_process
            )
            process = await spawn(self.command, **self._spawn_options(forward, run))
        except OSError as exc:
            self._start_failed(run, supervision, exc)
            return
        self._started(run, supervision, process)
        tail = OutputTail(self.tail_lines, self.tail_bytes)
        try:
            async with anyio.create_task_group() as group:
                helpers = anyio.CancelScope()
                group.start_soon(self._help, helpers, run, process, supervision)
                pumps: list[anyio.CancelScope] = []
                if forward:
                    assert process.stdout is not None
                    assert process.stderr is not None
                    for name, stream in (("stdout", process.stdout), ("stderr", process.stderr)):
                        pumps.append(anyio.CancelScope())
                        group.start_soon(self._pump, pumps[-1], stream, name, tail)
                try:
                    returncode = await process.wait()
                finally:
                    helpers.cancel()
                supervision.exited.set()
                # The child is gone, but its output may still be in the pipes, and a
                # grandchild that inherited them may hold them open: read on for a moment.
                for scope in pumps:
                    scope.deadline = anyio.current_time() + _OUTPUT_DRAIN_SECONDS
        except BaseException:
            # Cancelled from outside (or a bug in the pumps): the child must not outlive us.
            with anyio.CancelScope(shield=True):
                await self._stop(process, supervision)
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await process.aclose()
            if forward:
                run.attributes["output_tail"] = tail.text()
        self._settle(run, supervision, returncode)

    # -- the steps of ``_supervise``, shared with ``lifecycle run``'s asyncio runner -------

    def _never_started(self, run: Run, supervision: Supervision) -> bool:
        if not supervision.received:
            return False
        # A signal arrived while ``starting`` was emitted: never start.
        run.exit_code = exit_status(-supervision.received[0])
        run.attributes["received_signal"] = signal_name(supervision.received[0])
        run.outcome = Outcome.TERMINATED
        return True

    def _spawn_options(self, forward: bool, run: Run) -> dict[str, Any]:
        return {
            "stdin": None,
            "stdout": subprocess.PIPE if forward else None,
            "stderr": subprocess.PIPE if forward else None,
            "cwd": self.cwd,
            "env": self._child_env(forward, run),
            "start_new_session": self.new_session,
        }

    def _start_failed(self, run: Run, supervision: Supervision, exc: OSError) -> None:
        status = STATUS_NOT_FOUND if isinstance(exc, FileNotFoundError) else STATUS_NOT_EXECUTABLE
        # The traceback runs through subprocess internals: noise, not news, for the user.
        exc = exc.with_traceback(None)
        run.exit_code = status
        supervision.start_error = exc
        run.outcome, run.error = Outcome.FAILED, exc

    def _started(self, run: Run, supervision: Supervision, process: Child) -> None:
        supervision.process = process
        run.attributes["child_pid"] = process.pid
        for signum in supervision.received:
            # It arrived while the child was being started: the child must hear it too.
            self._signal(process, signum)

    def _child_env(self, forward: bool, run: Run) -> Mapping[str, str] | None:
        starting = run.start_report.event if run.start_report is not None else None
        added = child_environment(self.bus._child_env, starting) if starting is not None else {}
        if not forward and not added:
            return self.env
        env = os.environ if self.env is None else self.env
        if forward and "PYTHONUNBUFFERED" not in env:
            # A Python child block-buffers a pipe: its output would arrive at exit, not live.
            added.setdefault("PYTHONUNBUFFERED", "1")
        return {**env, **added} if added else self.env

    async def _help(
        self,
        scope: anyio.CancelScope,
        run: Run,
        process: anyio.abc.Process,
        supervision: Supervision,
    ) -> None:
        """Heartbeats and the time limit, until the child exits (then ``scope`` is cancelled)."""
        import anyio

        with scope:
            async with anyio.create_task_group() as group:
                if self.heartbeat is not None:
                    group.start_soon(send_heartbeats, run, self.heartbeat)
                await self._enforce(process, supervision)
                await anyio.sleep_forever()

    async def _pump(
        self,
        scope: anyio.CancelScope,
        stream: anyio.abc.ByteReceiveStream,
        name: str,
        tail: OutputTail,
    ) -> None:
        import anyio.to_thread

        sink = _sink(self.stdout if name == "stdout" else self.stderr, name)
        with scope:
            async for chunk in stream:
                tail.feed(name, chunk)
                if sink is not None:
                    # A slow reader of our output must not stall signals and heartbeats.
                    await anyio.to_thread.run_sync(_write, sink, chunk, abandon_on_cancel=True)

    async def _enforce(self, process: Child, supervision: Supervision) -> None:
        """Stop the child at its time limit or on a forwarded signal; kill it after the grace."""
        if not await supervision.wait_for(supervision.stop_requested.wait, self.timeout):
            supervision.timed_out = True
            logger.warning(
                "command outlived its time limit; stopping it",
                environment=self.name,
                timeout=self.timeout,
                child_pid=process.pid,
            )
            self._signal(process, signal.SIGTERM)
        if not await supervision.wait_for(supervision.exited.wait, self.kill_grace):
            supervision.killed_after_grace = True
            logger.warning(
                "command still alive after the grace period; killing it",
                environment=self.name,
                grace=self.kill_grace,
                child_pid=process.pid,
            )
            self._signal(process, signal.SIGKILL)

    async def _stop(self, process: Child, supervision: Supervision) -> None:
        """Stop the child because the run was cancelled: SIGTERM, grace, SIGKILL."""
        if process.returncode is not None:
            return
        self._signal(process, signal.SIGTERM)
        if await supervision.wait_for(process.wait, self.kill_grace):
            return
        supervision.killed_after_grace = True
        self._signal(process, signal.SIGKILL)
        await process.wait()

    def _settle(self, run: Run, supervision: Supervision, returncode: int) -> None:
        run.attributes["returncode"] = returncode
        if returncode < 0:
            run.attributes["signal"] = signal_name(-returncode)
        if supervision.killed_after_grace:
            run.attributes["killed_after_grace"] = True
        if supervision.timed_out:
            run.attributes["timeout"] = self.timeout
            run.exit_code = STATUS_TIMEOUT
            outcome = Outcome.TIMEOUT
        elif supervision.received:
            run.attributes["received_signal"] = signal_name(supervision.received[0])
            run.exit_code = exit_status(returncode)
            outcome = Outcome.TERMINATED
        elif returncode < 0:
            run.exit_code = exit_status(returncode)
            outcome = Outcome.KILLED
        else:
            run.exit_code = returncode
            outcome = Outcome.SUCCEEDED if returncode == 0 else Outcome.FAILED
        run.outcome = outcome

    def _result(self, run: Run, supervision: Supervision, duration: float) -> CommandResult:
        exited = run.exited
        outcome = exited.outcome if exited is not None and exited.outcome else Outcome.FAILED
        returncode = run.attributes.get("returncode")
        return CommandResult(
            run_id=run.run_id,
            outcome=outcome,
            exit_status=run.exit_code if run.exit_code is not None else 1,
            returncode=returncode,
            signal=run.attributes.get("signal"),
            output_tail=run.attributes.get("output_tail", ""),
            error=supervision.start_error,
            exited=exited,
            duration=duration,
        )


def _sink(stream: IO[bytes] | None, name: str) -> IO[bytes] | None:
    if stream is not None:
        return stream
    own = sys.stdout if name == "stdout" else sys.stderr
    if own is None:
        return None
    own.flush()
    return getattr(own, "buffer", None)


def _write(sink: IO[bytes], chunk: bytes) -> None:
    try:
        sink.write(chunk)
        sink.flush()
    except (OSError, ValueError):
        pass  # our own output is gone (closed pipe); the command must still be supervised
