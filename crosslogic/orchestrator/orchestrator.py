"""The orchestrator's round: observe, decide, act, with every state in PostgreSQL.

Each :meth:`Orchestrator.tick` (only on the leader: see ``launch_store``) reads the
declared pools and live launches, asks SkyPilot what became of each launch's cluster, sizes
each pool (``autoscale``), decides (``reconcile``) and acts. SkyPilot calls block, so they
run in threads; a launch's or teardown's completion is awaited in the background (through
``sky.get``) and the next round sees its result either way, so a restart loses nothing.
The orchestrator is its own process: it is never on a request's path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from crosslogic.orchestrator import launch_store as store
from crosslogic.orchestrator import reconcile as rec
from crosslogic.orchestrator import sky_sdk
from crosslogic.orchestrator.autoscale import Bounds, Cooldowns, desired, reserved_floor
from crosslogic.orchestrator.pool_store import spec_of
from crosslogic.orchestrator.pools import PoolSpec
from crosslogic.orchestrator.sizing import PoolPlan
from crosslogic.orchestrator.tasks import Launcher, cluster_name, task_config

log = logging.getLogger(__name__)
Clock = Callable[[], datetime]


def _time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


class Orchestrator:
    """Keeps SkyPilot's clusters what the pools declare. ``api`` is SkyPilot's remote half
    (``sky_sdk.Sky``, or a fake in tests); ``pool`` the control plane's database."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        api: sky_sdk.SkyApi,
        *,
        launcher: Launcher,
        heartbeat_timeout: float,
        clock: Clock = lambda: datetime.now(UTC),
    ) -> None:
        self._pool, self._api, self._launcher = pool, api, launcher
        self._heartbeat_timeout = heartbeat_timeout
        self._clock = clock
        self._leader: asyncpg.Connection | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._estimates: dict[str, dict[str, Any]] = {}  # digest -> estimate (or error)

    async def lead(self) -> bool:
        """Whether this orchestrator leads (taking the lead if it is free)."""
        if self._leader is None:
            self._leader = await self._pool.acquire()
        try:
            return await store.try_lead(self._leader)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            await self._drop_leader()
            raise

    async def _drop_leader(self) -> None:
        leader, self._leader = self._leader, None
        if leader is not None:
            # a broken connection is closed by the release, and with it the lock
            with contextlib.suppress(
                OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError
            ):
                await self._pool.release(leader, timeout=1)

    async def close(self) -> None:
        await self.settle()
        await self._drop_leader()

    async def settle(self) -> None:
        """Until the launches and teardowns in flight have ended (tests wait on it)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    async def tick(self) -> list[rec.Action] | None:
        """One round; the actions taken, None when another orchestrator leads."""
        if not await self.lead():
            return None
        async with self._pool.acquire() as conn:
            pools = await store.declared(conn)
            rows = await store.live_launches(conn)
        seen = await asyncio.to_thread(
            sky_sdk.observe, self._api, [row.cluster_name for row in rows]
        )
        plans = {}
        for row in pools:
            plans[row["name"]] = plan = await self._plan(row)
            async with self._pool.acquire() as conn:
                await store.set_pool_state(
                    conn,
                    row["name"],
                    target=plan.target,
                    scaled_at=plan.scaled_at,
                    estimate=plan.state(),
                )
        declared = [
            rec.Declared(name, plan.spec.digest(), plan.target, hold=not plan.launchable)
            for name, plan in plans.items()
        ]
        launches = [
            rec.Launch(
                row.id,
                row.pool,
                row.cluster_name,
                row.spec_hash,
                row.state,
                seen[row.cluster_name],
                row.request_id is not None,
            )
            for row in rows
        ]
        actions = rec.decide(declared, launches)
        by_id = {row.id: row for row in rows}
        for action in actions:
            await self._act(action, plans, by_id)
        return actions

    async def _plan(self, row: dict[str, Any]) -> PoolPlan:
        spec = spec_of(row)
        async with self._pool.acquire() as conn:
            loads = await store.node_loads(
                conn,
                model=spec.model,
                region=spec.region,
                heartbeat_timeout=self._heartbeat_timeout,
            )
            reserved = await store.reserved_tokens_per_minute(
                conn, model=spec.model, region=spec.region
            )
        bounds = Bounds(
            spec.min_replicas,
            spec.max_replicas,
            reserved_floor(reserved, spec.replica_tokens_per_minute),
        )
        before = row["target_replicas"]
        scaled_at = _time(row["last_scaled_at"])
        now = self._clock()
        target = desired(
            current=spec.min_replicas if before is None else before,
            bounds=bounds,
            loads=loads,
            last_scaled_at=scaled_at,
            now=now,
            cooldowns=Cooldowns(
                up=timedelta(seconds=spec.scale_up_cooldown_s),
                down=timedelta(seconds=spec.scale_down_cooldown_s),
            ),
        )
        if before is not None and target != before:
            log.info("pool %s: %d -> %d replicas", spec.name, before, target)
            scaled_at = now
        estimate = await self._estimate(spec)
        return PoolPlan(spec, target, scaled_at, estimate, bounds.reserved_floor)

    async def _estimate(self, spec: PoolSpec) -> dict[str, Any]:
        digest = spec.digest()
        if digest not in self._estimates:
            config = task_config(spec, name=cluster_name(spec.name, 0), launcher=self._launcher)
            try:
                task = await asyncio.to_thread(sky_sdk.validated_task, config)
                found = await asyncio.to_thread(sky_sdk.estimate, task)
                self._estimates[digest] = {**found.as_json(), "digest": digest}
            except sky_sdk.TaskRejected as exc:
                log.warning("pool %s: %s", spec.name, exc.message)
                self._estimates[digest] = {"error": exc.message, "digest": digest}
        return self._estimates[digest]

    async def _act(
        self, action: rec.Action, plans: dict[str, PoolPlan], rows: dict[int, store.LaunchRow]
    ) -> None:
        async with self._pool.acquire() as conn:
            if isinstance(action, rec.Submit):
                await self._submit(conn, plans[action.pool])
            elif isinstance(action, rec.Resubmit):
                plan = plans[action.launch.pool]
                if action.launch.digest != plan.spec.digest():
                    await store.mark(conn, action.launch.id, state="failed", reason="spec changed")
                else:
                    await self._launch(conn, plan.spec, rows[action.launch.id])
            elif isinstance(action, rec.MarkUp):
                await store.mark(conn, action.launch.id, state="up", only_from="launching")
            elif isinstance(action, rec.Failed):
                await store.mark(
                    conn,
                    action.launch.id,
                    state="failed",
                    reason=action.reason,
                    only_from="launching",
                )
            else:
                await self._teardown(conn, action, rows[action.launch.id])

    async def _submit(self, conn: asyncpg.Connection, plan: PoolPlan) -> None:
        estimate = plan.estimate
        row = await store.record_intent(
            conn,
            pool=plan.spec.name,
            spec_hash=plan.spec.digest(),
            cost_per_hour=plan.cost_per_hour,
            resources=str(estimate.get("resources", "")),
        )
        log.info("pool %s: launching %s", plan.spec.name, row.cluster_name)
        await self._launch(conn, plan.spec, row)

    async def _launch(self, conn: asyncpg.Connection, spec: PoolSpec, row: store.LaunchRow) -> None:
        config = task_config(spec, name=row.cluster_name, launcher=self._launcher)
        try:
            task = await asyncio.to_thread(sky_sdk.validated_task, config)
        except sky_sdk.TaskRejected as exc:
            await store.mark(conn, row.id, state="failed", reason=exc.message)
            return
        request_id = await asyncio.to_thread(
            lambda: self._api.launch(task, cluster_name=row.cluster_name)
        )
        await store.set_request(conn, row.id, request_id=request_id)
        self._in_background(self._await_launch(row, request_id))

    async def _await_launch(self, row: store.LaunchRow, request_id: str) -> None:
        try:
            await asyncio.to_thread(self._api.wait, request_id)
        except Exception as exc:  # SkyPilot's own errors: the next round sees the outcome
            log.warning("launch of %s failed: %s", row.cluster_name, exc)
            async with self._pool.acquire() as conn:
                await conn.execute(
                    "UPDATE pool_launches SET reason = $2 WHERE id = $1", row.id, str(exc)[:500]
                )
            return
        async with self._pool.acquire() as conn:
            await store.mark(conn, row.id, state="up", only_from="launching")

    async def _teardown(
        self, conn: asyncpg.Connection, action: rec.Teardown, row: store.LaunchRow
    ) -> None:
        name = row.cluster_name
        if row.state == "terminating" and row.down_request_id is not None:
            in_flight = await asyncio.to_thread(sky_sdk.in_flight, self._api, name)
            if in_flight and action.down:
                return  # the teardown asked for earlier is still running
        await store.mark(conn, row.id, state="terminating", reason=action.reason)
        if not action.down:
            await store.mark(conn, row.id, state="terminated")
            return
        log.info("tearing down %s: %s", name, action.reason)
        try:
            request_id = await asyncio.to_thread(self._api.down, name)
        except Exception as exc:
            if not sky_sdk.is_gone(exc):
                raise
            await store.mark(conn, row.id, state="terminated")
            return
        await store.set_request(conn, row.id, request_id=request_id, column="down_request_id")
        self._in_background(self._await_down(row, request_id))

    async def _await_down(self, row: store.LaunchRow, request_id: str) -> None:
        try:
            await asyncio.to_thread(self._api.wait, request_id)
        except Exception as exc:
            if not sky_sdk.is_gone(exc):
                log.warning("teardown of %s failed, retried: %s", row.cluster_name, exc)
                return
        async with self._pool.acquire() as conn:
            await store.mark(conn, row.id, state="terminated", only_from="terminating")

    def _in_background(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
