"""GPU pools on SkyPilot: pools as data, the task builder, reconcile and autoscale decisions,
the SDK boundary (the one module importing ``sky``) and the loop that keeps state in
PostgreSQL."""
