"""xDS (ADS) server: one Envoy cluster per model, endpoints from the node registry."""
