"""BFCL (Berkeley Function Calling Leaderboard) single-turn data, as shipped by ``bfcl-eval``.

Each category is a JSONL file ``BFCL_v4_<category>.json`` of ``{"id", "question", "function"}``;
its ground truth sits in ``possible_answer/BFCL_v4_<category>.json`` as, per entry, a list of calls
``{function_name: {param: [acceptable values]}}`` where ``""`` among the values means the
parameter may be left out.  Irrelevance categories have no answer file: the right answer is to
call no tool.

Each entry becomes one trace: the acceptable-value sets are kept as ``acceptable`` and a canonical
reference call takes the first listed value of each parameter (leaving the parameter out when that
value is ``""``).  BFCL's own type names (``dict``, ``float``, ``tuple``, ``any``, Java types) are
turned into JSON Schema, with the original kept as ``x-bfcl-type`` where they differ.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tooldistill.readers.base import Quarantined, ReadContext, SourceFile, excerpt, iter_json_lines
from tooldistill.schema import Message, ToolCall, ToolSpec, Trace, validate_trace

#: The single-turn categories read by default.
SINGLE_TURN_CATEGORIES: tuple[str, ...] = (
    "simple_python",
    "multiple",
    "parallel",
    "parallel_multiple",
    "live_simple",
    "live_multiple",
    "live_parallel",
    "live_parallel_multiple",
    "irrelevance",
    "live_irrelevance",
)
#: Categories whose right answer is "no call" (no answer file).
NO_CALL_CATEGORIES = {"irrelevance", "live_irrelevance"}

_FILE_NAME = re.compile(r"^BFCL_v(?P<version>\d+)_(?P<category>[a-z_]+)\.json$")

_TYPES = {
    "dict": "object",
    "float": "number",
    "double": "number",
    "long": "integer",
    "tuple": "array",
    "String": "string",
    "char": "string",
    "Boolean": "boolean",
    "Array": "array",
    "ArrayList": "array",
    "HashMap": "object",
}
_JSON_TYPES = {"string", "integer", "number", "boolean", "array", "object", "null"}


def package_data_dir() -> Path:
    """The data folder of the installed ``bfcl-eval`` package (not imported, only located)."""
    spec = importlib.util.find_spec("bfcl_eval")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "bfcl-eval is not installed; install its data with: pip install --no-deps bfcl-eval"
        )
    data = Path(spec.origin).parent / "data"
    if not data.is_dir():
        raise FileNotFoundError(f"bfcl-eval is installed but has no data folder at {data}")
    return data


def category_of(path: str) -> str | None:
    match = _FILE_NAME.match(path.rsplit("/", 1)[-1])
    return match.group("category") if match else None


def to_json_schema(schema: Any) -> dict[str, Any]:
    """A BFCL parameter schema as JSON Schema (recursively)."""
    if not isinstance(schema, dict):
        return {}
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "type" and isinstance(value, str):
            mapped = _TYPES.get(value, value)
            if mapped in _JSON_TYPES:
                out["type"] = mapped
            if mapped != value or mapped not in _JSON_TYPES:
                out["x-bfcl-type"] = value
        elif key == "properties" and isinstance(value, dict):
            out["properties"] = {name: to_json_schema(sub) for name, sub in value.items()}
        elif key == "items":
            out["items"] = to_json_schema(value)
        else:
            out[key] = value
    return out


def _concrete(value: Any) -> Any:
    """One concrete value from an acceptable value: a dict answer holds, per key, a list of
    acceptable values again (take the first that is not ``""``; leave the key out if none)."""
    if isinstance(value, dict):
        out = {}
        for key, options in value.items():
            if isinstance(options, list):
                chosen = [o for o in options if o != ""]
                if chosen:
                    out[key] = _concrete(chosen[0])
            else:
                out[key] = options
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return [_concrete(v) for v in value]
    return value


def canonical_call(name: str, acceptable: dict[str, list[Any]]) -> ToolCall:
    """The reference call: each parameter's first acceptable value (nested dict answers made
    concrete the same way); the parameter is left out when that first value is ``""``."""
    arguments = {
        param: _concrete(values[0])
        for param, values in acceptable.items()
        if isinstance(values, list) and values and values[0] != ""
    }
    return ToolCall(name=name, arguments=arguments)


def _answers(source: SourceFile, context: ReadContext) -> dict[str, list[dict[str, Any]]]:
    answer_file = source.sibling(f"possible_answer/{source.path.rsplit('/', 1)[-1]}")
    answers: dict[str, list[dict[str, Any]]] = {}
    for item in iter_json_lines(answer_file, context):
        if isinstance(item, Quarantined):
            continue
        _, record = item
        if isinstance(record.get("ground_truth"), list):
            answers[str(record.get("id"))] = record["ground_truth"]
    return answers


def read_bfcl(source: SourceFile, context: ReadContext) -> Iterator[Trace | Quarantined]:
    """Traces for every entry of one BFCL category file (its answers read from ``possible_answer/``)."""
    category = category_of(source.path) or "unknown"
    no_call = category in NO_CALL_CATEGORIES
    try:
        answers = {} if no_call else _answers(source, context)
    except OSError as error:
        yield Quarantined(source.uri, 0, f"cannot read possible answers for {category}: {error}")
        return
    for item in iter_json_lines(source, context):
        if isinstance(item, Quarantined):
            yield item
            continue
        number, entry = item
        entry_id = str(entry.get("id", f"{category}:{number}"))

        def snippet(entry: dict[str, Any] = entry) -> str:  # redacted only for a quarantined entry
            return excerpt(json.dumps(entry), context.redactor)

        question = entry.get("question")
        if not isinstance(question, list) or len(question) != 1 or not isinstance(question[0], list):
            yield Quarantined(source.uri, number, f"not a single-turn question ({entry_id})", snippet())
            continue
        try:
            messages = [
                Message(role=m["role"], content=context.redactor.text(str(m.get("content") or "")))
                for m in question[0]
            ]
            tools = [
                ToolSpec(
                    name=f["name"],
                    description=str(f.get("description") or ""),
                    parameters=to_json_schema(f.get("parameters") or {"type": "dict", "properties": {}}),
                )
                for f in entry.get("function") or []
            ]
        except (KeyError, TypeError, ValueError) as error:
            yield Quarantined(source.uri, number, f"malformed entry: {error} ({entry_id})", snippet())
            continue
        if no_call:
            calls: list[ToolCall] = []
            acceptable: list[dict[str, Any]] = []
        else:
            truth = answers.get(entry_id)
            if truth is None:
                yield Quarantined(
                    source.uri, number, f"no ground truth in possible_answer ({entry_id})", snippet()
                )
                continue
            acceptable = [
                {"name": name, "arguments": params}
                for call in truth
                if isinstance(call, dict)
                for name, params in call.items()
            ]
            calls = [canonical_call(a["name"], a["arguments"]) for a in acceptable]
        trace = Trace(
            source_id=entry_id,
            source="bfcl",
            category=category,
            messages=messages,
            tools=tools,
            reference_calls=calls,
            acceptable=acceptable,
            metadata={"file": source.uri, "line": number},
        )
        problem = validate_trace(trace)
        if problem:
            yield Quarantined(source.uri, number, f"{problem} ({entry_id})", snippet())
            continue
        yield trace.with_id()
