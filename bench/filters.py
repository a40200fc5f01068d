"""What each part of the gateway Envoy's filter chain costs per request.

``python -m bench.filters [--duration S] [--rounds N]``. One system in the default shape, its
one node the benchmark upstream. Beside the system's own Envoy, it starts Envoys from the same
rendered config with parts taken away, one after the other (each removal keeps the earlier
ones), and loads each with wrk at the bench's concurrency, in interleaved rounds:

- full: the gateway's config as rendered (its access log to a file nobody reads)
- no access log
- no usage capture (neither json_to_metadata nor Lua)
- no ext_authz either: the route goes to the model's cluster directly (the rest: header
  mutation, request ids, path normalisation, local reply mapping, retries, ADS clusters)
- plain Envoy: the router alone, a static cluster (bench/plain-envoy.yaml)

For each it prints requests/s and the CPU time per request of that Envoy and of ext_authz
(all its processes), so the differences between rows are what each part costs. With
``--rate`` every Envoy is offered the same requests/s (CPU per request falls as a process gets
busier and batches more: compare at one rate).
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import tempfile
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench import resources
from bench.envoys import BaselineEnvoys
from bench.gateway import Gateway
from bench.wrk import Load, run_wrk
from crosslogic.contracts.routing import MODEL_CLUSTER_PREFIX
from crosslogic.ports import free_ports
from crosslogic.shapes import SHAPES

CHAT = "/v1/chat/completions"
Config = dict[str, Any]


def _manager(config: Config) -> Config:
    listener = config["static_resources"]["listeners"][0]
    manager: Config = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return manager


def without_access_log(config: Config) -> None:
    _manager(config).pop("access_log")


def without_usage(config: Config) -> None:
    manager = _manager(config)
    manager["http_filters"] = [
        f for f in manager["http_filters"] if f["name"] != "crosslogic.usage"
    ]


def without_authz(cluster: str) -> Callable[[Config], None]:
    def change(config: Config) -> None:
        manager = _manager(config)
        manager["http_filters"] = [
            f for f in manager["http_filters"] if f["name"] != "envoy.filters.http.ext_authz"
        ]
        first = manager["route_config"]["virtual_hosts"][0]["routes"][0]
        first["match"].pop("headers")
        first["route"].pop("cluster_header")
        first["route"]["cluster"] = cluster
        # the cluster arrives over ADS after the bootstrap is checked
        manager["route_config"]["validate_clusters"] = False

    return change


@dataclass(frozen=True)
class Variant:
    name: str
    changes: tuple[Callable[[Config], None], ...]


@dataclass
class Sample:
    rps: float
    envoy_us: float
    authz_us: float


def model_cluster(admin_url: str) -> str:
    """One of the model clusters xDS pushed (the one model's: all hold the one upstream)."""
    with urllib.request.urlopen(f"{admin_url}/clusters?format=json", timeout=5) as response:
        statuses = json.load(response)["cluster_statuses"]
    names = sorted(s["name"] for s in statuses if s["name"].startswith(MODEL_CLUSTER_PREFIX))
    if not names:
        raise RuntimeError(f"no model cluster in {admin_url}/clusters")
    return names[0]


def variant_config(base: Config, variant: Variant, work_dir: Path) -> tuple[Path, int, int]:
    """The variant's config file on free ports, its own node id and access log path."""
    config = copy.deepcopy(base)
    port, admin_port = free_ports(2)
    config["node"]["id"] = f"bench-{variant.name}"
    config["admin"]["address"]["socket_address"]["port_value"] = admin_port
    listener = config["static_resources"]["listeners"][0]
    listener["address"]["socket_address"]["port_value"] = port
    for log in _manager(config).get("access_log", []):
        log["typed_config"]["path"] = str(work_dir / f"{variant.name}.log")
    for change in variant.changes:
        change(config)
    path = work_dir / f"{variant.name}.json"
    path.write_text(json.dumps(config))
    return path, port, admin_port


def measure(
    url: str, pids: dict[str, int], *, load: Load, authorization: str, rate: float | None
) -> Sample:
    authz = {name: pid for name, pid in pids.items() if name.startswith("extauthz")}
    run_wrk(url, load=load, duration_s=load.warmup_s, authorization=authorization, rate=rate)
    envoy_before = resources.tree_cpu_seconds(pids["envoy"])
    authz_before = resources.total_cpu_seconds(authz.values())
    result = run_wrk(
        url, load=load, duration_s=load.duration_s, authorization=authorization, rate=rate
    )
    n = max(1, result.requests)
    return Sample(
        rps=result.rps,
        envoy_us=(resources.tree_cpu_seconds(pids["envoy"]) - envoy_before) / n * 1e6,
        authz_us=(resources.total_cpu_seconds(authz.values()) - authz_before) / n * 1e6,
    )


def run(load: Load, *, rounds: int, envoy_concurrency: int, rate: float | None) -> None:
    work_dir = Path(tempfile.mkdtemp(prefix="clf-", dir="/tmp"))
    envoys = BaselineEnvoys(work_dir, concurrency=envoy_concurrency)
    gateway = Gateway(work_dir / "stack", envoy_concurrency=envoy_concurrency, **SHAPES["http"])
    with ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, work_dir, ignore_errors=True)
        cleanup.callback(envoys.stop)
        cleanup.callback(gateway.stop)
        upstream_port = envoys.start_upstream()
        plain_port = envoys.start_plain(upstream_port=upstream_port)
        gateway.start(upstream_port=upstream_port)
        stack = gateway.stack
        base = yaml.safe_load(stack.gateways[0].config.read_text())
        cluster = model_cluster(stack.gateways[0].admin_url)
        variants = [
            Variant("full", ()),
            Variant("no-access-log", (without_access_log,)),
            Variant("no-usage", (without_access_log, without_usage)),
            Variant("no-authz", (without_access_log, without_usage, without_authz(cluster))),
        ]
        urls: dict[str, str] = {}
        for variant in variants:
            path, port, admin_port = variant_config(base, variant, work_dir)
            envoys.run(variant.name, path, admin_port=admin_port)
            urls[variant.name] = f"http://127.0.0.1:{port}{CHAT}"
        urls["plain"] = f"http://127.0.0.1:{plain_port}{CHAT}"
        samples: dict[str, list[Sample]] = {name: [] for name in urls}
        auth = f"Bearer {gateway.api_key}"
        for round_no in range(rounds):
            for name, url in urls.items():
                pids = resources.supervised(stack.supervisor)
                pids["envoy"] = resources.supervised(envoys.supervisor)[
                    "plain-envoy" if name == "plain" else name
                ]
                samples[name].append(measure(url, pids, load=load, authorization=auth, rate=rate))
                s = samples[name][-1]
                print(
                    f"round {round_no + 1} {name}: {s.rps:,.0f} req/s, Envoy {s.envoy_us:.0f} "
                    f"µs/req, ext_authz {s.authz_us:.0f} µs/req",
                    flush=True,
                )
        print("\n| Envoy | req/s | Envoy CPU µs/req | ext_authz CPU µs/req |")
        print("| --- | ---: | ---: | ---: |")
        for name, runs in samples.items():
            mid = sorted(runs, key=lambda s: s.envoy_us)[len(runs) // 2]
            rps = sorted(s.rps for s in runs)[len(runs) // 2]
            print(f"| {name} | {rps:,.0f} | {mid.envoy_us:.0f} | {mid.authz_us:.0f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.filters", description=__doc__)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--envoy-concurrency", type=int, default=2)
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="requests/s offered to every Envoy (below the slowest one's saturation: CPU per "
        "request compared at the same load); default: as fast as the connections allow",
    )
    args = parser.parse_args(argv)
    load = Load(args.connections, 2, args.duration, args.warmup)
    run(load, rounds=args.rounds, envoy_concurrency=args.envoy_concurrency, rate=args.rate)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
