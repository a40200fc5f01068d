"""The domain's error tree: what adapters raise and every edge maps in one place.

Adapters (Postgres, Redis) translate driver exceptions into these (see
``crosslogic.db.errors`` and the Redis transport), so code above them never catches asyncpg or
socket errors. Each edge maps them to its own form exactly once: the admin API to an HTTP
status and an OpenAI error body (``crosslogic.admin.errors``), the gRPC services to a refusal,
the CLI to a message and an exit code. Anything else reaching an edge is a bug: logged once
(``crosslogic.unexpected``) and answered as an internal error.
"""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error an edge knows how to answer. ``code`` is the machine-readable
    reason (OpenAI's ``error.code``); ``param`` names the offending input when there is one."""

    code: str = "invalid_request"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param


class Invalid(DomainError):
    """The caller's input is wrong; retrying it unchanged can never succeed."""


class NotFound(DomainError):
    """The named entity does not exist (or is not visible to the caller)."""

    def __init__(
        self,
        what: str,
        ident: str,
        *,
        code: str | None = None,
        param: str | None = None,
        message: str | None = None,
    ) -> None:
        super().__init__(
            message or f"No {what} '{ident}'.", code=code or f"{what}_not_found", param=param
        )
        self.what = what
        self.ident = ident


class Conflict(DomainError):
    """The request contradicts the current state (a duplicate name, a revoked key rotated)."""

    code = "conflict"


class Unavailable(DomainError):
    """A dependency (PostgreSQL, Redis) is down, restarting or too slow: worth a retry, not a
    bug. ``dependency`` names it for logs and error bodies."""

    code = "service_unavailable"

    def __init__(self, dependency: str, detail: str) -> None:
        super().__init__(f"{dependency} is temporarily unavailable: {detail}")
        self.dependency = dependency
        self.detail = detail
