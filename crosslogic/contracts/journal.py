"""The admission journal's contract, shared by its writer (ext_authz) and reader (billing).

Every Envoy process gets a boot id when its config is rendered: Envoy sends it to ext_authz
as the ``BOOT_HEADER`` call metadata, shows it in /server_info's node metadata
(``BOOT_METADATA_KEY``), and writes it into every access-log line. ext_authz records each model
request it admits, before answering allow, in one Redis hash per boot::

    HSET crosslogic:admitted:<boot> <request_id> <record>

and names the boot, the first time a process journals under it, in one set::

    SADD crosslogic:admitted-boots:<gateway> <boot>

so that billing knows every boot with a journal, even one that died before billing saw it
answer or log. The set is per gateway (``GATEWAY_HEADER``, the ext_authz call's other
initial_metadata; ``BOOTS_KEY`` itself for the default gateway, the one key there was before
gateways were named): a boot is reconciled by the billing consumer of its own gateway's
access log, and only by it, so consumers of several gateways never need to coordinate.
Billing removes an entry once the request's access-log line is consumed (the row is
committed). What is left in the hash of a boot that is dead, once every line that Envoy
flushed has been consumed, is usage whose line Envoy never wrote: billed at its estimate.

The record is one ``|``-separated string (no field can contain ``|``: ids are UUIDs, the
endpoint is a fixed path), versioned by its first field. Pure: no I/O here.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

KEY_PREFIX = "crosslogic:admitted:"
BOOTS_KEY = "crosslogic:admitted-boots"
DEFAULT_GATEWAY = "gateway"  # GATEWAY_ID's default
VERSION = "1"
# the boot id is written into Envoy's YAML and into Redis keys: keep it to plain hex
_BOOT = re.compile(r"^[0-9a-f]{16,64}$")
# how Envoy hands the boot id to ext_authz (the ext_authz grpc_service's initial_metadata)
BOOT_HEADER = "x-crosslogic-boot"
# and its gateway (GATEWAY_ID): the ext_authz grpc_service's other initial_metadata
GATEWAY_HEADER = "x-crosslogic-gateway"
# where billing finds them in Envoy's /server_info: node.metadata.<these>
BOOT_METADATA_KEY = "boot_id"
GATEWAY_METADATA_KEY = "gateway_id"


class MalformedAdmission(ValueError):
    """A journal value this version cannot read."""


def new_boot_id() -> str:
    return secrets.token_hex(8)


def valid_boot_id(boot: str) -> bool:
    return bool(_BOOT.match(boot))


def journal_key(boot: str) -> str:
    return KEY_PREFIX + boot


def boots_key(gateway: str) -> str:
    """The set naming the boots of one gateway's Envoys that journaled admissions."""
    return BOOTS_KEY if gateway == DEFAULT_GATEWAY else f"{BOOTS_KEY}:{gateway}"


@dataclass(frozen=True)
class Admission:
    """What billing needs to bill a request it never saw in the access log."""

    tenant_id: str
    environment_id: str
    api_key_id: str
    model_id: int
    endpoint: str
    streamed: bool
    prompt_estimate: int
    token_estimate: int  # prompt + completion budget, what the rate limiter reserved
    admitted_at: datetime

    @property
    def completion_estimate(self) -> int:
        return max(0, self.token_estimate - self.prompt_estimate)


def encode(admission: Admission) -> str:
    a = admission
    millis = round(a.admitted_at.timestamp() * 1000)
    return (
        f"{VERSION}|{a.tenant_id}|{a.environment_id}|{a.api_key_id}|{a.model_id}|{a.endpoint}|"
        f"{1 if a.streamed else 0}|{a.prompt_estimate}|{a.token_estimate}|{millis}"
    )


def decode(value: str | bytes) -> Admission:
    text = value.decode() if isinstance(value, bytes) else value
    fields = text.split("|")
    if len(fields) != 10 or fields[0] != VERSION:
        raise MalformedAdmission(f"not a version {VERSION} admission: {text[:80]!r}")
    try:
        return Admission(
            tenant_id=fields[1],
            environment_id=fields[2],
            api_key_id=fields[3],
            model_id=int(fields[4]),
            endpoint=fields[5],
            streamed=fields[6] == "1",
            prompt_estimate=int(fields[7]),
            token_estimate=int(fields[8]),
            admitted_at=datetime.fromtimestamp(int(fields[9]) / 1000, UTC),
        )
    except ValueError as exc:
        raise MalformedAdmission(f"bad field in {text[:80]!r}: {exc}") from exc
