"""Training examples from teacher traces, rendered exactly as the student sees them.

Each train trace becomes one prompt-completion pair:

- **prompt**: the request ``evaluate`` would send for the trace with the phase's start prompt
  (system text, few-shot demos, the trace's messages, its tools as native tools:
  ``optimize.student.request_for``), rendered by the student's own chat template with the
  generation prompt at the end — the very text the served student reads;
- **completion**: the assistant turn the teacher gave, in that template's call syntax (the
  template renders an assistant message with ``tool_calls``), or the no-call answer for a trace
  whose teacher called nothing.  The loss is on the completion only.

Where a trace carries teacher samples, the target is their consensus; a trace whose consensus
support is below ``min_consensus`` is left out (consistency-filtered distillation).  The set is
balanced: no-call traces at most ``max_no_call_share`` of it, at least ``min_no_call_share`` where
the rest of the train split has them (or, with ``repeat_no_calls``, by repeating the ones there
are), and no tool (the first one called) more than ``max_per_tool``.  The prompt is first fitted
into the student's serving window by the context policy (``context``: exactly what it is served); a prompt and completion still longer than
``max_length`` are fitted again, with the completion's tokens reserved, so old tool results are
shortened (with the policy's visible marker) rather than the trace being lost.  A completion is
never cut; a trace that cannot fit is left out and counted.  Every choice is counted in the
summary.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tooldistill.context import DoesNotFit, Fitter
from tooldistill.match.consistency import consensus
from tooldistill.optimize.student import Prompt, StudentSettings, fitted_request
from tooldistill.schema import Trace

NO_CALL = "<no call>"


class ExamplesError(ValueError):
    """No usable training example (or the template cannot render one)."""


@dataclass(frozen=True)
class ExampleSettings:
    max_length: int = 512
    min_consensus: float = 0.5
    max_no_call_share: float = 0.1
    #: At least this share of no-call answers, taken from ``reserve`` when the traces lack them.
    min_no_call_share: float = 0.0
    #: When the traces and ``reserve`` together still hold too few, repeat the no-call examples
    #: there are until ``min_no_call_share`` is reached (oversampling the rarer answer).
    repeat_no_calls: bool = False
    max_per_tool: int | None = None
    no_call_answer: str = "No tool is needed."


@dataclass
class Examples:
    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def _spread_key(trace_id: str, copy: int) -> str:
    return hashlib.sha256(f"{trace_id}:{copy}".encode()).hexdigest()


def _apart(rows: list[dict[str, Any]]) -> None:
    """Move a row that follows a copy of itself to the next place where it does not (in place)."""
    for i in range(1, len(rows)):
        if rows[i]["trace_id"] != rows[i - 1]["trace_id"]:
            continue
        for j in range(i + 1, len(rows)):
            if rows[j]["trace_id"] != rows[i - 1]["trace_id"]:
                rows[i], rows[j] = rows[j], rows[i]
                break


def _target(trace: Trace, min_consensus: float) -> tuple[list[dict[str, Any]] | None, str | None]:
    """The calls to train on, or (None, why it is left out)."""
    agreed = consensus(trace)
    if agreed is not None:
        if agreed.support < min_consensus:
            return None, "consensus below min_consensus"
        return [c.model_dump() for c in agreed.calls], None
    return [c.model_dump() for c in trace.reference_calls], None


def _is_no_call(trace: Trace, min_consensus: float) -> bool:
    calls, _ = _target(trace, min_consensus)
    return calls is not None and not calls


def _assistant(calls: Sequence[dict[str, Any]], settings: StudentSettings, no_call: str) -> dict[str, Any]:
    from tooldistill.request import safe_tool_name as _safe_name

    if not calls:
        return {"role": "assistant", "content": no_call}
    return {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": f"call_{i}",
                "type": "function",
                "function": {
                    "name": _safe_name(c["name"]),
                    "arguments": json.dumps(c.get("arguments") or {}),
                },
            }
            for i, c in enumerate(calls)
        ],
    }


def render(tokenizer: Any, request: dict[str, Any], assistant: dict[str, Any]) -> tuple[str, str]:
    """(prompt, completion) text through the tokenizer's chat template."""
    tools = request.get("tools")
    prompt = tokenizer.apply_chat_template(
        request["messages"], tools=tools, add_generation_prompt=True, tokenize=False
    )
    full = tokenizer.apply_chat_template(
        [*request["messages"], assistant], tools=tools, add_generation_prompt=False, tokenize=False
    )
    if not full.startswith(prompt):
        raise ExamplesError("the chat template does not render the answer after the prompt it served")
    completion = full[len(prompt) :]
    # the turn ends at the end-of-sequence token, where the engine stops (the template's newline
    # after it belongs to the next turn)
    eos = getattr(tokenizer, "eos_token", None)
    if eos and completion.endswith(eos + "\n"):
        completion = completion[:-1]
    return prompt, completion


