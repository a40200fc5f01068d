"""SkyPilot's remote half, in memory: the fake at the SDK boundary of the orchestrator
(``crosslogic.orchestrator.sky_sdk.SkyApi``). Everything else in the tests is the real
library: the tasks it is given are real validated ``sky.Task`` objects, and what it answers
is SkyPilot's own types (``StatusResponse`` with a ``sky.ClusterStatus``, ``RequestPayload``
with a ``RequestStatus``). It records every call, and plays the cloud: launches that come up
when waited on (or only once ``release`` is set), preemptions, teardowns.

Import it only after ``HOME`` points at the test's SkyPilot home: importing ``sky`` fixes
its paths.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass
from typing import Any

import sky
from sky import exceptions as sky_exceptions
from sky.schemas.api.responses import StatusResponse
from sky.server.requests.payloads import RequestPayload
from sky.server.requests.requests import RequestStatus


@dataclass
class _Request:
    request_id: str
    cluster: str
    kind: str  # "launch" or "down"
    status: RequestStatus
    created_at: float


class FakeSky:
    """The :class:`~crosslogic.orchestrator.sky_sdk.SkyApi` of the tests."""

    def __init__(self, *, hold: bool = False) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.calls: list[tuple[str, str]] = []  # (launch | down, cluster name)
        self.tasks: dict[str, Any] = {}  # cluster name -> the sky.Task it was launched with
        self._clusters: dict[str, sky.ClusterStatus] = {}
        self._requests: dict[str, _Request] = {}
        self.release = threading.Event()  # launches and teardowns end once it is set
        if not hold:
            self.release.set()

    # -- the SkyApi ----------------------------------------------------------------------
    def launch(self, task: Any, *, cluster_name: str) -> str:
        assert isinstance(task, sky.Task)
        with self._lock:
            self.calls.append(("launch", cluster_name))
            self.tasks[cluster_name] = task
            self._clusters[cluster_name] = sky.ClusterStatus.INIT
            return self._request(cluster_name, "launch")

    def wait(self, request_id: str) -> None:
        assert self.release.wait(timeout=60), "the test never released SkyPilot's requests"
        with self._lock:
            self._settle()
            assert self._requests[request_id].status is RequestStatus.SUCCEEDED

    def _settle(self) -> None:
        """Released: every request in flight ends, whether or not anyone waits on it (the
        API server carries on with a request its client has forgotten)."""
        if not self.release.is_set():
            return
        for request in self._requests.values():
            if request.status is not RequestStatus.RUNNING:
                continue
            request.status = RequestStatus.SUCCEEDED
            if request.kind == "down":
                self._clusters.pop(request.cluster, None)
            elif self._clusters.get(request.cluster) is sky.ClusterStatus.INIT:
                self._clusters[request.cluster] = sky.ClusterStatus.UP

    def status(self, cluster_names: list[str]) -> list[Any]:
        with self._lock:
            self._settle()
            return [
                self._record(name, status)
                for name, status in self._clusters.items()
                if name in cluster_names
            ]

    def requests(self, cluster_name: str) -> list[Any]:
        with self._lock:
            self._settle()
            return [
                RequestPayload(
                    request_id=r.request_id,
                    name=f"sky.{r.kind}",
                    entrypoint=f"sky.{r.kind}",
                    request_body="{}",
                    status=r.status.value,
                    created_at=r.created_at,
                    user_id="test",
                    return_value="null",
                    error="",
                    pid=None,
                    schedule_type="long",
                    cluster_name=r.cluster,
                )
                for r in self._requests.values()
                if r.cluster == cluster_name
            ]

    def down(self, cluster_name: str) -> str:
        with self._lock:
            if cluster_name not in self._clusters:
                raise sky_exceptions.ClusterDoesNotExist(f"Cluster {cluster_name!r} not found.")
            self.calls.append(("down", cluster_name))
            return self._request(cluster_name, "down")

    # -- the cloud -------------------------------------------------------------------------
    def preempt(self, cluster_name: str) -> None:
        """A spot preemption, as SkyPilot's status refresh reports it."""
        with self._lock:
            self._clusters[cluster_name] = sky.ClusterStatus.STOPPED

    def cluster(self, cluster_name: str) -> sky.ClusterStatus | None:
        with self._lock:
            return self._clusters.get(cluster_name)

    def launched(self, pool: str) -> list[str]:
        """The clusters of ``pool`` launch was called for, in order (a name twice: twice)."""
        prefix = f"cl-{pool}-"
        return [name for call, name in self.calls if call == "launch" and name.startswith(prefix)]

    def downed(self, pool: str) -> list[str]:
        prefix = f"cl-{pool}-"
        return [name for call, name in self.calls if call == "down" and name.startswith(prefix)]

    def _request(self, cluster: str, kind: str) -> str:
        request_id = f"req-{next(self._ids):06d}"
        self._requests[request_id] = _Request(
            request_id, cluster, kind, RequestStatus.RUNNING, time.time()
        )
        return request_id

    @staticmethod
    def _record(name: str, status: sky.ClusterStatus) -> StatusResponse:
        return StatusResponse(
            name=name,
            launched_at=int(time.time()),
            status=status,
            autostop=-1,
            to_down=False,
            cluster_hash=f"hash-{name}",
            cluster_ever_up=status is not sky.ClusterStatus.INIT,
            user_hash="test",
            user_name="test",
            workspace="default",
            is_managed=False,
            nodes=1,
        )
