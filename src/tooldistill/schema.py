"""The trace schema: one row per teacher decision point.

A *trace* is the conversation up to the moment the teacher chose its tool calls, the tools it could
choose from, and what it chose (the reference calls, in order).  Every reader produces traces; every
later stage reads and writes them.  In memory a trace is a pydantic model; on disk it is one row of
the Arrow schema ``TRACE_SCHEMA`` (Parquet).  Free-form JSON (tool arguments, JSON Schemas,
acceptable-value sets, metadata) is stored as JSON text so the Arrow schema stays fixed.

``SCHEMA_VERSION`` is written into every Parquet part and manifest; bump it when a column changes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator

SCHEMA_VERSION = 1

Role = Literal["system", "user", "assistant", "tool"]

PERMISSIVE_PARAMETERS: dict[str, Any] = {"type": "object", "additionalProperties": True}


def canonical_json(value: Any) -> str:
    """JSON text that is equal for equal values: sorted keys, no spaces, non-ASCII kept."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def content_hash(value: Any, length: int = 64) -> str:
    """Hex SHA-256 of the canonical JSON of ``value``, cut to ``length`` characters."""
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()[:length]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ToolSpec(_Model):
    """A tool the teacher could call: its name, description and JSON Schema for the arguments.

    ``schema_missing`` marks a tool whose schema was not known (a Claude Code tool absent from the
    catalog, an Anthropic server tool): its ``parameters`` are the permissive schema.
    """

    name: str = Field(min_length=1)
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: dict(PERMISSIVE_PARAMETERS))
    schema_missing: bool = False


class ToolCall(_Model):
    """One tool call: name and arguments (a JSON object), with the caller's id when it had one."""

    name: str = Field(min_length=1)
    arguments: dict[str, Any] = Field(default_factory=dict)
    id: str | None = None

    def key(self) -> tuple[str, str]:
        """Name and canonical arguments: equal for calls that are the same call."""
        return (self.name, canonical_json(self.arguments))


class Message(_Model):
    """One chat message in a neutral, OpenAI-like shape.

    ``assistant`` messages may carry ``tool_calls``; a ``tool`` message answers the call named by
    ``tool_call_id``.  Non-text content (images, documents) is replaced by a short placeholder.
    """

    role: Role
    content: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    tool_call_id: str | None = None


class Trace(_Model):
    """One decision point of the teacher.

    - ``id``: content hash of source, source id, messages, tools, reference calls and acceptable
      values (``compute_trace_id``); stable across stages that only add samples or metadata.
    - ``source_id``: the source's own id (BFCL's ``simple_python_0``, a Claude message id).
    - ``reference_calls``: the teacher's calls in order; empty means "call no tool".
    - ``acceptable``: optional per-call acceptable-value sets, one entry per reference call:
      ``{"name": ..., "arguments": {param: [allowed values...]}}``; ``""`` among the values means
      the parameter may be omitted (BFCL's convention).
    - ``teacher_samples``: one list of calls per repeated teacher sample.
    """

    id: str = ""
    source_id: str
    source: str
    category: str | None = None
    messages: list[Message]
    tools: list[ToolSpec]
    reference_calls: list[ToolCall]
    acceptable: list[dict[str, Any]] | None = None
    teacher_samples: list[list[ToolCall]] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("messages")
    @classmethod
    def _has_messages(cls, value: list[Message]) -> list[Message]:
        if not value:
            raise ValueError("a trace needs at least one message before the decision point")
        return value

    def with_id(self) -> Trace:
        """This trace with ``id`` set to its content hash."""
        return self.model_copy(update={"id": compute_trace_id(self)})

    def tool_names(self) -> set[str]:
        return {tool.name for tool in self.tools}


def compute_trace_id(trace: Trace) -> str:
    """The stable content-hash id of a trace (24 hex characters)."""
    payload = {
        "source": trace.source,
        "source_id": trace.source_id,
        "messages": [m.model_dump() for m in trace.messages],
        "tools": [t.model_dump() for t in trace.tools],
        "reference_calls": [[c.name, c.arguments] for c in trace.reference_calls],
        "acceptable": trace.acceptable,
    }
    return content_hash(payload, 24)


def validate_trace(trace: Trace) -> str | None:
    """Why this trace cannot be used, or None.  Reference calls must name offered tools."""
    names = trace.tool_names()
    for position, call in enumerate(trace.reference_calls):
        if call.name not in names:
            return f"reference call {position + 1} names unknown tool {call.name!r} (not among the {len(names)} tools offered)"
    if trace.acceptable is not None and len(trace.acceptable) != len(trace.reference_calls):
        return (
            f"{len(trace.acceptable)} acceptable-value sets for {len(trace.reference_calls)} reference calls"
        )
    return None


# ---------------------------------------------------------------------------------------------
# Arrow form
# ---------------------------------------------------------------------------------------------

CALL_TYPE = pa.struct([("id", pa.string()), ("name", pa.string()), ("arguments", pa.string())])
MESSAGE_TYPE = pa.struct(
    [
        ("role", pa.string()),
        ("content", pa.string()),
        ("tool_calls", pa.list_(CALL_TYPE)),
        ("tool_call_id", pa.string()),
    ]
)
TOOL_TYPE = pa.struct(
    [
        ("name", pa.string()),
        ("description", pa.string()),
        ("parameters", pa.string()),
        ("schema_missing", pa.bool_()),
    ]
)

