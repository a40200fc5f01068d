"""A PostgreSQL primary with a real streaming standby (hot standby), both from pgserver's
binaries, for systems whose reports read a replica (``DB_READ_HOST``).

The embedded setup already allows it as initdb leaves it: ``wal_level = replica``,
``max_wal_senders = 10`` and ``local replication all trust`` in pg_hba.conf. The standby is
``pg_basebackup -R`` of the primary over its Unix socket, started with its own socket
directory (its data directory, as the embedded primary's is).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from crosslogic import embedded
from tests.support.waiting import wait_until

SOCKET = ".s.PGSQL.5432"


@dataclass(frozen=True)
class Replicated:
    """The two servers' socket directories (each is a ``DB_HOST``, port 5432)."""

    primary: Path
    standby: Path

    def sql(self, where: Path, query: str, *args: object) -> list[asyncpg.Record]:
        """``query`` on one server, as the superuser."""

        async def go() -> list[asyncpg.Record]:
            conn = await asyncpg.connect(host=str(where), user="postgres", database="postgres")
            try:
                return list(await conn.fetch(query, *args))
            finally:
                await conn.close()

        return asyncio.run(go())

    def pause_replay(self) -> None:
        """The standby keeps receiving WAL but applies none: it lags until resumed."""
        self.sql(self.standby, "SELECT pg_wal_replay_pause()")

    def resume_replay(self) -> None:
        self.sql(self.standby, "SELECT pg_wal_replay_resume()")

    def caught_up(self) -> bool:
        """The standby has applied everything the primary had written when asked."""
        wanted = self.sql(self.primary, "SELECT pg_current_wal_lsn()::text AS lsn")[0]["lsn"]
        query = "SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), $1::text::pg_lsn) >= 0 AS ok"
        return bool(self.sql(self.standby, query, wanted)[0]["ok"])


def _accepting(socket_dir: Path) -> bool:
    """A postmaster answers there: its pid file's status is ``ready`` (a primary) or
    ``standby`` (a hot standby open for reads)."""
    try:
        status = (socket_dir / "postmaster.pid").read_text(errors="replace").split("\n")[7]
    except (OSError, IndexError):
        return False
    return (socket_dir / SOCKET).exists() and status.strip() in ("ready", "standby")


def _postmaster(
    postgres: embedded.EmbeddedPostgres, pgdata: Path, *extra: str
) -> subprocess.Popen[bytes]:
    log = open(pgdata.parent / f"{pgdata.name}.log", "ab")  # noqa: SIM115 (the child's)
    argv = [
        str(postgres.bin_dir / "postgres"),
        "-D",
        str(pgdata),
        "-k",
        str(pgdata),
        "-c",
        "listen_addresses=",
        *extra,
    ]
    proc = subprocess.Popen(argv, stdout=log, stderr=log, user=postgres.user)
    log.close()
    wait_until(f"PostgreSQL in {pgdata}", lambda: _accepting(pgdata) or proc.poll() is not None)
    assert proc.poll() is None, (pgdata.parent / f"{pgdata.name}.log").read_text()
    return proc


def _make_standby(postgres: embedded.EmbeddedPostgres, standby: Path) -> None:
    standby.mkdir(mode=0o700)
    if postgres.user is not None:  # PostgreSQL refuses to run as root: pgserver's user then
        shutil.chown(standby, user=postgres.user)
    subprocess.run(
        [
            str(postgres.bin_dir / "pg_basebackup"),
            "--host",
            str(postgres.socket_dir),
            "--username",
            "postgres",
            "--pgdata",
            str(standby),
            "--wal-method=stream",
            "--write-recovery-conf",  # standby.signal and primary_conninfo (the socket)
            "--checkpoint=fast",
        ],
        check=True,
        capture_output=True,
        user=postgres.user,
    )
    # the primary's socket lives in its data directory: its lock file came along
    (standby / f"{SOCKET}.lock").unlink(missing_ok=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # fast shutdown
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def replicated_postgres(base: Path) -> Iterator[Replicated]:
    """A primary (the embedded setup below ``base``, with the system's database) and its
    hot standby streaming from it; both stopped afterwards."""
    postgres = embedded.init_postgres(base)
    primary = _postmaster(postgres, postgres.pgdata)
    standby: subprocess.Popen[bytes] | None = None
    try:
        _make_standby(postgres, base / "standby")
        standby = _postmaster(postgres, base / "standby", "-c", "hot_standby=on")
        yield Replicated(primary=postgres.socket_dir, standby=base / "standby")
    finally:
        if standby is not None:
            _stop(standby)
        _stop(primary)


def short_base() -> Path:
    """A short directory below /tmp: Unix socket paths stay under ~107 bytes."""
    path = Path(f"/tmp/clr-{os.getpid()}-{os.urandom(3).hex()}")
    path.mkdir()
    return path
