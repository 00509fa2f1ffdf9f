"""Canonical forms of tool-call arguments, with and without a JSON Schema.

``canonical`` is schema-free: integral floats become ints (``1 == 1.0``), tuples become lists,
mapping keys are kept as given.  ``coerce`` applies what a parameter's schema says makes two forms
the same value: a number written as a string for a number parameter, ``"true"`` for a boolean, a
JSON-encoded array or object, an enum member in another letter case, a number for a string.
``normalize_arguments`` does both for a whole call and fills in schema defaults and drops explicit
``null`` for optional parameters, so ``f()`` and ``f(unit="celsius")`` are equal when
``"celsius"`` is the default.
"""

from __future__ import annotations

import json
import math
from typing import Any

_MISSING = object()


def canonical(value: Any) -> Any:
    """A schema-free canonical form: equal values get equal forms, ``True`` stays unlike ``1``."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and abs(value) < 2**53:
            return int(value)
        return value
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in value.items()}
    return value


def schema_types(schema: Any) -> set[str]:
    """The JSON Schema type names a schema allows (empty: anything)."""
    if not isinstance(schema, dict):
        return set()
    kind = schema.get("type")
    if isinstance(kind, str):
        return {kind}
    if isinstance(kind, list):
        return {k for k in kind if isinstance(k, str)}
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list):
            return set().union(*(schema_types(s) for s in schema[key])) if schema[key] else set()
    return set()


def _number(text: str) -> int | float | None:
    try:
        number = float(text.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def coerce(value: Any, schema: Any) -> Any:
    """``value`` in canonical form after the conversions the schema makes unambiguous."""
    types = schema_types(schema)
    schema = schema if isinstance(schema, dict) else {}
    if isinstance(value, str):
        text = value.strip()
        if types & {"integer", "number"} and "string" not in types:
            number = _number(text)
            if number is not None:
                return canonical(number)
        if "boolean" in types and "string" not in types and text.lower() in ("true", "false"):
            return text.lower() == "true"
        if types & {"array", "object"} and "string" not in types and text[:1] in ("[", "{"):
            try:
                return coerce(json.loads(text), schema)
            except ValueError:
                pass
        enum = schema.get("enum")
        if isinstance(enum, list) and value not in enum:
            folded = [e for e in enum if isinstance(e, str) and e.lower() == text.lower()]
            if len(folded) == 1:
                return folded[0]
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if types == {"string"}:
            return str(canonical(value))
        return canonical(value)
    if isinstance(value, (list, tuple)):
        items = schema.get("items")
        return [coerce(v, items) for v in value]
    if isinstance(value, dict):
        properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        return {str(k): coerce(v, properties.get(k)) for k, v in value.items()}
    return canonical(value)


def normalize_arguments(arguments: dict[str, Any], parameters: Any) -> dict[str, Any]:
    """Arguments of one call, coerced by the tool's parameter schema, defaults filled in."""
    parameters = parameters if isinstance(parameters, dict) else {}
    properties = parameters.get("properties") if isinstance(parameters.get("properties"), dict) else {}
    required = (
        set(parameters.get("required") or []) if isinstance(parameters.get("required"), list) else set()
    )
    out: dict[str, Any] = {}
    for name, value in arguments.items():
        if value is None and name not in required:
            continue
        out[name] = coerce(value, properties.get(name))
    for name, prop in properties.items():
        if name not in out and isinstance(prop, dict) and "default" in prop and prop["default"] is not None:
            out[name] = coerce(prop["default"], prop)
    return out


def format_value(value: Any, limit: int = 60) -> str:
    """A short, Python-like rendering of a value for reasons: ``'celsius'``, ``3``, ``[1, 2]``."""
    if isinstance(value, str) or value is None or isinstance(value, (bool, int, float)):
        text = repr(value)
    else:
        text = json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_call(name: str, arguments: dict[str, Any], limit: int = 120) -> str:
    """``get_weather(city='Paris', unit='C')``, shortened to about ``limit`` characters."""
    inner = ", ".join(f"{k}={format_value(v, 40)}" for k, v in arguments.items())
    text = f"{name}({inner})"
    return text if len(text) <= limit else text[: limit - 4] + "...)"
