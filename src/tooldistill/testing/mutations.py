"""Near-miss tool calls derived from a reference, for checking a matcher against another checker.

``mutations(trace)`` returns labelled call lists: the reference itself and variants with a wrong
function, a wrong value, a wrong type, a missing or an extra argument, and for several calls one
dropped, one duplicated, the order reversed.  Some variants are still right (the order of
parallel calls, a string in another letter case, an int for a float); the point is that two
checkers must agree on every one of them.  Deterministic for a given trace.
"""

from __future__ import annotations

import copy
import json
import random
from typing import Any

from tooldistill.schema import Trace

Calls = list[dict[str, Any]]


def _calls(trace: Trace) -> Calls:
    return [{"name": c.name, "arguments": copy.deepcopy(c.arguments)} for c in trace.reference_calls]


def _other_value(value: Any, rng: random.Random) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + rng.choice([1, 7, -3])
    if isinstance(value, float):
        return value * 2 + 1.5
    if isinstance(value, str):
        return value + " zq" if value else "zq"
    if isinstance(value, list):
        return value[:-1] if value else ["zq"]
    if isinstance(value, dict):
        return {**value, "zq": 1}
    return "zq"


def _other_type(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return 42
    if isinstance(value, list):
        return json.dumps(value)
    if isinstance(value, dict):
        return json.dumps(value)
    return 0


def _sample_for(schema: Any) -> Any:
    kind = str(schema.get("type")) if isinstance(schema, dict) else ""
    if isinstance(schema, dict) and "default" in schema and schema["default"] is not None:
        return schema["default"]
    return {"integer": 3, "number": 2.5, "boolean": True, "array": ["a"], "object": {"a": 1}}.get(
        kind, "sample"
    )


def mutations(trace: Trace) -> list[tuple[str, Calls]]:
    rng = random.Random(trace.id or trace.source_id)
    reference = _calls(trace)
    out: list[tuple[str, Calls]] = [("reference", reference), ("no_call", [])]
    if not reference:
        tools = trace.tools
        if tools:
            tool = tools[rng.randrange(len(tools))]
            properties = tool.parameters.get("properties") or {}
            required = tool.parameters.get("required") or []
            args = {name: _sample_for(properties.get(name)) for name in required}
            out.append(("call_when_none_expected", [{"name": tool.name, "arguments": args}]))
        return out
    schemas = {t.name: t.parameters for t in trace.tools}
    index = rng.randrange(len(reference))
    target = reference[index]

    def variant(label: str, change: Any) -> None:
        calls = copy.deepcopy(reference)
        change(calls[index])
        out.append((label, calls))

    others = [t.name for t in trace.tools if t.name != target["name"]]
    variant("wrong_function", lambda c: c.update(name=rng.choice(others) if others else c["name"] + "_v2"))
    keys = sorted(target["arguments"])
    if keys:
        key = rng.choice(keys)
        value = target["arguments"][key]
        variant("wrong_value", lambda c: c["arguments"].__setitem__(key, _other_value(value, rng)))
        variant("wrong_type", lambda c: c["arguments"].__setitem__(key, _other_type(value)))
        variant("missing_argument", lambda c: c["arguments"].pop(key))
        if isinstance(value, str) and value.upper() != value:
            variant("other_case", lambda c: c["arguments"].__setitem__(key, value.upper()))
        if isinstance(value, float) and value.is_integer():
            variant("int_for_float", lambda c: c["arguments"].__setitem__(key, int(value)))
        if isinstance(value, int) and not isinstance(value, bool):
            variant("float_for_int", lambda c: c["arguments"].__setitem__(key, float(value)))
    variant("extra_unknown_argument", lambda c: c["arguments"].__setitem__("zq_extra", "x"))
    properties = (schemas.get(target["name"]) or {}).get("properties") or {}
    unused = sorted(set(properties) - set(target["arguments"]))
    if unused:
        extra = rng.choice(unused)
        variant(
            "extra_known_argument",
            lambda c: c["arguments"].__setitem__(extra, _sample_for(properties[extra])),
        )
    if len(reference) > 1:
        out.append(("dropped_call", reference[:-1]))
        out.append(("reordered_calls", list(reversed(reference))))
    out.append(("duplicated_call", [*reference, copy.deepcopy(reference[0])]))
    return out
