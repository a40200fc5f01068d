"""The baseline Envoys: the fixed-response upstream and a plain router-only proxy."""

from __future__ import annotations

from pathlib import Path
from string import Template

from crosslogic.ports import free_ports
from crosslogic.probes import http_ok, wait_until
from crosslogic.processes import envoy_binary
from crosslogic.supervisor import Supervisor, base_env

HERE = Path(__file__).resolve().parent


class BaselineEnvoys:
    """Starts Envoy processes from this folder's templates on free ports; ``stop`` ends all."""

    def __init__(self, work_dir: Path, *, concurrency: int) -> None:
        self.work_dir = work_dir
        self.concurrency = concurrency
        self.supervisor = Supervisor(work_dir / "logs")
        self.ports: dict[str, int] = {}  # by name, of those started

    def start(self, name: str, template: str, **values: int | str) -> int:
        """Render ``template`` with a free PORT and ADMIN_PORT, start it, return its PORT."""
        port, admin_port = free_ports(2)
        text = Template((HERE / template).read_text()).substitute(
            {"PORT": port, "ADMIN_PORT": admin_port, **values}
        )
        self.ports[name] = port
        config = self.work_dir / f"{name}.yaml"
        config.write_text(text)
        self.run(name, config, admin_port=admin_port)
        return port

    def run(self, name: str, config: Path, *, admin_port: int) -> None:
        """Start an Envoy from a config file; returns once its admin ``/ready`` answers."""
        self.supervisor.spawn(
            name,
            [
                envoy_binary(),
                "-c",
                str(config),
                "--concurrency",
                str(self.concurrency),
                "--disable-hot-restart",
                "--log-level",
                "warning",
            ],
            env=base_env(),
        )
        wait_until(
            f"Envoy {name}",
            lambda: http_ok(f"http://127.0.0.1:{admin_port}/ready"),
            check=self.supervisor.check,
        )

    def start_upstream(self) -> int:
        return self.start("upstream", "upstream.yaml")

    def start_plain(self, *, upstream_port: int, listener_tls: str = "") -> int:
        """The router-only Envoy; ``listener_tls``: its listener's TLS (bench/tls.py)."""
        name = "plain-envoy-tls" if listener_tls else "plain-envoy"
        return self.start(
            name, "plain-envoy.yaml", UPSTREAM_PORT=upstream_port, LISTENER_TLS=listener_tls
        )

    def stop(self) -> None:
        self.supervisor.stop_all()
