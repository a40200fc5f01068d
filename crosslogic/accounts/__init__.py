"""Tenants, environments and API keys: operator operations, validated and audited."""
