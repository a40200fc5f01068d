"""Command-line flags the agent shares with ``crosslogic node``: how a node describes itself
to the control plane, and the argument types both validate."""

from __future__ import annotations

import argparse
from urllib.parse import urlsplit

from crosslogic.agent.registration import RegistrationConfig


def non_negative(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{raw!r} must not be negative")
    return value


def positive(raw: str) -> float:
    value = non_negative(raw)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{raw!r} must be positive")
    return value


def port(raw: str) -> int:
    if not raw.isdigit() or int(raw) > 65535:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a port (0 picks a free one)")
    return int(raw)


def url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(f"{raw!r} is not an http(s) URL")
    return raw


def add_identity(parser: argparse.ArgumentParser, *, spot_help: str) -> None:
    """The node's metadata, as registered: where it is and what it runs on."""
    parser.add_argument("--provider", default="local", help="cloud provider (default local)")
    parser.add_argument("--region", default="local", help="region code (default local)")
    parser.add_argument("--zone", default="", help="availability zone")
    parser.add_argument("--gpu-type", default="simulated", help="GPU model (default simulated)")
    parser.add_argument("--gpu-count", type=int, default=1, help="GPUs of the node (default 1)")
    parser.add_argument("--spot", action="store_true", help=spot_help)


def registration_config(
    args: argparse.Namespace,
    *,
    control_plane_url: str,
    model: str,
    address: str,
    port: int,
    node_id: str | None,
    registration_token: str | None,
    capacity: int,
    transport: str = "plain",
) -> RegistrationConfig:
    """The registration the identity flags describe (``add_identity``)."""
    return RegistrationConfig(
        control_plane_url=control_plane_url,
        model=model,
        address=address,
        port=port,
        node_id=node_id,
        registration_token=registration_token,
        provider=args.provider,
        region=args.region,
        zone=args.zone,
        gpu_type=args.gpu_type,
        gpu_count=args.gpu_count,
        capacity=capacity,
        spot=args.spot,
        transport=transport,
    )
