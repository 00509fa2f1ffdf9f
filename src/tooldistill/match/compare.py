"""Compare a student's tool calls with the reference calls, and say why they differ.

Modes:

- ``chain``: the same calls in the same order (names and arguments);
- ``set``: the same multiset of calls, in any order (parallel calls);
- ``names``: the same multiset of tool names, arguments ignored (tool selection);
- ``bfcl``: arguments checked against acceptable-value sets (see ``tooldistill.match.bfcl``).

Every comparison returns a ``Verdict``: ``match``, a partial ``score`` in [0, 1] and a ``reason``
written for a reader (and for the prompt optimizer, which learns from it): "called get_forecast,
expected get_weather", "call get_weather: argument unit: expected 'celsius', got 'C'", "missing
second call to send_email(to='bob@example.com')", "called a tool where none was expected".

Arguments are normalized with the tool's JSON Schema before comparing (``normalize``); this
module does no I/O.
"""

from __future__ import annotations

import difflib
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tooldistill.match.bfcl import check_bfcl
from tooldistill.match.normalize import format_call, format_value, normalize_arguments
from tooldistill.match.verdict import Verdict, ordinal
from tooldistill.schema import ToolCall

MODES = ("chain", "set", "names", "bfcl")


@dataclass(frozen=True)
class _Call:
    """A call with its arguments normalized by its tool's schema."""

    name: str
    arguments: dict[str, Any]

    def text(self) -> str:
        return format_call(self.name, self.arguments)


Schemas = Mapping[str, Any]


def _prepare(calls: Sequence[ToolCall | Mapping[str, Any]], schemas: Schemas) -> list[_Call]:
    prepared = []
    for call in calls:
        if isinstance(call, ToolCall):
            name, arguments = call.name, call.arguments
        else:
            name, arguments = str(call.get("name", "")), call.get("arguments") or {}
        prepared.append(_Call(name, normalize_arguments(dict(arguments), schemas.get(name))))
    return prepared


def _argument_problems(predicted: _Call, expected: _Call) -> list[str]:
    problems = []
    for key, value in expected.arguments.items():
        if key not in predicted.arguments:
            problems.append(f"missing argument {key} (expected {format_value(value)})")
        elif not same_value(predicted.arguments[key], value):
            problems.append(
                f"argument {key}: expected {format_value(value)}, got {format_value(predicted.arguments[key])}"
            )
    for key, value in predicted.arguments.items():
        if key not in expected.arguments:
            problems.append(f"unexpected argument {key}={format_value(value)}")
    return problems


def _similarity(predicted: _Call, expected: _Call) -> float:
    """0 for another tool; 0.5 for the right tool, up to 1 as the arguments agree."""
    if predicted.name != expected.name:
        return 0.0
    keys = set(predicted.arguments) | set(expected.arguments)
    if not keys:
        return 1.0
    same = sum(
        1
        for k in keys
        if k in predicted.arguments
        and k in expected.arguments
        and same_value(predicted.arguments[k], expected.arguments[k])
    )
    return 0.5 + 0.5 * same / len(keys)


def _occurrence(calls: list[_Call], index: int) -> str:
    """'second call to f(x=1)' when f appears more than once in ``calls``, else 'call to f(x=1)'."""
    return _where(calls, index).removesuffix(calls[index].name) + calls[index].text()


def _empty_cases(predicted: list[_Call], expected: list[_Call]) -> Verdict | None:
    if not expected and not predicted:
        return Verdict(True, 1.0, "no call, as expected")
    if not expected:
        called = ", ".join(c.name for c in predicted)
        return Verdict.of([f"called a tool where none was expected ({called})"], 0.0)
    if not predicted:
        wanted = ", ".join(c.text() for c in expected)
        return Verdict.of([f"made no call; expected {wanted}"], 0.0)
    return None


def _pair_problems(predicted: _Call, expected: _Call, where: str) -> list[str]:
    """Problems of one paired call; ``where`` names it ("call to f", "second call to f")."""
    if predicted.name != expected.name:
        return [f"called {predicted.name}, expected {expected.name}"]
    return [f"{where}: {p}" for p in _argument_problems(predicted, expected)]


def _where(calls: list[_Call], index: int) -> str:
    name = calls[index].name
    if sum(1 for c in calls if c.name == name) == 1:
        return f"call to {name}"
    nth = sum(1 for c in calls[: index + 1] if c.name == name)
    return f"{ordinal(nth)} call to {name}"


