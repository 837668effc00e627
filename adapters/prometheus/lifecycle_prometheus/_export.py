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
import sys
import threading
import urllib.error
from contextlib import contextmanager
from typing import TYPE_CHECKING

from prometheus_client import Metric, pushadd_to_gateway, write_to_textfile
from prometheus_client.parser import text_string_to_metric_families

from lifecycle import redact_url

from ._last_run import Families

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from prometheus_client.samples import Sample

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

    Only the families of ``runs`` are kept from the file: it is this adapter's.

    Raises:
        ValueError: the file is there but not in the text format (overwriting it would
            lose the other environments' last successes, and with them their alerts).
    """
    name_label = runs.name_label
    directory = os.path.dirname(os.path.abspath(path))
    with _textfile_lock, _locked(directory):
        try:
            with open(path, encoding="utf-8") as file:
                text = file.read()
        except FileNotFoundError:
            text = ""
        try:
            existing = {family.name: family for family in text_string_to_metric_families(text)}
        except ValueError as exc:
            raise ValueError(
                f"textfile {path} is not in the Prometheus text format ({exc}): fix or remove "
                "it; it holds other runs' values, which overwriting it would lose"
            ) from None
        merged: list[Metric] = []
        for family in families:
            kept = existing.pop(family.name, None)
            samples = [*family.samples]
            if kept is not None:
                samples += [s for s in kept.samples if s.labels.get(name_label) not in (None, name)]
            merged.append(_family(family, samples))
        for family in existing.values():
            # Families this export does not carry keep all their series (the last success
            # after a failed run). A series without our label is a leftover of another
            # configuration, and goes.
            if family.name in runs.family_names:
                samples = [s for s in family.samples if s.labels.get(name_label) is not None]
                if samples:
                    merged.append(_family(family, samples))
        # Written beside it and renamed over it: node-exporter never reads half a file.
        write_to_textfile(path, Families(sorted(merged, key=lambda family: family.name)))


def _family(like: Metric, samples: list[Sample]) -> Metric:
    family = Metric(like.name, like.documentation, like.type)
    family.samples = sorted(samples, key=lambda s: sorted(s.labels.items()))
    return family


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
