"""The SkyPilot boundary: the one module that imports ``sky`` (the optional ``skypilot``
extra), and the one place its errors are translated.

Two halves. Local and real everywhere, tests included: :func:`validated_task` builds a
``sky.Task`` from the YAML config and validates it (schema, accelerators, regions, prices
in SkyPilot's catalog) and :func:`estimate` asks SkyPilot's own optimizer for the cheapest
placement and its hourly cost; offline, both read the catalog under ``~/.sky/catalogs``.
Remote, behind :class:`SkyApi`: launching, status, teardown and the request queue, each an
SDK call whose request id ``sky.get`` resolves against the API server; tests replace only
this half, with a fake returning SkyPilot's own result types.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

import requests
import sky
from sky import exceptions as sky_exceptions
from sky.server.requests.requests import RequestStatus

from crosslogic.errors import DomainError, Unavailable
from crosslogic.orchestrator.reconcile import Seen

# what SkyPilot raises about a task it will not run (a bad spec, no placement in its catalog)
REJECTIONS = (
    ValueError,
    sky_exceptions.ResourcesUnavailableError,
    sky_exceptions.NotSupportedError,
    sky_exceptions.InvalidCloudConfigs,
    sky_exceptions.InvalidClusterNameError,
    sky_exceptions.SkyPilotExcludeArgsBaseException,
)
UNFINISHED = {RequestStatus.PENDING.value, RequestStatus.WAITING.value, RequestStatus.RUNNING.value}


class TaskRejected(DomainError):
    """SkyPilot refused the pool's task (schema, resources, no placement in its catalog)."""

    code = "task_rejected"


@dataclass(frozen=True)
class Estimate:
    """The optimizer's choice for one replica: where, and what it costs an hour."""

    resources: str
    cloud: str
    region: str
    instance_type: str
    spot: bool
    cost_per_hour: Decimal

    def as_json(self) -> dict[str, Any]:
        return {
            "resources": self.resources,
            "cloud": self.cloud,
            "region": self.region,
            "instance_type": self.instance_type,
            "spot": self.spot,
            "cost_per_hour_usd": str(self.cost_per_hour),
        }


def validated_task(config: dict[str, Any]) -> sky.Task:
    """``config`` as a validated ``sky.Task`` (``from_yaml_config`` empties the dict it is
    given: it gets a copy)."""
    try:
        task = sky.Task.from_yaml_config(copy.deepcopy(config))
        task.validate()
    except REJECTIONS as exc:
        raise TaskRejected(f"SkyPilot rejected the task: {exc}") from exc
    return task


def estimate(task: sky.Task) -> Estimate:
    """The optimizer's cheapest placement of ``task`` (it is given its best resources)."""
    dag = sky.Dag()
    dag.add(task)
    try:
        sky.Optimizer.optimize(dag, minimize=sky.OptimizeTarget.COST, quiet=True)
    except REJECTIONS as exc:
        raise TaskRejected(f"SkyPilot found no placement: {exc}") from exc
    best = task.best_resources
    if best is None:
        raise TaskRejected("SkyPilot's optimizer chose no resources.")
    return Estimate(
        resources=str(best),
        cloud=str(best.cloud),
        region=str(best.region or ""),
        instance_type=str(best.instance_type or ""),
        spot=bool(best.use_spot),
        cost_per_hour=Decimal(str(round(best.get_cost(3600), 4))),
    )


class SkyApi(Protocol):
    """SkyPilot's remote calls, as the orchestrator uses them."""

    def launch(self, task: sky.Task, *, cluster_name: str) -> str:
        """Submit the launch; its request id (does not wait)."""

    def wait(self, request_id: str) -> None:
        """Until the request ends; raises if it failed."""

    def status(self, cluster_names: list[str]) -> list[Any]:
        """SkyPilot's status records (``StatusResponse``) of the clusters that exist."""

    def requests(self, cluster_name: str) -> list[Any]:
        """SkyPilot's request records (``RequestPayload``) about one cluster."""

    def down(self, cluster_name: str) -> str:
        """Submit the teardown; its request id."""


@contextlib.contextmanager
def api_errors() -> Iterator[None]:
    """SkyPilot's API server unreachable (or not answering) is Unavailable: a round retries."""
    try:
        yield
    except (OSError, sky_exceptions.ApiServerConnectionError, requests.RequestException) as exc:
        raise Unavailable("SkyPilot", str(exc) or type(exc).__name__) from exc


class Sky:
    """The real :class:`SkyApi`: the SkyPilot client SDK and its API server."""

    def launch(self, task: sky.Task, *, cluster_name: str) -> str:
        with api_errors():
            return str(sky.launch(task, cluster_name=cluster_name, retry_until_up=False))

    def wait(self, request_id: str) -> None:
        with api_errors():
            sky.get(request_id)

    def status(self, cluster_names: list[str]) -> list[Any]:
        if not cluster_names:
            return []
        with api_errors():
            return list(sky.get(sky.status(cluster_names, refresh=sky.StatusRefreshMode.AUTO)))

    def requests(self, cluster_name: str) -> list[Any]:
        with api_errors():
            return list(sky.api_status(cluster_name=cluster_name))

    def down(self, cluster_name: str) -> str:
        with api_errors():
            return str(sky.down(cluster_name))


def observe(api: SkyApi, cluster_names: list[str]) -> dict[str, Seen]:
    """What became of each cluster: its status, and whether a request for it is in flight."""
    with api_errors():
        records = {record.name: record.status for record in api.status(cluster_names)}
        seen = {}
        for name in cluster_names:
            status = records.get(name)
            if status is sky.ClusterStatus.UP:
                seen[name] = Seen.RUNNING
            elif status is sky.ClusterStatus.STOPPED:
                seen[name] = Seen.STOPPED
            elif in_flight(api, name):
                seen[name] = Seen.STARTING
            elif status is sky.ClusterStatus.INIT:
                seen[name] = Seen.STALLED
            elif status is not None:  # autostopping, pending: SkyPilot is at it
                seen[name] = Seen.STARTING
            else:
                seen[name] = Seen.MISSING
        return seen


def in_flight(api: SkyApi, cluster_name: str) -> bool:
    return any(str(r.status) in UNFINISHED for r in api.requests(cluster_name))


def is_gone(exc: BaseException) -> bool:
    """A teardown's error that means there is nothing left to tear down."""
    return isinstance(exc, sky_exceptions.ClusterDoesNotExist)
