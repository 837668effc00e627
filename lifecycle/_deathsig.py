"""On Linux, a wrapped command dies with its wrapper: ``PR_SET_PDEATHSIG`` in the child.

If ``lifecycle run`` is killed outright (SIGKILL, the OOM killer), nothing of it runs to
stop its child, which would go on unsupervised, with no ``exited`` ever sent. Linux can
signal a process when its parent dies (``prctl(PR_SET_PDEATHSIG)``), but only the process
itself can ask, between fork and exec. Two ways to get there:

- **In the forked child** (``preexec_fn``), when this process has no thread but the one
  starting the child, which is the common case of ``lifecycle run`` (worker threads are
  started only for plain handlers). ``preexec_fn`` is unsafe when other threads exist: the
  child could need a lock that one of them held at fork and that nobody will release. With
  one thread there is no such lock; and what the child runs is prepared beforehand and
  takes no lock at all (a C call through ``_ctypes``, ``getppid``, ``kill``,
  ``sigaction``): no import, no logging, no ``print``, and ``subprocess`` keeps the garbage
  collector off across the fork. The thread count is read from ``/proc/self/task``, which
  sees threads that Python did not start too, right before the child is started.
- **Through a shim** otherwise: the child is started as a tiny Python program that makes
  the call and then execs the command in its own place (same pid, same file descriptors,
  same environment). One extra interpreter start (``-I -S``: no site, no user
  environment), about what ``python -I -S -c pass`` costs (6-10 ms), before the command's
  own start. The shim imports only C modules (``_ctypes``, ``_signal``): ``ctypes`` and
  ``signal`` would each cost more than the rest together. If the command cannot be
  executed, the shim writes the ``errno`` to a pipe that exec would have closed; the wrapper
  raises the same ``OSError`` that ``subprocess`` would have.

Either way:

- If the wrapper died before ``prctl`` ran, the death signal would never come, so the
  child compares ``getppid()`` with the wrapper's pid and kills itself if they differ.
- Python ignores SIGPIPE (and SIGXFSZ) at start-up and an ignored signal stays ignored
  across exec, so their default is restored before exec, as ``subprocess`` does; SIGINT's
  too, which a wrapper started in the background of a shell has ignored.
- Linux ties the death signal to the *thread* that started the child. On asyncio that is
  the event loop's thread, which outlives the run. trio starts children from a worker
  thread that may end while the child lives, so neither is used there. Other systems
  have no such call: neither is used either.
- The signal reaches the command itself, not its own children; and Linux clears it when the
  command is a set-user-ID or set-group-ID program.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # under signal: sigaction and no enum
import asyncio
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from anyio.abc import Process

DEATH_SIGNAL = signal.SIGKILL
"""What the command gets when its wrapper dies: nothing is left to escalate, so SIGKILL."""

# Only modules that cost nothing to import: ``signal`` (enum, functools) would take longer
# than the rest of the shim together, ``ctypes`` ten times more than ``_ctypes``.
_SHIM = """\
import os, sys, _signal
parent, report = int(sys.argv[1]), int(sys.argv[2])
os.set_inheritable(report, False)
try:
    import _ctypes
    class _Libc:
        _handle = _ctypes.dlopen(None, os.RTLD_NOW)
    class _Function(_ctypes.CFuncPtr):
        _flags_ = _ctypes.FUNCFLAG_CDECL
    _Function(("prctl", _Libc()))(1, int(sys.argv[3]), 0, 0, 0)  # PR_SET_PDEATHSIG
except Exception:
    pass  # no death signal, but the command still runs
if os.getppid() != parent:
    os.kill(os.getpid(), _signal.SIGKILL)  # the wrapper died before prctl: go with it
for name in ("SIGPIPE", "SIGXFSZ", "SIGINT"):
    if hasattr(_signal, name):
        _signal.signal(getattr(_signal, name), _signal.SIG_DFL)
try:
    os.execvp(sys.argv[4], sys.argv[4:])
except OSError as exc:
    os.write(report, str(exc.errno or 0).encode())
os._exit(127)
"""


def available() -> bool:
    """Whether children started here can be tied to this process's life."""
    if not sys.platform.startswith("linux") or not sys.executable:
        return False
    try:
        asyncio.get_running_loop()  # the asyncio backend: the loop's thread spawns
    except RuntimeError:
        return False
    return True


def alone() -> bool:
    """Whether this process has one thread (this one): no lock can be held by another."""
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


_prctl: Any = None


