"""``python -m bench``: what the CrossLogic gateway costs in front of a fast upstream.

Three targets are loaded with ``wrk`` at the same concurrency: a fixed-response upstream
(a second Envoy) directly, a plain Envoy in front of it, and the whole running system. For
the system it also measures the CPU time per request of every process and the cores that
10,000 requests/s would need, resident memory, the services' latency at half of saturation
(paced), unloaded latency, and the key cache's memory per million keys; each against the
seed's targets (bench/targets.py).
"""
