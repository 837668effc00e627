"""``lifecycle run``'s command on asyncio alone: no anyio to import before the job starts.

A wrapped job's start-up is mostly imports, and anyio's (with ``typing_extensions``, its
sockets and TLS streams) weighed about as much as asyncio's. :func:`execute` runs what
:meth:`SubprocessEnvironment.execute <lifecycle.SubprocessEnvironment.execute>` runs, with
the environment's own steps (the same events, outcomes and statuses), and asyncio's
tasks, signal handlers and subprocesses where that method has anyio's.

It is ``lifecycle run``'s alone, where the run is the whole program: a program of the
user's may hold anyio cancel scopes around ``execute``, and anyio delivers their
cancellation again and again where this module's shielded steps (stopping the child,
``exited``) expect asyncio's, delivered once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
from time import perf_counter
from typing import TYPE_CHECKING, Any

from . import _deathsig, _subprocess
from ._backends._asyncio import shielded, wait_for
from ._environment import Run, _classify
from ._event import Outcome, new_id
from ._exceptions import StartAborted
from ._heartbeat import send_heartbeats
from ._subprocess import (
    _FORWARDED,
    OutputTail,
    Supervision,
    _nothing,
    _sink,
    _write,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Iterator, Sequence

    from ._subprocess import CommandResult, SubprocessEnvironment

__all__ = ["execute"]

# What one read of a child's pipe takes at most, as anyio's streams.
_CHUNK = 65536


async def execute(environment: SubprocessEnvironment, run_id: str | None = None) -> CommandResult:
    """Run the environment's command once, as ``environment.execute(run_id)`` does.

    Raises:
        StartAborted: a critical ``starting`` handler failed; the command never ran.
    """
    supervision = Supervision(asyncio.Event, wait_for)
    started = perf_counter()
    run = Run(environment, run_id or new_id(), {"command": list(environment.command)})
    with _signals_forwarded(environment, supervision):
        async with environment._lifespan(run):
            await _start(environment, run, supervision)
            try:
                await _supervise(environment, run, supervision)
            except BaseException as exc:
                outcome, exit_code = _classify(exc)
                await environment._exited(
                    run, outcome, error=exc, exit_code=exit_code, within=_shielded
                )
                raise
            await environment._exited(
                run, run.outcome or Outcome.SUCCEEDED, error=run.error, within=_shielded
            )
    return environment._result(run, supervision, perf_counter() - started)


@contextlib.contextmanager
def _signals_forwarded(
    environment: SubprocessEnvironment, supervision: Supervision
) -> Iterator[None]:
    """Forward the signals for the whole run, ``starting`` and ``exited`` too."""
    if not environment.forward_signals or threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    for signum in _FORWARDED:
        loop.add_signal_handler(signum, environment._on_signal, supervision, signum)
    try:
        yield
    finally:
        for signum in _FORWARDED:
            loop.remove_signal_handler(signum)


async def _start(environment: SubprocessEnvironment, run: Run, supervision: Supervision) -> None:
    """Emit ``starting``, in a task of its own that a signal cancels (and nothing else)."""
    starting = environment._starting_event(run, environment.heartbeat)
    emit = asyncio.ensure_future(environment.emit(starting))
    stopped = False

    def stop() -> None:
        nonlocal stopped
        stopped = True
        emit.cancel()

    supervision.cancel_starting = stop
    try:
        run.start_report = await emit
    except asyncio.CancelledError:
        if not stopped or _cancelling():
            await environment._exited(run, Outcome.CANCELLED, within=_shielded)
            raise
        # A signal stopped the emit (and said so): the run goes on to end at once, without
        # a start report, as in Environment._running.
    finally:
        supervision.cancel_starting = _nothing
    if run.start_report is not None and run.start_report.critical_failures:
        aborted = StartAborted(environment.name, run.start_report)
        await environment._exited(run, Outcome.ABORTED, error=aborted, within=_shielded)
        raise aborted


def _cancelling() -> bool:
    """Whether this task itself is being cancelled (always unknown before Python 3.11)."""
    task = asyncio.current_task()
    if sys.version_info >= (3, 11) and task is not None:
        return task.cancelling() > 0
    return False


async def _supervise(
    environment: SubprocessEnvironment, run: Run, supervision: Supervision
) -> None:
    if environment._never_started(run, supervision):
        return
    forward = environment.output == "forward"
    options = environment._spawn_options(forward, run)
    try:
        process = await _spawn(environment, options)
    except OSError as exc:
        environment._start_failed(run, supervision, exc)
        return
    environment._started(run, supervision, process)
    tail = OutputTail(environment.tail_lines, environment.tail_bytes)
    pumps: list[asyncio.Future[None]] = []
    if forward:
        assert process.stdout is not None
        assert process.stderr is not None
        for name, stream in (("stdout", process.stdout), ("stderr", process.stderr)):
            pumps.append(asyncio.ensure_future(_pump(environment, stream, name, tail)))
    helper = asyncio.ensure_future(_help(environment, run, process, supervision))
    try:
        try:
            returncode = await process.wait()
        finally:
            helper.cancel()
        supervision.exited.set()
        await _reap(helper)
        if pumps:
            # The child is gone, but its output may still be in the pipes, and a grandchild
            # that inherited them may hold them open: read on for a moment.
            await asyncio.wait(pumps, timeout=_subprocess._OUTPUT_DRAIN_SECONDS)
    except BaseException:
        # Cancelled from outside (or a bug in the pumps): the child must not outlive us.
        await _shielded(environment._stop(process, supervision))
        raise
    finally:
        for pump in pumps:
            pump.cancel()
        if pumps:
            await _shielded(asyncio.wait(pumps))
        process.close()
        if forward:
            run.attributes["output_tail"] = tail.text()
    environment._settle(run, supervision, returncode)


class _Protocol(asyncio.subprocess.SubprocessStreamProtocol):
    """asyncio's protocol for a child's streams, which also tells when the child exited."""

    def __init__(self) -> None:
        super().__init__(limit=_CHUNK, loop=asyncio.get_running_loop())
        self.exited = asyncio.Event()

    def process_exited(self) -> None:
        super().process_exited()
        self.exited.set()


class _Child:
    """A child process whose :meth:`wait` ends when the child does.

    asyncio's own ``Process.wait`` ends once its pipes are closed too, which a grandchild
    that inherited them may put off for as long as it lives (anyio's processes are made
    the same way, for the same reason).
    """

    def __init__(self, transport: asyncio.SubprocessTransport, protocol: _Protocol) -> None:
        self._process = asyncio.subprocess.Process(transport, protocol, asyncio.get_running_loop())
        self._transport = transport
        self._exited = protocol.exited
        self.stdout = self._process.stdout
        self.stderr = self._process.stderr

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    def send_signal(self, signal: int) -> None:
        self._process.send_signal(signal)

    def kill(self) -> None:
        self._process.kill()

    async def wait(self) -> int:
        await self._exited.wait()
        returncode = self._process.returncode
        assert returncode is not None
        return returncode

    def close(self) -> None:
        """Close our ends of its pipes (it has exited, or is killed: the transport's way)."""
        for fd in (1, 2):
            pipe = self._transport.get_pipe_transport(fd)
            if pipe is not None:
                pipe.close()
        if self.returncode is not None:
            self._transport.close()


async def _start_child(command: Sequence[str], **options: Any) -> _Child:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.subprocess_exec(_Protocol, *command, **options)
    return _Child(transport, protocol)


async def _spawn(environment: SubprocessEnvironment, options: dict[str, Any]) -> _Child:
    """Start the command, tied to this process's life where it can be (see _deathsig)."""
    command = environment.command
    if not (environment.die_with_parent and _deathsig.available()):
        return await _start_child(command, **options)
    if _deathsig.alone():
        setup = _deathsig.child_setup(os.getpid())
        if setup is not None:
            return await _start_child(command, preexec_fn=setup, **options)
    read_end, write_end = os.pipe()
    try:
        try:
            child = await _start_child(
                _deathsig.shim_command(command, write_end), pass_fds=(write_end,), **options
            )
        finally:
            os.close(write_end)
        try:
            # Empty at exec (the pipe closes with it), or the errno of a failed exec.
            loop = asyncio.get_running_loop()
            report = await loop.run_in_executor(None, os.read, read_end, 32)
        except BaseException:
            child.kill()
            await _shielded(child.wait())
            child.close()
            raise
    finally:
        os.close(read_end)
    if report:
        await _shielded(child.wait())  # the shim has exited, or is about to
        child.close()
        errno = int(report)
        raise OSError(errno, os.strerror(errno), command[0])
    return child


async def _help(
    environment: SubprocessEnvironment,
    run: Run,
    process: _Child,
    supervision: Supervision,
) -> None:
    """Heartbeats and the time limit, until the child exits (then this task is cancelled)."""
    beats = None
    if environment.heartbeat is not None:
        loop = asyncio.get_running_loop()
        beats = asyncio.ensure_future(
            send_heartbeats(run, environment.heartbeat, loop.time, asyncio.sleep)
        )
    try:
        await environment._enforce(process, supervision)
        await asyncio.get_running_loop().create_future()  # until cancelled
    finally:
        if beats is not None:
            beats.cancel()
            await _reap(beats)


async def _pump(
    environment: SubprocessEnvironment, stream: asyncio.StreamReader, name: str, tail: OutputTail
) -> None:
    sink = _sink(environment.stdout if name == "stdout" else environment.stderr, name)
    loop = asyncio.get_running_loop()
    while chunk := await stream.read(_CHUNK):
        tail.feed(name, chunk)
        if sink is not None:
            # A slow reader of our output must not stall signals and heartbeats.
            await loop.run_in_executor(None, _write, sink, chunk)


async def _reap(task: asyncio.Future[Any]) -> None:
    """Wait for a task this module cancelled; its cancellation is not ours to raise."""
    await asyncio.wait((task,))
    if not task.cancelled():
        task.result()


async def _shielded(step: Awaitable[object], timeout: float | None = None) -> bool:
    """Run ``step`` to its end or for ``timeout`` seconds, whatever cancels this task.

    Returns whether it ended in time (past it, it is cancelled). The step's exception is
    raised; a cancellation of this task meanwhile is raised once the step is over.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(step)
    deadline = None if timeout is None else loop.time() + timeout
    cancelled = False
    # anyio's shield too, where anyio is in use: its cancel scopes cancel a task again and
    # again, where asyncio's cancellation comes once and is caught here.
    with shielded():
        while not task.done():
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                task.cancel()
                deadline = None  # now wait for it to go, however long that takes
                continue
            try:
                await asyncio.wait((task,), timeout=left)
            except asyncio.CancelledError:
                cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    if task.cancelled():
        return False
    task.result()
    return True
