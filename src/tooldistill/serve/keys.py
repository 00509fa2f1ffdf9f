"""The serving key: only its SHA-256 reaches a server (``api_key_sha256``), never the key."""

from __future__ import annotations

import hashlib


def key_sha256(key: str) -> str:
    """The hex SHA-256 of a client key, as the gateway compares it."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()
