"""Render the Envoy bootstrap from ``envoy/envoy.yaml`` (config lives there, not in Python)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from string import Template

from crosslogic.contracts.journal import new_boot_id, valid_boot_id
from crosslogic.settings import RATELIMIT_CALL_TIMEOUT_S, Settings
from crosslogic.tls.listener import sds_resource

MAX_REQUEST_BYTES = 1024 * 1024


def template_dir() -> Path:
    """The repository's ``envoy/`` folder, or ``ENVOY_TEMPLATE_DIR`` for installed copies."""
    override = os.environ.get("ENVOY_TEMPLATE_DIR")
    return Path(override) if override else Path(__file__).resolve().parents[1] / "envoy"


def render(
    settings: Settings,
    *,
    listen_address: str = "127.0.0.1",
    admin_address: str = "127.0.0.1",
    control_plane_host: str = "127.0.0.1",
    node_id: str = "crosslogic-envoy",
    lua_path: Path | None = None,
    boot_id: str | None = None,
    listener_sds: Path | None = None,
) -> str:
    """The bootstrap for one Envoy process; ``boot_id`` names that process (generated when
    not given). Use :func:`fresh_config` to start a new Envoy: each process needs its own.
    With LISTENER_TLS=on the listener reads its certificate through ``listener_sds`` (the
    file :func:`write_listener_sds` writes; default DATA_DIR/listener-sds.json)."""
    boot_id = boot_id or new_boot_id()
    if not valid_boot_id(boot_id):
        raise ValueError(f"boot id must be 16-64 lower-case hex digits: {boot_id!r}")
    folder = template_dir()
    values = {
        "ENVOY_NODE_ID": node_id,
        "ENVOY_BOOT_ID": boot_id,
        "GATEWAY_ID": settings.gateway_id,
        "ENVOY_ADMIN_ADDRESS": admin_address,
        "ENVOY_ADMIN_PORT": settings.envoy_admin_port,
        "ENVOY_LISTEN_ADDRESS": listen_address,
        "ENVOY_PORT": settings.envoy_port,
        "MAX_REQUEST_BYTES": MAX_REQUEST_BYTES,
        "ACCESS_LOG_PATH": settings.access_log.resolve()
        if not settings.access_log.is_absolute()
        else settings.access_log,
        # the service answers within its Redis timeout; this bounds a stuck service
        "RATELIMIT_TIMEOUT": f"{RATELIMIT_CALL_TIMEOUT_S}s",
        "USAGE_LUA_PATH": lua_path or (folder / "usage.lua").resolve(),
        "XDS_ENDPOINTS": _endpoints(settings.xds_host, settings.xds_ports),
        "EXTAUTHZ_HOST": settings.extauthz_host,
        "EXTAUTHZ_PORT": settings.extauthz_port,
        "RATELIMIT_HOST": settings.ratelimit_host,
        "RATELIMIT_PORT": settings.ratelimit_port,
        "CONTROL_PLANE_HOST": control_plane_host,
        "CONTROL_PLANE_PORT": settings.server_port,
        "REQUEST_HEADERS_TIMEOUT": f"{settings.envoy_request_headers_timeout}s",
        "REQUEST_TIMEOUT": f"{settings.envoy_request_timeout}s",
        "MAX_CONNECTIONS": settings.envoy_max_connections,
        "LISTENER_SDS_PATH": (listener_sds or listener_sds_path(settings)).absolute(),
    }
    if not (folder / "envoy.yaml").exists():
        raise FileNotFoundError(
            f"no Envoy template in {folder}: set ENVOY_TEMPLATE_DIR to the repository's envoy/"
        )
    text = (folder / "envoy.yaml").read_text()
    # the rate-limit filter is a fragment of its own: present only where the service decides
    fragment = ""
    if settings.ratelimit_at == "service":
        lines = (folder / "ratelimit-filter.yaml").read_text().splitlines(keepends=True)
        fragment = "".join(line for line in lines if not line.startswith("#"))
    text = text.replace("${RATELIMIT_FILTER}\n", fragment)
    tls = fragments(folder / "listener-tls.yaml") if settings.listener_tls == "on" else {}
    text = text.replace("${LISTENER_TLS}\n", tls.get("LISTENER_TLS", ""))
    # how Envoy asks ext_authz: the protocol's parts of its filter and cluster
    for name, part in fragments(folder / f"extauthz-{settings.extauthz_protocol}.yaml").items():
        text = text.replace(f"${{{name}}}\n", part)
    return Template(text).substitute({k: str(v) for k, v in values.items()})


def listener_sds_path(settings: Settings, *, beside: Path | None = None) -> Path:
    """Where the listener's SDS file goes: beside the bootstrap, when it is a file (both
    are read by Envoy), else in DATA_DIR."""
    return (beside.parent if beside else settings.data_dir) / "listener-sds.json"


def write_listener_sds(settings: Settings, path: Path | None = None) -> None:
    """With LISTENER_TLS=on, the SDS file naming the listener's certificate files."""
    if settings.listener_tls == "on":
        target = path or listener_sds_path(settings)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(sds_resource(settings))


def fragments(path: Path) -> dict[str, str]:
    """The named parts of a fragment file: each ``#@ NAME`` line starts one; other lines
    starting with ``#`` are the file's comments."""
    parts: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in path.read_text().splitlines(keepends=True):
        if line.startswith("#@ "):
            current = parts.setdefault(line[3:].strip(), [])
        elif not line.startswith("#") and current is not None:
            current.append(line)
    return {name: "".join(lines) for name, lines in parts.items()}


def _endpoints(host: str, ports: tuple[int, ...]) -> str:
    """A YAML flow list of the ``lb_endpoints`` at ``host`` on each of ``ports``."""
    each = "{{endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}}}"
    return "[" + ", ".join(each.format(host, port) for port in ports) + "]"


@dataclass(frozen=True)
class EnvoyConfig:
    boot_id: str
    text: str


def fresh_config(settings: Settings, **options: object) -> EnvoyConfig:
    """The config for a new Envoy process (a start or a restart), under a new boot id.

    A restarted Envoy must not reuse its predecessor's boot id: billing recovers the usage a
    dead process never wrote to its access log by telling the processes apart."""
    boot_id = new_boot_id()
    return EnvoyConfig(boot_id, render(settings, boot_id=boot_id, **options))  # type: ignore[arg-type]
