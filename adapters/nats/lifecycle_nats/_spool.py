"""The on-disk spool: events a process could not send before it had to exit.

One JSON file per event, named so that names sort in the order the events were spooled
(``<ns since epoch>-<pid>-<seq>.json``). A file is written under a temporary name, fsynced,
and renamed into place (then the directory is fsynced), so a crash leaves either the whole
file or none. A file is removed only after the server acknowledged its event; until then a
second process may send it too, and JetStream's duplicate window (``Nats-Msg-Id``) drops
the copy.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

__all__ = ["Spool", "SpooledMessage"]

logger = structlog.get_logger("lifecycle.nats")

_counter = itertools.count()


@dataclass(frozen=True)
class SpooledMessage:
    """One message as it will be published: subject, ``Nats-Msg-Id``, payload, signal.

    ``headers`` are the other headers it goes with (the run's ``traceparent`` and
    ``tracestate``), as (name, value) pairs.
    """

    subject: str
    msg_id: str
    payload: bytes
    signal: str
    headers: tuple[tuple[str, str], ...] = ()


class Spool:
    """A directory of spooled messages.

    Args:
        directory: created (with parents, mode 0700) on the first write.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def __repr__(self) -> str:
        return f"<Spool {str(self.directory)!r}>"

    def write(self, messages: list[SpooledMessage]) -> list[Path]:
        """Write ``messages`` in order, durably; return their files.

        Raises:
            OSError: the directory cannot be created or written.
        """
        if not messages:
            return []
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        paths: list[Path] = []
        pid = os.getpid()
        stamp = time.time_ns()
        for message in messages:
            name = f"{stamp:020d}-{pid}-{next(_counter):08d}.json"
            record: dict[str, Any] = {
                "subject": message.subject,
                "msg_id": message.msg_id,
                "signal": message.signal,
                "payload": message.payload.decode(),
            }
            if message.headers:
                record["headers"] = dict(message.headers)
            data = json.dumps(record, separators=(",", ":")).encode()
            temporary = self.directory / f".{name}.tmp"
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            path = self.directory / name
            os.replace(temporary, path)
            paths.append(path)
        self._sync_directory()
        return paths

    def _sync_directory(self) -> None:
        with contextlib.suppress(OSError):  # not every file system lets a directory be fsynced
            fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def load(self) -> list[tuple[Path, SpooledMessage]]:
        """The spooled messages, oldest first. Unreadable files are renamed ``*.bad`` and logged.

        A directory that cannot be read (a path through a regular file, no permission) holds
        nothing for this process: logged, never raised, so that a broken spool never keeps a
        job from running while NATS may well be up.
        """
        try:
            names = sorted(
                name
                for name in os.listdir(self.directory)
                if name.endswith(".json") and not name.startswith(".")
            )
        except FileNotFoundError:
            return []
        except OSError as exc:
            logger.warning(
                "the spool cannot be read; events go to NATS directly, and any that NATS "
                "has not acknowledged at exit are lost",
                spool=str(self.directory),
                error=f"{type(exc).__name__}: {exc}",
            )
            return []
        found: list[tuple[Path, SpooledMessage]] = []
        for name in names:
            path = self.directory / name
            try:
                record: Any = json.loads(path.read_bytes())
                message = SpooledMessage(
                    subject=str(record["subject"]),
                    msg_id=str(record["msg_id"]),
                    payload=str(record["payload"]).encode(),
                    signal=str(record.get("signal", "")),
                    headers=tuple(
                        (str(name), str(value))
                        for name, value in dict(record.get("headers") or {}).items()
                    ),
                )
            except FileNotFoundError:
                continue  # sent and removed by another process just now
            except (OSError, ValueError, KeyError, TypeError) as exc:
                logger.error(
                    "unreadable spool file set aside",
                    path=str(path),
                    error=f"{type(exc).__name__}: {exc}",
                )
                with contextlib.suppress(OSError):
                    os.replace(path, path.with_suffix(".bad"))
                continue
            found.append((path, message))
        return found

    @staticmethod
    def remove(path: Path) -> None:
        """Forget one spooled message (it was acknowledged)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
