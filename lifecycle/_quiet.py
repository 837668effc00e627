"""``lifecycle run --quiet``: say nothing about a run that succeeded, everything otherwise.

cron mails whatever a job writes; a wrapper that writes two lines for every successful run
mails every night. While quiet, this process's standard output and error (file descriptors 1
and 2, so that the command's own output, the lines the wrapper and its handlers log and
anything a library writes at the C level are all caught) go to temporary files; at the end
they are thrown away if the run succeeded, or written out, each to its own stream, if not
(as moreutils' ``chronic`` does).
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import IO, TYPE_CHECKING, final

if TYPE_CHECKING:
    from types import TracebackType

_CHUNK = 1 << 16


@final  # so that __enter__ may say Quiet: Self would import typing_extensions
class Quiet:
    """Hold back file descriptors 1 and 2 until :meth:`__exit__`; set :attr:`succeeded`.

    Whatever ends the ``with`` block without setting ``succeeded`` (an exception, a
    cancellation) shows the held-back output: only a success is silent.
    """

    def __init__(self) -> None:
        self.succeeded = False
        self._held: list[tuple[int, int, IO[bytes]]] = []  # (fd, saved copy, buffer)

    def __enter__(self) -> Quiet:
        import tempfile

        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        for fd in (1, 2):
            buffer = tempfile.TemporaryFile()  # closed in __exit__
            self._held.append((fd, os.dup(fd), buffer))
            os.dup2(buffer.fileno(), fd)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                with contextlib.suppress(OSError, ValueError):  # a closed stream: nothing held
                    stream.flush()
        held, self._held = self._held, []
        for fd, saved, buffer in held:
            os.dup2(saved, fd)
            os.close(saved)
            with buffer:
                if not self.succeeded or exc_type is not None:
                    _replay(buffer, fd)


def _replay(buffer: IO[bytes], fd: int) -> None:
    buffer.seek(0)
    while chunk := buffer.read(_CHUNK):
        view = memoryview(chunk)
        while view:
            try:
                written = os.write(fd, view)
            except OSError:
                return  # the reader is gone (a closed pipe): nobody to tell
            view = view[written:]
