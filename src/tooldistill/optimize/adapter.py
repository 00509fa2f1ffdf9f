"""Our ``gepa`` adapter: GEPA evolves the student's instructions, the matcher scores them.

A GEPA candidate is ``{"instructions": text}``; the phase's demonstrations (from phase 1, or the
seed prompt) stay fixed and travel with every request.  ``evaluate`` runs the prompt on a batch of
traces; the score of an example is the match score (1 for a match, partial credit for a right tool
with wrong arguments), its trajectory the trace and the outcome.  ``make_reflective_dataset`` turns
the trajectories into what the reflection model reads: the conversation, the tools offered, the
student's reply, and the feedback: the matcher's reason ("argument city: expected 'Oslo', got
'oslo'"), the expected calls, and the judge's words when a judge is configured.

``batch_evaluate`` is the hook GEPA calls with every (candidate, examples) pair of a step; with a
``TuneEvaluator`` each pair is one Ray Tune trial and the pairs run side by side, otherwise they run
in a thread pool in this process.  An ``admit`` gate (the GEPA phase's ``MetricBudget``) may refuse
pairs the budget cannot pay for: a refused pair is not asked and comes back empty, no scores, no
trajectories, no metric calls.  The reflection model's dollars so far are part of the adapter
state GEPA checkpoints, so a resumed run keeps counting from where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from gepa.core.adapter import EvaluationBatch

from tooldistill.match.normalize import format_call
from tooldistill.optimize.student import Outcome, Prompt, StudentSettings, run_batch
from tooldistill.optimize.tune_eval import TuneEvaluator
from tooldistill.retrieval import DemoBank
from tooldistill.schema import Trace

COMPONENT = "instructions"

#: ``(trace, outcome) -> words or None``: an optional second opinion (e.g. Claude as judge).
JudgeFeedback = Callable[[Trace, Outcome], str | None]

#: ``(candidate, examples) pairs -> may each be evaluated``: a budget's gate on one step's pairs.
Admit = Callable[[Sequence[tuple[Mapping[str, str], Sequence[Trace]]]], list[bool]]


def describe_conversation(trace: Trace, limit: int = 1500) -> str:
    lines = []
    for message in trace.messages:
        text = message.content
        if message.tool_calls:
            text += " " + "; ".join(format_call(c.name, c.arguments) for c in message.tool_calls)
        lines.append(f"{message.role}: {text.strip()}")
    return "\n".join(lines)[-limit:]


def describe_tools(trace: Trace, limit: int = 1500) -> str:
    parts = []
    for tool in trace.tools:
        properties = tool.parameters.get("properties") if isinstance(tool.parameters, dict) else None
        names = ", ".join(properties) if isinstance(properties, dict) else "..."
        parts.append(f"{tool.name}({names}): {tool.description}".strip())
    return "\n".join(parts)[:limit]


def expected_calls(trace: Trace) -> str:
    if not trace.reference_calls:
        return "no tool call"
    return "; ".join(format_call(c.name, c.arguments) for c in trace.reference_calls)


class ToolCallAdapter:
    """``gepa.GEPAAdapter`` for the student's tool calling."""

    propose_new_texts = None

    def __init__(
        self,
        settings: StudentSettings,
        demos: Sequence[Mapping[str, Any]] = (),
        evaluator: TuneEvaluator | None = None,
        judge: JudgeFeedback | None = None,
        reflection_lm: Any = None,
        parallel_candidates: int = 8,
        admit: Admit | None = None,
        bank: DemoBank | None = None,
    ) -> None:
        self.settings = settings
        self.demos = tuple(demos)
        #: a dicl phase's bank, kept by every candidate (GEPA rewrites the instructions only)
        self.bank = bank
        self.evaluator = evaluator
        self.judge = judge
        self.reflection_lm = reflection_lm
        self.parallel_candidates = max(1, parallel_candidates)
        self.admit = admit
        #: every example evaluation, for the budget and the record
        self.metric_calls = 0

    def prompt(self, candidate: Mapping[str, str]) -> Prompt:
        return Prompt(candidate[COMPONENT], self.demos, self.bank)

    def _batch(self, traces: Sequence[Trace], outcomes: Sequence[Outcome]) -> EvaluationBatch:
        self.metric_calls += len(outcomes)
        return EvaluationBatch(
            outputs=[o.to_json() for o in outcomes],
            scores=[o.score for o in outcomes],
            trajectories=[{"trace": t, "outcome": o} for t, o in zip(traces, outcomes, strict=True)],
            num_metric_calls=len(outcomes),
        )

    def evaluate(
        self, batch: list[Trace], candidate: dict[str, str], capture_traces: bool = False
    ) -> EvaluationBatch:
        return self.batch_evaluate([(candidate, batch)])[0]

    def batch_evaluate(self, items: list[tuple[dict[str, str], list[Trace]]]) -> list[EvaluationBatch]:
        """Every (candidate, examples) pair of a GEPA step at once: Tune trials, or threads; a pair
        the ``admit`` gate refuses comes back empty."""
        admitted = self.admit(items) if self.admit is not None else [True] * len(items)
        chosen = [i for i, ok in enumerate(admitted) if ok]
        pairs = [(self.prompt(items[i][0]), list(items[i][1])) for i in chosen]
        results: list[list[Outcome]] = []
        if pairs and self.evaluator is not None:
            results = self.evaluator.evaluate(pairs)
        elif pairs:
            workers = max(1, min(self.parallel_candidates, len(pairs)))
            with ThreadPoolExecutor(max_workers=workers) as pool:
                results = list(pool.map(lambda pair: run_batch(pair[1], pair[0], self.settings), pairs))
        batches: list[EvaluationBatch] = [
            EvaluationBatch(outputs=[], scores=[], trajectories=[], num_metric_calls=0) for _ in items
        ]
        for i, (_, traces), outcomes in zip(chosen, pairs, results, strict=True):
            batches[i] = self._batch(traces, outcomes)
        return batches

    def feedback(self, trace: Trace, outcome: Outcome) -> str:
        if outcome.match:
            text = "Correct: the calls match the teacher's."
        else:
            text = f"Wrong: {outcome.reason}. The teacher called: {expected_calls(trace)}."
        if self.judge is not None:
            opinion = self.judge(trace, outcome)
            if opinion:
                text += f" Judge: {opinion}"
        return text

    def make_reflective_dataset(
        self,
        candidate: dict[str, str],
        eval_batch: EvaluationBatch,
        components_to_update: list[str],
    ) -> dict[str, list[dict[str, Any]]]:
        records = []
        for item in eval_batch.trajectories or []:
            trace, outcome = item["trace"], item["outcome"]
            records.append(
                {
                    "Inputs": {
                        "conversation": describe_conversation(trace),
                        "tools": describe_tools(trace),
                    },
                    "Generated Outputs": outcome.reply or outcome.reason,
                    "Feedback": self.feedback(trace, outcome),
                }
            )
        # failures first: they are what the reflection model should learn from
        records.sort(key=lambda r: r["Feedback"].startswith("Correct"))
        return {name: records for name in components_to_update}

    def get_adapter_state(self) -> dict[str, Any]:
        return {
            "reflection_usd": float(getattr(self.reflection_lm, "total_cost", 0.0) or 0.0),
            "metric_calls": self.metric_calls,
        }

    def set_adapter_state(self, state: dict[str, Any]) -> None:
        if self.reflection_lm is not None and hasattr(self.reflection_lm, "_cost"):
            self.reflection_lm._cost = max(self.reflection_lm._cost, float(state.get("reflection_usd", 0.0)))
        self.metric_calls = int(state.get("metric_calls", self.metric_calls))
