"""The GPU fleet's control: node identity (registration tokens, per-node credentials), the
node registry's lifecycle (register, heartbeat, drain, remove) and the operators' commands."""
