"""OpenAI-style error bodies, the one shape every client-facing refusal takes.

The official SDKs map the HTTP status to an exception class and read ``error.message`` /
``error.code`` from this body, so every edge (ext_authz, rate limit, node, admin) uses it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class ApiError:
    """A refusal as the client sees it: HTTP status plus OpenAI's error object."""

    status: int
    message: str
    type: str
    code: str | None = None
    param: str | None = None

    def body(self) -> bytes:
        error = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return json.dumps({"error": error}).encode()


def invalid_request(message: str, *, code: str | None = None, param: str | None = None) -> ApiError:
    return ApiError(400, message, "invalid_request_error", code, param)