def build_examples(
    traces: Sequence[Trace],
    prompt: Prompt,
    student: StudentSettings,
    tokenizer: Any,
    settings: ExampleSettings,
    reserve: Sequence[Trace] = (),
) -> Examples:
    """The prompt-completion rows for ``traces`` and a summary of what was kept and why.

    ``reserve`` (the rest of the train split) tops the no-call answers up to
    ``settings.min_no_call_share`` when ``traces`` hold fewer: a sample of a split whose no-call
    share is small teaches the student to call a tool on every request."""
    left: Counter[str] = Counter()
    fitted = 0
    policy = student.context.model_copy(update={"window": max(256, settings.max_length), "margin": 0})
    trainer_fit = Fitter(policy, tokenizer)

    def candidate(trace: Trace) -> tuple[Trace, str, dict[str, Any]] | None:
        nonlocal fitted
        calls, why = _target(trace, settings.min_consensus)
        if calls is None:
            left[why or "left out"] += 1
            return None
        first = calls[0]["name"] if calls else NO_CALL
        assistant = _assistant(calls, student, settings.no_call_answer)
        try:
            served = fitted_request(trace, prompt, student)
        except DoesNotFit:
            left["longer than the student's window"] += 1
            return None
        request, was_cut = served.request, served.cut
        text_prompt, completion = render(tokenizer, request, assistant)
        length = len(tokenizer(text_prompt + completion, add_special_tokens=False)["input_ids"])
        if length > settings.max_length:
            answer = len(tokenizer(completion, add_special_tokens=False)["input_ids"])
            try:
                request = trainer_fit.fit(request, reserve=answer).request
            except DoesNotFit:
                left["longer than max_length after cuts"] += 1
                return None
            was_cut = True
            text_prompt, completion = render(tokenizer, request, assistant)
            length = len(tokenizer(text_prompt + completion, add_special_tokens=False)["input_ids"])
            if length > settings.max_length:
                left["longer than max_length after cuts"] += 1
                return None
        fitted += was_cut
        row = {
            "trace_id": trace.id,
            "category": trace.category or "",
            "tool": first,
            "prompt": text_prompt,
            "completion": completion,
            "tokens": length,
        }
        return trace, first, row

    candidates = [c for c in map(candidate, traces) if c is not None]
    calls_first = [c for c in candidates if c[1] != NO_CALL]
    no_calls = [c for c in candidates if c[1] == NO_CALL]
    # no tool more than max_per_tool (in input order, so the choice is deterministic)
    kept: list[tuple[Trace, str, dict[str, Any]]] = []
    per_tool: Counter[str] = Counter()
    for item in calls_first:
        if settings.max_per_tool is not None and per_tool[item[1]] >= settings.max_per_tool:
            left["over max_per_tool"] += 1
            continue
        per_tool[item[1]] += 1
        kept.append(item)
    share = settings.max_no_call_share
    allowed = len(no_calls) if share >= 1 else int(share * len(kept) / (1 - share)) if kept else 0
    if len(no_calls) > allowed:
        left["no-call over max_no_call_share"] += len(no_calls) - allowed
    calls_kept, have = len(kept), min(len(no_calls), allowed)
    kept.extend(no_calls[:allowed])
    wanted = min(settings.min_no_call_share, share)
    need = math.ceil(wanted * calls_kept / (1 - wanted) - 1e-9) - have if calls_kept and wanted < 1 else 0
    topped = 0
    if need > 0:
        chosen = {t.id for t, _, _ in kept}
        for trace in reserve:
            if topped >= need:
                break
            if trace.id in chosen or not _is_no_call(trace, settings.min_consensus):
                continue
            added = candidate(trace)
            if added is not None:
                kept.append(added)
                topped += 1
    have_no_calls = [item for item in kept if item[1] == NO_CALL] if settings.repeat_no_calls else []
    repeated = max(0, need - topped) if have_no_calls else 0
    for index in range(repeated):
        trace, first, row = have_no_calls[index % len(have_no_calls)]
        kept.append((trace, first, {**row, "copy": index // len(have_no_calls) + 1}))
    # back in input order, so a trace's place in training does not depend on its kind (added
    # no-calls and repeats go by a hash of their id, a content hash, and copy number: spread over
    # the epoch, not all at its end nor a copy beside its original)
    order = {t.id: i for i, t in enumerate(traces)}
    if repeated:
        kept.sort(key=lambda item: _spread_key(item[0].id, item[2].get("copy", 0)))
    elif topped:
        kept.sort(key=lambda item: item[0].id)
    else:
        kept.sort(key=lambda item: order[item[0].id])
    rows = [row for _, _, row in kept]
    if repeated:
        _apart(rows)
    if not rows:
        raise ExamplesError(
            f"no training example left from {len(traces)} train traces "
            f"({', '.join(f'{k}: {v}' for k, v in sorted(left.items())) or 'none given'})"
        )
    summary = {
        "traces": len(traces),
        "examples": len(rows),
        "tokens": sum(r["tokens"] for r in rows),
        "calls": sum(r["tool"] != NO_CALL for r in rows),
        "no_calls": sum(r["tool"] == NO_CALL for r in rows),
        "by_category": dict(sorted(Counter(r["category"] for r in rows).items())),
        "by_tool": dict(Counter(r["tool"] for r in rows).most_common(20)),
        "distinct_tools": len({r["tool"] for r in rows if r["tool"] != NO_CALL}),
        "left_out": dict(sorted(left.items())),
        "cut_to_fit": fitted,
        "no_calls_added_from_split": topped,
        "no_calls_repeated": repeated,
        "max_length": settings.max_length,
    }
    return Examples(rows, summary)
