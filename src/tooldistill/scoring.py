"""Score predictions against a traces dataset (``tooldistill score``).

A prediction is one JSON line: ``trace_id`` or ``source_id`` (the source's own id, e.g. BFCL's
``live_multiple_0-0-0``), then either ``calls`` (``[{"name": ..., "arguments": {...}}]``) or raw
``output`` (model text, or an OpenAI chat message with ``tool_calls``), and optionally ``id``.
Several predictions may name the same trace (repeated samples).

Bad prediction lines (not JSON, no trace named, a trace not in the dataset) become records with an
``error`` and ``match: false``; they are counted apart and left out of the rates, so one broken
line neither crashes the run nor counts as a student mistake.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tooldistill import store
from tooldistill.match.compare import MODES, Verdict, compare
from tooldistill.match.parse import Parsed, parse_message, parse_text, resolve_names
from tooldistill.match.stats import aggregate
from tooldistill.schema import ToolCall, Trace


class ScoreError(ValueError):
    """The inputs of a scoring run cannot be used at all (missing file, unknown mode, ...)."""


def check_modes(modes: Sequence[str]) -> list[str]:
    modes = list(dict.fromkeys(modes))
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise ScoreError(
            f"unknown match mode {', '.join(unknown) or '(none)'}; choose from {', '.join(MODES)}"
        )
    return modes


def parse_prediction(prediction: Mapping[str, Any]) -> Parsed:
    """The calls a prediction line holds (``calls`` as given, or parsed from ``output``)."""
    if "calls" in prediction:
        calls = prediction["calls"]
        if not isinstance(calls, list):
            return Parsed(error="unparseable: calls must be a list", form="calls")
        try:
            return Parsed(
                [ToolCall(name=str(c["name"]), arguments=dict(c.get("arguments") or {})) for c in calls],
                form="calls",
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            return Parsed(error=f"unparseable: bad call in calls: {error}", form="calls")
    output = prediction.get("output")
    if isinstance(output, Mapping):
        return parse_message(output)
    return parse_text(output if isinstance(output, str) else "")


def schemas_of(trace: Trace) -> dict[str, Any]:
    return {tool.name: tool.parameters for tool in trace.tools}


def judge(
    trace: Trace, parsed: Parsed, modes: Sequence[str], reference: Sequence[ToolCall] | None = None
) -> dict[str, Any]:
    """Verdicts of parsed calls against the trace's reference (or ``reference``), per mode."""
    calls = resolve_names(parsed.calls, trace.tool_names())
    expected = list(trace.reference_calls if reference is None else reference)
    verdicts: dict[str, Any] = {}
    for mode in modes:
        if parsed.error:
            verdict = Verdict(False, 0.0, parsed.error, (parsed.error,))
        else:
            acceptable = trace.acceptable if reference is None else None
            verdict = compare(calls, expected, mode, schemas_of(trace), acceptable, trace.category)
        verdicts[mode] = verdict.to_json()
    return {
        "calls": [c.model_dump(exclude_none=True) for c in calls],
        "predicted_tools": [c.name for c in calls],
        "expected_tools": [c.name for c in expected],
        "verdicts": verdicts,
    }


@dataclass
class TraceIndex:
    by_id: dict[str, Trace]
    by_source_id: dict[str, Trace]

    @classmethod
    def build(cls, traces: Iterable[Trace]) -> TraceIndex:
        by_id: dict[str, Trace] = {}
        by_source: dict[str, Trace] = {}
        for trace in traces:
            by_id[trace.id] = trace
            by_source.setdefault(trace.source_id, trace)
        return cls(by_id, by_source)

    def find(self, prediction: Mapping[str, Any]) -> tuple[Trace | None, str | None]:
        if prediction.get("trace_id") is not None:
            trace = self.by_id.get(str(prediction["trace_id"]))
            return trace, None if trace else f"unknown trace_id {prediction['trace_id']}"
        if prediction.get("source_id") is not None:
            trace = self.by_source_id.get(str(prediction["source_id"]))
            return trace, None if trace else f"unknown source_id {prediction['source_id']}"
        return None, "prediction names no trace_id or source_id"


def score_lines(
    lines: Iterable[str], traces: Iterable[Trace], modes: Sequence[str]
) -> Iterator[dict[str, Any]]:
    """One record per non-empty prediction line; the first mode gives ``match/score/reason``."""
    modes = check_modes(modes)
    index = TraceIndex.build(traces)
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        base: dict[str, Any] = {"line": number, "id": None, "trace_id": None, "source_id": None}
        try:
            prediction = json.loads(line)
            if not isinstance(prediction, dict):
                raise ValueError("a prediction must be a JSON object")
        except ValueError as error:
            yield {
                **base,
                "match": False,
                "score": 0.0,
                "reason": f"bad prediction line: {error}",
                "error": "bad line",
            }
            continue
        base["id"] = prediction.get("id")
        trace, problem = index.find(prediction)
        if trace is None:
            base.update(trace_id=prediction.get("trace_id"), source_id=prediction.get("source_id"))
            yield {**base, "match": False, "score": 0.0, "reason": problem, "error": "unknown trace"}
            continue
        base.update(trace_id=trace.id, source_id=trace.source_id, category=trace.category)
        judged = judge(trace, parse_prediction(prediction), modes)
        first = judged["verdicts"][modes[0]]
        yield {**base, "match": first["match"], "score": first["score"], "reason": first["reason"], **judged}


def score(predictions: str, dataset: str, modes: Sequence[str], out: str) -> dict[str, Any]:
    """Score a predictions JSONL (local or s3://) against a dataset; writes ``out/scores.jsonl`` and
    ``out/summary.json``; returns the summary."""
    modes = check_modes(modes)
    try:
        text = store.read_file(predictions).decode("utf-8", errors="replace")
    except store.StoreError as error:
        raise ScoreError(f"predictions: {error}") from error
    traces = store.Dataset.open(dataset).to_traces()
    records = list(score_lines(text.splitlines(), traces, modes))
    summary = aggregate(records, modes)
    summary.update(dataset=dataset, predictions=predictions, primary_mode=modes[0])
    write_records(out, "scores.jsonl", records)
    write_json(out, "summary.json", summary)
    return summary


def write_records(folder: str, name: str, records: Iterable[Mapping[str, Any]]) -> str:
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return store.write_file(folder, name, body.encode("utf-8"))


def write_json(folder: str, name: str, value: Any) -> str:
    return store.write_file(
        folder, name, (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    )
