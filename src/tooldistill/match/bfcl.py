"""``bfcl`` mode: calls checked against acceptable-value sets, as BFCL's AST checker decides.

An acceptable-value set gives, per parameter, the list of values that count as right; ``""`` in
the list means the parameter may be left out.  The rules follow BFCL's Python checker, so that a
verdict here is the leaderboard's verdict (the test suite holds this to >= 99.5% agreement on every
single-turn category), but every failure is explained in words:

- structure: no expected call means no call may be made; one expected call means exactly one
  call; several expected calls are matched in any order, each expected call (in order) taking the
  first unused predicted call that passes it;
- per call: the name must match; required parameters must be present; every argument must be a
  parameter of the tool and appear in the acceptable set; types are checked as BFCL does (an int
  is accepted for a float, a value of the acceptable values' own type is accepted as a variable);
  strings are compared case-insensitively ignoring spaces and ``,./-_*^``; lists element by
  element with the same string rule; dicts key by key; a left-out parameter must allow ``""``.

Parameter types come from the tool's JSON Schema; BFCL's own names (``float``, ``dict``,
``tuple``, ``any``) are read from ``x-bfcl-type`` where the BFCL reader kept them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from tooldistill.match.normalize import format_call, format_value
from tooldistill.match.verdict import Verdict, ordinal
from tooldistill.schema import ToolCall

_PY_TYPES: dict[str, type] = {
    "string": str,
    "integer": int,
    "float": float,
    "number": float,
    "boolean": bool,
    "array": list,
    "tuple": list,
    "dict": dict,
    "object": dict,
    "any": str,
}
_TYPE_WORDS = {str: "string", int: "integer", float: "float", bool: "boolean", list: "array", dict: "dict"}
_STRIP = re.compile(r"[ ,./\-_*^]")


def _standard(text: str) -> str:
    return _STRIP.sub("", text).lower().replace("'", '"')


def _bfcl_type(schema: Any) -> str | None:
    if not isinstance(schema, dict):
        return None
    kind = schema.get("x-bfcl-type", schema.get("type"))
    return kind if isinstance(kind, str) else None


def _type_word(value: Any) -> str:
    return _TYPE_WORDS.get(type(value), type(value).__name__)


def _first_type(acceptable: list[Any]) -> type | None:
    """The type of the first listed value that is not the "may be left out" marker."""
    for item in acceptable:
        if item != "":
            return type(item)
    return None


def _one_of(acceptable: list[Any]) -> str:
    shown = [format_value(a, 40) for a in acceptable if a != ""][:4]
    more = len([a for a in acceptable if a != ""]) - len(shown)
    text = ", ".join(shown) + (f" (+{more} more)" if more > 0 else "")
    return f"one of {text}" if len(shown) > 1 or more > 0 else (text or "nothing")


class _Fail(Exception):
    def __init__(self, reason: str, score: float = 0.5) -> None:
        super().__init__(reason)
        self.reason = reason
        self.score = score


def _type_check(name: str, value: Any, acceptable: list[Any], expected: type, nested: type | None) -> bool:
    """BFCL's type rule; returns whether the value is a "variable" (of the answers' own type).

    Raises ``_Fail`` on a type error."""
    answer_type = _first_type(acceptable)
    variable = answer_type is not None and answer_type is not expected
    if type(value) is expected:
        if nested is None:
            return variable
        for option in acceptable:
            if not isinstance(option, list):
                return variable
            if all(_item_type_ok(item, option, nested) for item in value):  # type: ignore[attr-defined]
                return variable
        raise _Fail(
            f"argument {name}: expected a list of {_TYPE_WORDS.get(nested, nested.__name__)}, got {format_value(value)}"
        )
    if answer_type is not None and type(value) is answer_type:
        return True
    raise _Fail(
        f"argument {name}: expected {_TYPE_WORDS.get(expected, expected.__name__)}, got {_type_word(value)} {format_value(value)}"
    )


def _item_type_ok(item: Any, option: list[Any], nested: type) -> bool:
    if type(item) is nested:
        return True
    answer_type = _first_type(option)
    return answer_type is not None and type(item) is answer_type


def _dict_ok(value: dict[str, Any], options: list[Any]) -> str | None:
    """None when ``value`` fits one of the acceptable dicts, else why the last one did not."""
    why = "no acceptable value"
    for option in options:
        if option == "":
            continue
        if not isinstance(option, dict):
            why = f"expected {format_value(option)}"
            continue
        why = ""
        for key, item in value.items():
            if key not in option:
                why = f"unexpected key {key!r}"
                break
            allowed = [_standard(a) if isinstance(a, str) else a for a in option[key]]
            if (_standard(item) if isinstance(item, str) else item) not in allowed:
                why = f"key {key!r}: expected {_one_of(option[key])}, got {format_value(item)}"
                break
        if not why:
            missing = [k for k, allowed in option.items() if k not in value and "" not in allowed]
            if missing:
                why = f"missing key {missing[0]!r}"
        if not why:
            return None
    return why


def _check_argument(name: str, value: Any, acceptable: list[Any], schema: Any) -> None:
    kind = _bfcl_type(schema)
    expected = _PY_TYPES.get(kind or "any", str)
    nested = None
    if kind in ("array", "tuple"):
        nested = _PY_TYPES.get(_bfcl_type(schema.get("items")) or "any", str)
    if kind == "float" and type(value) is int:
        value = float(value)
    variable = _type_check(name, value, acceptable, expected, nested)
    if not variable:
        if expected is dict:
            why = _dict_ok(value, acceptable)
            if why is not None:
                raise _Fail(f"argument {name}: {why}")
            return
        if expected is list and nested is dict:
            for option in acceptable:
                if len(value) == len(option) and all(
                    _dict_ok(v, [o]) is None for v, o in zip(value, option, strict=False)
                ):
                    return
            raise _Fail(f"argument {name}: expected {_one_of(acceptable)}, got {format_value(value)}")
        if expected is str:
            if _standard(value) not in [_standard(a) for a in acceptable if isinstance(a, str)]:
                raise _Fail(f"argument {name}: expected {_one_of(acceptable)}, got {format_value(value)}")
            return
        if expected is list:
            got = [_standard(v) if isinstance(v, str) else v for v in value]
            options = [[_standard(v) if isinstance(v, str) else v for v in option] for option in acceptable]
            if got not in options:
                raise _Fail(f"argument {name}: expected {_one_of(acceptable)}, got {format_value(value)}")
            return
    if value not in acceptable:
        raise _Fail(f"argument {name}: expected {_one_of(acceptable)}, got {format_value(value)}")


def check_call(call: ToolCall, expected: Mapping[str, Any], schema: Any) -> None:
    """Raise ``_Fail`` with the reason when ``call`` does not satisfy one acceptable-value set."""
    name = expected["name"]
    acceptable: dict[str, list[Any]] = expected.get("arguments") or {}
    if call.name != name:
        raise _Fail(f"called {call.name}, expected {name}", score=0.0)
    schema = schema if isinstance(schema, dict) else {}
    properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    for param in schema.get("required") or []:
        if param not in call.arguments:
            raise _Fail(f"call to {name}: missing required argument {param}")
    for param, value in call.arguments.items():
        if param not in properties:
            raise _Fail(
                f"call to {name}: unexpected argument {param}={format_value(value)} (not a parameter of {name})"
            )
        if param not in acceptable:
            raise _Fail(
                f"call to {name}: unexpected argument {param}={format_value(value)} (should be left out)"
            )
        try:
            _check_argument(param, value, list(acceptable[param]), properties[param])
        except _Fail as failure:
            raise _Fail(f"call to {name}: {failure.reason}") from None
    for param, allowed in acceptable.items():
        if param not in call.arguments and "" not in allowed:
            raise _Fail(f"call to {name}: missing argument {param} (expected {_one_of(list(allowed))})")


def _as_call(call: ToolCall | Mapping[str, Any]) -> ToolCall:
    if isinstance(call, ToolCall):
        return call
    return ToolCall(name=str(call.get("name", "")), arguments=dict(call.get("arguments") or {}))


def check_bfcl(
    predicted: Sequence[ToolCall | Mapping[str, Any]],
    acceptable: Sequence[Mapping[str, Any]],
    schemas: Mapping[str, Any],
    category: str | None = None,
) -> Verdict:
    """The ``bfcl``-mode verdict of ``predicted`` against ``acceptable`` (one set per expected call)."""
    calls = [_as_call(c) for c in predicted]
    expected = list(acceptable)
    if not expected:
        if not calls:
            return Verdict(True, 1.0, "no call, as expected")
        return Verdict.of(
            [f"called a tool where none was expected ({', '.join(c.name for c in calls)})"], 0.0
        )
    if not calls:
        wanted = ", ".join(
            format_call(
                e["name"], {k: v[0] for k, v in (e.get("arguments") or {}).items() if v and v[0] != ""}
            )
            for e in expected
        )
        return Verdict.of([f"made no call; expected {wanted}"], 0.0)
    parallel = "parallel" in (category or "") or (category is None and len(expected) > 1)
    if len(calls) != len(expected):
        names = ", ".join(c.name for c in calls)
        wanted = ", ".join(e["name"] for e in expected)
        score = 0.5 * min(len(calls), len(expected)) / max(len(calls), len(expected))
        return Verdict.of(
            [
                f"made {len(calls)} call{'s' * (len(calls) != 1)} ({names}), expected {len(expected)} ({wanted})"
            ],
            score,
        )
    if not parallel:
        # BFCL checks the first call only (there is exactly one on both sides here)
        try:
            check_call(calls[0], expected[0], schemas.get(expected[0]["name"]))
        except _Fail as failure:
            return Verdict.of([failure.reason], failure.score)
        return Verdict(True, 1.0, "match")
    used: set[int] = set()
    for index, want in enumerate(expected):
        failures: list[_Fail] = []
        for position, call in enumerate(calls):
            if position in used:
                continue
            try:
                check_call(call, want, schemas.get(want["name"]))
            except _Fail as failure:
                failures.append(failure)
                continue
            used.add(position)
            break
        else:
            same_name = [f for f in failures if f.score > 0]
            label = f"{ordinal(index + 1)} expected call, {want['name']}"
            detail = same_name[0].reason if same_name else f"no call to {want['name']} left"
            return Verdict.of([f"no match for the {label}: {detail}"], 0.5 * len(used) / len(expected))
    return Verdict(True, 1.0, "match")
