"""CrossLogic control plane: the Python services beside an Envoy data plane."""