def _load_prctl() -> Any:
    """libc's ``prctl``, loaded once (``False`` where it cannot be)."""
    global _prctl
    if _prctl is None:
        try:
            import _ctypes

            class _Libc:
                _handle = _ctypes.dlopen(None, os.RTLD_NOW)  # type: ignore[arg-type]

            class _Function(_ctypes.CFuncPtr):
                _flags_ = _ctypes.FUNCFLAG_CDECL

            _prctl = _Function(("prctl", _Libc()))  # type: ignore[arg-type]
        except Exception:
            _prctl = False
    return _prctl


def child_setup(parent: int) -> Callable[[], None] | None:
    """What the forked child runs before exec (``preexec_fn``); ``None`` without prctl.

    Everything it calls is looked up here, in the parent: in the child it takes no lock,
    imports nothing and allocates next to nothing.
    """
    prctl = _load_prctl()
    if not prctl:
        return None
    getppid, getpid, kill, sigaction = os.getppid, os.getpid, os.kill, _signal.signal
    death, kill_signal, default = int(DEATH_SIGNAL), int(signal.SIGKILL), _signal.SIG_DFL
    restored = [
        getattr(_signal, name)
        for name in ("SIGPIPE", "SIGXFSZ", "SIGINT")
        if hasattr(_signal, name)
    ]

    def setup() -> None:
        # An exception here would fail the start of the command (SubprocessError), which
        # the shim does not do either: without the death signal, the command still runs.
        # Plain try/except: in the child there is no log to write to, and suppress() would
        # be one more object to make.
        try:  # noqa: SIM105
            prctl(1, death, 0, 0, 0)  # PR_SET_PDEATHSIG
        except Exception:  # noqa: S110
            pass
        if getppid() != parent:
            kill(getpid(), kill_signal)  # the wrapper died before prctl: go with it
        for signum in restored:
            try:  # noqa: SIM105
                sigaction(signum, default)
            except (OSError, ValueError):
                pass

    return setup


_forwards_options: bool | None = None


def _backend_takes_preexec_fn(backend: Any) -> bool:
    """Whether anyio's backend hands extra options on to ``subprocess`` (recent anyio)."""
    global _forwards_options
    if _forwards_options is None:
        import inspect

        try:
            parameters = list(inspect.signature(backend.open_process).parameters.values())
        except (TypeError, ValueError):
            parameters = []
        _forwards_options = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
    return _forwards_options


def shim_command(command: Sequence[str], report: int) -> list[str]:
    """The shim's command line: it reports a failed exec of ``command`` on fd ``report``."""
    shim = [sys.executable, "-I", "-S", "-c", _SHIM, str(os.getpid())]
    return [*shim, str(report), str(int(DEATH_SIGNAL)), *command]


async def open_process(command: Sequence[str], **options: Any) -> Process:
    """``anyio.open_process(command, **options)``, with the death signal; the same errors.

    Set in the forked child when this process has one thread, else through the shim.

    Raises:
        OSError: the command could not be executed (``FileNotFoundError`` when it does
            not exist, ``PermissionError`` when it is not executable, ...).
    """
    if alone():
        try:
            from anyio._core._eventloop import get_async_backend
        except ImportError:  # pragma: no cover - another anyio: the shim does it
            pass
        else:
            backend = get_async_backend()
            setup = child_setup(os.getpid()) if _backend_takes_preexec_fn(backend) else None
            if setup is not None:
                process: Process = await backend.open_process(
                    list(command), preexec_fn=setup, **options
                )
                return process
    return await _open_through_shim(command, **options)


async def _open_through_shim(command: Sequence[str], **options: Any) -> Process:
    import anyio.to_thread

    read_end, write_end = os.pipe()
    try:
        try:
            process = await anyio.open_process(
                shim_command(command, write_end), pass_fds=(write_end,), **options
            )
        finally:
            os.close(write_end)
        try:
            # Empty at exec (the pipe closes with it), or the errno of a failed exec. Not
            # abandoned on cancellation: the read ends as soon as the shim execs or exits.
            report = await anyio.to_thread.run_sync(os.read, read_end, 32)
        except BaseException:
            with anyio.CancelScope(shield=True):
                process.kill()
                await process.aclose()
            raise
    finally:
        os.close(read_end)
    if report:
        with anyio.CancelScope(shield=True):
            await process.aclose()  # the shim has exited, or is about to
        errno = int(report)
        raise OSError(errno, os.strerror(errno), command[0])
    return process
