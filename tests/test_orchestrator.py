"""The orchestrator against the real SkyPilot library and a real control plane.

Real: PostgreSQL and the admin API (a system of its own, so no other test's pools are
reconciled), ``sky.Task.from_yaml_config`` and ``Task.validate`` on every task, and SkyPilot's
own optimizer and catalog choosing each replica's placement and cost, offline, from the
committed fixture catalog (tests/fixtures/sky_catalog) under a temporary ``HOME``; the
enabled-clouds lookup is answered (AWS), as SkyPilot's own tests do. Fake: only SkyPilot's
remote half (tests/support/sky_fake.py), which answers with SkyPilot's own types.

Shown: a pool launched with its cost estimate; a preempted replica replaced; a deleted pool
torn down; a restarted orchestrator launching nothing twice; two orchestrators, one acting;
reserved capacity raising a pool's size; a task SkyPilot refuses never launched.

Without the ``skypilot`` extra these tests are skipped, except where
CROSSLOGIC_REQUIRE_SKYPILOT is set (CI), where its absence fails the run. (Not
``pytest.importorskip``: importing ``sky`` fixes its paths, so it must wait for ``HOME``.)
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from crosslogic.db.connection import create_pool
from crosslogic.stack import Stack
from tests.support.admin import Admin, ok
from tests.support.db import run_db
from tests.support.system import own_system

if importlib.util.find_spec("sky") is None:
    if os.environ.get("CROSSLOGIC_REQUIRE_SKYPILOT"):
        pytest.fail("CROSSLOGIC_REQUIRE_SKYPILOT is set but skypilot is not installed")
    pytest.skip(
        "skypilot is not installed: pip install -c constraints.txt -e '.[dev,skypilot]'",
        allow_module_level=True,
    )

CATALOG = Path(__file__).parent / "fixtures" / "sky_catalog"


@pytest.fixture(scope="module")
def sky_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """SkyPilot's home: the fixture catalog in place of the downloaded one, AWS enabled."""
    home = tmp_path_factory.mktemp("sky-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(home))
        patch.setenv("SKYPILOT_DISABLE_USAGE_COLLECTION", "1")  # no calls home from tests
        from sky import check, clouds
        from sky.skylet import constants

        shutil.copytree(CATALOG, home / ".sky" / "catalogs" / constants.CATALOG_SCHEMA_VERSION)
        patch.setattr(check, "get_cached_enabled_clouds_or_refresh", lambda *a, **k: [clouds.AWS()])
        yield home


@pytest.fixture(scope="module")
def system() -> Iterator[Stack]:
    with own_system(nodes=0) as running:
        yield running


@pytest.fixture()
def admin(system: Stack) -> Admin:
    return Admin(system)


@pytest.fixture()
def fake(sky_home: Path) -> Any:
    from tests.support.sky_fake import FakeSky

    return FakeSky()


@asynccontextmanager
async def orchestrator(system: Stack, api: Any) -> AsyncIterator[Any]:
    """One orchestrator (a process of its own: its own pool) on the system's database."""
    from crosslogic.orchestrator.orchestrator import Orchestrator
    from crosslogic.orchestrator.tasks import Launcher

    pool = await create_pool(system.settings, max_size=3, application_name="test-orchestrator")
    running = Orchestrator(
        pool,
        api,
        launcher=Launcher(control_plane=system.admin_url, registration_token="clrt_test"),
        heartbeat_timeout=system.settings.node_heartbeat_timeout,
    )
    try:
        yield running
    finally:
        await running.close()
        await pool.close()


async def rounds(running: Any, n: int = 1) -> None:
    """``n`` rounds, each followed by the end of what it launched or tore down."""
    for _ in range(n):
        assert await running.tick() is not None, "this orchestrator should lead"
        await running.settle()


async def states(system: Stack, pool: str) -> Counter[str]:
    async with system_conn(system) as conn:
        rows = await conn.fetch("SELECT state FROM pool_launches WHERE pool_name = $1", pool)
    return Counter(r["state"] for r in rows)


def new_pool(admin: Admin, system: Stack, name: str, **spec: Any) -> dict[str, Any]:
    run_db(system, "INSERT INTO models (name) VALUES ($1) ON CONFLICT DO NOTHING", f"m-{name}")
    body = {
        "name": name,
        "model": f"m-{name}",
        "accelerator": "A10G",
        "replica_tokens_per_minute": 100_000,
        **spec,
    }
    return dict(ok(admin("POST", "/admin/pools", body)))


def test_a_pool_is_launched_with_skypilots_choice_and_cost(
    system: Stack, admin: Admin, fake: Any
) -> None:
    import sky

    new_pool(admin, system, "launch", replicas=2, spot=True)

    async def go() -> None:
        async with orchestrator(system, fake) as running:
            await rounds(running)
            assert len(fake.launched("launch")) == 2
            assert await states(system, "launch") == {"up": 2}
            await rounds(running)  # steady: nothing more
            assert len(fake.launched("launch")) == 2

    asyncio.run(go())
    task = fake.tasks[fake.launched("launch")[0]]
    assert isinstance(task, sky.Task)
    # spot, with an on-demand fallback: both placements reach SkyPilot
    assert {r.use_spot for r in task.resources} == {True, False}
    assert "vllm.entrypoints.openai.api_server" in task.run
    pool = ok(admin("GET", "/admin/pools/launch"))
    # the optimizer's choice from the fixture catalog: the cheapest A10G, spot in us-west-2
    assert pool["estimate"]["cloud"] == "AWS"
    assert pool["estimate"]["region"] == "us-west-2"
    assert pool["estimate"]["instance_type"] == "g5.xlarge"
    assert pool["estimate"]["spot"] is True
    assert pool["estimate"]["cost_per_hour_usd"] == "0.3871"
    assert pool["estimate"]["target_cost_per_hour_usd"] == "0.7742"
    assert pool["target_replicas"] == 2
    assert [launch["state"] for launch in pool["launches"]] == ["up", "up"]
    assert all(launch["cost_per_hour_usd"] == "0.3871" for launch in pool["launches"])
    assert all(launch["request_id"] for launch in pool["launches"])


def test_a_preempted_replica_is_replaced(system: Stack, admin: Admin, fake: Any) -> None:
    new_pool(admin, system, "preempt", replicas=2, spot=True)

    async def go() -> None:
        async with orchestrator(system, fake) as running:
            await rounds(running)
            first, second = fake.launched("preempt")
            fake.preempt(first)
            await rounds(running)
            assert fake.downed("preempt") == [first]
            assert len(fake.launched("preempt")) == 3
            assert fake.cluster(first) is None and fake.cluster(second) is not None
            assert await states(system, "preempt") == {"up": 2, "terminated": 1}
            async with system_conn(system) as conn:
                reason = await conn.fetchval(
                    "SELECT reason FROM pool_launches WHERE cluster_name = $1", first
                )
            assert "preempted" in reason

    asyncio.run(go())


def test_a_deleted_pool_is_torn_down(system: Stack, admin: Admin, fake: Any) -> None:
    new_pool(admin, system, "delete", replicas=2)

    async def go() -> None:
        async with orchestrator(system, fake) as running:
            await rounds(running)
            ok(admin("DELETE", "/admin/pools/delete"))
            await rounds(running)
            assert sorted(fake.downed("delete")) == sorted(fake.launched("delete"))
            assert await states(system, "delete") == {"terminated": 2}
            await rounds(running)
            assert len(fake.launched("delete")) == 2  # nothing relaunched

    asyncio.run(go())


def test_a_restarted_orchestrator_launches_nothing_twice(
    system: Stack, admin: Admin, sky_home: Path
) -> None:
    from crosslogic.orchestrator import launch_store
    from tests.support.sky_fake import FakeSky

    fake = FakeSky(hold=True)  # launches stay in flight until released
    new_pool(admin, system, "restart", replicas=2)

    async def go() -> None:
        pool = await create_pool(system.settings, max_size=3, application_name="test-crashing")
        from crosslogic.orchestrator.orchestrator import Orchestrator
        from crosslogic.orchestrator.tasks import Launcher

        first = Orchestrator(
            pool,
            fake,
            launcher=Launcher(control_plane=system.admin_url, registration_token="clrt_test"),
            heartbeat_timeout=10,
        )
        assert await first.tick() is not None
        assert len(fake.launched("restart")) == 2
        # it dies (SIGKILL): its connections drop, its waits on SkyPilot with it
        for task in asyncio.all_tasks() - {asyncio.current_task()}:
            task.cancel()
        pool.terminate()
        # and a third replica's row was recorded, but the process died before submitting it
        ok(admin("PATCH", "/admin/pools/restart", {"replicas": 3}))
        async with system_conn(system) as conn:
            spec_hash = await conn.fetchval(
                "SELECT spec_hash FROM pool_launches WHERE pool_name = 'restart' LIMIT 1"
            )
            intent = await launch_store.record_intent(
                conn, pool="restart", spec_hash=spec_hash, cost_per_hour=None, resources=""
            )
        async with orchestrator(system, fake) as second:
            assert await second.tick() is not None
            # the two in flight are waited for, the recorded one submitted under its name
            assert fake.launched("restart")[2:] == [intent.cluster_name]
            fake.release.set()
            await rounds(second, 2)
        launched = fake.launched("restart")
        assert len(launched) == 3 and Counter(launched).most_common(1)[0][1] == 1
        assert await states(system, "restart") == {"up": 3}

    asyncio.run(go())


@asynccontextmanager
async def system_conn(system: Stack) -> AsyncIterator[Any]:
    from crosslogic.db.connection import connect

    conn = await connect(system.settings)
    try:
        yield conn
    finally:
        await conn.close()


def test_of_two_orchestrators_one_acts_and_the_other_takes_over(
    system: Stack, admin: Admin, fake: Any
) -> None:
    new_pool(admin, system, "twins", replicas=3)

    async def go() -> None:
        async with orchestrator(system, fake) as one, orchestrator(system, fake) as two:

            async def run(running: Any) -> list[bool]:
                led = []
                for _ in range(4):
                    led.append(await running.tick() is not None)
                    await running.settle()
                return led

            led_one, led_two = await asyncio.gather(run(one), run(two))
            assert all(led_one) != all(led_two)  # exactly one leads, throughout
            assert not any(led_one) or not any(led_two)
            leader, standby = (one, two) if all(led_one) else (two, one)
            await leader.close()  # it stops: its connection, and the lock, go
            assert await standby.tick() is not None
        assert len(fake.launched("twins")) == 3
        assert await states(system, "twins") == {"up": 3}

    asyncio.run(go())


def test_reserved_capacity_sets_the_floor(system: Stack, admin: Admin, fake: Any) -> None:
    new_pool(
        admin, system, "reserved", min_replicas=1, max_replicas=2, replica_tokens_per_minute=1000
    )
    tenant = run_db(system, "INSERT INTO tenants (name) VALUES ('pool-buyer') RETURNING id")[0][0]
    run_db(
        system,
        "INSERT INTO reservations (tenant_id, model_id, tokens_per_minute, starts_at, ends_at, "
        "fee_usd, actor) SELECT $1, id, 3500, date_trunc('hour', now()), "
        "date_trunc('hour', now()) + interval '1 day', 0, 'test' FROM models "
        "WHERE name = 'm-reserved'",
        tenant,
    )

    async def go() -> None:
        async with orchestrator(system, fake) as running:
            await rounds(running)

    asyncio.run(go())
    pool = ok(admin("GET", "/admin/pools/reserved"))
    # 3500 tokens per minute sold, 1000 a replica: 4 replicas, above max_replicas
    assert pool["target_replicas"] == 4
    assert pool["estimate"]["reserved_floor"] == 4
    assert len(fake.launched("reserved")) == 4


def test_a_pool_scales_on_the_load_its_nodes_report(system: Stack, admin: Admin, fake: Any) -> None:
    run_db(
        system,
        "INSERT INTO regions (code, name, provider) VALUES ('pool-region', 'R', 'aws') "
        "ON CONFLICT DO NOTHING",
    )
    new_pool(
        admin,
        system,
        "loaded",
        min_replicas=1,
        max_replicas=3,
        region="pool-region",
        scale_up_cooldown_s=0,
    )

    async def go() -> None:
        async with orchestrator(system, fake) as running:
            await rounds(running)
            assert len(fake.launched("loaded")) == 1
            # two nodes of the model in the pool's region, KV caches 90% full (heartbeats)
            async with system_conn(system) as conn:
                for n in (1, 2):
                    await conn.execute(
                        "INSERT INTO nodes (id, model_id, address, port, region_code, "
                        "kv_cache_usage_perc, requests_running, capacity) SELECT $1, id, "
                        "'10.9.0.' || $2::text, 8000, 'pool-region', 0.9, 100, 256 FROM models "
                        "WHERE name = 'm-loaded'",
                        f"loaded-node-{n}",
                        str(n),
                    )
            await rounds(running)

    asyncio.run(go())
    # 2 x 0.9 / 0.7 = 2.6: three replicas, the most the pool allows
    assert ok(admin("GET", "/admin/pools/loaded"))["target_replicas"] == 3
    assert len(fake.launched("loaded")) == 3


def test_a_task_skypilot_refuses_is_never_launched(system: Stack, admin: Admin, fake: Any) -> None:
    new_pool(admin, system, "refused", replicas=1, accelerator="H100")  # not in the catalog
    new_pool(admin, system, "badupdate", replicas=1)

    async def go() -> None:
        async with orchestrator(system, fake) as running:
            await rounds(running)
            # a bad update of a serving pool: refused by SkyPilot, its replica kept
            ok(admin("PATCH", "/admin/pools/badupdate", {"accelerator": "H100", "replicas": 2}))
            await rounds(running, 2)

    asyncio.run(go())
    assert fake.launched("refused") == []
    pool = ok(admin("GET", "/admin/pools/refused"))
    assert "H100" in pool["estimate"]["error"]
    assert pool["launches"] == []
    assert len(fake.launched("badupdate")) == 1 and fake.downed("badupdate") == []
    assert "H100" in ok(admin("GET", "/admin/pools/badupdate"))["estimate"]["error"]


def test_the_orchestrators_settings_name_what_is_missing() -> None:
    from crosslogic.orchestrator import config
    from crosslogic.settings import SettingsError, load

    with_token = load(
        {"NODE_REGISTRATION_TOKEN": "clrt_x", "ORCHESTRATOR": "skypilot", "DB_HOST": "db"}
    )
    with pytest.raises(SettingsError, match="ORCHESTRATOR_CONTROL_PLANE"):
        config.load({}, with_token)
    with pytest.raises(SettingsError, match="ORCHESTRATOR_CONTROL_PLANE"):
        config.load({"ORCHESTRATOR_CONTROL_PLANE": "not a url"}, with_token)
    with pytest.raises(SettingsError, match="NODE_REGISTRATION_TOKEN"):
        config.load(
            {"ORCHESTRATOR_CONTROL_PLANE": "https://cp.example.com"}, load({"DB_HOST": "db"})
        )
    with pytest.raises(SettingsError, match="DB_HOST"):
        config.load({"ORCHESTRATOR_CONTROL_PLANE": "https://cp.example.com"}, load({}))
    with pytest.raises(SettingsError, match="ORCHESTRATOR="):
        load({"ORCHESTRATOR": "kubernetes"})
    loaded = config.load(
        {"ORCHESTRATOR_CONTROL_PLANE": "https://cp.example.com/", "ORCHESTRATOR_INTERVAL": "30s"},
        with_token,
    )
    assert loaded.interval == 30.0
    assert loaded.launcher.control_plane == "https://cp.example.com"
    assert loaded.launcher.registration_token == "clrt_x"


@pytest.mark.parametrize(
    ("change", "chosen"),
    [
        ({"spot": True}, ("us-west-2", True, "0.3871")),
        ({"spot": False}, ("us-east-1", False, "1.006")),
        (
            {"spot": True, "clouds": ["aws"], "cloud_regions": ["us-east-1"]},
            ("us-east-1", True, "0.4097"),
        ),
        ({"accelerator": "A100", "gpu_count": 8}, ("us-east-1", False, "32.7726")),
    ],
)
def test_skypilot_validates_and_prices_each_task_from_its_catalog(
    sky_home: Path, change: dict[str, Any], chosen: tuple[str, bool, str]
) -> None:
    from crosslogic.orchestrator import sky_sdk
    from crosslogic.orchestrator.pools import pool_spec
    from crosslogic.orchestrator.tasks import Launcher, task_config

    spec = pool_spec(
        {"name": "p", "model": "m", "accelerator": "A10G", "replica_tokens_per_minute": 1,
         "replicas": 1, **change}
    )  # fmt: skip
    config = task_config(spec, name="cl-p-1", launcher=Launcher("https://cp", "clrt_x"))
    found = sky_sdk.estimate(sky_sdk.validated_task(config))
    assert (found.region, found.spot, str(found.cost_per_hour)) == chosen
    assert found.cloud == "AWS"


@pytest.mark.parametrize(
    "change",
    [
        {"clouds": ["aws"], "cloud_regions": ["mars-1"]},  # no such region
        {"accelerator": "H100"},  # not in the catalog
        {"accelerator": "A10G", "gpu_count": 3},  # no such instance
    ],
)
def test_skypilot_refuses_what_it_cannot_place(sky_home: Path, change: dict[str, Any]) -> None:
    from crosslogic.orchestrator import sky_sdk
    from crosslogic.orchestrator.pools import pool_spec
    from crosslogic.orchestrator.tasks import Launcher, task_config

    spec = pool_spec(
        {"name": "p", "model": "m", "accelerator": "A10G", "replica_tokens_per_minute": 1,
         "replicas": 1, **change}
    )  # fmt: skip
    config = task_config(spec, name="cl-p-1", launcher=Launcher("https://cp", "clrt_x"))
    with pytest.raises(sky_sdk.TaskRejected):
        sky_sdk.estimate(sky_sdk.validated_task(config))
