"""Secret scrubbing for everything that leaves a reader.

Teacher logs are full of secrets by accident: a ``cat .env`` in a Claude Code session, an API key
pasted into a prompt, an ``Authorization`` header in a request log.  Every string that a reader
puts into a trace or a quarantine record passes through ``Redactor.text`` so that no key reaches a
dataset, a report or a log.  A redacted secret becomes ``[REDACTED:<kind>]``; counts per kind are
kept so the ingest summary can say how many were removed.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

# Each pattern names the kind of secret it finds.  They are deliberately specific (prefixes that
# real providers use) so ordinary text is left alone.
_PATTERNS: list[tuple[str, str]] = [
    ("anthropic_key", r"sk-ant-[A-Za-z0-9_\-]{20,}"),
    ("openai_key", r"sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}"),
    ("aws_access_key_id", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    ("aws_secret_access_key", r"(?i:aws_secret_access_key)[\"']?\s*[:=]\s*[\"']?[A-Za-z0-9/+=]{40}\b"),
    ("github_token", r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,})\b"),
    ("huggingface_token", r"\bhf_[A-Za-z0-9]{30,}\b"),
    ("slack_token", r"\bxox[baprs]-[A-Za-z0-9\-]{10,}\b"),
    ("google_api_key", r"\bAIza[0-9A-Za-z_\-]{35}\b"),
    ("private_key", r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----"),
    ("bearer_token", r"(?i:bearer)\s+[A-Za-z0-9_\-\.=]{20,}"),
]

_COMBINED = re.compile("|".join(f"(?P<{name}>{pattern})" for name, pattern in _PATTERNS))


class Redactor:
    """Replaces secrets in strings and nested JSON values; counts what it replaced."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.counts: Counter[str] = Counter()

    def _replace(self, match: re.Match[str]) -> str:
        kind = match.lastgroup or "secret"
        self.counts[kind] += 1
        # keep the label in front of the secret so the text still reads
        prefix = {"aws_secret_access_key": "aws_secret_access_key=", "bearer_token": "Bearer "}.get(kind, "")
        return f"{prefix}[REDACTED:{kind}]"

    def text(self, value: str) -> str:
        if not self.enabled or not value:
            return value
        return _COMBINED.sub(self._replace, value)

    def value(self, value: Any) -> Any:
        """Redact every string inside a JSON-like value (dict keys are left as they are)."""
        if not self.enabled:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {key: self.value(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.value(item) for item in value]
        return value
