"""The simulated GPU node: an OpenAI-compatible, vLLM-shaped server that registers itself."""

from crosslogic.node.server import NodeConfig, NodeLoad, make_app

__all__ = ["NodeConfig", "NodeLoad", "make_app"]
