"""What a run prints about its long stages: one line per event, with the match rate in one form
everywhere, console and report alike (``matched/n = rate [95% interval], N errors``: endpoint
errors beside the rate, never in it)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

Say = Callable[[str], None]


#: What a value that is not there (or not a number) reads as.
DASH = "—"

#: Seconds between two console lines of one running evaluation.
EVALUATION_LINE_EVERY_S = 15.0


def number(value: Any) -> float | None:
    """A finite int or float (not a bool); None otherwise."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.integer | np.floating):
        return None
    return float(value) if math.isfinite(value) else None


def obj(value: Any) -> Mapping[str, Any]:
    """``value`` when it is a JSON object, else an empty one (for nested reads of loose files)."""
    return value if isinstance(value, Mapping) else {}


def count(value: Any) -> str:
    n = number(value)
    return f"{int(n):,}" if n is not None else DASH


def pct(value: Any) -> str:
    n = number(value)
    return f"{n * 100:.1f}%" if n is not None else DASH


def interval(ci: Any) -> str:
    if isinstance(ci, list | tuple) and len(ci) == 2 and all(number(v) is not None for v in ci):
        return f"{ci[0] * 100:.1f}–{ci[1] * 100:.1f}%"
    return DASH


def errors(summary: Any) -> str:
    """The endpoint errors a test summary counts: ``2 errors``, ``1 error``; ``errors unknown``
    for a summary written before they were counted."""
    n = number(obj(summary).get("errors"))
    if n is None:
        return "errors unknown"
    return f"{int(n):,} error" + ("" if int(n) == 1 else "s")


def duration(seconds: Any) -> str:
    """``45 s``, ``3 min 20 s``, ``2 h 05 min``; a dash for what is not a number."""
    n = number(seconds)
    if n is None or n < 0:
        return DASH
    whole = round(n)
    if whole < 120:
        return f"{whole} s"
    if whole < 7200:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def evaluation_line(event: Mapping[str, Any], final: bool = False) -> str:
    """An ``evaluating`` event in one line: ``baseline: test answers 120/480 (25%), 1.9/s, ETA
    3 min 10 s``; the last one says how long it took: ``... 480/480 in 4 min 12 s, 1.9/s``."""
    done, total = number(event.get("done")), number(event.get("total"))
    share = f" ({done / total:.0%})" if done is not None and total else ""
    per_s = number(event.get("per_s"))
    # a slow student (a CPU, long requests) in answers a minute, not 0.0 a second
    rate = "rate unknown" if per_s is None else f"{per_s:.1f}/s" if per_s >= 1 else f"{per_s * 60:.1f}/min"
    head = f"  {event.get('phase')}: {event.get('split', 'test')} answers {count(done)}/{count(total)}"
    if final:
        return f"{head} in {duration(event.get('elapsed_s'))}, {rate}"
    eta = number(event.get("eta_s"))
    return f"{head}{share}, {rate}, ETA {duration(eta) if eta is not None else 'unknown'}"


def rate_text(summary: Mapping[str, Any]) -> str:
    """A test summary in one line, the same on the console and in the report, with its endpoint
    errors beside the rate (never in it), the other match modes, and the context policy's cuts:
    ``13/115 = 11.3% [6.7–18.4%], 2 errors; names: 45/115 = 39.1% [30.7–48.3%]``.  Loose values
    (a file from an older run) read as dashes, never as an exception."""
    if number(summary.get("rate")) is None:
        return f"no match rate, {errors(summary)}"

    def one(part: Mapping[str, Any]) -> str:
        ci = interval(part.get("ci95"))
        return f"{count(part.get('matched'))}/{count(part.get('n'))} = {pct(part.get('rate'))}" + (
            f" [{ci}]" if ci != DASH else ""
        )

    text = f"{one(summary)}, {errors(summary)}"
    for mode, other in obj(summary.get("also")).items():
        if number(obj(other).get("rate")) is not None:
            text += f"; {mode}: {one(other)}"
    context = obj(summary.get("context"))
    if number(context.get("cut")) or number(context.get("skipped")):
        text += f"; context policy: {count(context.get('cut') or 0)} cut, {count(context.get('skipped') or 0)} skipped"
    versus = versus_text(summary.get("vs_baseline"))
    return f"{text}; {versus}" if versus else text


def points(value: Any, unit: str = " pp") -> str:
    """A difference of two rates in percentage points: ``+16.5 pp``."""
    n = number(value)
    return f"{n * 100:+.1f}{unit}" if n is not None else DASH


