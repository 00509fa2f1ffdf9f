"""The student as a DSPy program, so that DSPy's optimizers can tune its instructions and demos.

``ToolCallPredict`` is a ``dspy.Predict`` over the signature ``trace -> tool_calls`` whose forward
pass is ours: the instructions become the system prompt, the demos become few-shot chat messages,
and the request goes to the student endpoint with the trace's tools as native tools
(``student.request_for``).  DSPy's own prompt adapters would instead render tools and calls as
text fields, which is not how the student is served or measured.  Because the predictor still
records ``(predictor, inputs, prediction)`` in ``dspy.settings.trace`` like any ``Predict``,
``BootstrapFewShot``, its random search and MIPROv2 find and fill it as usual, and ``dspy.GEPA``
can rewrite its instructions.

A DSPy example holds ``trace`` (the trace as JSON text) and ``tool_calls`` (the reference calls as
JSON text); a prediction holds ``tool_calls`` (the student's parsed calls) and the matcher's
``score``, ``match`` and ``reason`` for the metric.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import dspy

from tooldistill.optimize.student import Prompt, StudentSettings, demo_messages, run_example
from tooldistill.retrieval import DemoBank
from tooldistill.schema import Trace, calls_from_json, trace_from_row, trace_to_row

DEFAULT_INSTRUCTIONS = (
    "You are a helpful assistant with access to tools. Decide which tools to call, if any, and call "
    "them with exactly the arguments the user's request implies."
)


class ToolCallSignature(dspy.Signature):
    """Pick the tool calls that answer the conversation."""

    trace: str = dspy.InputField(desc="the conversation and its tools (JSON)")
    tool_calls: str = dspy.OutputField(desc="the tool calls to make (JSON list of {name, arguments})")


def example_of(trace: Trace) -> dspy.Example:
    """A DSPy example for one trace; ``trace`` is the input."""
    return dspy.Example(
        trace=json.dumps(trace_to_row(trace), ensure_ascii=False),
        tool_calls=json.dumps([c.model_dump(exclude_none=True) for c in trace.reference_calls]),
    ).with_inputs("trace")


def trace_of(example: Any) -> Trace:
    value = example["trace"] if not isinstance(example, str) else example
    return trace_from_row(json.loads(value))


class ToolCallPredict(dspy.Predict):
    """A ``dspy.Predict`` whose forward pass asks the student endpoint with native tools."""

    def __init__(self, settings: StudentSettings, instructions: str = DEFAULT_INSTRUCTIONS) -> None:
        super().__init__(ToolCallSignature.with_instructions(instructions))
        self.settings = settings
        #: a dicl phase's bank: every request also gets its nearest teacher examples
        self.bank: DemoBank | None = None

    def demo_messages(self, demos: Sequence[Any] | None = None) -> list[dict[str, Any]]:
        """The demos as few-shot chat messages (each demo's own calls: bootstrapped or labeled)."""
        messages: list[dict[str, Any]] = []
        for demo in self.demos if demos is None else demos:
            trace = trace_of(demo)
            raw = demo.get("tool_calls") if hasattr(demo, "get") else None
            calls = json.loads(raw) if isinstance(raw, str) and raw.strip().startswith("[") else None
            messages.extend(demo_messages(trace, calls))
        return messages

    def prompt(self) -> Prompt:
        return Prompt(self.signature.instructions, tuple(self.demo_messages()), self.bank)

    def forward(self, **kwargs: Any) -> dspy.Prediction:
        demos = kwargs.pop("demos", self.demos)
        signature = kwargs.pop("signature", self.signature)
        kwargs.pop("config", None)
        instructions = str(getattr(signature, "instructions", "") or "")
        trace = trace_of(kwargs)
        prompt = Prompt(instructions, tuple(self.demo_messages(demos)), self.bank)
        outcome = run_example(trace, prompt, self.settings)
        prediction = dspy.Prediction(
            tool_calls=json.dumps(outcome.calls, ensure_ascii=False),
            score=outcome.score,
            match=outcome.match,
            reason=outcome.reason,
            reply=outcome.reply,
        )
        if dspy.settings.trace is not None:
            dspy.settings.trace.append((self, {"trace": kwargs["trace"]}, prediction))
        return prediction


class StudentProgram(dspy.Module):
    """The whole student: one tool-calling step."""

    def __init__(self, settings: StudentSettings, instructions: str = DEFAULT_INSTRUCTIONS) -> None:
        super().__init__()
        self.step = ToolCallPredict(settings, instructions)

    def forward(self, trace: str) -> dspy.Prediction:
        return self.step(trace=trace)

    def prompt(self) -> Prompt:
        return self.step.prompt()

    @classmethod
    def from_prompt(
        cls, settings: StudentSettings, prompt: Prompt, demos: Sequence[dspy.Example] = ()
    ) -> StudentProgram:
        program = cls(settings, prompt.system or DEFAULT_INSTRUCTIONS)
        program.step.demos = list(demos)
        program.step.bank = prompt.bank
        return program


def _judged(example: Any, prediction: Any) -> tuple[float, bool, str]:
    """Score, match and reason of a prediction; re-judged when the prediction lacks them (a
    prediction from another program, e.g. a labeled demo used as teacher output)."""
    if prediction is not None and getattr(prediction, "reason", None) is not None:
        return float(prediction.score), bool(prediction.match), str(prediction.reason)
    from tooldistill.match.parse import Parsed
    from tooldistill.scoring import judge

    trace = trace_of(example)
    try:
        calls = calls_from_json(json.loads(prediction.tool_calls))
        parsed = Parsed(calls)
    except (ValueError, TypeError, AttributeError, KeyError) as error:
        parsed = Parsed(error=f"unparseable: {error}")
    verdict = judge(trace, parsed, ["chain"])["verdicts"]["chain"]
    return float(verdict["score"]), bool(verdict["match"]), str(verdict["reason"])


def match_metric(example: Any, prediction: Any, trace: Any = None, *_: Any, **__: Any) -> float | bool:
    """DSPy metric: the match score; while bootstrapping (``trace`` given) only a full match counts,
    so a demo is never a partly wrong answer."""
    score, match, _reason = _judged(example, prediction)
    return match if trace is not None else score


def feedback_metric(
    gold: Any, pred: Any, trace: Any = None, pred_name: Any = None, pred_trace: Any = None
) -> dspy.Prediction:
    """``dspy.GEPA``'s metric: the match score with the matcher's reason as feedback."""
    score, _, reason = _judged(gold, pred)
    return dspy.Prediction(score=score, feedback=reason)


def student_lm(settings: StudentSettings) -> dspy.LM:
    """A ``dspy.LM`` on the student endpoint (litellm's ``openai/`` route); optimizers such as
    MIPROv2 want a task model configured even though ``ToolCallPredict`` sends its own requests."""
    return dspy.LM(
        f"openai/{settings.model}",
        api_base=settings.endpoint,
        api_key="unused",
        temperature=settings.temperature,
        max_tokens=settings.max_tokens,
        cache=False,
        num_retries=settings.retries,
    )
