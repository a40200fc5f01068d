"""PostgreSQL NOTIFY channels: who announces a change, and who LISTENs for it.

A notification is delivered only if the announcing transaction commits, and may be lost while
a listener reconnects, so every listener also polls or clears its cache on reconnect.
"""

from __future__ import annotations

KEYS = "crosslogic_keys"
"""Tenants, environments and keys changed (payload ``{"kind", "id"}``): every ext_authz process
drops what it cached about them."""

LIMITS = "crosslogic_limits"
"""The rate-limit table changed: every rate-limit process reloads it."""

NODES = "crosslogic_nodes"
"""The node registry changed: the xDS service re-reads it and pushes a new snapshot. Payload
``NODE_WEIGHTS``: only a node's stored weight moved (a heartbeat), which xDS may take up
a little later (it rebuilds for those at most every ``WEIGHT_PUSH_GAP``)."""

NODE_WEIGHTS = "weights"

PRICES = "crosslogic_prices"
"""The catalog's prices changed (a model's price version, a tenant override, a region's
multiplier, a new model or region): billing reloads its in-memory price book."""
