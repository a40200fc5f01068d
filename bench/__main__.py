"""``python -m bench [--duration S] [--connections N] [--threads N] [--warmup S]``."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from types import FrameType

from bench.run import run
from bench.wrk import Load, WrkError


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Load the upstream alone, a plain Envoy, and the CrossLogic gateway with "
        "wrk at one fixed concurrency, and compare.",
    )
    parser.add_argument(
        "--duration",
        type=positive,
        default=10,
        help="seconds of measured load per target (default 10)",
    )
    parser.add_argument(
        "--connections", type=positive, default=64, help="open connections (default 64)"
    )
    parser.add_argument("--threads", type=positive, default=2, help="wrk threads (default 2)")
    parser.add_argument(
        "--warmup",
        type=non_negative,
        default=2,
        help="seconds of discarded load before each target (default 2)",
    )
    parser.add_argument(
        "--envoy-concurrency",
        type=positive,
        default=os.cpu_count() or 1,
        help="worker threads of every Envoy (default: one per core)",
    )
    args = parser.parse_args(argv)
    if args.connections < args.threads:
        parser.error("--connections must be at least --threads (each wrk thread needs one)")
    return args


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through run()'s cleanup


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    load = Load(
        connections=args.connections,
        threads=args.threads,
        duration_s=args.duration,
        warmup_s=args.warmup,
    )
    try:
        run(load, envoy_concurrency=args.envoy_concurrency)
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    except WrkError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
