"""A real Prometheus, Pushgateway and node-exporter on loopback, and promtool.

Each binds a free port of its own and keeps its state in a temporary directory (never the
Debian packages' /var/lib paths, never the standard ports a packaged service may hold).
Prometheus scrapes and evaluates every 250 ms, so an alert follows a push in about a second.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from lifecycle_testing import stop_process, wait_serving
from prometheus_client.parser import text_string_to_metric_families

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

ALERT = "LifecycleJobNotSucceeding"
# The rule the adapter's README tells batch users to copy, with a threshold of one hour.
RULES = f"""\
groups:
  - name: lifecycle
    rules:
      - alert: {ALERT}
        expr: time() - lifecycle_run_last_success_timestamp_seconds > 3600
"""
_BINARIES = {
    "prometheus": "/usr/bin/prometheus",
    "pushgateway": "/usr/bin/prometheus-pushgateway",
    "node_exporter": "/usr/bin/prometheus-node-exporter",
    "promtool": "/usr/bin/promtool",
}
_PACKAGES = "prometheus prometheus-pushgateway prometheus-node-exporter"


def binary(name: str) -> str:
    found = shutil.which(Path(_BINARIES[name]).name) or _BINARIES[name]
    if not Path(found).exists():
        pytest.fail(f"{name} is not installed: apt-get install {_PACKAGES} (.ci/run does)")
    return found


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Exposition text as {(sample name, labels): value}."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def promtool_check_metrics(text: str) -> None:
    """``promtool check metrics`` on an exposition: the test fails on any complaint."""
    done = subprocess.run(
        [binary("promtool"), "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, ""), text


def promtool_check_rules(path: Path) -> None:
    """``promtool check rules`` on a rule file: the test fails unless it is valid."""
    done = subprocess.run(
        [binary("promtool"), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@dataclass
class Stack:
    """The servers' addresses and the directories the tests write into."""

    prometheus: str
    pushgateway: str
    textfile_dir: Path
    listen_port: int
    """A free port Prometheus scrapes from the start (job lifecycle-listen), for an endpoint
    under test: a target discovered later waits for the next target update, up to 5 s."""

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.prometheus}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def firing(self, name: str) -> bool:
        """Whether the alert fires for the environment ``name``."""
        return any(
            alert["labels"].get("alertname") == ALERT
            and alert["labels"].get("lifecycle_environment") == name
            and alert["state"] == "firing"
            for alert in self.api("alerts")["alerts"]
        )

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result


@contextmanager
def running_stack(free_port: Callable[[], int]) -> Iterator[Stack]:
    """Start the three servers, each on a port from ``free_port`` (anyio's
    ``free_tcp_port_factory``: they must be told theirs); stop them and clean up on exit."""
    root = Path(tempfile.mkdtemp(prefix="lc-prom-"))
    textfile_dir = root / "textfile"
    textfile_dir.mkdir()
    pushgateway_port, node_port, prometheus_port = free_port(), free_port(), free_port()
    listen_port = free_port()
    (root / "rules.yml").write_text(RULES)
    (root / "prometheus.yml").write_text(
        json.dumps(  # JSON is YAML
            {
                "global": {
                    "scrape_interval": "250ms",
                    "scrape_timeout": "250ms",
                    "evaluation_interval": "250ms",
                },
                "rule_files": [str(root / "rules.yml")],
                "scrape_configs": [
                    {
                        "job_name": "pushgateway",
                        "honor_labels": True,
                        "static_configs": [{"targets": [f"127.0.0.1:{pushgateway_port}"]}],
                    },
                    {
                        "job_name": "node",
                        "static_configs": [{"targets": [f"127.0.0.1:{node_port}"]}],
                    },
                    {
                        "job_name": "lifecycle-listen",
                        "static_configs": [{"targets": [f"127.0.0.1:{listen_port}"]}],
                    },
                ],
            }
        )
    )
    commands = {
        "pushgateway": [
            binary("pushgateway"),
            f"--web.listen-address=127.0.0.1:{pushgateway_port}",
            f"--persistence.file={root / 'pushgateway.data'}",
        ],
        "node_exporter": [
            binary("node_exporter"),
            f"--web.listen-address=127.0.0.1:{node_port}",
            "--collector.disable-defaults",
            "--collector.textfile",
            f"--collector.textfile.directory={textfile_dir}",
        ],
        "prometheus": [
            binary("prometheus"),
            f"--config.file={root / 'prometheus.yml'}",
            f"--storage.tsdb.path={root / 'data'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}",
        ],
    }
    ready = {
        "pushgateway": f"http://127.0.0.1:{pushgateway_port}/-/ready",
        "node_exporter": f"http://127.0.0.1:{node_port}/metrics",
        "prometheus": f"http://127.0.0.1:{prometheus_port}/-/ready",
    }
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for name, command in commands.items():
            log = root / f"{name}.log"
            with log.open("wb") as out:
                processes.append(
                    subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=root)
                )
        for (name, url), process in zip(ready.items(), processes, strict=True):
            wait_serving(url, process, log=root / f"{name}.log", limit=30)
        yield Stack(
            prometheus=f"http://127.0.0.1:{prometheus_port}",
            pushgateway=f"http://127.0.0.1:{pushgateway_port}",
            textfile_dir=textfile_dir,
            listen_port=listen_port,
        )
    finally:
        for process in processes:
            process.terminate()  # all at once, then wait for each
        for process in processes:
            stop_process(process)
        shutil.rmtree(root, ignore_errors=True)
