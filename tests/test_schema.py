import json

import pyarrow as pa
import pytest
from pydantic import ValidationError

from tooldistill.schema import (
    TRACE_SCHEMA,
    Message,
    SchemaError,
    ToolCall,
    ToolSpec,
    Trace,
    check_trace_schema,
    compute_trace_id,
    trace_to_json,
    traces_from_table,
    traces_to_table,
    validate_trace,
)


def make_trace(**changes) -> Trace:
    base = dict(
        source_id="ex-1",
        source="jsonl",
        category="weather",
        messages=[
            Message(role="system", content="You help with weather."),
            Message(role="user", content="Weather in Paris and Oslo?"),
        ],
        tools=[
            ToolSpec(
                name="get_weather",
                description="Current weather",
                parameters={
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            )
        ],
        reference_calls=[
            ToolCall(name="get_weather", arguments={"city": "Paris"}, id="c1"),
            ToolCall(name="get_weather", arguments={"city": "Oslo", "unit": 1.5}),
        ],
        acceptable=[
            {"name": "get_weather", "arguments": {"city": ["Paris", "paris"]}},
            {"name": "get_weather", "arguments": {"city": ["Oslo"], "unit": [1.5, ""]}},
        ],
        teacher_samples=[[ToolCall(name="get_weather", arguments={"city": "Paris"})], []],
        metadata={"nested": {"a": [1, 2]}, "note": "é"},
    )
    base.update(changes)
    return Trace(**base).with_id()


def test_arrow_round_trip_keeps_every_field():
    trace = make_trace()
    table = traces_to_table([trace])
    assert table.schema.equals(TRACE_SCHEMA, check_metadata=True)
    assert traces_from_table(table) == [trace]


def test_id_is_stable_and_follows_content():
    first, second = make_trace(), make_trace()
    assert first.id == second.id and len(first.id) == 24
    changed = make_trace(
        reference_calls=[ToolCall(name="get_weather", arguments={"city": "Lyon"})], acceptable=None
    )
    assert changed.id != first.id
    # samples and metadata are added by later stages and must not change the id
    assert make_trace(teacher_samples=[], metadata={}).id == first.id
    # argument key order does not matter
    reordered = make_trace(
        reference_calls=[
            ToolCall(name="get_weather", arguments={"city": "Paris"}, id="c1"),
            ToolCall(name="get_weather", arguments={"unit": 1.5, "city": "Oslo"}),
        ]
    )
    assert reordered.id == first.id == compute_trace_id(first)


def test_json_export_is_valid_input():
    trace = make_trace()
    data = json.loads(json.dumps(trace_to_json(trace)))
    data.pop("id")
    assert Trace.model_validate(data).with_id() == trace


def test_validation_names_the_problem():
    bad = make_trace(reference_calls=[ToolCall(name="get_forecast", arguments={})], acceptable=None)
    assert "unknown tool 'get_forecast'" in validate_trace(bad)
    assert validate_trace(make_trace()) is None
    with pytest.raises(ValidationError):
        make_trace(messages=[])
    with pytest.raises(ValidationError):
        Message(role="robot", content="hi")


def test_schema_check_lists_missing_and_mistyped_columns():
    table = traces_to_table([make_trace()]).drop(["metadata"])
    table = table.set_column(table.schema.get_field_index("source"), "source", pa.array([1]))
    with pytest.raises(SchemaError) as error:
        check_trace_schema(table.schema)
    assert "missing column 'metadata'" in str(error.value)
    assert "column 'source' has type int64" in str(error.value)
