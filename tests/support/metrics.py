"""Prometheus samples of the control plane and of the nodes."""

from __future__ import annotations

import json
import re
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from crosslogic.stack import Stack


def metric(stack: Stack, sample: str) -> float:
    """One sample of the control plane's /metrics (all processes summed), 0 if absent."""
    url = f"http://127.0.0.1:{stack.settings.prometheus_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def node_metrics(stack: Stack) -> dict[str, str]:
    """The /metrics text of every live node, by node id."""
    request = urllib.request.Request(
        f"{stack.admin_url}/admin/nodes",
        headers={"Authorization": f"Bearer {stack.settings.admin_token}"},
    )
    with urllib.request.urlopen(request, timeout=5) as r:
        nodes = [n for n in json.load(r)["nodes"] if n["live"]]
    texts = {}
    for node in nodes:
        url = f"http://{node['address']}:{node['port']}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            texts[node["id"]] = r.read().decode()
    return texts


def node_generated_tokens(stack: Stack) -> dict[str, float]:
    """vllm:generation_tokens_total per live node."""
    totals = {}
    for node_id, text in node_metrics(stack).items():
        match = re.search(r"^vllm:generation_tokens_total\{[^}]*\} ([0-9.e+]+)$", text, re.M)
        totals[node_id] = float(match.group(1)) if match else 0.0
    return totals


def node_requests(stack: Stack) -> float:
    """Every request any node has handled (crosslogic_node_requests_total, all labels)."""
    total = 0.0
    for text in node_metrics(stack).values():
        for value in re.findall(r"^crosslogic_node_requests_total\{[^}]*\} (\S+)$", text, re.M):
            total += float(value)
    return total


def exposition(url: str) -> str:
    """The text of one Prometheus endpoint."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text: str = response.read().decode()
    return text


def control_plane_metrics(stack: Stack) -> str:
    return exposition(f"http://127.0.0.1:{stack.settings.prometheus_port}/metrics")


def total(text: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (any order, any other
    labels), 0 if none."""
    found = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                found += sample.value
    return found


def sample_names(text: str) -> set[str]:
    """Every sample name in an exposition (histograms: their _bucket, _sum and _count), as
    Prometheus stores it (prometheus_client's parser would add _total to Envoy's counters)."""
    return {
        re.split(r"[{\s]", line, maxsplit=1)[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
