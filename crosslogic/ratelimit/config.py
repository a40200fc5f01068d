"""Rate limits as operator data, pure: validating a limit, resolving a request's limits.

Resolution per layer: the subject's own row (tenant, environment or key scope) wins, else the
tenant's plan default for that layer, else nothing (the layer does not limit). The key layer
also honours the key's own ``rate_limit_rpm`` and, failing everything, ``DEFAULT_KEY_RPM``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from crosslogic.errors import Invalid

LAYERS = ("global", "tenant", "environment", "key")
SCOPES = ("global", "plan", "tenant", "environment", "key")
FIELDS = ("requests_per_second", "requests_per_minute", "tokens_per_minute", "tokens_per_day")
# field -> (kind, period in seconds)
WINDOWS = {
    "requests_per_second": ("requests", 1),
    "requests_per_minute": ("requests", 60),
    "tokens_per_minute": ("tokens", 60),
    "tokens_per_day": ("tokens", 86400),
}
_MAX = 10**12


@dataclass(frozen=True)
class LimitRow:
    """One row of ``rate_limits``."""

    scope: str
    subject: str
    layer: str
    requests_per_second: int | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    tokens_per_day: int | None = None
    fail_mode: str = "open"


class Identity(NamedTuple):
    """Who is asking, as ext_authz attributed the request (a tuple: built and hashed per
    request, the key of the limiter's resolved limits)."""

    tenant_id: str
    environment_id: str
    api_key_id: str
    plan: str
    key_rpm: int | None = None  # the key's own rate_limit_rpm column


@dataclass(frozen=True)
class LayerLimits:
    layer: str
    ident: str  # "all" for the global layer
    row: LimitRow
    tenant: str = ""  # whose hash tag the counters carry (crosslogic/contracts/counters.py)


class LimitTable:
    """Every configured row, indexed for per-request resolution (rebuilt on each reload)."""

    def __init__(self, rows: Iterable[LimitRow], *, default_key_rpm: int) -> None:
        self.rows = tuple(rows)
        self._by = {(r.scope, r.subject, r.layer): r for r in self.rows}
        self._default_key = LimitRow(
            scope="default", subject="", layer="key", requests_per_minute=default_key_rpm
        )

    def resolve(self, who: Identity) -> list[LayerLimits]:
        out = []
        glob = self._by.get(("global", "", "global"))
        if glob is not None:
            out.append(LayerLimits("global", "all", glob))
        for layer, ident in (
            ("tenant", who.tenant_id),
            ("environment", who.environment_id),
            ("key", who.api_key_id),
        ):
            row = self._by.get((layer, ident, layer)) or self._by.get(("plan", who.plan, layer))
            if layer == "key":
                row = row or self._default_key
                if who.key_rpm is not None and (layer, ident, layer) not in self._by:
                    row = replace(row, requests_per_minute=who.key_rpm)
            if row is not None:
                out.append(LayerLimits(layer, ident, row, tenant=who.tenant_id))
        return out


def parse_limit(body: Any) -> LimitRow:
    """Operator input for one limit: unknown fields, bad values and contradictions refused
    (:class:`Invalid`, naming the field)."""
    if not isinstance(body, dict):
        raise Invalid("The body must be a JSON object.")
    allowed = {"scope", "subject", "layer", "fail_mode", *FIELDS}
    extra = sorted(set(body) - allowed)
    if extra:
        raise Invalid(f"Unknown field(s): {', '.join(extra)}.", param=extra[0])
    scope = body.get("scope")
    if scope not in SCOPES:
        raise Invalid(f"'scope' must be one of {', '.join(SCOPES)}.", param="scope")
    layer = body.get("layer", scope if scope != "plan" else None)
    if layer not in LAYERS:
        raise Invalid(f"'layer' must be one of {', '.join(LAYERS)}.", param="layer")
    if scope in ("tenant", "environment", "key", "global") and layer != scope:
        raise Invalid(f"A {scope} limit limits the {scope} layer.", param="layer")
    if scope == "plan" and layer == "global":
        raise Invalid("The global layer is set with scope 'global'.", param="layer")
    subject = body.get("subject", "")
    if not isinstance(subject, str) or len(subject) > 200:
        raise Invalid("'subject' must be a string.", param="subject")
    if (scope == "global") != (subject == ""):
        raise Invalid(
            "'subject' names the plan, tenant, environment or key "
            "(and is empty for the global scope).",
            param="subject",
        )
    values: dict[str, int | None] = {}
    for field in FIELDS:
        value = body.get(field)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= _MAX
        ):
            raise Invalid(f"'{field}' must be a positive integer or null.", param=field)
        values[field] = value
    if all(v is None for v in values.values()):
        raise Invalid("Set at least one of " + ", ".join(FIELDS) + ".")
    rps, rpm = values["requests_per_second"], values["requests_per_minute"]
    if rps is not None and rpm is not None and rps > rpm:
        raise Invalid(
            "'requests_per_second' above 'requests_per_minute' can never "
            "apply: the minute window always binds first.",
            param="requests_per_second",
        )
    tpm, tpd = values["tokens_per_minute"], values["tokens_per_day"]
    if tpm is not None and tpd is not None and tpm > tpd:
        raise Invalid(
            "'tokens_per_minute' above 'tokens_per_day' can never apply.", param="tokens_per_minute"
        )
    fail_mode = body.get("fail_mode", "open")
    if fail_mode not in ("open", "closed"):
        raise Invalid("'fail_mode' must be 'open' or 'closed'.", param="fail_mode")
    return LimitRow(scope=scope, subject=subject, layer=layer, fail_mode=fail_mode, **values)


def row_from_record(record: Mapping[str, Any]) -> LimitRow:
    return LimitRow(**{k: record[k] for k in ("scope", "subject", "layer", "fail_mode", *FIELDS)})
