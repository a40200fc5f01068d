"""Where billing is in the access log: the committed offset, and reading whole lines.

The offset commits in the same transaction as the usage rows of the lines before it; after
a crash the batch is read again and its rows are inserted at most once (by request id).
Offsets are kept per gateway (GATEWAY_ID) and path: each gateway's consumer reads its own log.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import asyncpg

MAX_BATCH_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Offset:
    """A position in the access log: the file (by inode, which rotation changes) and a byte."""

    inode: int
    offset: int


async def committed(
    db: asyncpg.Pool | asyncpg.Connection, gateway: str, path: Path | str
) -> Offset | None:
    row = await db.fetchrow(
        'SELECT inode, "offset" FROM access_log_offsets WHERE gateway = $1 AND path = $2',
        gateway,
        str(path),
    )
    return Offset(row["inode"], row["offset"]) if row else None


async def commit(
    conn: asyncpg.Connection, gateway: str, path: Path | str, position: Offset
) -> None:
    await conn.execute(
        'INSERT INTO access_log_offsets (gateway, path, inode, "offset") '
        "VALUES ($1, $2, $3, $4) ON CONFLICT (gateway, path) "
        'DO UPDATE SET inode = $3, "offset" = $4, updated_at = now()',
        gateway,
        str(path),
        position.inode,
        position.offset,
    )


def split_complete(data: bytes) -> tuple[list[bytes], int]:
    """Whole lines of data and the bytes they span; a partial last line waits for more."""
    end = data.rfind(b"\n")
    if end < 0:
        return [], 0
    return [line for line in data[: end + 1].split(b"\n") if line.strip()], end + 1


def read_batch(path: Path, offset: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(MAX_BATCH_BYTES)


def first_line(path: Path, offset: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.readline(64 * 1024)