def same_value(a: Any, b: Any) -> bool:
    """Equal canonical values (``True`` is not ``1``, unlike Python's ``==``)."""
    return a == b and json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def compare_chain(predicted: list[_Call], expected: list[_Call]) -> Verdict:
    """Same calls, same order.  Calls are aligned by tool name so one missing call is reported
    as missing, not as every later call being wrong."""
    early = _empty_cases(predicted, expected)
    if early is not None:
        return early
    several = len(expected) > 1 or len(predicted) > 1
    problems: list[str] = []
    total = 0.0
    matcher = difflib.SequenceMatcher(
        a=[c.name for c in expected], b=[c.name for c in predicted], autojunk=False
    )
    for op, e0, e1, p0, p1 in matcher.get_opcodes():
        if op == "equal":
            for offset in range(e1 - e0):
                e, p = expected[e0 + offset], predicted[p0 + offset]
                problems.extend(_pair_problems(p, e, _where(expected, e0 + offset)))
                total += _similarity(p, e)
            continue
        paired = min(e1 - e0, p1 - p0) if op == "replace" else 0
        for offset in range(paired):
            e, p = expected[e0 + offset], predicted[p0 + offset]
            where = f"call {e0 + offset + 1}: " if several else ""
            problems.append(f"{where}called {p.name}, expected {e.name}")
        for index in range(e0 + paired, e1):
            problems.append(f"missing {_occurrence(expected, index)}")
        for index in range(p0 + paired, p1):
            problems.append(f"extra call to {predicted[index].text()}")
    if problems and Counter(_key(c) for c in predicted) == Counter(_key(c) for c in expected):
        names_differ = [c.name for c in expected] != [c.name for c in predicted]
        order = ", ".join(c.name if names_differ else c.text() for c in expected)
        got = ", ".join(c.name if names_differ else c.text() for c in predicted)
        problems = [f"right calls in the wrong order: expected {order}; got {got}"]
        total = 0.5 * len(expected)
    return Verdict.of(problems, total / max(len(expected), len(predicted)))


def _key(call: _Call) -> str:
    return call.name + "\x00" + json.dumps(call.arguments, sort_keys=True, ensure_ascii=False)


def compare_set(predicted: list[_Call], expected: list[_Call]) -> Verdict:
    """Same multiset of calls, order free: each expected call is paired with its best match."""
    early = _empty_cases(predicted, expected)
    if early is not None:
        return early
    candidates = sorted(
        (
            (-_similarity(p, e), ei, pi)
            for ei, e in enumerate(expected)
            for pi, p in enumerate(predicted)
            if p.name == e.name
        )
    )
    pairs: dict[int, int] = {}
    used: set[int] = set()
    for _, ei, pi in candidates:
        if ei not in pairs and pi not in used:
            pairs[ei] = pi
            used.add(pi)
    problems: list[str] = []
    total = 0.0
    for ei, pi in sorted(pairs.items()):
        p, e = predicted[pi], expected[ei]
        total += _similarity(p, e)
        problems.extend(_pair_problems(p, e, _where(expected, ei)))
    left_expected = [ei for ei in range(len(expected)) if ei not in pairs]
    left_predicted = [pi for pi in range(len(predicted)) if pi not in used]
    for ei, pi in zip(left_expected, left_predicted, strict=False):
        problems.append(f"called {predicted[pi].name}, expected {expected[ei].name}")
    for ei in left_expected[len(left_predicted) :]:
        problems.append(f"missing {_occurrence(expected, ei)}")
    for pi in left_predicted[len(left_expected) :]:
        problems.append(f"extra call to {predicted[pi].text()}")
    return Verdict.of(problems, total / max(len(expected), len(predicted)))


def compare_names(predicted: list[_Call], expected: list[_Call]) -> Verdict:
    """Same tools called, as many times each; arguments and order ignored."""
    early = _empty_cases(predicted, expected)
    if early is not None:
        return early
    want, got = Counter(c.name for c in expected), Counter(c.name for c in predicted)
    missing = list((want - got).elements())
    extra = list((got - want).elements())
    problems = [f"called {x}, expected {m}" for m, x in zip(missing, extra, strict=False)]
    problems += [f"missing call to {m}" for m in missing[len(extra) :]]
    problems += [f"extra call to {x}" for x in extra[len(missing) :]]
    common = sum((want & got).values())
    return Verdict.of(problems, common / max(len(expected), len(predicted)))


def compare(
    predicted: Sequence[ToolCall | Mapping[str, Any]],
    reference: Sequence[ToolCall | Mapping[str, Any]],
    mode: str = "chain",
    schemas: Schemas | None = None,
    acceptable: list[dict[str, Any]] | None = None,
    category: str | None = None,
) -> Verdict:
    """Compare ``predicted`` calls with ``reference`` calls in ``mode``.

    ``schemas`` maps tool name → JSON Schema of its parameters (from the trace's tool specs); it
    drives normalization.  ``bfcl`` mode needs ``acceptable`` (the trace's acceptable-value sets).
    """
    schemas = schemas or {}
    if mode == "bfcl":
        return check_bfcl(
            predicted, acceptable if acceptable is not None else _as_acceptable(reference), schemas, category
        )
    if mode not in MODES:
        raise ValueError(f"unknown match mode {mode!r}; choose one of {', '.join(MODES)}")
    p, e = _prepare(predicted, schemas), _prepare(reference, schemas)
    if mode == "chain":
        return compare_chain(p, e)
    if mode == "set":
        return compare_set(p, e)
    return compare_names(p, e)


def _as_acceptable(reference: Sequence[ToolCall | Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Acceptable-value sets that accept exactly the reference values (when a trace has none)."""
    out = []
    for call in reference:
        name, arguments = (
            (call.name, call.arguments)
            if isinstance(call, ToolCall)
            else (call["name"], call.get("arguments") or {})
        )
        out.append({"name": name, "arguments": {k: [v] for k, v in arguments.items()}})
    return out


def chain_key(calls: Sequence[ToolCall], schemas: Schemas | None = None) -> str:
    """A hashable key equal for calls that ``chain`` mode calls equal."""
    prepared = _prepare(calls, schemas or {})
    return "\x01".join(_key(c) for c in prepared)


__all__ = ["MODES", "Verdict", "chain_key", "compare", "ordinal"]
