"""What a run prints about its long stages: one line per event, with the match rate in one form
everywhere (``matched/n = rate [95% interval]``, endpoint errors beside it, never in it)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

Say = Callable[[str], None]


def rate_text(summary: dict[str, Any]) -> str:
    """``13/115 = 11.3% [6.7%–18.4%]``, then the other match modes, endpoint errors and the
    context policy's cuts and skips when there are any."""
    rate = summary.get("rate")
    errors = int(summary.get("errors") or 0)
    if rate is None:
        return f"no answers ({errors} endpoint errors)" if errors else "no examples"
    low, high = summary.get("ci95") or (None, None)
    interval = f" [{low:.1%}–{high:.1%}]" if low is not None else ""
    text = f"{summary.get('matched')}/{summary.get('n')} = {rate:.1%}{interval}"
    for mode, other in (summary.get("also") or {}).items():
        if other.get("rate") is not None:
            low, high = other.get("ci95") or (0.0, 0.0)
            text += f"; {mode}: {other.get('matched')}/{other.get('n')} = {other['rate']:.1%} [{low:.1%}–{high:.1%}]"
    if errors:
        text += f"; {errors} endpoint error{'s' if errors != 1 else ''} (not counted)"
    context = summary.get("context") or {}
    if context.get("cut") or context.get("skipped"):
        text += f"; context policy: {context.get('cut', 0)} cut, {context.get('skipped', 0)} skipped"
    return text


def optimize_progress(say: Say, log: Callable[[str], None]) -> Callable[[dict[str, Any]], None]:
    """The optimize stage's progress callback: every event to the run log, the ones a user
    watches (GEPA iterations, finetune examples and steps, phase results) to the console."""

    def progress(event: dict[str, Any]) -> None:
        log(f"optimize {json.dumps(event, default=str)}")
        kind = event.get("event")
        if kind == "iteration":
            say(
                f"  {event['phase']}: iteration {event['iteration']}, metric calls "
                f"{event['metric_calls']}/{event['max_metric_calls']}, best val "
                f"{event['best_val_score']:.3f}, Pareto front {event['pareto_front']}, "
                f"reflection ${event['reflection_usd']:.4f}"
            )
        elif kind == "examples":
            say(
                f"  {event['phase']}: {event['examples']} training examples ({event['calls']} with "
                f"calls, {event['no_calls']} without; {event['tokens']:,} tokens), left out: "
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
        elif kind == "start":
            rest = {k: v for k, v in event.items() if k not in ("phase", "event")}
            say(f"  {event['phase']}: start {json.dumps(rest)}")

    return progress
