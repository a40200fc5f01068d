"""``crosslogic agent``: the node agent beside a real vLLM server on a GPU VM.

It registers the vLLM server with the control plane using the registration token from
``NODE_REGISTRATION_TOKEN`` (never the admin token, and never a flag: a flag shows in
``ps``), heartbeats vLLM's /metrics figures with the node's own credential, drains the node
at the cloud's interruption notice and deregisters when stopped (SIGINT, SIGTERM; on
Kubernetes SIGTERM is the notice: it drains, then deregisters and exits).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from urllib.parse import urlsplit

from crosslogic import logs
from crosslogic.agent import flags
from crosslogic.agent.runner import CLOUDS, AgentConfig, RegistrationEnded, run_agent

log = logging.getLogger(__name__)

TOKEN_VARIABLE = "NODE_REGISTRATION_TOKEN"
_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crosslogic agent",
        description="Keep a vLLM server registered with the control plane; drain it at the "
        f"cloud's interruption notice. The registration token comes from ${TOKEN_VARIABLE}.",
    )
    parser.add_argument(
        "--vllm-url",
        type=flags.url,
        required=True,
        help="the vLLM server, e.g. http://127.0.0.1:8000",
    )
    parser.add_argument(
        "--admin-url", type=flags.url, required=True, help="the control plane's admin API"
    )
    parser.add_argument("--model", required=True, help="the model vLLM serves (its catalog name)")
    parser.add_argument(
        "--cloud",
        choices=CLOUDS,
        default="none",
        help="whose interruption notice to watch (default none: SIGUSR1 only)",
    )
    parser.add_argument(
        "--metadata-url",
        type=flags.url,
        help="the cloud's metadata endpoint (default: the cloud's own, e.g. "
        "http://169.254.169.254)",
    )
    parser.add_argument(
        "--poll-interval",
        type=flags.positive,
        default=AgentConfig.poll_interval_s,
        help="seconds between metadata reads (default %(default)s; GCP long-polls)",
    )
    parser.add_argument(
        "--grace-period",
        type=flags.non_negative,
        default=AgentConfig.grace_period_s,
        help="Kubernetes: seconds a drain may take after SIGTERM (default %(default)s)",
    )
    parser.add_argument(
        "--drain-on-rebalance",
        action="store_true",
        help="AWS: drain at a rebalance recommendation, before the interruption notice",
    )
    parser.add_argument("--node-id", help="node id to register with (default: assigned)")
    parser.add_argument(
        "--advertise-address", help="address Envoy should route to (default: --vllm-url's host)"
    )
    parser.add_argument(
        "--advertise-port",
        type=flags.port,
        help="port Envoy should route to (default: --vllm-url's)",
    )
    parser.add_argument(
        "--capacity", type=int, default=256, help="vLLM's --max-num-seqs (default %(default)s)"
    )
    flags.add_identity(parser, spot_help="a spot (preemptible) instance")
    parser.add_argument("--log-level", choices=_LOG_LEVELS, default="info")
    return parser


def config_from(args: argparse.Namespace, *, token: str) -> AgentConfig:
    """The agent's configuration from its flags; ValueError names what is wrong."""
    vllm = urlsplit(args.vllm_url)
    address = args.advertise_address or vllm.hostname
    port = args.advertise_port or vllm.port or (443 if vllm.scheme == "https" else 80)
    if not address or address in ("0.0.0.0", "::"):
        raise ValueError("--advertise-address is needed: Envoy cannot route to " + repr(address))
    if args.capacity < 1 or args.gpu_count < 1:
        raise ValueError("--capacity and --gpu-count must be at least 1")
    if args.metadata_url and args.cloud in ("kubernetes", "none"):
        raise ValueError(f"--metadata-url means nothing with --cloud {args.cloud}")
    return AgentConfig(
        registration=flags.registration_config(
            args,
            control_plane_url=args.admin_url,
            model=args.model,
            address=address,
            port=port,
            node_id=args.node_id,
            registration_token=token,
            capacity=args.capacity,
        ),
        vllm_url=args.vllm_url,
        cloud=args.cloud,
        metadata_url=args.metadata_url,
        poll_interval_s=args.poll_interval,
        grace_period_s=args.grace_period,
        drain_on_rebalance=args.drain_on_rebalance,
    )


def run(argv: list[str]) -> int:
    """Entry point for ``crosslogic agent ...``; returns the process exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help or a usage error, already printed by argparse
        return exc.code if isinstance(exc.code, int) else 2
    token = os.environ.get(TOKEN_VARIABLE)
    if not token:
        print(f"crosslogic agent: {TOKEN_VARIABLE} is not set", file=sys.stderr)
        return 2
    if token == os.environ.get("ADMIN_TOKEN"):
        print(
            f"crosslogic agent: {TOKEN_VARIABLE} is the admin token; give the agent "
            "a registration token (crosslogic nodes tokens create)",
            file=sys.stderr,
        )
        return 2
    try:
        config = config_from(args, token=token)
    except ValueError as exc:
        print(f"crosslogic agent: {exc}", file=sys.stderr)
        return 2
    logs.configure(service="agent", level=args.log_level, secrets=(token,))
    try:
        asyncio.run(_until_stopped(config))
    except RegistrationEnded as exc:
        log.error("agent ended: %s", exc, exc_info=exc.__cause__)
        return 1
    return 0


async def _until_stopped(config: AgentConfig) -> None:
    """Run the agent until SIGINT (or SIGTERM, except on Kubernetes, where SIGTERM is the
    notice and the agent ends by itself once drained); stopping it deregisters."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    if config.cloud != "kubernetes":
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    log.info(
        "agent for %s (model %s): registering with %s, watching %s",
        config.vllm_url,
        config.registration.model,
        config.registration.control_plane_url,
        config.cloud,
    )
    address = config.registration.address
    if address == "localhost" or address.startswith("127.") or address == "::1":
        log.warning("registering %s: only an Envoy on this host can reach it", address)
    agent = asyncio.create_task(run_agent(config), name="agent")
    stopping = asyncio.create_task(stop.wait(), name="signal")
    try:
        await asyncio.wait({agent, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        agent.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await agent  # the agent's own error, if it ended with one
