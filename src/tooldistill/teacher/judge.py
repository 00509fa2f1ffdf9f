"""``tooldistill judge``: Claude grades the student's calls against the teacher's with a rubric.

Exact matching is strict by design (same tools, arguments equal after schema normalization); a
judge sees meaning: ``"NYC"`` for ``"New York City"``, an optional argument spelled out at its
default, parallel calls in another order.  For every row of an evaluation, Claude is shown the
user's request, the tools, the teacher's calls and the student's calls, and must answer through
one forced tool (``record_verdict``: equivalent, a 1-5 score, a one-line reason).  Requests go
through the same cached, retried, resumable path as capture.  The summary says how often the judge
and exact matching agree (with a confusion table and Cohen's kappa), so a user can see which of the
two a match rate should be read with.

The judge's answers are stored as capture's are: what Claude wrote (the reason above all) is redacted
before it reaches the cache or the judgements, and the counts per kind go to
``stats.secrets_redacted``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Any

import pyarrow as pa
from pydantic import Field

from tooldistill import store
from tooldistill.match.stats import rate
from tooldistill.schema import Trace, content_hash
from tooldistill.scoring import write_json
from tooldistill.stage import StageRun
from tooldistill.teacher.cache import RequestCache
from tooldistill.teacher.capture import (
    USAGE_FIELDS,
    CaptureResult,
    ClaudeSettings,
    ask_claude,
    cached_record,
    secret_counts,
)
from tooldistill.teacher.client import Job
from tooldistill.teacher.request import request_key

STAGE = "judge"
VERDICT_TOOL = "record_verdict"

RUBRIC = """You grade a student model's tool calls against a teacher's for the same request.

Both saw the same conversation and the same tools. Decide whether the student's calls would have
the same effect as the teacher's:
- Equivalent: the same tools are called with arguments that mean the same thing. Formatting that
  the tool would treat alike ("5" and 5, "New York City" and "NYC" where both name the place, an
  optional argument given at its default) does not matter; the order of independent parallel calls
  does not matter.
- Not equivalent: a different tool, a missing or extra call, a missing required argument, or an
  argument value that would change the result. Calling a tool where the teacher called none, or
  calling none where the teacher called one, is never equivalent.
