"""The fleet's refusals beyond the shared tree (:mod:`crosslogic.errors`): a caller whose
credential is valid but not for this (403), and a node an operator removed (410)."""

from __future__ import annotations

from crosslogic.errors import DomainError


class Forbidden(DomainError):
    """A valid credential used outside its reach: a node credential on another node or on an
    operator endpoint, a registration token outside its scope, the operator token as a
    node's credential."""

    code = "forbidden"


class NodeRemoved(DomainError):
    """The node was removed (by an operator, or at the end of its drain): it must not
    register again on its own. The edge answers 410 Gone."""

    code = "node_removed"
