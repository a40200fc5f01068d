"""The admin API's OpenAPI document (``openapi.yaml`` beside this module), served as JSON.

``GET /admin/openapi.json`` needs no operator token: it describes the API, it holds no data.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

import yaml
from aiohttp import web

PATH = "/admin/openapi.json"
routes = web.RouteTableDef()


def document() -> dict[str, Any]:
    """The document as parsed from the packaged YAML (a fresh copy on every call)."""
    text = resources.files("crosslogic.admin").joinpath("openapi.yaml").read_text(encoding="utf-8")
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


@functools.cache
def _json() -> bytes:
    # parsed on the first request rather than at import, then kept: the file never changes
    return json.dumps(document()).encode()


@routes.get(PATH)
async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=_json(), content_type="application/json")


def add_route(app: web.Application) -> None:
    app.router.add_get(PATH, openapi)
