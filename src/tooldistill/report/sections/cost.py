"""What the run cost: teacher and reflection dollars, training and serving hours."""

from __future__ import annotations

from tooldistill.report.document import NOT_RUN, PARTIAL, RENDERED, UNREADABLE, Section, Table, Text
from tooldistill.report.mask import mask_text
from tooldistill.report.sections.context import Context, teacher_summary
from tooldistill.report.sections.format import DASH, count, dollars, duration, number, obj, when
from tooldistill.report.sections.reading import LAYOUT, Unreadable

OPTIMIZE = LAYOUT.optimize


def _teacher_row(ctx: Context, problems: list[str]) -> tuple[list[str], float | None, bool]:
    """The teacher's row, its dollars, and whether the teacher ran."""
    try:
        teacher, _ = teacher_summary(ctx.run)
    except Unreadable as error:
        teacher = None
        problems.append(str(error))
    if teacher is None:
        return ["Teacher (Claude)", DASH, f"not run in this run (no {LAYOUT.teacher_summary})"], None, False
    spent = number(teacher.get("cost_usd"))
    requests, tokens = obj(teacher.get("requests")), obj(teacher.get("tokens"))
    detail = (
        f"{count(requests.get('answered'))} answers from {teacher.get('model', '?')}, "
        f"{count(tokens.get('input_tokens'))} input and {count(tokens.get('output_tokens'))} output tokens"
    )
    now = number(teacher.get("cost_usd_now"))
    if now is not None and spent is not None and abs(now - spent) > 1e-9:
        detail += f"; {dollars(now)} of it paid in this run, the rest came from the request cache"
    if spent is None:
        detail += "; no price known for this model"
    return ["Teacher (Claude)", dollars(spent) if spent is not None else "unknown", detail], spent, True


def _reflection_rows(ctx: Context, problems: list[str]) -> tuple[list[list[str]], float, bool]:
    """One row per phase that asked a reflection model; their dollars; whether any did."""
    rows: list[list[str]] = []
    total, seen = 0.0, False
    if not ctx.run.has(OPTIMIZE.root):
        return rows, total, seen
    for name in ctx.run.children(OPTIMIZE.root):
        phase = OPTIMIZE.phase(name)
        usage = ctx.run.try_json(phase.reflection, problems)
        source = phase.reflection
        if usage is None:
            progress = ctx.run.try_json(phase.progress, problems)
            if not isinstance(progress, dict) or number(progress.get("reflection_usd")) is None:
                continue
            usage, source = (
                {"usd": progress["reflection_usd"]},
                f"{phase.progress} (the phase did not finish)",
            )
        usd = number(usage.get("usd"))
        seen = True
        total += usd or 0.0
        rows.append(
            [
                f"Reflection, {name}",
                dollars(usd),
                f"calls: {count(usage.get('calls'))}, {count(usage.get('tokens_in'))} input and "
                f"{count(usage.get('tokens_out'))} output tokens; {source}",
            ]
        )
    return rows, total, seen


def _training_rows(ctx: Context, problems: list[str]) -> list[list[str]]:
    rows = []
    for name in ctx.run.children(OPTIMIZE.root):
        path = OPTIMIZE.phase(name).finetune
        if not ctx.run.has(path):
            continue
        record = ctx.run.try_json(path, problems)
        training = obj(record.get("training")) if isinstance(record, dict) else {}
        train_s = number(training.get("train_seconds"))
        if train_s is None:
            continue
        device = str(training.get("device") or "cpu")
        workers = number(training.get("workers")) or 1
        rows.append(
            [
                f"Training, {name}",
                f"{train_s * workers / 3600:.3f} {device.upper()} h",
                f"{count(workers)} Ray Train worker(s) for {duration(train_s)}; {path}",
            ]
        )
    return rows


def cost_section(ctx: Context) -> Section:
    section = Section("cost", "Cost")
    problems: list[str] = []
    teacher_row, spent, teacher_ran = _teacher_row(ctx, problems)
    rows = [teacher_row]
    have = int(teacher_ran)
    dollars_total = spent or 0.0
    reflection, reflection_total, reflection_seen = _reflection_rows(ctx, problems)
    rows += reflection
    if reflection_seen:
        have += 1
        dollars_total += reflection_total
        rows.append(["Reflection, all phases", dollars(reflection_total), ""])
    else:
        rows.append(["Reflection", DASH, "no reflection model ran in this run (no GEPA phase)"])
    rows += _training_rows(ctx, problems)
    student = ctx.run.try_json(LAYOUT.student_record, problems)
    if isinstance(student, dict):
        have += 1
        hours = number(student.get("gpu_hours"))
        seconds, replicas, gpus = (
            number(student.get(k)) for k in ("serve_seconds", "replicas", "gpus_per_replica")
        )
        how = f"from {LAYOUT.student_record}"
        if hours is None and None not in (seconds, replicas, gpus):
            hours = float(seconds or 0) * float(replicas or 0) * float(gpus or 0) / 3600
            how = "serve time × replicas × GPUs per replica"
        rows.append(
            [
                "Student serving",
                f"{hours:.2f} GPU h" if hours is not None else DASH,
                f"{count(replicas)} replicas × {count(gpus)} GPUs, served {duration(seconds)} ({how})",
            ]
        )
    else:
        rows.append(["Student serving", DASH, f"not run in this run (no {LAYOUT.student_record})"])
    if have:
        rows.append(
            ["Dollars in all (teacher + reflection)", dollars(dollars_total), "GPU hours are not priced here"]
        )
    section.add(Table(["Item", "Amount", "Detail"], rows, {1}))
    if isinstance(student, dict):
        section.add(
            Text(
                f"Student: {mask_text(str(student.get('model', '?')))} at {mask_text(str(student.get('endpoint', '?')))}, "
                f"profile {student.get('profile', '?')}, from {when(student.get('started'))} to {when(student.get('stopped'))}."
            )
        )
        engine = student.get("cpu_engine")
        if isinstance(engine, dict):
            threads = obj(engine.get("threads"))
            section.add(
                Text(
                    f"Engine on CPU ({engine.get('cpu', '?')}): {engine.get('dtype', '?')}, "
                    f"{engine.get('reason', '?')}; {count(max(threads.values(), default=None))} threads "
                    f"per replica of {count(engine.get('cores'))} cores."
                )
            )
    for problem in problems:
        section.note(problem)
    if not have:
        section.status = UNREADABLE if problems else NOT_RUN
    else:
        section.status = PARTIAL if problems or have < 3 else RENDERED
    return section
