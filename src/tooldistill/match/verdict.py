"""What a comparison of tool calls returns (``Verdict``) and how its reasons count calls
(``ordinal``): shared by the matchers (``compare``'s modes and ``bfcl``'s checker), which import
them from here so that ``compare`` can call ``bfcl`` without either importing the other back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

_ORDINALS = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth"]


def ordinal(n: int) -> str:
    """1 → 'first'; beyond ten, '11th'."""
    if 1 <= n <= len(_ORDINALS):
        return _ORDINALS[n - 1]
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


@dataclass(frozen=True)
class Verdict:
    """The outcome of one comparison."""

    match: bool
    score: float
    reason: str
    #: one entry per problem found; ``reason`` joins them
    problems: tuple[str, ...] = field(default=())

    @classmethod
    def of(cls, problems: list[str], score: float, ok_reason: str = "match") -> Verdict:
        if not problems:
            return cls(True, 1.0, ok_reason, ())
        return cls(False, max(0.0, min(score, 0.999)), "; ".join(problems), tuple(problems))

    def to_json(self) -> dict[str, Any]:
        return {"match": self.match, "score": round(self.score, 4), "reason": self.reason}


__all__ = ["Verdict", "ordinal"]
