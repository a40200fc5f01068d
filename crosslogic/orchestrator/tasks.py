"""A pool's replica as a SkyPilot task, pure: the YAML config ``sky.Task.from_yaml_config``
takes (the SDK boundary validates it with the real library before anything is launched).

One replica is one cluster: it installs vLLM and the CrossLogic agent, serves the pool's
model with vLLM on ``VLLM_PORT``, and runs the agent, which registers the replica with the
control plane and heartbeats its load. What the agent needs is in the task's environment
(``CROSSLOGIC_*``); the registration token is a SkyPilot secret, never in a log or a row.

Spot with an on-demand fallback is SkyPilot's ``any_of``: every allowed placement on spot
and on demand; the optimizer picks the cheapest (spot), and a launch that finds no spot
capacity fails over to the others, on demand included.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

from crosslogic.orchestrator.pools import PoolSpec

VLLM_PORT = 8000
CLUSTER_PREFIX = "cl-"  # the orchestrator owns the clusters whose names start with it


@dataclass(frozen=True)
class Launcher:
    """What every replica is given, from the orchestrator's settings: where the control
    plane's admin API is (as the nodes reach it), the token they register with, how to
    install the agent and how to start it."""

    control_plane: str
    registration_token: str
    agent_package: str = "crosslogic"
    agent_command: str = "crosslogic agent"
    vllm_package: str = "vllm"


def cluster_name(pool: str, launch_id: int) -> str:
    """The launch's deterministic cluster name, known (and stored) before the launch."""
    return f"{CLUSTER_PREFIX}{pool}-{launch_id}"


def _placements(spec: PoolSpec) -> list[dict[str, Any]]:
    clouds: tuple[str | None, ...] = spec.clouds or (None,)
    regions: tuple[str | None, ...] = spec.cloud_regions or (None,)
    spots = (True, False) if spec.spot and spec.on_demand_fallback else (spec.spot,)
    out = []
    for cloud in clouds:
        for region in regions:
            for spot in spots:
                placement: dict[str, Any] = {"use_spot": spot}
                if cloud is not None:
                    placement["cloud"] = cloud
                if region is not None:
                    placement["region"] = region
                out.append(placement)
    return out


def run_command(spec: PoolSpec, launcher: Launcher) -> str:
    vllm = [
        "python",
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--host",
        "0.0.0.0",
        "--port",
        str(VLLM_PORT),
        "--model",
        spec.model_source or spec.model,
        "--served-model-name",
        spec.model,
        "--tensor-parallel-size",
        str(spec.gpu_count),
        *spec.vllm_args,
    ]
    # vLLM in the background; the agent in the foreground: the job lives as long as it does.
    # The agent watches the interruption notice of the cloud SkyPilot chose (its
    # SKYPILOT_CLUSTER_INFO; a cloud the agent has no watcher for: SIGUSR1 only) and
    # advertises the VM's first address (CROSSLOGIC_ADVERTISE_ADDRESS overrides it).
    agent = [
        *(["--region", spec.region] if spec.region else []),
        "--gpu-type",
        spec.accelerator,
        "--gpu-count",
        str(spec.gpu_count),
        *(["--spot"] if spec.spot else []),
    ]
    return "\n".join(
        [
            "set -e",
            f"{shlex.join(vllm)} &",
            f"CLOUD=$(python3 -c {shlex.quote(_CLOUD_OF_CLUSTER)})",
            f'exec {launcher.agent_command} --vllm-url "$CROSSLOGIC_VLLM_URL"'
            ' --admin-url "$CROSSLOGIC_CONTROL_PLANE" --model "$CROSSLOGIC_MODEL"'
            ' --node-id "$CROSSLOGIC_NODE_ID" --cloud "$CLOUD" --provider "$CLOUD"'
            ' --advertise-address "${CROSSLOGIC_ADVERTISE_ADDRESS:-$(hostname -I | cut -d" " -f1)}"'
            f" {shlex.join(agent)}",
        ]
    )


_CLOUD_OF_CLUSTER = (
    "import json, os; "
    "c = json.loads(os.environ.get('SKYPILOT_CLUSTER_INFO') or '{}').get('cloud', ''); "
    "print(c.lower() if c.lower() in ('aws', 'gcp', 'azure', 'kubernetes') else 'none')"
)


def task_config(spec: PoolSpec, *, name: str, launcher: Launcher) -> dict[str, Any]:
    """The SkyPilot task (YAML as a dict) of one replica of ``spec``, cluster ``name``."""
    placements = _placements(spec)
    resources: dict[str, Any] = {
        "accelerators": f"{spec.accelerator}:{spec.gpu_count}",
        "ports": VLLM_PORT,
    }
    if len(placements) == 1:
        resources.update(placements[0])
    else:
        resources["any_of"] = placements
    return {
        "name": name,
        "resources": resources,
        "envs": {
            "CROSSLOGIC_CONTROL_PLANE": launcher.control_plane,
            "CROSSLOGIC_MODEL": spec.model,
            "CROSSLOGIC_REGION": spec.region or "",
            "CROSSLOGIC_POOL": spec.name,
            "CROSSLOGIC_NODE_ID": name,
            "CROSSLOGIC_GPU_TYPE": spec.accelerator,
            "CROSSLOGIC_GPU_COUNT": str(spec.gpu_count),
            "CROSSLOGIC_VLLM_URL": f"http://127.0.0.1:{VLLM_PORT}",
            "CROSSLOGIC_NODE_PORT": str(VLLM_PORT),
        },
        "secrets": {"NODE_REGISTRATION_TOKEN": launcher.registration_token},
        "setup": f"pip install {shlex.quote(launcher.vllm_package)} "
        f"{shlex.quote(launcher.agent_package)}",
        "run": run_command(spec, launcher),
    }
