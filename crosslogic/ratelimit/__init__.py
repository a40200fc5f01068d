"""Envoy's rate-limit service: layered limits counted atomically in Redis (GCRA)."""
