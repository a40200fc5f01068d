"""The node agent: runs beside vLLM on every GPU node (and inside the simulated node), keeps
it registered with the control plane and drains it at the cloud's interruption notice."""
