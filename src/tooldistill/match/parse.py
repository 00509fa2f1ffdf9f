"""Turn a student's output into tool calls.

Accepted forms, tried in this order:

1. OpenAI-format ``tool_calls`` on a chat message (``function.arguments`` is JSON text);
2. from text: ``<tool_call>{...}</tool_call>`` tags (Hermes/Qwen style), fenced code blocks,
   bare JSON (``{"name": ..., "arguments": ...}``, a list of those, ``{"tool_calls": [...]}``,
   BFCL's ``[{"get_weather": {"city": "Paris"}}]``) and Python-call syntax
   (``[get_weather(city="Paris"), spotify.play(artist="X")]``), read with ``ast`` and
   ``ast.literal_eval``, never ``eval``.

Plain prose with no call in it is "no call" (an empty list).  Text that sets out to be a call and
cannot be read (broken JSON, a call with positional arguments, an unclosed tag) is
``unparseable`` with the reason, and scores 0.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tooldistill.schema import ToolCall

_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_TAG = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)```", re.DOTALL)
_CALL_START = re.compile(r"^\s*\[?\s*[A-Za-z_][\w.]*\s*\(")


#: keys that describe a call and so are never a tool name in the one-key ``{name: args}`` form
_RESERVED = {"arguments", "parameters", "args", "input", "function", "tool_calls", "type", "id"}


class ParseError(ValueError):
    """The output looks like a call but cannot be read as one."""


@dataclass
class Parsed:
    """Calls read from one output, or why none could be read."""

    calls: list[ToolCall] = field(default_factory=list)
    #: set when the output is unparseable; ``calls`` is then empty
    error: str | None = None
    #: which form the calls came from: tool_calls, tags, fenced, json, python, text (no call)
    form: str = "text"

    @property
    def ok(self) -> bool:
        return self.error is None


def _arguments(value: Any, where: str) -> dict[str, Any]:
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise ParseError(f"{where}: arguments are not valid JSON ({error.msg})") from error
    if not isinstance(value, dict):
        raise ParseError(f"{where}: arguments must be an object, got {type(value).__name__}")
    return value


def _call_from_object(obj: Any) -> list[ToolCall]:
    """Calls from one decoded JSON value (object or list, in any of the accepted shapes)."""
    if isinstance(obj, list):
        return [call for item in obj for call in _call_from_object(item)]
    if not isinstance(obj, dict):
        raise ParseError(f"expected a call object, got {type(obj).__name__}")
    if isinstance(obj.get("tool_calls"), list):
        return _call_from_object(obj["tool_calls"])
    if isinstance(obj.get("function"), dict):  # OpenAI {"type": "function", "function": {...}}
        return _call_from_object(obj["function"])
    if isinstance(obj.get("name"), str):
        args: Any = next((obj[k] for k in ("arguments", "parameters", "args", "input") if k in obj), {})
        return [ToolCall(name=obj["name"], arguments=_arguments(args, obj["name"]))]
    if (
        len(obj) == 1 and next(iter(obj)) not in _RESERVED
    ):  # BFCL style {"get_weather": {"city": "Paris"}} or {"f": "<json>"}
        name, args = next(iter(obj.items()))
        if isinstance(args, (dict, str)):
            return [ToolCall(name=str(name), arguments=_arguments(args, str(name)))]
    raise ParseError(f"object has no tool name: {json.dumps(obj)[:80]}")


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    raise ParseError("a called name must be a plain or dotted name")


def _literal(node: ast.expr, name: str, key: str) -> Any:
    if isinstance(node, ast.Name) and node.id not in ("True", "False", "None"):
        # A variable where a value belongs (``f(x=v)``): kept as its name, as BFCL's decoder does,
        # so the comparison says "expected 3, got 'v'" instead of refusing the whole output.
        return node.id
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as error:
        raise ParseError(f"{name}: argument {key} is not a literal ({ast.unparse(node)[:40]})") from error
    return _jsonable(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted((_jsonable(v) for v in value), key=repr)
    if isinstance(value, (bytes, complex)):
        return str(value)
    return value


def parse_python_calls(text: str) -> list[ToolCall]:
    """``[f(a=1), pkg.g(b="x")]`` or ``f(a=1)`` → calls; keyword arguments only."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as error:
        raise ParseError(f"not valid Python call syntax ({error.msg})") from error
    body = tree.body
    nodes = list(body.elts) if isinstance(body, (ast.List, ast.Tuple)) else [body]
    calls = []
    for node in nodes:
        if not isinstance(node, ast.Call):
            raise ParseError(f"expected a function call, got {ast.unparse(node)[:40]}")
        name = _dotted(node.func)
        if node.args:
            raise ParseError(f"{name}: positional arguments are not supported; use name=value")
        arguments = {}
        for keyword in node.keywords:
            if keyword.arg is None:
                raise ParseError(f"{name}: **kwargs is not supported")
            arguments[keyword.arg] = _literal(keyword.value, name, keyword.arg)
        calls.append(ToolCall(name=name, arguments=arguments))
    return calls