Score 5 for equivalent calls, 4 for equivalent with cosmetic differences, 3 for a partly right answer
(some calls right), 2 for the right tool with wrong arguments, 1 for a wrong or missing call.
Record your verdict with the record_verdict tool; give the reason in one sentence."""

VERDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "equivalent": {"type": "boolean", "description": "the student's calls have the teacher's effect"},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
        "reason": {"type": "string", "description": "one sentence"},
    },
    "required": ["equivalent", "score", "reason"],
}

JUDGE_SCHEMA = pa.schema(
    [
        ("trace_id", pa.string()),
        ("exact_match", pa.bool_()),
        ("judge_equivalent", pa.bool_()),
        ("judge_score", pa.int64()),
        ("judge_reason", pa.string()),
        ("agree", pa.bool_()),
        ("error", pa.string()),
        ("request_key", pa.string()),
    ]
)
store.SCHEMAS.setdefault("judgements", JUDGE_SCHEMA)


class JudgeError(RuntimeError):
    """The evaluation cannot be judged (no parent traces dataset, nothing to judge)."""


class JudgeConfig(ClaudeSettings):
    evaluation: str
    #: traces dataset with the teacher's calls (default: the evaluation's parent)
    traces: str | None = None
    #: exact-match mode the judge is compared with (default: the evaluation's first mode)
    mode: str | None = None
    max_tokens: int = Field(default=400, ge=64)

    def config_hash(self) -> str:
        return content_hash(
            {
                "model": self.model,
                "mode": self.mode,
                "max_tokens": self.max_tokens,
                "limit": self.limit,
                "rubric": RUBRIC,
                "redact": self.redact,
            },
            16,
        )


class JudgeResult(CaptureResult):
    """The stage result of judging: the judgements, their summary and the failed requests."""


def _last_user_text(trace: Trace) -> str:
    for message in reversed(trace.messages):
        if message.role == "user":
            return message.content
    return trace.messages[-1].content


def judge_params(
    trace: Trace, student_calls: list[dict[str, Any]], model: str, max_tokens: int
) -> dict[str, Any]:
    """The grading request for one student answer."""
    tools = [
        {"name": t.name, "description": t.description[:300], "parameters": t.parameters} for t in trace.tools
    ]
    teacher = [{"name": c.name, "arguments": c.arguments} for c in trace.reference_calls]
    student = [{"name": c.get("name"), "arguments": c.get("arguments", {})} for c in student_calls]
    text = (
        f"<request>\n{_last_user_text(trace)}\n</request>\n"
        f"<tools>{json.dumps(tools, ensure_ascii=False)}</tools>\n"
        f"<teacher_calls>{json.dumps(teacher, ensure_ascii=False)}</teacher_calls>\n"
        f"<student_calls>{json.dumps(student, ensure_ascii=False)}</student_calls>"
    )
    return {
        "model": model,
        "max_tokens": max_tokens,
        "system": [{"type": "text", "text": RUBRIC, "cache_control": {"type": "ephemeral"}}],
        "tools": [
            {"name": VERDICT_TOOL, "description": "Record the verdict.", "input_schema": VERDICT_SCHEMA}
        ],
        "tool_choice": {"type": "tool", "name": VERDICT_TOOL},
        "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}],
    }


def read_verdict(record: dict[str, Any] | None) -> tuple[bool | None, int | None, str | None, str | None]:
    """(equivalent, score, reason, error) from a cached judge answer; garbage becomes an error."""
    if record is None:
        return None, None, None, "no answer from the judge"
    for call in record.get("calls") or []:
        if call.get("name") != VERDICT_TOOL:
            continue
        arguments = call.get("arguments") or {}
        equivalent, score = arguments.get("equivalent"), arguments.get("score")
        if not isinstance(equivalent, bool):
            return (
                None,
                None,
                None,
                f"judge answer has no boolean 'equivalent': {json.dumps(arguments)[:200]}",
            )
        if isinstance(score, bool) or not isinstance(score, int) or not 1 <= score <= 5:
            score = None
        return equivalent, score, str(arguments.get("reason") or "")[:500], None
    return None, None, None, f"judge did not call {VERDICT_TOOL}: {str(record.get('text') or '')[:200]!r}"


def judge(config: JudgeConfig, show_progress: bool = True) -> JudgeResult:
    evaluation = store.Dataset.open(config.evaluation)
    traces_uri = config.traces or (evaluation.manifest.parents[0] if evaluation.manifest.parents else None)
    if traces_uri is None:
        raise JudgeError(f"{config.evaluation} names no traces dataset; pass --traces")
    source = store.Dataset.open(traces_uri)
    inputs = [config.evaluation, evaluation.manifest.fingerprint, traces_uri, source.manifest.fingerprint]
    parents = [config.evaluation, traces_uri]
    run = StageRun.start(STAGE, config.out, config.config_hash(), inputs, parents, kind="judgements")
    earlier = run.existing(force=config.force)
    if earlier is not None:
        return JudgeResult(earlier.dataset, True, earlier.stats)
    rows = evaluation.to_arrow().to_pylist()
    if config.limit is not None:
        rows = rows[: config.limit]
    by_id = {t.id: t for t in source.to_traces()}
    jobs: list[Job] = []
    plan: list[tuple[dict[str, Any], Job | None, str | None]] = []
    for row in rows:
        trace = by_id.get(row["trace_id"])
        if row.get("error"):
            plan.append((row, None, f"student had no answer: {row['error']}"))
        elif trace is None:
            plan.append((row, None, f"trace {row['trace_id']} is not in {traces_uri}"))
        else:
            params = judge_params(trace, json.loads(row["calls"] or "[]"), config.model, config.max_tokens)
            new = Job(key=request_key(params, 0), trace_id=trace.id, sample=0, params=params, prefix="judge")
            jobs.append(new)
            plan.append((row, new, None))
    if not jobs:
        raise JudgeError(f"nothing to judge in {config.evaluation}")
    unique = list({job.key: job for job in jobs}.values())
    cache = RequestCache(config.cache_uri)
    done_before = cache.done_keys()
    pending = [job for job in unique if job.key not in done_before]
    records: dict[str, dict[str, Any]] = {}
    failures: list[dict[str, Any]] = []
    started = time.perf_counter()
    stats: dict[str, Any] = {}
    if pending:
        stats = asyncio.run(
            ask_claude(
                config, pending, {}, cache, records, failures, show_progress, None, len(unique), "judge"
            )
        )
    for job in unique:
        if job.key not in records and (record := cached_record(cache, job.key, config.redact)) is not None:
            records[job.key] = record
    mode = config.mode
    out_rows: list[dict[str, Any]] = []
    for row, asked, problem in plan:
        verdicts = json.loads(row["verdicts"]) if row.get("verdicts") else {}
        mode = mode or next(iter(verdicts), None)
        exact = bool(verdicts.get(mode, {}).get("match")) if mode and verdicts else bool(row.get("match"))
        equivalent, score, reason, error = (None, None, None, problem)
        if asked is not None:
            equivalent, score, reason, error = read_verdict(records.get(asked.key))
        out_rows.append(
            {
                "trace_id": row["trace_id"],
                "exact_match": exact,
                "judge_equivalent": equivalent,
                "judge_score": score,
                "judge_reason": reason,
                "agree": None if equivalent is None else equivalent == exact,
                "error": error,
                "request_key": asked.key if asked else None,
            }
        )
    answered = [records[j.key] for j in unique if j.key in records]
    summary = summarize(out_rows, mode, answered)
    summary.update(
        model=config.model,
        evaluation=config.evaluation,
        failed_requests=len(failures),
        secrets_redacted=secret_counts(answered),
        **stats,
    )
    summary["elapsed_s"] = round(time.perf_counter() - started, 3)
    table = pa.Table.from_pylist(out_rows, schema=JUDGE_SCHEMA)
    parts = [store.write_part(config.out, run.token, 0, table)]
    stats = {"summary": summary, "secrets_redacted": summary["secrets_redacted"]}
    result = run.publish(parts, stats, complete=not failures)
    write_json(config.out, "summary.json", summary)
    return JudgeResult(result.dataset, False, result.stats, result.complete, failures=failures)


def summarize(rows: list[dict[str, Any]], mode: str | None, records: list[dict[str, Any]]) -> dict[str, Any]:
    judged = [r for r in rows if r["judge_equivalent"] is not None]
    n = len(judged)
    cells = Counter((r["judge_equivalent"], r["exact_match"]) for r in judged)
    both, judge_only = cells[(True, True)], cells[(True, False)]
    exact_only, neither = cells[(False, True)], cells[(False, False)]
    observed = (both + neither) / n if n else None
    kappa = None
    if n:
        p_judge, p_exact = (both + judge_only) / n, (both + exact_only) / n
        expected = p_judge * p_exact + (1 - p_judge) * (1 - p_exact)
        kappa = (
            round((observed - expected) / (1 - expected), 4)
            if expected < 1 and observed is not None
            else None
        )
    costs = [r["cost_usd"] for r in records if r.get("cost_usd") is not None]
    priced = len(costs) == len(records)
    return {
        "rows": len(rows),
        "judged": n,
        "errors": len(rows) - n,
        "errors_by_reason": dict(Counter(str(r["error"]).split(":")[0] for r in rows if r["error"])),
        "exact_mode": mode,
        "exact_match": rate(sum(r["exact_match"] for r in judged), n),
        "judge_equivalent": rate(both + judge_only, n),
        "agreement": rate(both + neither, n),
        "cohen_kappa": kappa,
        "confusion": {
            "both_match": both,
            "judge_only": judge_only,
            "exact_only": exact_only,
            "neither": neither,
        },
        "mean_judge_score": round(sum(r["judge_score"] or 0 for r in judged) / n, 3) if n else None,
        "tokens": {name: sum(r["usage"].get(name, 0) for r in records) for name in USAGE_FIELDS},
        "cost_usd": round(sum(costs), 6) if records and priced else None,
    }
