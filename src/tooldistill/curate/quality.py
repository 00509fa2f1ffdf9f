"""Quality scores for traces, from pluggable scorers.

A scorer looks at one trace and returns a score in [0, 1], or None when it has nothing to say about
that trace (no teacher samples, no reference call to check, no judge score).  The quality of a trace
is the weighted mean of the scores that apply: a weighted sum whose weights are renormalised over the
scorers that had something to say, so a trace is not punished for lacking teacher samples.  A trace
no scorer applies to gets ``QualityConfig.default``.

Built-in scorers:

- ``consistency``: teacher self-consistency, the share of the trace's teacher samples that equal
  its reference calls in ``chain`` mode (same calls, same order, arguments equal after schema
  normalisation; ``tooldistill.match``).  Only when samples exist.
- ``schema``: the share of reference calls whose arguments validate against the JSON Schema of the
  tool they call (``jsonschema``, the draft the schema names, 2020-12 otherwise).  A call to a tool
  that is not offered scores 0; tools with ``schema_missing`` or a schema the validator cannot read
  are not counted.  None for a "no call" trace.
- ``judge``: ``metadata["judge_score"]`` when it is a number in [0, 1] (a grade from Claude).

Register another with ``@register_scorer("name")``; it is then usable by name in weights.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tooldistill.match.compare import compare
from tooldistill.schema import Trace, content_hash

Scorer = Callable[[Trace], float | None]
SCORERS: dict[str, Scorer] = {}
JUDGE_KEY = "judge_score"


def register_scorer(name: str) -> Callable[[Scorer], Scorer]:
    """Decorator: make ``fn(trace) -> float | None`` available as quality scorer ``name``."""

    def decorate(fn: Scorer) -> Scorer:
        SCORERS[name] = fn
        return fn

    return decorate


@register_scorer("consistency")
def teacher_consistency(trace: Trace) -> float | None:
    """Share of teacher samples equal to the reference calls (chain mode); None without samples."""
    if not trace.teacher_samples:
        return None
    schemas = {tool.name: tool.parameters for tool in trace.tools}
    agree = sum(
        compare(sample, trace.reference_calls, "chain", schemas).match for sample in trace.teacher_samples
    )
    return agree / len(trace.teacher_samples)


@lru_cache(maxsize=4096)
def _validator(schema_json: str) -> Any:
    """A compiled validator for one schema, or None when the schema itself is not valid JSON Schema."""
    import jsonschema
    from jsonschema.exceptions import SchemaError

    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except SchemaError:
        return None
    return cls(schema)


def call_validates(arguments: dict[str, Any], parameters: dict[str, Any]) -> bool | None:
    """Do ``arguments`` validate against ``parameters``?  None when the schema cannot be used."""
    from jsonschema.exceptions import UnknownType

    validator = _validator(json.dumps(parameters, sort_keys=True))
    if validator is None:
        return None
    try:
        return bool(validator.is_valid(arguments))
    except UnknownType:
        return None


@register_scorer("schema")
def schema_validity(trace: Trace) -> float | None:
    """Share of reference calls whose arguments validate against the called tool's JSON Schema."""
    tools = {tool.name: tool for tool in trace.tools}
    verdicts: list[bool] = []
    for call in trace.reference_calls:
        tool = tools.get(call.name)
        if tool is None:
            verdicts.append(False)
            continue
        if tool.schema_missing:
            continue
        verdict = call_validates(call.arguments, tool.parameters)
        if verdict is not None:
            verdicts.append(verdict)
    return sum(verdicts) / len(verdicts) if verdicts else None


@register_scorer("judge")
def judge_score(trace: Trace) -> float | None:
    """``metadata["judge_score"]`` when it is a finite number in [0, 1]."""
    value = trace.metadata.get(JUDGE_KEY)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) and 0.0 <= value <= 1.0 else None


class QualityConfig(BaseModel):
    """Which scorers make up quality, and their weights."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    weights: dict[str, float] = Field(
        default_factory=lambda: {"consistency": 1.0, "schema": 1.0, "judge": 1.0}
    )
    #: The quality of a trace no scorer applies to.
    default: float = Field(default=0.5, ge=0.0, le=1.0)

    @field_validator("weights")
    @classmethod
    def _known(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(SCORERS))
        if unknown:
            raise ValueError(
                f"unknown quality scorer {', '.join(unknown)}; known: {', '.join(sorted(SCORERS))}"
            )
        if any(w < 0 or not math.isfinite(w) for w in value.values()):
            raise ValueError("quality weights must be finite and >= 0")
        if not any(value.values()):
            raise ValueError("at least one quality weight must be positive")
        return value

    def config_hash(self) -> str:
        return content_hash(self.model_dump(mode="json"), 16)


def score(trace: Trace, config: QualityConfig) -> tuple[float, dict[str, float | None]]:
    """The trace's quality and each scorer's own score (None where it did not apply)."""
    parts: dict[str, float | None] = {}
    total = weight = 0.0
    for name, w in config.weights.items():
        value = SCORERS[name](trace)
        parts[name] = None if value is None else round(float(value), 6)
        if value is not None and w > 0:
            total += w * float(value)
            weight += w
    return (total / weight if weight else config.default), parts


def parse_weights(text: str) -> dict[str, float]:
    """``"consistency=2,schema=1"`` → ``{"consistency": 2.0, "schema": 1.0}`` (for the CLI)."""
    weights: dict[str, float] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"quality weight {item!r} is not NAME=WEIGHT")
        try:
            weights[name.strip()] = float(value)
        except ValueError as error:
            raise ValueError(f"quality weight {item!r}: {value!r} is not a number") from error
    return weights


def score_dataset(dataset: Any, config: QualityConfig, show_progress: bool = True) -> Any:
    """``id``, ``quality`` and ``quality_parts`` (JSON) for every trace of a dataset, part by part."""
    import pyarrow as pa

    from tooldistill.curate.common import progress_bar, read_part
    from tooldistill.schema import TRACE_SCHEMA, trace_from_row

    ids: list[str] = []
    values: list[float] = []
    parts: list[str] = []
    with progress_bar("quality", dataset.manifest.rows, show_progress) as advance:
        for index in range(len(dataset.manifest.parts)):
            table = read_part(dataset, index, TRACE_SCHEMA.names)
            for row in table.to_pylist():
                value, detail = score(trace_from_row(row), config)
                ids.append(row["id"])
                values.append(value)
                parts.append(json.dumps(detail, sort_keys=True))
            advance(table.num_rows)
    return pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "quality": pa.array(values, pa.float64()),
            "quality_parts": pa.array(parts, pa.string()),
        }
    )