def _parse_fragment(text: str) -> tuple[list[ToolCall], str]:
    """Calls from one piece of text that is meant to be a call (JSON or Python syntax)."""
    stripped = text.strip()
    if not stripped:
        return [], "json"
    if stripped[0] in "[{":
        try:
            return _call_from_object(json.loads(stripped)), "json"
        except ValueError as json_error:
            if stripped[0] == "[" and _CALL_START.match(stripped):
                return parse_python_calls(stripped), "python"
            if isinstance(json_error, ParseError):
                raise
            raise ParseError(f"invalid JSON: {json_error}") from json_error
    if _CALL_START.match(stripped):
        return parse_python_calls(stripped), "python"
    raise ParseError(f"not a call: {stripped[:60]!r}")


def _looks_like_call(fragment: str) -> bool:
    """Whether a fenced block sets out to be a call (and not, say, a list of numbers or code)."""
    stripped = fragment.strip()
    if _CALL_START.match(stripped):
        return True
    if stripped[:1] not in ("{", "["):
        return False
    try:
        value = json.loads(stripped)
    except ValueError:
        return True  # broken JSON meant as a call
    items = value if isinstance(value, list) else [value]
    return bool(items) and all(isinstance(item, dict) for item in items)


def parse_text(text: str) -> Parsed:
    """Calls from a model's text output (see the module doc for the accepted forms)."""
    body = _THINK.sub("", text or "").strip()
    if "<tool_call>" in body.lower():
        calls: list[ToolCall] = []
        for fragment in _TAG.findall(body):
            try:
                calls.extend(_parse_fragment(fragment)[0])
            except ParseError as error:
                return Parsed(error=f"unparseable: <tool_call> block: {error}", form="tags")
        return Parsed(calls, form="tags")
    fences = _FENCE.findall(body)
    attempts = [f for _, f in fences if _looks_like_call(f)]
    if attempts:
        # Fenced blocks that set out to be calls; other fenced code (a function shown to the user
        # in a prose answer) is text, not a call.
        calls = []
        for fragment in attempts:
            try:
                calls.extend(_parse_fragment(fragment)[0])
            except ParseError as error:
                return Parsed(error=f"unparseable: fenced block: {error}", form="fenced")
        return Parsed(calls, form="fenced")
    if fences:
        return Parsed([], form="text")
    if body.startswith(("{", "[")) or _CALL_START.match(body):
        try:
            calls, form = _parse_fragment(body)
        except ParseError as error:
            return Parsed(error=f"unparseable: {error}", form="json" if body[:1] in "[{" else "python")
        return Parsed(calls, form=form)
    if body.startswith("```"):
        return Parsed(error="unparseable: unclosed code fence", form="fenced")
    return Parsed([], form="text")


def parse_tool_calls(tool_calls: Iterable[Mapping[str, Any]]) -> Parsed:
    """Calls from OpenAI-format ``tool_calls`` (``function.arguments`` as JSON text or object)."""
    calls = []
    for index, item in enumerate(tool_calls):
        function = item.get("function") if isinstance(item, Mapping) else None
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            return Parsed(error=f"unparseable: tool_calls[{index}] has no function name", form="tool_calls")
        try:
            arguments = _arguments(function.get("arguments"), function["name"])
        except ParseError as error:
            return Parsed(error=f"unparseable: {error}", form="tool_calls")
        call_id = item.get("id")
        calls.append(
            ToolCall(
                name=function["name"], arguments=arguments, id=call_id if isinstance(call_id, str) else None
            )
        )
    return Parsed(calls, form="tool_calls")


def parse_message(message: Mapping[str, Any]) -> Parsed:
    """Calls from an OpenAI chat message: its ``tool_calls`` when present, else its text."""
    tool_calls = message.get("tool_calls")
    if tool_calls:
        return parse_tool_calls(tool_calls)
    content = message.get("content")
    if isinstance(content, list):  # content parts
        content = "".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
    return parse_text(content if isinstance(content, str) else "")


def resolve_names(calls: list[ToolCall], tool_names: Iterable[str]) -> list[ToolCall]:
    """Map called names back to the offered tools when a model rewrote them.

    Handles dots written as underscores (``math_factorial`` for ``math.factorial``, as native
    tool-calling APIs require), a ``functions.`` prefix, and a different letter case, but only
    when exactly one offered tool fits.
    """
    names = list(tool_names)
    known = set(names)
    out = []
    for call in calls:
        name = call.name
        if name not in known:
            bare = name.removeprefix("functions.")
            options = [
                n for n in names if n == bare or n.replace(".", "_") == bare or n.lower() == bare.lower()
            ]
            if len(options) == 1:
                name = options[0]
        out.append(call if name == call.name else ToolCall(name=name, arguments=call.arguments, id=call.id))
    return out
