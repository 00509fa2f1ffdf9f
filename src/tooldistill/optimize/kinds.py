"""The registry of phase kinds: a name (``kind:`` in a phase section) to its kind.

Only the lookup lives here, so the config models (``optimize.config``) can check a phase's kind
and options without importing the kinds themselves; the kinds (``optimize.phases``) register on
import, and importing ``tooldistill.optimize`` imports them.
"""

from __future__ import annotations

from typing import Any, Protocol


class KindSpec(Protocol):
    """What the config needs of a kind: its name, the phase field holding its own options, and a
    check of those options (``phases.base.PhaseKind`` is one)."""

    name: str
    section: str | None

    def validate(self, phase: Any) -> None: ...


#: Every registered phase kind, by name.
KINDS: dict[str, Any] = {}


def register(kind: Any) -> Any:
    """Add ``kind`` (a name not taken yet) to :data:`KINDS`; returns it."""
    if not kind.name:
        raise ValueError("a phase kind needs a name")
    if KINDS.get(kind.name, kind) is not kind:
        raise ValueError(f"phase kind {kind.name!r} is registered already")
    KINDS[kind.name] = kind
    return kind


def phase_kind(name: str) -> Any:
    """The kind called ``name``; a ``ValueError`` naming the known kinds otherwise."""
    try:
        return KINDS[name]
    except KeyError:
        known = ", ".join(sorted(KINDS))
        raise ValueError(f"unknown phase kind {name!r}; known kinds: {known}") from None
