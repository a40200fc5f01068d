"""The pure layer of GPU pools: the spec's validation, the SkyPilot task it becomes, the
autoscaler (properties, with hypothesis) and the reconcile decisions. No I/O, no SkyPilot:
tests/test_orchestrator.py runs them against the real library."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crosslogic.errors import Invalid
from crosslogic.orchestrator import reconcile as rec
from crosslogic.orchestrator.autoscale import (
    Bounds,
    Cooldowns,
    NodeLoad,
    desired,
    reserved_floor,
    wanted,
)
from crosslogic.orchestrator.pools import PoolSpec, pool_spec, updated
from crosslogic.orchestrator.tasks import Launcher, task_config

BASE = {"name": "llama", "model": "m", "accelerator": "A100", "replica_tokens_per_minute": 60_000}
LAUNCHER = Launcher(control_plane="https://cp.example.com", registration_token="clrt_secret")
NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)
COOL = Cooldowns(up=timedelta(minutes=2), down=timedelta(minutes=10))


def test_a_fixed_pool_and_an_autoscaled_one() -> None:
    fixed = pool_spec({**BASE, "replicas": 2})
    assert (fixed.min_replicas, fixed.max_replicas, fixed.gpu_count) == (2, 2, 1)
    ranged = pool_spec({**BASE, "min_replicas": 1, "max_replicas": 4, "spot": True})
    assert (ranged.min_replicas, ranged.max_replicas, ranged.spot) == (1, 4, True)
    assert ranged.on_demand_fallback  # spot falls back to on demand unless told not to


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"replicas": 2, "min_replicas": 1}, "replicas"),
        ({"min_replicas": 3, "max_replicas": 2}, "min_replicas"),
        ({"max_replicas": 2}, "min_replicas"),
        ({"replicas": 1, "cloud_regions": ["us-east-1"]}, "cloud_regions"),
        ({"replicas": 1, "clouds": ["aws", "mars"]}, "clouds"),
        ({"replicas": 1, "vllm_args": ["--x", 5]}, "vllm_args"),
        ({"replicas": 1, "name": "Bad_Name"}, "name"),
        ({"replicas": 1, "flavour": "x"}, "flavour"),
    ],
)
def test_a_bad_pool_is_refused_naming_the_field(change: dict[str, object], param: str) -> None:
    with pytest.raises(Invalid) as refused:
        pool_spec({**BASE, **change})
    assert refused.value.param == param


def test_an_update_is_merged_then_validated_whole() -> None:
    spec = pool_spec({**BASE, "min_replicas": 1, "max_replicas": 3, "clouds": ["aws"]})
    assert updated(spec, {"replicas": 5}).max_replicas == 5
    assert updated(spec, {"cloud_regions": ["us-west-2"]}).cloud_regions == ("us-west-2",)
    assert updated(spec, {"min_replicas": 0, "max_replicas": 1}).min_replicas == 0
    with pytest.raises(Invalid):
        updated(spec, {"clouds": ["aws", "gcp"], "cloud_regions": ["us-west-2"]})
    with pytest.raises(Invalid):
        updated(spec, {"name": "other"})
    # the spec's digest changes with what a replica is made of, not with how many there are
    assert updated(spec, {"replicas": 5}).digest() == spec.digest()
    assert updated(spec, {"vllm_args": ["--enforce-eager"]}).digest() != spec.digest()


def test_the_task_runs_vllm_and_the_agent_with_spot_and_an_on_demand_fallback() -> None:
    spec = pool_spec(
        {
            **BASE,
            "replicas": 1,
            "gpu_count": 2,
            "spot": True,
            "clouds": ["aws"],
            "cloud_regions": ["us-east-1", "us-west-2"],
            "model_source": "meta-llama/Llama-3.1-8B-Instruct",
            "vllm_args": ["--max-model-len", "8192"],
            "region": "us",
        }
    )
    config = task_config(spec, name="cl-llama-7", launcher=LAUNCHER)
    assert config["name"] == "cl-llama-7"
    resources = config["resources"]
    assert resources["accelerators"] == "A100:2"
    assert resources["any_of"] == [
        {"use_spot": True, "cloud": "aws", "region": "us-east-1"},
        {"use_spot": False, "cloud": "aws", "region": "us-east-1"},
        {"use_spot": True, "cloud": "aws", "region": "us-west-2"},
        {"use_spot": False, "cloud": "aws", "region": "us-west-2"},
    ]
    assert "--served-model-name m" in config["run"]
    assert "--model meta-llama/Llama-3.1-8B-Instruct" in config["run"]
    assert "--tensor-parallel-size 2 --max-model-len 8192 &" in config["run"]
    agent = config["run"].splitlines()[-1]
    assert agent.startswith('exec crosslogic agent --vllm-url "$CROSSLOGIC_VLLM_URL"')
    assert '--cloud "$CLOUD"' in agent and agent.endswith("--gpu-type A100 --gpu-count 2 --spot")
    assert config["envs"]["CROSSLOGIC_NODE_ID"] == "cl-llama-7"
    assert config["envs"]["CROSSLOGIC_REGION"] == "us"
    # the token is a SkyPilot secret, never an environment value SkyPilot would print
    assert config["secrets"] == {"NODE_REGISTRATION_TOKEN": "clrt_secret"}
    assert "clrt_secret" not in str(config["envs"])
    on_demand = task_config(pool_spec({**BASE, "replicas": 1}), name="n", launcher=LAUNCHER)
    assert on_demand["resources"] == {"accelerators": "A100:1", "ports": 8000, "use_spot": False}


# -- autoscaling ---------------------------------------------------------------------------
def test_load_asks_for_replicas_like_an_hpa() -> None:
    busy = NodeLoad(requests_running=200, requests_waiting=0, kv_cache_usage_perc=0.9, capacity=256)
    assert wanted([busy] * 4) == 6  # 4 x 0.9 / 0.7 = 5.14
    queued = NodeLoad(
        requests_running=256, requests_waiting=256, kv_cache_usage_perc=0.5, capacity=256
    )
    assert wanted([queued]) == 3  # a queue as long as the batch: utilisation 2
    assert wanted([]) is None
    assert reserved_floor(0, 1000) == 0
    assert reserved_floor(2500, 1000) == 3


def test_the_reserved_floor_wins_over_max_and_cooldowns() -> None:
    idle = NodeLoad(0, 0, 0.0, 256)
    bounds = Bounds(min_replicas=1, max_replicas=2, reserved_floor=4)
    assert (
        desired(current=1, bounds=bounds, loads=[idle], last_scaled_at=NOW, now=NOW, cooldowns=COOL)
        == 4
    )


def test_scaling_waits_out_its_cooldown_and_goes_down_one_at_a_time() -> None:
    hot = [NodeLoad(256, 100, 1.0, 256)] * 2  # 2 x 1.39 / 0.7: 4 replicas
    idle = [NodeLoad(0, 0, 0.0, 256)] * 4
    bounds = Bounds(min_replicas=1, max_replicas=10)

    def after(seconds: float, *, current: int, loads: list[NodeLoad]) -> int:
        last = NOW - timedelta(seconds=seconds)
        return desired(
            current=current,
            bounds=bounds,
            loads=loads,
            last_scaled_at=last,
            now=NOW,
            cooldowns=COOL,
        )

    assert after(30, current=2, loads=hot) == 2
    assert after(3600, current=2, loads=hot) == 4
    assert after(3600, current=4, loads=idle) == 3
    assert after(300, current=4, loads=idle) == 4  # past the up cooldown, within the down one


loads = st.lists(
    st.builds(
        NodeLoad,
        st.integers(0, 2000),
        st.integers(0, 2000),
        st.floats(0, 1),
        st.integers(1, 1024),
    ),
    max_size=12,
)
bounds_st = st.tuples(st.integers(0, 20), st.integers(0, 20), st.integers(0, 30)).map(
    lambda t: Bounds(min(t[0], t[1]), max(t[0], t[1]), t[2])
)
moments = st.one_of(st.none(), st.integers(0, 3600).map(lambda s: NOW - timedelta(seconds=s)))


@given(current=st.integers(0, 40), bounds=bounds_st, loads=loads, last=moments)
def test_never_below_the_floor_never_above_max_unless_reserved(
    current: int, bounds: Bounds, loads: list[NodeLoad], last: datetime | None
) -> None:
    got = desired(
        current=current, bounds=bounds, loads=loads, last_scaled_at=last, now=NOW, cooldowns=COOL
    )
    assert got >= bounds.min_replicas
    assert got >= bounds.reserved_floor
    assert got <= max(bounds.max_replicas, bounds.reserved_floor)
    if bounds.reserved_floor <= bounds.max_replicas:
        assert got <= bounds.max_replicas


@given(
    current=st.integers(0, 40),
    bounds=bounds_st,
    loads=loads,
    ago=st.integers(0, int(COOL.up.total_seconds()) - 1),
)
def test_no_change_within_the_cooldown_but_into_the_bounds(
    current: int, bounds: Bounds, loads: list[NodeLoad], ago: int
) -> None:
    got = desired(
        current=current,
        bounds=bounds,
        loads=loads,
        last_scaled_at=NOW - timedelta(seconds=ago),
        now=NOW,
        cooldowns=COOL,
    )
    assert got == bounds.clamp(current)


# -- reconcile -------------------------------------------------------------------------------
def launch(
    n: int,
    *,
    state: str = "up",
    seen: rec.Seen = rec.Seen.RUNNING,
    pool: str = "p",
    digest: str = "d",
) -> rec.Launch:
    return rec.Launch(n, pool, f"cl-{pool}-{n}", digest, state, seen, submitted=True)


def test_a_new_pool_is_launched_and_a_launch_that_came_up_is_marked() -> None:
    pool = rec.Declared("p", "d", 2)
    assert rec.decide([pool], []) == [rec.Submit("p"), rec.Submit("p")]
    starting = launch(1, state="launching", seen=rec.Seen.RUNNING)
    assert rec.decide([pool], [starting]) == [rec.MarkUp(starting), rec.Submit("p")]


def test_a_preempted_replica_is_torn_down_and_replaced() -> None:
    pool = rec.Declared("p", "d", 2)
    alive, stopped, gone = (
        launch(1),
        launch(2, seen=rec.Seen.STOPPED),
        launch(3, seen=rec.Seen.MISSING),
    )
    actions = rec.decide([pool], [alive, stopped, gone])
    assert rec.Teardown(stopped, "lost: the cluster stopped (preempted)", down=True) in actions
    assert rec.Teardown(gone, "lost: the cluster is gone (preempted)", down=False) in actions
    assert actions.count(rec.Submit("p")) == 1


def test_what_is_no_longer_declared_is_torn_down_once_no_launch_is_in_flight() -> None:
    orphan = launch(1, pool="gone")
    assert rec.decide([], [orphan]) == [rec.Teardown(orphan, "pool deleted", down=True)]
    in_flight = launch(2, pool="gone", state="launching", seen=rec.Seen.STARTING)
    assert rec.decide([], [in_flight]) == []


def test_a_launch_stalled_in_init_is_torn_down_and_replaced() -> None:
    stalled = launch(1, state="launching", seen=rec.Seen.STALLED)
    assert rec.decide([rec.Declared("p", "d", 1)], [stalled]) == [
        rec.Teardown(stalled, "lost: the cluster is stuck in INIT", down=True),
        rec.Submit("p"),
    ]


def test_a_recorded_launch_never_submitted_is_submitted_under_its_name() -> None:
    pool = rec.Declared("p", "d", 1)
    intent = rec.Launch(1, "p", "cl-p-1", "d", "launching", rec.Seen.MISSING, submitted=False)
    assert rec.decide([pool], [intent]) == [rec.Resubmit(intent)]
    failed = launch(2, state="launching", seen=rec.Seen.MISSING)
    assert rec.decide([pool], [failed])[0] == rec.Failed(
        failed, "the launch failed: SkyPilot left no cluster"
    )


def test_a_new_spec_replaces_the_old_replicas_once_enough_are_up() -> None:
    pool = rec.Declared("p", "new", 1)
    old = launch(1, digest="old")
    assert rec.decide([pool], [old]) == [rec.Submit("p")]
    starting = launch(2, digest="new", state="launching", seen=rec.Seen.STARTING)
    assert rec.decide([pool], [old, starting]) == []
    up = launch(2, digest="new")
    assert rec.decide([pool], [old, up]) == [rec.Teardown(old, "replaced by a new spec", down=True)]


def test_a_pool_skypilot_refused_keeps_what_serves() -> None:
    serving = launch(1, digest="old")
    held = rec.Declared("p", "refused", 2, hold=True)
    assert rec.decide([held], [serving]) == []
    lost = launch(2, digest="old", seen=rec.Seen.STOPPED)
    assert rec.decide([held], [lost]) == [
        rec.Teardown(lost, "lost: the cluster stopped (preempted)", down=True)
    ]


def test_scaling_down_ends_launches_not_yet_up_first_once_they_have_landed() -> None:
    pool = rec.Declared("p", "d", 1)
    up, starting = launch(1), launch(2, state="launching", seen=rec.Seen.STARTING)
    assert rec.decide([pool], [up, starting]) == []  # not half way through its launch
    stalled = launch(2, state="launching", seen=rec.Seen.STALLED)
    assert rec.decide([pool], [up, stalled]) == [
        rec.Teardown(stalled, "lost: the cluster is stuck in INIT", down=True)
    ]
    newer = launch(3)
    assert rec.decide([pool], [up, newer]) == [rec.Teardown(newer, "scaled down", down=True)]


def test_a_spec_is_a_value() -> None:
    spec = PoolSpec("p", "m", "A100", 1, 1, 1, 1000)
    assert spec.as_json()["clouds"] is None
    assert pool_spec({k: v for k, v in spec.as_json().items() if v is not None}) == spec