TRACE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source_id", pa.string()),
        ("source", pa.string()),
        ("category", pa.string()),
        ("messages", pa.list_(MESSAGE_TYPE)),
        ("tools", pa.list_(TOOL_TYPE)),
        ("reference_calls", pa.list_(CALL_TYPE)),
        ("acceptable", pa.string()),
        ("teacher_samples", pa.list_(pa.list_(CALL_TYPE))),
        ("metadata", pa.string()),
    ],
    metadata={b"tooldistill.kind": b"traces", b"tooldistill.schema_version": str(SCHEMA_VERSION).encode()},
)


def _call_row(call: ToolCall) -> dict[str, Any]:
    return {"id": call.id, "name": call.name, "arguments": json.dumps(call.arguments, ensure_ascii=False)}


def _call_from_row(row: Mapping[str, Any]) -> ToolCall:
    return ToolCall(name=row["name"], arguments=json.loads(row["arguments"]), id=row.get("id"))


def trace_to_row(trace: Trace) -> dict[str, Any]:
    """A trace as a plain dict matching ``TRACE_SCHEMA``."""
    return {
        "id": trace.id or compute_trace_id(trace),
        "source_id": trace.source_id,
        "source": trace.source,
        "category": trace.category,
        "messages": [
            {
                "role": m.role,
                "content": m.content,
                "tool_calls": [_call_row(c) for c in m.tool_calls],
                "tool_call_id": m.tool_call_id,
            }
            for m in trace.messages
        ],
        "tools": [
            {
                "name": t.name,
                "description": t.description,
                "parameters": json.dumps(t.parameters, ensure_ascii=False),
                "schema_missing": t.schema_missing,
            }
            for t in trace.tools
        ],
        "reference_calls": [_call_row(c) for c in trace.reference_calls],
        "acceptable": None if trace.acceptable is None else json.dumps(trace.acceptable, ensure_ascii=False),
        "teacher_samples": [[_call_row(c) for c in sample] for sample in trace.teacher_samples],
        "metadata": json.dumps(trace.metadata, ensure_ascii=False, default=str),
    }


def trace_from_row(row: Mapping[str, Any]) -> Trace:
    """The inverse of ``trace_to_row``; raises ``ValueError`` on a row that does not fit the schema."""
    return Trace(
        id=row["id"],
        source_id=row["source_id"],
        source=row["source"],
        category=row.get("category"),
        messages=[
            Message(
                role=m["role"],
                content=m["content"] or "",
                tool_calls=[_call_from_row(c) for c in (m.get("tool_calls") or [])],
                tool_call_id=m.get("tool_call_id"),
            )
            for m in row["messages"]
        ],
        tools=[
            ToolSpec(
                name=t["name"],
                description=t["description"] or "",
                parameters=json.loads(t["parameters"]),
                schema_missing=bool(t["schema_missing"]),
            )
            for t in row["tools"]
        ],
        reference_calls=[_call_from_row(c) for c in row["reference_calls"]],
        acceptable=None if row.get("acceptable") is None else json.loads(row["acceptable"]),
        teacher_samples=[[_call_from_row(c) for c in s] for s in (row.get("teacher_samples") or [])],
        metadata=json.loads(row["metadata"]) if row.get("metadata") else {},
    )


def traces_to_table(traces: Iterable[Trace]) -> pa.Table:
    """Traces as an Arrow table with ``TRACE_SCHEMA`` (ids filled in when empty)."""
    return pa.Table.from_pylist([trace_to_row(t) for t in traces], schema=TRACE_SCHEMA)


def traces_from_table(table: pa.Table) -> list[Trace]:
    """Traces back from an Arrow table; raises ``SchemaError`` when the columns do not fit."""
    check_trace_schema(table.schema)
    return [trace_from_row(row) for row in table.to_pylist()]


class SchemaError(ValueError):
    """A table or record does not fit the trace schema."""


def check_trace_schema(schema: pa.Schema) -> None:
    """Raise ``SchemaError`` naming every missing or mistyped column."""
    problems: list[str] = []
    for field in TRACE_SCHEMA:
        if field.name not in schema.names:
            problems.append(f"missing column {field.name!r}")
        elif not schema.field(field.name).type.equals(field.type):
            problems.append(
                f"column {field.name!r} has type {schema.field(field.name).type}, expected {field.type}"
            )
    version = (schema.metadata or {}).get(b"tooldistill.schema_version")
    if version is not None and int(version) > SCHEMA_VERSION:
        problems.append(f"schema version {int(version)} is newer than this code's {SCHEMA_VERSION}")
    if problems:
        raise SchemaError("not a trace table: " + "; ".join(problems))


def trace_to_json(trace: Trace) -> dict[str, Any]:
    """The JSONL export form of a trace (ingested again unchanged by the ``jsonl`` reader)."""
    data = trace.model_dump(mode="json")
    data["id"] = trace.id or compute_trace_id(trace)
    return data


def calls_from_json(items: Sequence[Mapping[str, Any]]) -> list[ToolCall]:
    return [ToolCall.model_validate(dict(item)) for item in items]
