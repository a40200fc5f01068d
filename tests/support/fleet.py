"""The GPU fleet as tests see it: a node as the admin API lists it and its audit trail, a
node's own counters, and its endpoint's status in Envoy."""

from __future__ import annotations

import json
import re
import urllib.request
from typing import Any

import openai

from crosslogic.stack import Stack
from tests.support.admin import Admin, ok
from tests.support.system import MODEL


def listed(stack: Stack, node_id: str) -> dict[str, Any]:
    found = ok(Admin(stack)("GET", "/admin/nodes"))["nodes"]
    return dict(next(n for n in found if n["id"] == node_id))


def audited(stack: Stack, entity_id: str) -> list[tuple[str, str]]:
    """(action, actor) of ``entity_id``'s audit rows, oldest first."""
    rows = ok(Admin(stack)("GET", f"/admin/audit?entity_id={entity_id}"))["data"]
    return [(r["action"], r["actor"]) for r in reversed(rows)]


def node_sample(url: str, pattern: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(v) for v in re.findall(rf"^{pattern} (\S+)$", text, re.M))


def chat_requests(url: str) -> float:
    return node_sample(url, r'crosslogic_node_requests_total\{code="200",endpoint="chat"\}')


def running(url: str) -> float:
    return node_sample(url, r"vllm:num_requests_running\{[^}]*\}")


def eds_status(stack: Stack, port: int) -> str | None:
    """Envoy's EDS health status of the node on ``port`` (None: not an endpoint)."""
    with urllib.request.urlopen(f"{stack.envoy_admin_url}/clusters?format=json", timeout=5) as r:
        clusters = json.load(r)["cluster_statuses"]
    for cluster in clusters:
        for host in cluster.get("host_statuses", []):
            if host["address"]["socket_address"]["port_value"] == port:
                return str(host["health_status"].get("eds_health_status", "UNKNOWN"))
    return None


def one_token(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=1
    )
    assert reply.choices[0].message.content
