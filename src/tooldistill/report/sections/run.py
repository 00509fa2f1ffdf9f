"""The sections about the run as a whole: its stages, the exported prompt, its config."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

from tooldistill.report.document import PARTIAL, Code, Heading, Section, Table, Text
from tooldistill.report.mask import mask
from tooldistill.report.sections.context import Context, Shared
from tooldistill.report.sections.format import (
    compact,
    duration,
    errors,
    file_name,
    is_summary,
    not_run,
    number,
    pct,
    rate_text,
)
from tooldistill.report.sections.reading import LAYOUT, Unreadable
from tooldistill.serve.learned import serve_hint


def stage_detail(detail: Any, shared: Shared) -> str:
    """A stage's ``detail`` in one line, secrets masked, every match rate with its errors: a test
    summary as ``matched/n = rate [interval], k errors``, a ``phases`` map of rates with each phase's
    errors from its result.  The ``note`` goes when it only repeated such a rate without them."""
    masked = mask(detail)
    if not isinstance(masked, dict):
        return compact(masked)
    shown, rates = dict(masked), False
    for key, value in masked.items():
        if is_summary(value):
            shown[key], rates = rate_text(value), True
    phases = masked.get("phases")
    if (
        isinstance(phases, dict)
        and phases
        and all(v is None or number(v) is not None for v in phases.values())
    ):
        shown["phases"] = ", ".join(
            f"{name} {pct(rate)} ({errors(shared.tests.get(name))})" for name, rate in phases.items()
        )
        rates = True
    if rates:
        shown.pop("note", None)
    return compact(shown)


def stages_section(ctx: Context) -> Section:
    section = Section("stages", "Stages")
    info = ctx.run.json(LAYOUT.run_record)
    if info is None:
        return not_run(section, f"no {LAYOUT.run_record} in the run folder")
    stages = info.get("stages")
    if not isinstance(stages, list) or not stages:
        return not_run(section, f"{LAYOUT.run_record} lists no stages")
    rows, total, bad = [], 0.0, 0
    for entry in stages:
        if not isinstance(entry, dict):
            bad += 1
            continue
        elapsed = number(entry.get("elapsed_s"))
        total += elapsed or 0.0
        detail = entry.get("detail")
        rows.append(
            [
                str(entry.get("stage", "?")),
                str(entry.get("status", "?")),
                duration(elapsed),
                stage_detail(detail, ctx.shared) if detail else "",
            ]
        )
    section.add(Table(["Stage", "Status", "Time", "Detail"], rows, {2}))
    statuses = Counter(r[1] for r in rows)
    section.add(
        Text(
            f"{len(rows)} stages, {duration(total)} in all: "
            + ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
            + "."
        )
    )
    if bad:
        section.status = PARTIAL
        section.note(f"{bad} entries of {LAYOUT.run_record}'s stages are not objects and were left out.")
    return section


def _demo_text(demos: Sequence[Any]) -> str:
    lines = []
    for number_, message in enumerate(demos, start=1):
        if not isinstance(message, dict):
            lines.append(f"--- {number_} · (not a message)")
            continue
        role = str(message.get("role", "?"))
        head = f"--- {number_} · {role}"
        if message.get("tool_call_id"):
            head += f" (result of {message['tool_call_id']})"
        lines.append(head)
        content = message.get("content")
        if content:
            lines.append(content if isinstance(content, str) else json.dumps(content, ensure_ascii=False))
        for call in message.get("tool_calls") or []:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                lines.append(f"→ {function.get('name')}({function.get('arguments')})")
            else:
                lines.append(f"→ {json.dumps(call, ensure_ascii=False)}")
    return "\n".join(lines)


def prompt_section(ctx: Context) -> Section:
    section = Section("prompt", "Exported prompt")
    path = LAYOUT.optimize.best_prompt
    prompt = ctx.run.json(path)
    if prompt is None:
        return not_run(section, f"no {path}")
    system = prompt.get("system")
    demos = prompt.get("demos") if isinstance(prompt.get("demos"), list) else []
    if not isinstance(system, str):
        raise Unreadable(path, "it has no system text")
    shots = sum(1 for d in demos if isinstance(d, dict) and d.get("role") == "assistant")
    best = ctx.shared.best_phase
    section.add(
        Text(
            f"{path}{f' (from {best})' if best else ''}: "
            f"{len(system):,} characters of system text and {len(demos)} few-shot messages "
            f"({shots} demonstrations). tooldistill evaluate --prompt and the student take this file as it is."
        )
    )
    info = ctx.run.json(LAYOUT.run_record)
    config = info.get("config") if isinstance(info, dict) else None
    student = config.get("student") if isinstance(config, dict) else None
    hint = serve_hint(student, "RUN") if isinstance(student, dict) else None
    if hint:
        section.add(
            Text(
                f"Serve it in Claude's place, with this prompt and the context policy applied on the server "
                f"(Claude's Messages API and OpenAI's chat completions on one port; RUN is this run's folder): "
                f"{hint}, then point the agent at it with ANTHROPIC_BASE_URL (docs/serving.md)."
            )
        )
    section.add(Heading("System text"), Code(system))
    section.add(Heading("Few-shot messages"))
    section.add(Code(_demo_text(demos)) if demos else Text("None."))
    section.add(
        Code(json.dumps(prompt, indent=2, ensure_ascii=False), summary=f"{file_name(path)} as exported")
    )
    return section


def config_section(ctx: Context) -> Section:
    section = Section("config", "Run config")
    info = ctx.run.json(LAYOUT.run_record)
    config = info.get("config") if isinstance(info, dict) else None
    if not isinstance(config, dict):
        return not_run(section, f"{LAYOUT.run_record} has no config" if info else f"no {LAYOUT.run_record}")
    section.add(
        Code(
            json.dumps(mask(config), indent=2, ensure_ascii=False),
            summary=f"{LAYOUT.run_record} config (secrets shown as ***)",
        )
    )
    return section
