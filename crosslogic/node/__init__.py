"""The simulated GPU node: an OpenAI-compatible, vLLM-shaped server that registers itself."""

from crosslogic.node.config import NodeConfig, NodeLoad
from crosslogic.node.server import make_app

__all__ = ["NodeConfig", "NodeLoad", "make_app"]
