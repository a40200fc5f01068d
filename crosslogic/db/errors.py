"""asyncpg's exceptions become domain errors here, and nowhere else.

Connection trouble (refused, reset, timed out, server shutting down or starting) is
:class:`~crosslogic.errors.Unavailable`; a unique or foreign-key violation that reaches us is a
:class:`~crosslogic.errors.Conflict`; text PostgreSQL cannot store (a NUL character) is
:class:`~crosslogic.errors.Invalid`, wherever a client's string reaches a column unchecked.
Any other PostgresError is a bug in our SQL and passes through unchanged, so the edge logs it
as one instead of hiding it behind a 503.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import asyncpg

from crosslogic.errors import Conflict, Invalid, Unavailable

# What a dead, restarting or unreachable server looks like through asyncpg.
DRIVER_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,  # the connection died, or could not be made
    asyncpg.exceptions.OperatorInterventionError,  # shutting down, starting up, recovering
    asyncpg.InterfaceError,  # the pool or connection was closed under us
    # a connection left mid-operation when the server died under it ("cannot switch to
    # state ..."): seen once in a test killing PostgreSQL, from ext_authz; unmapped it ended
    # the process, and with it the verified keys that carry it through the outage
    asyncpg.InternalClientError,
)


@contextlib.contextmanager
def postgres_errors() -> Iterator[None]:
    """Wrap any PostgreSQL call: ``with postgres_errors(): await pool.fetch(...)``."""
    try:
        yield
    except DRIVER_UNAVAILABLE as exc:
        raise Unavailable("PostgreSQL", str(exc) or type(exc).__name__) from exc
    except asyncpg.IntegrityConstraintViolationError as exc:
        raise Conflict(exc.detail or str(exc), code="conflict") from exc
    except asyncpg.CharacterNotInRepertoireError as exc:
        raise Invalid("Text must not contain a NUL character (\\u0000).") from exc
