"""The orchestrator's own settings, beside the process's :class:`~crosslogic.settings.Settings`
(which holds ``ORCHESTRATOR``, whether it runs at all): read once in ``run()``, validated
with messages that name the variable."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass

from crosslogic.env_values import URL, SettingsError, duration_value, matching_value
from crosslogic.orchestrator.tasks import Launcher
from crosslogic.settings import Settings


@dataclass(frozen=True)
class OrchestratorConfig:
    interval: float  # seconds between rounds (ORCHESTRATOR_INTERVAL)
    launcher: Launcher


def load(env: Mapping[str, str], settings: Settings) -> OrchestratorConfig:
    """ORCHESTRATOR_CONTROL_PLANE (the admin API's URL as the GPU nodes reach it) and
    NODE_REGISTRATION_TOKEN are required: every replica registers with them."""
    if settings.db_host is None:
        raise SettingsError(
            "the orchestrator needs DB_HOST (and DB_PORT, DB_USER, DB_PASSWORD, DB_NAME) of "
            "the control plane's PostgreSQL"
        )
    if importlib.util.find_spec("sky") is None:
        raise SettingsError(
            "ORCHESTRATOR=skypilot needs the skypilot extra: "
            "pip install -c constraints.txt 'crosslogic[skypilot]' (or -e '.[skypilot]')"
        )
    control_plane = env.get("ORCHESTRATOR_CONTROL_PLANE", "").strip()
    if not control_plane:
        raise SettingsError(
            "ORCHESTRATOR_CONTROL_PLANE must be the admin API's URL as the GPU nodes reach it "
            "(e.g. https://control.example.com:8080)"
        )
    matching_value(env, "ORCHESTRATOR_CONTROL_PLANE", "", URL)
    if not settings.node_registration_token:
        raise SettingsError(
            "NODE_REGISTRATION_TOKEN must be set: the orchestrator's replicas register with it"
        )
    return OrchestratorConfig(
        interval=duration_value(env, "ORCHESTRATOR_INTERVAL", 15.0),
        launcher=Launcher(
            control_plane=control_plane.rstrip("/"),
            registration_token=settings.node_registration_token,
            agent_package=env.get("ORCHESTRATOR_AGENT_PACKAGE", "").strip() or "crosslogic",
            agent_command=env.get("ORCHESTRATOR_AGENT_COMMAND", "").strip() or "crosslogic agent",
        ),
    )
