"""The admin API as an operator calls it (HTTP, with the operator token)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from crosslogic.stack import Stack


class Admin:
    """Calls the admin API as ``actor``: (status, JSON body), errors included."""

    def __init__(self, stack: Stack, actor: str = "alice") -> None:
        self.base = stack.admin_url
        self.headers = {
            "Authorization": f"Bearer {stack.settings.admin_token}",
            "Content-Type": "application/json",
            "X-Actor": actor,
        }

    def __call__(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base + path, data=data, method=method, headers=self.headers
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)


def ok(reply: tuple[int, Any]) -> Any:
    status, body = reply
    assert status in (200, 201), body
    return body


def new_key(admin: Admin, environment: dict[str, Any], **spec: Any) -> dict[str, Any]:
    """A key created through the admin API in ``environment`` (its reply, with the secret)."""
    return dict(ok(admin("POST", f"/admin/environments/{environment['id']}/keys", spec)))
