"""What one round decided about one pool: the replicas it aims at, since when, and what
SkyPilot's optimizer said one replica costs (or why SkyPilot refused its task)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from crosslogic.orchestrator.pools import PoolSpec


@dataclass(frozen=True)
class PoolPlan:
    spec: PoolSpec
    target: int
    scaled_at: datetime | None
    estimate: dict[str, Any]  # sky_sdk.Estimate.as_json(), or {"error": ...}
    reserved_floor: int

    @property
    def launchable(self) -> bool:
        """SkyPilot validated the pool's task: nothing is launched before it does."""
        return "error" not in self.estimate

    @property
    def cost_per_hour(self) -> Decimal | None:
        value = self.estimate.get("cost_per_hour_usd")
        return None if value is None else Decimal(str(value))

    def state(self) -> dict[str, Any]:
        """The pool's estimate as stored: one replica's, and the target's per hour."""
        out = {**self.estimate, "reserved_floor": self.reserved_floor}
        if self.cost_per_hour is not None:
            out["target_cost_per_hour_usd"] = str(self.cost_per_hour * self.target)
        return out
