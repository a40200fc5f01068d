"""``python -m bench``: what the CrossLogic gateway costs in front of a fast upstream.

Three targets are loaded with ``wrk`` at the same concurrency: a fixed-response upstream
(a second Envoy) directly, a plain Envoy in front of it, and the whole running system.
"""
