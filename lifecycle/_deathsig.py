"""On Linux, a wrapped command dies with its wrapper: ``PR_SET_PDEATHSIG`` through a shim.

If ``lifecycle run`` is killed outright (SIGKILL, the OOM killer), nothing of it runs to
stop its child, which would go on unsupervised, with no ``exited`` ever sent. Linux can
signal a process when its parent dies (``prctl(PR_SET_PDEATHSIG)``), but only the process
itself can ask, between fork and exec. ``subprocess``'s ``preexec_fn`` could, but it is not
safe once threads exist (the wrapper has worker threads by then: the child could deadlock
on a lock a thread held at fork), and anyio's ``open_process`` does not take it anyway. So
the child is started as a tiny Python shim that makes the call and then execs the command
in its own place: same pid, same file descriptors, same environment.

What the shim costs and how it behaves:

- One extra interpreter start (``-I -S``: no site, no user environment) per run, about
  what ``python -I -S -c pass`` costs (about 10 ms), before the command's own start.
  The shim imports only C modules (``_ctypes``, ``_signal``): ``ctypes`` and ``signal``
  would each cost more than the rest together.
- If the wrapper died before the shim's ``prctl`` ran, the death signal would never come,
  so the shim compares ``getppid()`` with the wrapper's pid and kills itself if they differ.
- If the command cannot be executed, the shim writes the ``errno`` to a pipe that exec
  would have closed; the wrapper raises the same ``OSError`` that ``subprocess`` would have.
- Python ignores SIGPIPE (and SIGXFSZ) at start-up and an ignored signal stays ignored
  across exec, so the shim restores their default before exec, as ``subprocess`` does.
- Linux ties the death signal to the *thread* that started the child. On asyncio that is
  the event loop's thread, which outlives the run. trio starts children from a worker
  thread that may end while the child lives, so the shim is not used there. Other systems
  have no such call: the shim is not used either.
- The signal reaches the command itself, not its own children; and Linux clears it when the
  command is a set-user-ID or set-group-ID program.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

if TYPE_CHECKING:
    from collections.abc import Sequence

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


async def open_process(command: Sequence[str], **options: Any) -> Process:
    """``anyio.open_process(command, **options)`` through the shim; the same errors.

    Raises:
        OSError: the command could not be executed (``FileNotFoundError`` when it does
            not exist, ``PermissionError`` when it is not executable, ...).
    """
    read_end, write_end = os.pipe()
    try:
        try:
            shim = [sys.executable, "-I", "-S", "-c", _SHIM, str(os.getpid())]
            shim += [str(write_end), str(int(DEATH_SIGNAL))]
            process = await anyio.open_process(
                [*shim, *command],
                pass_fds=(write_end,),
                **options,
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
