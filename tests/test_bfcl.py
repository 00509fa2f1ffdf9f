"""BFCL ingest from the installed bfcl-eval package: one trace per entry, per category."""

import json
from collections import Counter

from tooldistill.readers.bfcl import SINGLE_TURN_CATEGORIES, canonical_call, package_data_dir, to_json_schema


def package_entries(category):
    path = package_data_dir() / f"BFCL_v4_{category}.json"
    return [json.loads(line)["id"] for line in path.read_text().splitlines() if line.strip()]


def test_one_trace_per_entry_in_every_category(bfcl_dataset):
    frame = bfcl_dataset.to_pandas()
    counts = Counter(frame["category"])
    for category in SINGLE_TURN_CATEGORIES:
        expected = package_entries(category)
        assert counts[category] == len(expected), category
        assert set(frame.loc[frame["category"] == category, "source_id"]) == set(expected)
    assert bfcl_dataset.manifest.rows == len(frame) == sum(counts.values())
    assert frame["id"].is_unique
    assert bfcl_dataset.manifest.quarantine.total == 0


def test_reference_calls_and_acceptable_values(bfcl_dataset):
    traces = {t.source_id: t for t in bfcl_dataset.to_traces()}
    simple = traces["simple_python_0"]
    assert simple.acceptable == [
        {"name": "calculate_triangle_area", "arguments": {"base": [10], "height": [5], "unit": ["units", ""]}}
    ]
    assert simple.reference_calls[0].name == "calculate_triangle_area"
    assert simple.reference_calls[0].arguments == {"base": 10, "height": 5, "unit": "units"}
    assert (
        simple.tools[0].parameters["type"] == "object" and simple.tools[0].parameters["x-bfcl-type"] == "dict"
    )
    parallel = traces["live_parallel_0-0-0"]
    assert [c.arguments["location"] for c in parallel.reference_calls] == [
        "Beijing, China",
        "Shanghai, China",
    ]
    assert "unit" not in parallel.reference_calls[0].arguments  # first acceptable value is "" → left out
    for trace in traces.values():
        if trace.category in ("irrelevance", "live_irrelevance"):
            assert trace.reference_calls == [] and trace.acceptable == []
        else:
            assert len(trace.reference_calls) == len(trace.acceptable) >= 1


def test_schema_conversion():
    converted = to_json_schema(
        {
            "type": "dict",
            "properties": {
                "ratio": {"type": "float"},
                "pair": {"type": "tuple", "items": {"type": "integer"}},
                "blob": {"type": "any"},
                "name": {"type": "String"},
            },
            "required": ["ratio"],
        }
    )
    assert converted["type"] == "object" and converted["required"] == ["ratio"]
    props = converted["properties"]
    assert props["ratio"] == {"type": "number", "x-bfcl-type": "float"}
    assert props["pair"] == {"type": "array", "x-bfcl-type": "tuple", "items": {"type": "integer"}}
    assert props["blob"] == {"x-bfcl-type": "any"}
    assert props["name"] == {"type": "string", "x-bfcl-type": "String"}
    assert canonical_call("f", {"a": ["", 1], "b": [2, 3], "c": [""]}).arguments == {"b": 2}
