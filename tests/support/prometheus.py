"""The real Prometheus (Debian's package `prometheus`, with `promtool`) against a running
system: the scrape jobs of deploy/prometheus/prometheus.yml rendered for the system's ports,
and the same rules file."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from crosslogic.ports import free_port
from crosslogic.stack import Stack
from tests.support.dockerfile import REPO
from tests.support.metrics import node_metrics
from tests.support.waiting import wait_until

DEPLOY = REPO / "deploy" / "prometheus"
CONFIG = DEPLOY / "prometheus.yml"
RULES = DEPLOY / "rules.yml"
RULES_TEST = DEPLOY / "rules_test.yml"


def binary(name: str) -> str:
    """`prometheus` or `promtool`. Installed by .ci/run; a missing one fails the test (never
    a skip: CI must run these), unless apt-get can install it here and now."""
    found = shutil.which(name)
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", "prometheus"],
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            capture_output=True,
            check=False,
        )
        found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: install Debian's package prometheus (.ci/run does)")
    return found


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary("promtool"), *args], capture_output=True, text=True, cwd=cwd, check=False
    )


def config_for(stack: Stack, *, rules: Path = RULES) -> dict[str, Any]:
    """prometheus.yml with this system's addresses (static targets and the nodes' discovery
    URL), scraped every second."""
    config = yaml.safe_load(CONFIG.read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(rules)]
    static = {
        "control-plane": [f"127.0.0.1:{stack.settings.prometheus_port}"],
        "envoy": [f"127.0.0.1:{g.settings.envoy_admin_port}" for g in stack.gateways],
    }
    for job in config["scrape_configs"]:
        if "static_configs" in job:
            job["static_configs"] = [{"targets": static[job["job_name"]]}]
        for sd in job.get("http_sd_configs", []):
            path = urllib.parse.urlsplit(sd["url"]).path
            sd["url"] = f"http://127.0.0.1:{stack.settings.prometheus_port}{path}"
            sd["refresh_interval"] = "1s"
    return config


@dataclass
class Prometheus:
    url: str
    config: Path

    def api(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}", timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]


@contextlib.contextmanager
def running_prometheus(stack: Stack) -> Iterator[Prometheus]:
    """A Prometheus of its own (a temporary directory, a free port) scraping ``stack``."""
    assert node_metrics(stack), "the system runs no node"
    with tempfile.TemporaryDirectory(prefix="prom-") as tmp:
        config = Path(tmp) / "prometheus.yml"
        config.write_text(yaml.safe_dump(config_for(stack)))
        port = free_port()
        log = (Path(tmp) / "prometheus.log").open("w")
        proc = subprocess.Popen(
            [
                binary("prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp}/data",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(
                    f"prometheus exited: {(Path(tmp) / 'prometheus.log').read_text()}"
                )
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        try:
            wait_until("Prometheus ready", ready, timeout=60)
            yield Prometheus(url, config)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
