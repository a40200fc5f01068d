"""The admin API (aiohttp): health, readiness, metrics, node registry, model list."""
