"""The simulated GPU node: an OpenAI-compatible, vLLM-shaped server; with a control plane,
the node agent (crosslogic.agent) registers it."""

from crosslogic.agent.load import NodeLoad
from crosslogic.node.config import NodeConfig
from crosslogic.node.server import make_app

__all__ = ["NodeConfig", "NodeLoad", "make_app"]
