"""Running a module's end-to-end tests over both ext_authz protocols."""

from __future__ import annotations

from typing import Any

import pytest

from crosslogic.stack import Stack


def over_both_protocols() -> Any:
    """A ``stack`` fixture for one module (``stack = over_both_protocols()``): each of its
    tests runs on the session's ``grpc_stack`` (ext_authz over gRPC, the rate-limit service
    deciding limits), then on the session's system (over HTTP, ext_authz deciding). The
    module's other fixtures that use ``stack`` (``admin``, ``client``, ``environment``...)
    follow it."""

    @pytest.fixture(params=["grpc", "http"])
    def stack(request: pytest.FixtureRequest, session_stack: Stack) -> Stack:
        if request.param == "http":
            return session_stack
        chosen: Stack = request.getfixturevalue("grpc_stack")
        return chosen

    return stack
