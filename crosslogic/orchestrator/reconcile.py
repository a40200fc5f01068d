"""What to do about the pools, pure: declared pools and observed launches in, actions out.

A launch (one replica, one SkyPilot cluster) is recorded before it is submitted, so every
cluster the orchestrator ever asked for has a row; SkyPilot's status says what became of it:

- launching, and the cluster is UP: it is up. A SkyPilot request for it still running:
  wait (a launch in flight is never torn down; the round after it ends decides). INIT with
  nothing in flight: stalled, torn down and replaced. Gone with no request ever stored
  (the process died between recording the intent and submitting it): submit it now, under
  the same name. Gone after a request: the launch failed; it stops counting and is
  replaced.
- up, and the cluster is STOPPED, stalled in INIT or gone: lost (a spot preemption;
  SkyPilot polls for them): torn down and replaced.
- a pool no longer declared: every launch of it is torn down.

Per pool, launches of the current spec (``digest``) are counted against the replicas
wanted: fewer, launch more; more, tear down the surplus (those not yet up first). Launches
of an older spec are torn down once enough current ones are up (a rolling replacement). A
pool whose spec SkyPilot refused is held: what it has keeps running, nothing is added.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

LAUNCHING, UP, TERMINATING = "launching", "up", "terminating"


class Seen(enum.Enum):
    """A launch's cluster as SkyPilot reports it."""

    RUNNING = "running"  # ClusterStatus.UP
    STARTING = "starting"  # ClusterStatus.INIT, or a request for it not finished
    STOPPED = "stopped"  # ClusterStatus.STOPPED: preempted (or stopped by hand)
    STALLED = "stalled"  # ClusterStatus.INIT with nothing in flight: a launch that failed
    # half way, or a cluster SkyPilot found abnormal (a node gone)
    MISSING = "missing"  # no such cluster and nothing in flight


@dataclass(frozen=True)
class Declared:
    """A pool as the orchestrator aims at it."""

    name: str
    digest: str
    replicas: int
    # SkyPilot refused its current spec: nothing launched, nothing torn down for the count
    # (a bad update must not take down the replicas that serve)
    hold: bool = False


@dataclass(frozen=True)
class Launch:
    id: int
    pool: str
    cluster_name: str
    digest: str
    state: str  # launching, up, terminating
    seen: Seen
    submitted: bool  # a SkyPilot request id was stored


@dataclass(frozen=True)
class Submit:
    """Launch a new replica of ``pool`` (record it, then submit it)."""

    pool: str


@dataclass(frozen=True)
class Resubmit:
    """Submit a recorded launch that never was submitted."""

    launch: Launch


@dataclass(frozen=True)
class MarkUp:
    launch: Launch


@dataclass(frozen=True)
class Failed:
    """The launch failed: it ends without a teardown (there is no cluster)."""

    launch: Launch
    reason: str


@dataclass(frozen=True)
class Teardown:
    """Tear the cluster down (``down``: it exists) and end the launch."""

    launch: Launch
    reason: str
    down: bool


Action = Submit | Resubmit | MarkUp | Failed | Teardown


def _ending(launch: Launch) -> Action | None:
    if launch.state == TERMINATING:
        return Teardown(launch, "teardown", down=launch.seen is not Seen.MISSING)
    if launch.seen is Seen.STOPPED:
        return Teardown(launch, "lost: the cluster stopped (preempted)", down=True)
    if launch.seen is Seen.STALLED:
        return Teardown(launch, "lost: the cluster is stuck in INIT", down=True)
    if launch.seen is not Seen.MISSING:
        return None
    if launch.state == UP:
        return Teardown(launch, "lost: the cluster is gone (preempted)", down=False)
    if launch.submitted:
        return Failed(launch, "the launch failed: SkyPilot left no cluster")
    return None


def decide(pools: Sequence[Declared], launches: Sequence[Launch]) -> list[Action]:
    """The actions that bring ``launches`` to what ``pools`` declare."""
    actions: list[Action] = []
    declared = {pool.name: pool for pool in pools}
    live: dict[str, list[Launch]] = {name: [] for name in declared}
    for launch in launches:
        ending = _ending(launch)
        if ending is not None:
            actions.append(ending)
            continue
        if launch.pool not in declared:
            if launch.seen is not Seen.STARTING:  # one in flight: once it has ended
                actions.append(Teardown(launch, "pool deleted", down=True))
            continue
        if launch.state == LAUNCHING and launch.seen is Seen.RUNNING:
            actions.append(MarkUp(launch))
        elif launch.state == LAUNCHING and not launch.submitted:
            actions.append(Resubmit(launch))
        live[launch.pool].append(launch)
    for name, pool in sorted(declared.items()):
        actions.extend(_count(pool, live[name]))
    return actions


def _serving(launch: Launch) -> bool:
    return launch.seen is Seen.RUNNING


def _count(pool: Declared, live: list[Launch]) -> list[Action]:
    if pool.hold:
        return []
    current = [launch for launch in live if launch.digest == pool.digest]
    stale = [launch for launch in live if launch.digest != pool.digest]
    actions: list[Action] = [Submit(pool.name)] * max(pool.replicas - len(current), 0)
    # the surplus: not yet serving first, then the newest
    surplus = sorted(current, key=lambda launch: (_serving(launch), -launch.id))
    for launch in surplus[: max(len(current) - pool.replicas, 0)]:
        if _settled(launch):
            actions.append(Teardown(launch, "scaled down", down=True))
    if sum(map(_serving, current)) >= pool.replicas:
        actions.extend(
            Teardown(launch, "replaced by a new spec", down=True)
            for launch in stale
            if _settled(launch)
        )
    return actions


def _settled(launch: Launch) -> bool:
    """Not in flight: a launch is never torn down half way (SkyPilot would finish it into a
    cluster nobody tracks); the round after it ends does."""
    return launch.seen is not Seen.STARTING