def points_interval(ci: Any) -> str:
    """An interval of a difference in points, `` [+9.2 to +24.2]``; empty without one."""
    if isinstance(ci, list | tuple) and len(ci) == 2 and all(number(v) is not None for v in ci):
        return f" [{points(ci[0], '')} to {points(ci[1], '')}]"
    return ""


def p_value(value: Any) -> str:
    """A p-value to four places: ``0.0106``, ``< 0.0001``."""
    n = number(value)
    if n is None:
        return DASH
    return "< 0.0001" if n < 1e-4 else f"{n:.4f}".rstrip("0").rstrip(".") or "0"


def versus_text(versus: Any, label: str = "vs baseline ") -> str:
    """A phase against the baseline on the same traces (``match.stats.paired_difference``):
    ``vs baseline +16.5 pp [+9.2 to +24.2], 20 gained, 1 lost, McNemar p < 0.0001`` (``label``
    first: a table's column names it instead); empty when there is none."""
    part = obj(versus)
    if number(part.get("difference")) is None:
        return ""
    chance = p_value(part.get("p_value"))
    chance = chance if chance.startswith("<") else f"= {chance}"
    difference = points(part.get("difference")) + points_interval(part.get("ci95"))
    counts = f"{count(part.get('gained'))} gained, {count(part.get('lost'))} lost"
    return f"{label}{difference}, {counts}, McNemar p {chance}"


def optimize_progress(
    say: Say, log: Callable[[str], None], every_s: float = EVALUATION_LINE_EVERY_S
) -> Callable[[dict[str, Any]], None]:
    """The optimize stage's progress callback: every event to the run log, the ones a user
    watches (GEPA iterations, finetune examples and steps, phase results) to the console, and a
    running evaluation's answers so far at most every ``every_s`` seconds (and its end, when a line
    was shown before it)."""
    last_line: dict[str, float] = {}  # a running evaluation (by phase): when its last line was shown
    shown: set[str] = set()  # the evaluations that showed a line

    def evaluating(event: dict[str, Any]) -> None:
        name, now = str(event.get("phase")), time.monotonic()
        done, total = number(event.get("done")), number(event.get("total"))
        if done is not None and total is not None and done >= total:
            if name in shown:
                say(evaluation_line(event, final=True))
            last_line.pop(name, None)
            shown.discard(name)
        elif name not in last_line:
            last_line[name] = now  # it starts: the first line comes ``every_s`` later
        elif now - last_line[name] >= every_s:
            say(evaluation_line(event))
            last_line[name] = now
            shown.add(name)

    def progress(event: dict[str, Any]) -> None:
        log(f"optimize {json.dumps(event, default=str)}")
        kind = event.get("event")
        if kind == "evaluating":
            evaluating(event)
        elif kind == "iteration":
            say(
                f"  {event['phase']}: iteration {event['iteration']}, metric calls "
                f"{event['metric_calls']}/{event['max_metric_calls']}, best val "
                f"{event['best_val_score']:.3f}, Pareto front {event['pareto_front']}, "
                f"reflection ${event['reflection_usd']:.4f}"
            )
        elif kind == "examples":
            say(
                f"  {event['phase']}: {event['examples']} training examples ({event['calls']} with "
                f"calls, {event['no_calls']} without"
                + (
                    f", {event['no_calls_repeated']} of them repeats"
                    if event.get("no_calls_repeated")
                    else ""
                )
                + f"; {event['tokens']:,} tokens), left out: "
                f"{event['left_out'] or 'none'}"
            )
        elif kind == "train_step":
            step, last = int(event["step"]), int(event["max_steps"])
            if step == 1 or step == last or step % max(1, last // 10) == 0:
                rate, eta = event.get("tokens_per_s"), event.get("eta_s")
                say(
                    f"  {event['phase']}: step {step}/{last}, loss {event['loss']:.4f}"
                    + (f", {rate:.0f} tokens/s" if rate else "")
                    + (f", ETA {eta:.0f} s" if eta is not None else "")
                )
        elif kind in ("done", "skipped") and event.get("test"):
            say(f"  {event['phase']}: {kind}, test {rate_text(event['test'])}")
        elif kind == "bank":
            say(
                f"  {event['phase']}: a bank of {event['entries']} teacher examples "
                f"({event['model']}, {event['seconds']:.0f} s); each request gets the "
                f"{event['k']} nearest at similarity {event['floor']} or more"
            )
        elif kind == "start":
            rest = {k: v for k, v in event.items() if k not in ("phase", "event")}
            say(f"  {event['phase']}: start {json.dumps(rest)}")

    return progress
