"""Evaluating a prompt on a split (the baseline's and every phase's test evaluation).

The student's answers are judged and journaled as they come in (one JSON line per answer, under a
key of the prompt and the student), so an evaluation killed part way resumes with the answers it
has; answers of the same prompt and student in other journals (the baseline's, other phases') are
copied instead of asked again.  While it runs, the progress callback gets ``evaluating`` events:
answers done out of ``total``, the answers per second asked so far and the seconds still to go.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tooldistill.optimize.phases.base import Progress
from tooldistill.optimize.student import Outcome, Prompt, StudentSettings, run_batch, summarize
from tooldistill.schema import Trace, content_hash


class _Counter:
    """Reports an evaluation's progress: one event when it starts, one every ``total / 50``
    answers, one when the last is in (``done``/``total``, the answers per second asked so far, and
    the seconds still to go at that rate)."""

    def __init__(self, progress: Progress | None, name: str, total: int, done: int) -> None:
        self.progress, self.name, self.total = progress, name, total
        self.done = self.before = done
        self.step = max(1, -(-total // 50))
        self.started = time.monotonic()
        self.lock = threading.Lock()
        self.report()

    def report(self) -> None:
        if self.progress is None:
            return
        elapsed = time.monotonic() - self.started
        asked = self.done - self.before
        per_s = asked / elapsed if asked and elapsed > 0 else None
        self.progress(
            {
                "phase": self.name, "event": "evaluating", "split": "test", "done": self.done,
                "total": self.total, "elapsed_s": round(elapsed, 1),
                "per_s": round(per_s, 3) if per_s else None,
                "eta_s": round((self.total - self.done) / per_s, 1) if per_s else None,
            }
        )  # fmt: skip

    def __call__(self, _: Outcome) -> None:
        with self.lock:
            self.done += 1
            if self.done == self.total or (self.done - self.before) % self.step == 0:
                self.report()


def evaluate_prompt(
    prompt: Prompt,
    traces: Sequence[Trace],
    settings: StudentSettings,
    journal: Path | None = None,
    earlier: Sequence[Path] = (),
    progress: Progress | None = None,
    name: str = "evaluate",
) -> tuple[dict[str, Any], list[Outcome]]:
    """The student's answers to ``traces`` with ``prompt``, judged; with ``journal``, each finished
    answer is appended there as it comes in, and the answers already there (same prompt and
    student) are taken instead of asked again, so an evaluation killed part way resumes.

    ``earlier`` names other journals (the baseline's, earlier phases'): an answer found there for
    the same prompt and student (a GEPA phase whose best candidate is the prompt it started from)
    is copied into ``journal`` instead of asked again.  ``progress`` gets ``evaluating`` events
    (``phase``: ``name``) with the answers done out of ``total``, the rate and the time left."""
    if journal is None:
        count = _Counter(progress, name, len(traces), 0)
        outcomes = run_batch(traces, prompt, settings, on_outcome=count)
    else:
        outcomes = _journaled(prompt, traces, settings, journal, earlier, progress, name)
    return summarize(outcomes), outcomes


def _journal_entries(journal: Path, key: str) -> dict[str, Outcome]:
    """The answers in ``journal`` asked under ``key``, by trace id."""
    done: dict[str, Outcome] = {}
    if journal.exists():
        for line in journal.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                entry = json.loads(line)
                if entry.get("key") == key:
                    outcome = Outcome.from_json(entry["outcome"])
                    done[outcome.trace_id] = outcome
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # the line a kill cut short
    return done


def _journaled(
    prompt: Prompt,
    traces: Sequence[Trace],
    settings: StudentSettings,
    journal: Path,
    earlier: Sequence[Path] = (),
    progress: Progress | None = None,
    name: str = "evaluate",
) -> list[Outcome]:
    key = content_hash({"prompt": prompt.to_json(), "student": settings.model_dump(mode="json")}, 16)
    done = _journal_entries(journal, key)
    wanted = {t.id for t in traces}
    copied: dict[str, Outcome] = {}
    for other in earlier:
        if other == journal:
            continue
        for trace_id, outcome in _journal_entries(other, key).items():
            if trace_id in wanted and trace_id not in done and trace_id not in copied:
                copied[trace_id] = outcome
    if copied:  # this journal holds every answer of its evaluation, wherever it was asked
        journal.parent.mkdir(parents=True, exist_ok=True)
        with journal.open("a", encoding="utf-8") as handle:
            for outcome in copied.values():
                handle.write(
                    json.dumps({"key": key, "outcome": outcome.to_json()}, ensure_ascii=False) + "\n"
                )
        done.update(copied)
    todo = [t for t in traces if t.id not in done]
    count = _Counter(progress, name, len(traces), len(traces) - len(todo))
    if not todo:
        return [done[t.id] for t in traces]
    journal.parent.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()
    with journal.open("a", encoding="utf-8") as handle:

        def keep(outcome: Outcome) -> None:
            count(outcome)
            if outcome.error is not None:  # an endpoint error is asked again, never kept
                return
            line = json.dumps({"key": key, "outcome": outcome.to_json()}, ensure_ascii=False)
            with lock:
                handle.write(line + "\n")
                handle.flush()

        fresh = run_batch(todo, prompt, settings, on_outcome=keep)
    answers = {**done, **{o.trace_id: o for o in fresh}}
    return [answers[t.id] for t in traces]
