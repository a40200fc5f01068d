"""API key format: ``clk_<key_id>_<secret>``.

The ``clk_`` prefix lets secret scanners and humans recognise a CrossLogic key; the short
``key_id`` is public (lists, logs, audit) and the secret is 256 bits from the OS CSPRNG. Only
SHA-256 of the whole key is stored. Malformed keys are refused without touching any store.
"""

from __future__ import annotations

import hashlib
import secrets
import string
from dataclasses import dataclass

PREFIX = "clk_"
_ALPHABET = string.ascii_letters + string.digits
_KEY_ID_LEN = 12
_SECRET_LEN = 43  # 43 base62 characters > 256 bits


@dataclass(frozen=True)
class NewKey:
    """A freshly minted key: ``plaintext`` is shown once and never stored."""

    key_id: str
    plaintext: str
    key_hash: bytes


def _random(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def generate() -> NewKey:
    key_id = _random(_KEY_ID_LEN)
    plaintext = f"{PREFIX}{key_id}_{_random(_SECRET_LEN)}"
    return NewKey(key_id=key_id, plaintext=plaintext, key_hash=hash_key(plaintext))


def hash_key(plaintext: str) -> bytes:
    return hashlib.sha256(plaintext.encode()).digest()


def looks_valid(plaintext: str) -> bool:
    """Cheap shape check so garbage never reaches a cache or a database."""
    if not plaintext.startswith(PREFIX) or len(plaintext) > 128:
        return False
    key_id, sep, secret = plaintext[len(PREFIX) :].partition("_")
    return bool(sep) and key_id.isalnum() and secret.isalnum() and len(secret) >= 20


def bearer_token(authorization: str) -> str | None:
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
