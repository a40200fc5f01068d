"""Node secrets: registration tokens (``clrt_...``) and per-node credentials (``clnc_...``).

Both are 256 bits from the OS CSPRNG behind a prefix that secret scanners and humans (and the
admin API's authentication) recognise; only SHA-256 of the whole secret is stored, as for
API keys. A registration token can only register nodes; a node credential can only act on
the node it was issued to.
"""

from __future__ import annotations

import hashlib
import secrets
import string

REGISTRATION_PREFIX = "clrt_"
NODE_PREFIX = "clnc_"
_ALPHABET = string.ascii_letters + string.digits
_SECRET_LEN = 43  # 43 base62 characters > 256 bits
SHOWN_PREFIX_LEN = 12  # what a token list shows of a token: never enough to use it


def _random(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def new_registration_token() -> str:
    return REGISTRATION_PREFIX + _random(_SECRET_LEN)


def new_node_credential() -> str:
    return NODE_PREFIX + _random(_SECRET_LEN)


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def is_node_credential(secret: str) -> bool:
    return secret.startswith(NODE_PREFIX)


def is_registration_token(secret: str) -> bool:
    return secret.startswith(REGISTRATION_PREFIX)
