"""Batch jobs: the last-run gauges to a Pushgateway group and to a node-exporter textfile.

Only gauges leave this way. A counter or a histogram of a process that lives for one run
says 1 in every push and every file, so ``increase()`` over it is always 0; and its
``_created`` series would only say when the process started.

A value not known to this process (the last success, after a failed run) is left out of
the export, and the export replaces only what it carries: the Pushgateway's ``POST`` keeps
the group's other metrics (the pattern the Prometheus client libraries document for
batch jobs), and the textfile is read back and merged under a lock, which does the same.
So the last success survives any number of failed runs, and the canonical alert
``time() - lifecycle_run_last_success_timestamp_seconds > N`` fires while a job keeps
failing. Each environment has its own group (its name is in the grouping key) and its own
series in a shared textfile: jobs never overwrite each other.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import urllib.error
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING

from prometheus_client import generate_latest, pushadd_to_gateway

from lifecycle import redact_url

from ._last_run import Families

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from prometheus_client import Metric

    from lifecycle import Event

    from ._last_run import LastRuns


class Export:
    """Writes one environment's last-run gauges out (a sync handler, run in a thread)."""

    def __init__(
        self,
        runs: LastRuns,
        *,
        pushgateway: str | None,
        job: str,
        grouping_key: Mapping[str, str] | None,
        timeout: float,
        textfile: str | os.PathLike[str] | None,
    ) -> None:
        self.runs = runs
        self.pushgateway = pushgateway
        self.job = job
        self.grouping_key = dict(grouping_key or {})
        self.timeout = timeout
        self.textfile = None if textfile is None else os.fspath(textfile)

    def __call__(self, event: Event) -> None:
        name = event.environment.name
        families = self.runs.families([name])
        if not families:
            return
        if self.textfile is not None:
            merge_textfile(self.textfile, families, self.runs, name)
        if self.pushgateway is not None:
            try:
                pushadd_to_gateway(
                    self.pushgateway,
                    job=self.job,
                    registry=Families(families),
                    grouping_key={self.runs.name_label: name, **self.grouping_key},
                    timeout=self.timeout,
                )
            except urllib.error.HTTPError as exc:
                # The Pushgateway says why in the body (an inconsistent push is a 400), and
                # the error holds the response open until it is collected.
                with exc:
                    detail = exc.read(500).decode(errors="replace").strip()
                raise OSError(
                    f"Pushgateway {redact_url(self.pushgateway)} answered {exc.code} "
                    f"{exc.reason}" + (f": {detail}" if detail else "")
                ) from None


# Two runs of one process exiting at once: flock would serialise two opens of the
# directory too, but not on a platform without it.
_textfile_lock = threading.Lock()


def merge_textfile(path: str, families: list[Metric], runs: LastRuns, name: str) -> None:
    """Replace ``name``'s series of ``families`` in the textfile at ``path``, keep the rest.

    Only the families of ``runs`` are kept from the file: it is this adapter's. The file
    is merged line by line, not parsed into samples: it is written here, one sample per
    line with the name label first, and prometheus_client's parser alone takes 0.2 ms per
    environment in the file, where this whole merge takes 0.015 ms (a listener writing
    the textfile of a thousand environments spent a quarter of a second per event).

    Raises:
        ValueError: the file is there but not in the text format (overwriting it would
            lose the other environments' last successes, and with them their alerts).
    """
    new = _blocks(generate_latest(Families(families)).decode(), path)
    directory = os.path.dirname(os.path.abspath(path))
    with _textfile_lock, _locked(directory):
        try:
            with open(path, encoding="utf-8") as file:
                text = file.read()
        except FileNotFoundError:
            text = ""
        existing = _blocks(text, path)
        labelled = f'{{{runs.name_label}="'
        ours = f'{labelled}{_escape(name)}"'
        lines: list[str] = []
        for family in sorted(runs.family_names & (new.keys() | existing.keys())):
            headers, samples = new.get(family) or existing[family]
            # A series without our label first is a leftover of another configuration.
            kept = [
                line
                for line in existing.get(family, ([], []))[1]
                if line[len(family) :].startswith(labelled)
            ]
            if family in new:
                # This export carries the family: this environment's series are replaced.
                kept = [line for line in kept if not _labelled(line, family, ours)] + samples
            if kept:
                lines += [*headers, *sorted(kept)]
        _write_atomically(path, "".join(f"{line}\n" for line in lines))


# A sample line: a metric name, maybe labels, a value, maybe a timestamp.
_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?[ \t]+\S+([ \t]+\S+)?\Z")


def _blocks(text: str, path: str) -> dict[str, tuple[list[str], list[str]]]:
    """The lines of each family in an exposition: its comments, and its samples."""
    blocks: dict[str, tuple[list[str], list[str]]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("#"):
            words = line.split(maxsplit=3)
            if len(words) >= 3 and words[1] in ("HELP", "TYPE"):
                blocks.setdefault(words[2], ([], []))[0].append(line)
            continue
        if not line.strip():
            continue
        sample = _SAMPLE.match(line)
        if sample is None:
            raise ValueError(
                f"textfile {path} is not in the Prometheus text format (line {number}: "
                f"{line[:80]!r}): fix or remove it; it holds other runs' values, which "
                "overwriting it would lose"
            )
        blocks.setdefault(sample[1], ([], []))[1].append(line)
    return blocks


def _labelled(line: str, family: str, labels: str) -> bool:
    """Whether the sample ``line`` of ``family`` starts its labels with ``labels``."""
    rest = line[len(family) :]
    return rest.startswith(labels) and rest[len(labels) : len(labels) + 1] in (",", "}")


def _escape(value: str) -> str:
    """A label value as the text format writes it."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _write_atomically(path: str, text: str) -> None:
    # Written beside it and renamed over it: node-exporter never reads half a file.
    temporary = f"{path}.{os.getpid()}.{threading.get_ident()}"
    try:
        with open(temporary, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.remove(temporary)
        raise


if sys.platform == "win32":  # pragma: no cover - no flock; the thread lock still holds

    @contextmanager
    def _locked(directory: str) -> Iterator[None]:
        yield

else:
    import fcntl

    @contextmanager
    def _locked(directory: str) -> Iterator[None]:
        # The directory, not the file: the file is replaced by a rename at every write,
        # and a lock file would be one more file in node-exporter's directory.
        fd = os.open(directory, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock
