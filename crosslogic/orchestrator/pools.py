"""A GPU pool, pure: the capacity an operator wants for one model, validated.

A pool asks for ``min_replicas`` to ``max_replicas`` replicas (``replicas`` sets both), each
one SkyPilot cluster of ``gpu_count`` ``accelerator`` GPUs on one of ``clouds`` (any enabled
one without it) in one of ``cloud_regions`` (any without it), optionally on spot capacity
with an on-demand fallback, running vLLM with ``vllm_args`` and a CrossLogic node agent
that registers the replica in ``region`` (a CrossLogic region). ``replica_tokens_per_minute``
is what one replica serves: reserved capacity sold on the model in that region, in tokens
per minute, becomes a floor of replicas (see :mod:`crosslogic.orchestrator.autoscale`).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from crosslogic.accounts.requests import json_object
from crosslogic.errors import Invalid

NAME = re.compile(r"^[a-z]([a-z0-9-]{0,30}[a-z0-9])?$")  # part of SkyPilot cluster names
_ACCELERATOR = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_WORD = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")  # a cloud or a cloud's region
CLOUDS = ("aws", "gcp", "azure", "lambda", "runpod", "kubernetes", "nebius", "oci", "fluidstack")
MAX_REPLICAS = 100
MAX_ARGS = 64
MAX_TPM = 10**12
COOLDOWN_MAX_S = 86_400
# the spec's fields: what an operator writes (``replicas`` is a shorthand for min = max)
SPEC_FIELDS = (
    "name",
    "model",
    "region",
    "accelerator",
    "gpu_count",
    "clouds",
    "cloud_regions",
    "min_replicas",
    "max_replicas",
    "spot",
    "on_demand_fallback",
    "model_source",
    "vllm_args",
    "replica_tokens_per_minute",
    "scale_up_cooldown_s",
    "scale_down_cooldown_s",
)
CREATE_FIELDS = {*SPEC_FIELDS, "replicas"}
UPDATE_FIELDS = CREATE_FIELDS - {"name"}


@dataclass(frozen=True)
class PoolSpec:
    """A pool as declared; :meth:`digest` changes whenever a launched replica would."""

    name: str
    model: str
    accelerator: str
    gpu_count: int
    min_replicas: int
    max_replicas: int
    replica_tokens_per_minute: int
    region: str | None = None
    clouds: tuple[str, ...] | None = None
    cloud_regions: tuple[str, ...] | None = None
    spot: bool = False
    on_demand_fallback: bool = True
    model_source: str = ""
    vllm_args: tuple[str, ...] = ()
    scale_up_cooldown_s: int = 120
    scale_down_cooldown_s: int = 600

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        for name in ("clouds", "cloud_regions", "vllm_args"):
            if out[name] is not None:
                out[name] = list(out[name])
        return out

    def digest(self) -> str:
        """A hash of what a replica is made of: a launch of another digest is replaced.
        Replica counts, cooldowns and throughput change how many, not what, so are left out."""
        launched = {
            k: v
            for k, v in self.as_json().items()
            if k
            not in {
                "min_replicas",
                "max_replicas",
                "replica_tokens_per_minute",
                "scale_up_cooldown_s",
                "scale_down_cooldown_s",
            }
        }
        text = json.dumps(launched, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _integer(body: dict[str, Any], name: str, *, low: int, high: int) -> int:
    value = body[name]
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise Invalid(f"'{name}' must be an integer from {low} to {high}.", param=name)
    return value


def _text(body: dict[str, Any], name: str, pattern: re.Pattern[str], what: str) -> str:
    value = body[name]
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise Invalid(f"'{name}' must be {what}.", param=name)
    return value


def _words(body: dict[str, Any], name: str, *, allowed: tuple[str, ...] | None) -> tuple[str, ...]:
    value = body[name]
    if (
        not isinstance(value, list)
        or not 1 <= len(value) <= 32
        or not all(isinstance(v, str) and _WORD.fullmatch(v) for v in value)
        or len(set(value)) != len(value)
    ):
        raise Invalid(
            f"'{name}' must be a non-empty list of distinct lowercase names, or null for any.",
            param=name,
        )
    if allowed is not None and (unknown := sorted(set(value) - set(allowed))):
        raise Invalid(
            f"'{name}' names unknown clouds ({', '.join(unknown)}); known: {', '.join(allowed)}.",
            param=name,
        )
    return tuple(value)


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body[name]
    if not isinstance(value, bool):
        raise Invalid(f"'{name}' must be true or false.", param=name)
    return value


def _args(body: dict[str, Any]) -> tuple[str, ...]:
    value = body["vllm_args"]
    if (
        not isinstance(value, list)
        or len(value) > MAX_ARGS
        or not all(isinstance(v, str) and 1 <= len(v) <= 500 and "\x00" not in v for v in value)
    ):
        raise Invalid(
            f"'vllm_args' must be a list of at most {MAX_ARGS} non-empty strings "
            '(vLLM\'s arguments, e.g. ["--max-model-len", "8192"]).',
            param="vllm_args",
        )
    return tuple(value)


def _replicas(body: dict[str, Any]) -> tuple[int, int]:
    """``replicas`` alone fixes both bounds; otherwise ``min_replicas``/``max_replicas``."""
    if "replicas" in body and body["replicas"] is not None:
        if "min_replicas" in body or "max_replicas" in body:
            raise Invalid(
                "Give 'replicas' (a fixed count) or 'min_replicas' and 'max_replicas' "
                "(autoscaling), not both.",
                param="replicas",
            )
        fixed = _integer(body, "replicas", low=0, high=MAX_REPLICAS)
        return fixed, fixed
    for name in ("min_replicas", "max_replicas"):
        if name not in body:
            raise Invalid(f"'{name}' is required (or 'replicas' for a fixed count).", param=name)
    low = _integer(body, "min_replicas", low=0, high=MAX_REPLICAS)
    high = _integer(body, "max_replicas", low=0, high=MAX_REPLICAS)
    if low > high:
        raise Invalid("'min_replicas' must not exceed 'max_replicas'.", param="min_replicas")
    return low, high


def pool_spec(body: Any) -> PoolSpec:
    """A pool to create (or a whole pool after an update): Invalid naming the first
    offending field."""
    body = json_object(body, CREATE_FIELDS)
    for name in ("name", "model", "accelerator", "replica_tokens_per_minute"):
        if name not in body:
            raise Invalid(f"'{name}' is required.", param=name)
    name = _text(body, "name", NAME, "1 to 32 lowercase letters, digits and '-' (a letter first)")
    model = body["model"]
    if not isinstance(model, str) or not 1 <= len(model) <= 200 or "\x00" in model:
        raise Invalid("'model' must be a model's name.", param="model")
    low, high = _replicas(body)
    spec: dict[str, Any] = {
        "name": name,
        "model": model,
        "accelerator": _text(body, "accelerator", _ACCELERATOR, "a GPU type like A100 or H100"),
        "gpu_count": _integer({"gpu_count": 1, **body}, "gpu_count", low=1, high=16),
        "min_replicas": low,
        "max_replicas": high,
        "replica_tokens_per_minute": _integer(
            body, "replica_tokens_per_minute", low=1, high=MAX_TPM
        ),
    }
    if body.get("region") is not None:
        spec["region"] = _text(body, "region", _WORD, "a region's code, or null for any")
    for field, allowed in (("clouds", CLOUDS), ("cloud_regions", None)):
        if body.get(field) is not None:
            spec[field] = _words(body, field, allowed=allowed)
    if "cloud_regions" in spec and len(spec.get("clouds") or ()) != 1:
        # a region belongs to one cloud: naming regions of several would be ambiguous
        raise Invalid(
            "'cloud_regions' needs exactly one cloud in 'clouds' (the regions' cloud).",
            param="cloud_regions",
        )
    for flag in ("spot", "on_demand_fallback"):
        if flag in body:
            spec[flag] = _flag(body, flag)
    if "model_source" in body:
        source = body["model_source"]
        if not isinstance(source, str) or len(source) > 300 or "\x00" in source:
            raise Invalid(
                "'model_source' must be what vLLM loads (a Hugging Face id or a path), "
                "or '' for the model's name.",
                param="model_source",
            )
        spec["model_source"] = source
    if "vllm_args" in body:
        spec["vllm_args"] = _args(body)
    for cooldown in ("scale_up_cooldown_s", "scale_down_cooldown_s"):
        if cooldown in body:
            spec[cooldown] = _integer(body, cooldown, low=0, high=COOLDOWN_MAX_S)
    return PoolSpec(**spec)


def updated(current: PoolSpec, body: Any) -> PoolSpec:
    """``current`` with the PATCH ``body`` applied (any field but ``name``), validated whole."""
    body = json_object(body, UPDATE_FIELDS)
    if not body:
        raise Invalid("Give at least one field to change.")
    merged = {k: v for k, v in current.as_json().items() if v is not None}
    if {"replicas", "min_replicas", "max_replicas"} & set(body):
        merged.pop("min_replicas")
        merged.pop("max_replicas")
    merged.update(body)
    if merged.get("replicas", 0) is None:
        merged.pop("replicas")
    return pool_spec(merged)


def from_row(row: dict[str, Any]) -> PoolSpec:
    """The spec of a ``pools`` row as the store reads it (``model`` joined by name)."""
    values = {f.name: row[f.name] for f in fields(PoolSpec)}
    for name in ("clouds", "cloud_regions", "vllm_args"):
        if values[name] is not None:
            values[name] = tuple(values[name])
    return PoolSpec(**values)
