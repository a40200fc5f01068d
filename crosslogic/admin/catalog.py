"""Admin API routes of the catalog's models and regions (``crosslogic.catalog``), audited;
a model is named in the path by its name or its id."""

from __future__ import annotations

from aiohttp import web

from crosslogic.admin.context import change, read, read_json
from crosslogic.catalog import models, regions
from crosslogic.catalog import requests as parse

routes = web.RouteTableDef()


@routes.get("/admin/models")
async def list_models(request: web.Request) -> web.Response:
    return await read(request, models.list_all)


@routes.post("/admin/models")
async def create_model(request: web.Request) -> web.Response:
    spec = parse.model_create(await read_json(request))
    return await change(request, models.create, spec=spec, http_status=201)


@routes.get("/admin/models/{model}")
async def get_model(request: web.Request) -> web.Response:
    return await read(request, models.get)


@routes.patch("/admin/models/{model}")
async def update_model(request: web.Request) -> web.Response:
    update = parse.model_update(await read_json(request))
    return await change(request, models.update, change=update)


@routes.get("/admin/regions")
async def list_regions(request: web.Request) -> web.Response:
    return await read(request, regions.list_all)


@routes.post("/admin/regions")
async def create_region(request: web.Request) -> web.Response:
    spec = parse.region_create(await read_json(request))
    return await change(request, regions.create, spec=spec, http_status=201)


@routes.patch("/admin/regions/{code}")
async def update_region(request: web.Request) -> web.Response:
    update = parse.region_update(await read_json(request))
    return await change(request, regions.update, change=update)
