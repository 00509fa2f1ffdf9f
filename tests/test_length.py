"""The optional length stage: traces the student's window cannot hold, even after the context
policy's cuts, are dropped and counted; the rest pass with every column.  It runs per row through
the runner (in this process and on Ray alike) and takes its place in the registry's chain."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tooldistill import store
from tooldistill.config import PipelineConfig
from tooldistill.curate.chain import run_chain
from tooldistill.curate.common import decisions_of
from tooldistill.curate.embed import embedding_array
from tooldistill.curate.length import LengthOptions, run_length
from tooldistill.curate.registry import StageContext
from tooldistill.curate.runner import LocalRunner, RayRunner
from tooldistill.schema import Message, ToolCall, ToolSpec, Trace, traces_to_table

LOOKUP = ToolSpec(
    name="lookup",
    description="Look a word up",
    parameters={"type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"]},
)
#: A window the byte count (no tokenizer) holds a short request in with room to spare.
WINDOW = 2048


def decision(name: str, request: str, old_result: str = "") -> Trace:
    messages = [Message(role="system", content="You look words up."), Message(role="user", content=request)]
    if old_result:  # an earlier call whose long result the policy may shorten
        call = ToolCall(id="c1", name="lookup", arguments={"word": "earlier"})
        messages[1:1] = [
            Message(role="user", content="Look up 'earlier'."),
            Message(role="assistant", content="", tool_calls=[call]),
            Message(role="tool", content=old_result, tool_call_id="c1"),
            Message(role="assistant", content="Done."),
            Message(role="user", content="Thanks."),
            Message(role="assistant", content="Anything else?"),
        ]
    return Trace(
        source_id=name,
        source="test",
        messages=messages,
        tools=[LOOKUP],
        reference_calls=[ToolCall(name="lookup", arguments={"word": "x"})],
    ).with_id()


SHORT = decision("short", "Look up 'quay'.")
CUTTABLE = decision("cuttable", "Look up 'sill'.", old_result="definition " * 2000)  # ~22 kB, shortened
TOO_LONG = decision("too-long", "Look up all of these: " + "word " * 3000)  # the latest request itself


def write(uri: str, traces: list[Trace], vectors: Any = None, parts: int | None = None) -> store.Dataset:
    """A published traces dataset, one part per trace unless ``parts`` says one part."""
    table = traces_to_table(traces)
    if vectors is not None:
        table = table.append_column("embedding", embedding_array(vectors))
    token = store.new_token()
    sizes = [table.num_rows] if parts == 1 else [1] * table.num_rows
    infos = [store.write_part(uri, token, i, table.slice(i, size)) for i, size in enumerate(sizes)]
    manifest = store.Manifest(
        kind="traces", stage="test", rows=table.num_rows, parts=infos, config_hash="t", fingerprint=token
    )
    return store.Dataset(uri, store.publish(uri, token=token, manifest=manifest))


def test_length_stage_drops_only_what_cannot_fit_and_counts_it(tmp_path: Path) -> None:
    source = write(str(tmp_path / "in"), [SHORT, CUTTABLE, TOO_LONG])
    config = LengthOptions(window=WINDOW, max_tokens=64).config(dataset=source.uri, out=str(tmp_path / "out"))
    result = run_length(config, LocalRunner(show_progress=False))
    assert {t.id for t in result.dataset.to_traces()} == {SHORT.id, CUTTABLE.id}
    assert result.stats["in"] == 3 and result.stats["kept"] == 2 and result.stats["too_long"] == 1
    decisions = decisions_of(config.out).to_pylist()
    assert {d["id"]: d["reason"] for d in decisions} == {
        SHORT.id: "",
        CUTTABLE.id: "",
        TOO_LONG.id: "too_long",
    }
    assert len(result.dataset.manifest.parts) == 2  # one part per shard with something kept
    again = run_length(config, LocalRunner(show_progress=False))
    assert again.skipped and again.rows == 2
    wider = LengthOptions(window=65536, max_tokens=64).config(dataset=source.uri, out=config.out)
    assert run_length(wider, LocalRunner(show_progress=False)).rows == 3  # other options: run again


def test_length_stage_on_ray_equals_in_process(ray_cluster: None, tmp_path: Path) -> None:
    source = write(str(tmp_path / "in"), [SHORT, CUTTABLE, TOO_LONG])
    options = LengthOptions(window=WINDOW, max_tokens=64, rows_per_shard=1, cpus_per_worker=0.5)
    local = run_length(options.config(dataset=source.uri, out=str(tmp_path / "a")), LocalRunner(False))
    ray = run_length(
        options.config(dataset=source.uri, out=str(tmp_path / "b")), RayRunner(show_progress=False)
    )
    assert ray.stats["executor"] == "ray" and ray.stats["shards"] == 3
    assert sorted(t.id for t in ray.dataset.to_traces()) == sorted(t.id for t in local.dataset.to_traces())


def test_length_stage_is_optional_in_the_chain_and_config(tmp_path: Path) -> None:
    config = PipelineConfig.model_validate({"ingest": {"sources": ["x"], "format": "jsonl"}, "curate": {}})
    assert config.curate is not None and config.curate.length is None  # off by default
    on = {"ingest": {"sources": ["x"], "format": "jsonl"}, "curate": {"length": {"window": 8192}}}
    assert PipelineConfig.model_validate(on).curate.length == LengthOptions(window=8192)
    with pytest.raises(ValueError, match="curate.length.window"):
        PipelineConfig.model_validate({**on, "curate": {"length": {"max_tokens": 10}}})


def test_chain_runs_the_length_stage_between_semdedup_and_car(tmp_path: Path) -> None:
    traces = [decision(f"s{i}", f"Look up word number {i}.") for i in range(6)] + [TOO_LONG]
    vectors = np.eye(len(traces), 8, dtype=np.float32)  # all different: SemDeDup keeps every one
    uri = write(str(tmp_path / "embedded"), traces, vectors, parts=1).uri
    options = {
        "semdedup": {"k": 1},
        "length": {"window": WINDOW, "max_tokens": 64},
        "car": {"k": 1, "per_cluster": 10, "top_overall": 0},
        "split": {"fractions": (0.5, 0.0, 0.5)},
    }
    chain = run_chain(uri, str(tmp_path / "curate"), options, StageContext(LocalRunner(False), False))
    assert chain is not None
    stages = {s["stage"]: s for s in chain.funnel["stages"]}
    assert list(stages) == ["embed", "semdedup", "length", "car", "split"]
    assert (
        stages["length"]["in"] == 7
        and stages["length"]["kept"] == 6
        and stages["length"]["went"] == {"too_long": 1}
    )
    assert chain.inputs["car"] == str(tmp_path / "curate" / "fitting") and stages["car"]["in"] == 6
    assert chain.funnel["too_long"] == 1 and chain.funnel["selected"] == 6


def test_a_bad_stage_option_stops_the_chain_before_any_stage_runs(tmp_path: Path) -> None:
    """Every stage's options are checked first: a typo in a late stage's does not wait for (or,
    here, hide behind) the earlier stages' work."""
    out = tmp_path / "curate"
    options = {"length": {"window": 8192, "bogus": 1}}
    with pytest.raises(ValueError, match="bogus"):
        run_chain(str(tmp_path / "no-dataset"), str(out), options, StageContext(LocalRunner(False), False))
    assert not out.exists()
