"""docker-compose.yml's Prometheus and Grafana: official images, the repository's config
files mounted where the configs say, every scrape target a service of the file on the port it
serves, and the compose configuration accepted by promtool. No Docker needed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.compose import command, is_envoy, is_node, model, mounts, settings_of
from tests.support.dockerfile import REPO
from tests.support.prometheus import promtool

Services = dict[str, dict[str, Any]]


@pytest.fixture(scope="module")
def services() -> Services:
    found = model(REPO / "docker-compose.yml")["services"]
    assert isinstance(found, dict)
    return found


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> the repository file or folder mounted there."""
    return {
        target: (REPO / source).resolve()
        for target, source in mounts(service).items()
        if source.startswith(".")
    }


def mounted(service: dict[str, Any], container_path: str) -> Path:
    """The repository path behind ``container_path`` (a file in a mounted folder too)."""
    for target, source in bind_mounts(service).items():
        if container_path == target or container_path.startswith(target + "/"):
            return source / container_path[len(target) :].lstrip("/")
    raise AssertionError(f"{container_path} is not mounted from the repository")


def prometheus_config(services: Services) -> dict[str, Any]:
    path = mounted(services["prometheus"], "/etc/prometheus/prometheus.yml")
    config: dict[str, Any] = yaml.safe_load(path.read_text())
    return config


def test_official_images_pinned(services: Services) -> None:
    for name, image in (("prometheus", "prom/prometheus"), ("grafana", "grafana/grafana")):
        repository, _, tag = services[name]["image"].partition(":")
        assert repository == image
        assert tag and tag != "latest"


def test_every_mounted_file_is_in_the_repository(services: Services) -> None:
    for name in ("prometheus", "grafana"):
        found = bind_mounts(services[name])
        assert found
        for source in found.values():
            assert source.exists() and source.is_relative_to(REPO), source


def test_the_config_names_its_rules_where_they_are_mounted(services: Services) -> None:
    config = prometheus_config(services)
    command_line = command(services["prometheus"])
    assert "--config.file=/etc/prometheus/prometheus.yml" in command_line
    for rules in config["rule_files"]:
        assert mounted(services["prometheus"], rules) == REPO / "deploy/prometheus/rules.yml"


def test_promtool_accepts_the_compose_config(services: Services, tmp_path: Path) -> None:
    config = prometheus_config(services)
    config["rule_files"] = [str(mounted(services["prometheus"], r)) for r in config["rule_files"]]
    local = tmp_path / "prometheus.yml"
    local.write_text(yaml.safe_dump(config))
    checked = promtool("check", "config", str(local))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_scrape_targets_are_the_files_services(services: Services) -> None:
    jobs = {job["job_name"]: job for job in prometheus_config(services)["scrape_configs"]}
    assert set(jobs) == {"control-plane", "envoy", "nodes"}

    def static(job: str) -> set[str]:
        return {t for group in jobs[job]["static_configs"] for t in group["targets"]}

    control_plane = settings_of(services["control-plane"])
    metrics_at = f"control-plane:{control_plane.prometheus_port}"
    assert static("control-plane") == {metrics_at}
    envoys = {name for name, s in services.items() if is_envoy(s)}
    assert static("envoy") == {f"{name}:9901" for name in envoys}  # the rendered admin port
    assert jobs["envoy"]["metrics_path"] == "/stats/prometheus"
    # the nodes: discovered from the control plane's registry, on its metrics port
    (discovery,) = jobs["nodes"]["http_sd_configs"]
    assert discovery["url"] == f"http://{metrics_at}/targets/nodes"
    # which lists each node at the address it registered: one Prometheus resolves too
    for service in services.values():
        if is_node(service):
            argv = command(service)
            assert argv[argv.index("--advertise-address") + 1] in services


def test_grafana_provisions_the_datasource_and_dashboard(services: Services) -> None:
    grafana = services["grafana"]
    datasources = mounted(grafana, "/etc/grafana/provisioning/datasources")
    (source,) = yaml.safe_load((datasources / "prometheus.yml").read_text())["datasources"]
    assert source["url"] == "http://prometheus:9090"  # the service, on its container port
    providers = mounted(grafana, "/etc/grafana/provisioning/dashboards")
    (provider,) = yaml.safe_load((providers / "crosslogic.yml").read_text())["providers"]
    dashboards = mounted(grafana, provider["options"]["path"])
    assert (dashboards / "crosslogic.json").is_file()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert mounted(grafana, home).is_file()
