"""Envoy ext_authz: API keys, the tenant -> environment -> key hierarchy, model access."""
