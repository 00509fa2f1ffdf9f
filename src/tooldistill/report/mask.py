"""Secrets out of everything the report shows from config and run files.

- A value under a key that names a secret (``api_key``, ``*_key``, ``token``, ``*_token``,
  ``secret``, ``password``, ``credentials``, ``authorization``, ...) becomes ``***``, whatever it
  holds.  Keys that name an environment variable (``api_key_env``) are not secrets: their value is
  the variable's name, which the report shows (it never reads the environment).
- Any other string has known secret formats replaced (``tooldistill.redact``: provider keys, private
  keys, bearer tokens, JWTs, ``password=``-style assignments, high-entropy strings), and the user and
  password of a URL (``https://user:pass@host``) become ``***``.
"""

from __future__ import annotations

import re
from typing import Any

from tooldistill.redact import Redactor

MASK = "***"
_SECRET_KEY = re.compile(
    r"(?:^|[^a-z0-9])(?:key|token|secret|password|passwd|passphrase|credentials?|authorization|auth|cookie)$"
)
_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)[^/\s@]+@")


def is_secret_key(name: str) -> bool:
    """Whether a config key names a secret (``api_key``, ``hf_token``, ``aws_secret_access_key``)."""
    return bool(_SECRET_KEY.search(name.strip().lower()))


def mask_text(text: str) -> str:
    return _URL_USERINFO.sub(rf"\g<scheme>{MASK}@", Redactor().text(text))


def mask(value: Any) -> Any:
    """A copy of a JSON-like value with secrets masked (see the module docstring)."""
    if isinstance(value, dict):
        return {
            key: (MASK if is_secret_key(str(key)) and item not in (None, "") else mask(item))
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [mask(item) for item in value]
    if isinstance(value, str):
        return mask_text(value)
    return value
