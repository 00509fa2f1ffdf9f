"""What a run learned, applied where the student is served.

A finished run exports its best prompt to ``RUN/optimize/best/prompt.json``: the system text, the
demonstrations, and a ``student`` note (the served model's name, the fine-tuned weights — merged
folder or adapter — and the context policy every evaluated request went through).  ``from_run``
reads it, with the sampling settings of ``RUN/optimize/config.json``, into a :class:`Learned`:
small, JSON-serializable (it travels in the Ray Serve application's arguments) and applied by the
gateway to every request of either API (``Learned.prepare``) exactly as evaluation applied it:

1. the learned prompt (``request.apply_prompt``: its system text before the client's, its
   demonstrations after the system prompt; with a ``dicl`` bank, the nearest teacher examples of
   each request too, chosen as evaluation chose them: ``retrieval.DemoBank``);
2. the context policy (``context.Fitter``, the student's tokenizer and template): a request longer
   than the window is cut the same way, or refused (``DoesNotFit``, HTTP 413) when even the system
   prompt, tools and latest request do not fit;
3. ``max_tokens`` clamped to what the window leaves after the prompt.

A request whose ``max_tokens`` is larger than ``answer_tokens`` (Claude Code asks for 32k-128k) is
fitted as if it asked for ``answer_tokens``, then given whatever the window leaves.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tooldistill.context import ContextPolicy, DoesNotFit, Fitter, fitter_for
from tooldistill.request import apply_prompt
from tooldistill.retrieval import DemoBank


class LearnedError(ValueError):
    """A run folder has nothing to serve (no exported prompt, weights missing)."""


class Learned(BaseModel):
    """The learned prompt and context policy of one student, as the gateway applies them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    system: str = ""
    demos: list[dict[str, Any]] = Field(default_factory=list)
    #: A ``dicl`` phase's bank: each request also gets its nearest teacher examples as demos.
    bank: DemoBank | None = None
    #: The student's window and tokenizer; ``window: None`` fits nothing.
    context: ContextPolicy = Field(default_factory=ContextPolicy)
    #: Tokens kept for the answer when fitting a request that asks for more.
    answer_tokens: int = Field(default=1024, ge=1)
    #: Sent as ``reasoning_effort`` when the client sends none (GPT-OSS reads it).
    reasoning_effort: str | None = None
    #: Where it came from, for ``/v1/models`` and the logs: the run folder and its best phase.
    run: str | None = None
    phase: str | None = None

    def fitter(self) -> Fitter | None:
        return fitter_for(self.context)

    def with_prompt(self, request: dict[str, Any]) -> dict[str, Any]:
        """``request`` with the learned prompt applied: the system text, the fixed demos, and the
        bank's nearest examples for this request (``optimize.student.Prompt.demos_for``)."""
        demos = [*self.demos, *(self.bank.select(request) if self.bank is not None else [])]
        return apply_prompt(request, self.system or None, demos)

    def prepare(self, request: dict[str, Any]) -> Prepared:
        """``request`` (chat completions) as the student is sent it; raises ``DoesNotFit``."""
        request = self.with_prompt(request)
        if self.reasoning_effort and "reasoning_effort" not in request:
            request["reasoning_effort"] = self.reasoning_effort
        fitter = self.fitter()
        if fitter is None:
            return Prepared(request)
        asked = int(request.get("max_tokens") or self.answer_tokens)
        # never more than half the window for the answer: the prompt is what the student needs
        reserve = min(asked, self.answer_tokens, fitter.window // 2)
        shortened = None
        try:
            fit = fitter.fit(request, reserve=reserve)
        except DoesNotFit as refused:
            fit, shortened = _with_shorter_tools(fitter, request, reserve, refused)
        fitted = dict(fit.request)
        if asked <= reserve:  # the fit kept room for all of it
            fitted["max_tokens"] = asked
            return Prepared(fitted, fit.tokens_after, fit.record(), tools_shortened=shortened)
        tokens = fit.tokens_after if fit.tokens_after is not None else fitter.count(fitted)
        left = fitter.window - tokens - fitter.policy.margin
        if left < 1:
            raise DoesNotFit(tokens, fitter.window - reserve - fitter.policy.margin, fitter.window)
        fitted["max_tokens"] = min(asked, left)
        return Prepared(
            fitted,
            tokens,
            fit.record(),
            clamped_from=asked if asked > left else None,
            tools_shortened=shortened,
        )

    def count(self, request: dict[str, Any]) -> int:
        """The prompt tokens of ``request`` once the learned prompt is applied, before any cut
        (``count_tokens``); the rendered bytes when the student's tokenizer is unknown."""
        request = self.with_prompt(request)
        fitter = self.fitter()
        if fitter is None:
            from tooldistill.context import byte_bound

            return byte_bound(request)
        return fitter.count(request)


@dataclass
class Prepared:
    request: dict[str, Any]
    #: Prompt tokens after the cut (None when nothing was counted: no policy).
    tokens: int | None = None
    #: What the context policy cut (``context.Fit.record``), None when nothing.
    cut: dict[str, Any] | None = None
    #: The client's ``max_tokens`` when it was lowered to fit the window.
    clamped_from: int | None = None
    #: When the tools' texts had to be shortened to fit: (description, parameter description)
    #: characters kept (see ``TOOL_TEXT_LEVELS``).
    tools_shortened: tuple[int, int] | None = None


#: The last resort of the gateway, for a request whose system prompt, tools and latest message
#: alone overflow the window (Claude Code's 12 tools take ~8,200 of the CPU student's 8,192
#: tokens): the tools' descriptions kept to this many characters, then their parameters'
#: descriptions too, then names and schemas only.  Evaluation never does this (it skips such a
#: trace), so a request it measured is never changed by it.
TOOL_TEXT_LEVELS: tuple[tuple[int, int], ...] = ((600, 160), (240, 60), (120, 0), (0, 0))


def shorten_tool_texts(request: dict[str, Any], description: int, parameter: int) -> dict[str, Any]:
    """``request`` with each tool's description cut to ``description`` characters and every
    ``description`` inside its parameters' schema to ``parameter`` characters (``…`` marks a cut;
    0 drops the text).  Names, types, enums and required keys stay."""

    def cut(text: Any, keep: int) -> Any:
        if not isinstance(text, str) or len(text) <= keep:
            return text
        return f"{text[:keep].rstrip()}…" if keep else None

    def schema(value: Any) -> Any:
        if isinstance(value, dict):
            out = {}
            for key, item in value.items():
                if key == "description" and isinstance(item, str):
                    item = cut(item, parameter)
                    if item is None:
                        continue
                out[key] = schema(item) if key != "description" else item
            return out
        if isinstance(value, list):
            return [schema(v) for v in value]
        return value

    tools = []
    for tool in request.get("tools") or []:
        function = dict(tool.get("function") or {})
        text = cut(function.get("description"), description)
        if text is None:
            function.pop("description", None)
        else:
            function["description"] = text
        if "parameters" in function:
            function["parameters"] = schema(function["parameters"])
        tools.append({**tool, "function": function})
    return {**request, "tools": tools}


def _with_shorter_tools(
    fitter: Fitter, request: dict[str, Any], reserve: int, refused: DoesNotFit
) -> tuple[Any, tuple[int, int]]:
    """The fit of ``request`` with its tools' texts shortened as little as needed, or ``refused``."""
    if not request.get("tools"):
        raise refused
    for level in TOOL_TEXT_LEVELS:
        try:
            return fitter.fit(shorten_tool_texts(request, *level), reserve=reserve), level
        except DoesNotFit as again:
            refused = again
    raise refused


@dataclass(frozen=True)
class RunStudent:
    """The weights a run's best prompt was measured with."""

    #: The model name the run served it under.
    model: str
    #: A merged model folder (``serve_as: merged``), or None for the base or an adapter.
    merged: Path | None = None
    #: A LoRA adapter folder and where it was published (``serve_as: adapter``).
    adapter: Path | None = None
    adapter_uri: str | None = None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise LearnedError(f"cannot read {path}: {error}") from None


def from_run(run_dir: str | Path, tokenizer: str | None = None) -> tuple[Learned, RunStudent]:
    """The learned prompt and student of a finished run (``RUN/optimize/best/prompt.json``).

    ``tokenizer``: the served model's folder, for the context policy (the run recorded the policy
    but not a path another machine could use); by default the run's merged folder, if any."""
    run = Path(run_dir)
    optimize = run / "optimize" if (run / "optimize").is_dir() else run
    prompt = _read_json(optimize / "best" / "prompt.json")
    if not isinstance(prompt, dict):
        raise LearnedError(
            f"{run} has no exported prompt (optimize/best/prompt.json): run its optimize stage to the end first"
        )
    summary = _read_json(optimize / "summary.json") or {}
    config = _read_json(optimize / "config.json") or {}
    settings = config.get("student") or {}
    note = prompt.get("student") or {}
    model = str(note.get("model") or settings.get("model") or "student")
    merged = note.get("merged_model") if note.get("served_as", "merged") == "merged" else None
    adapter = note.get("adapter") if note.get("served_as") == "adapter" else None
    student = RunStudent(
        model=model,
        merged=_existing(merged, run, "merged model") if merged else None,
        adapter=_existing(adapter, run, "adapter") if adapter else None,
        adapter_uri=note.get("adapter_uri"),
    )
    policy = dict(note.get("context") or settings.get("context") or {})
    # a merged folder holds the student's own tokenizer and template
    policy["tokenizer"] = tokenizer or (str(student.merged) if student.merged else None)
    demos = prompt.get("demos") or []
    if not isinstance(demos, list) or not all(isinstance(d, dict) and "role" in d for d in demos):
        raise LearnedError(f"{optimize / 'best' / 'prompt.json'}: demos must be chat messages with a 'role'")
    try:
        bank = DemoBank.model_validate(prompt["dicl"]) if prompt.get("dicl") is not None else None
    except ValueError as error:
        raise LearnedError(f"{optimize / 'best' / 'prompt.json'}: its dicl bank is broken: {error}") from None
    learned = Learned(
        system=str(prompt.get("system") or ""),
        demos=demos,
        bank=bank,
        context=ContextPolicy.model_validate(policy),
        answer_tokens=int(settings.get("max_tokens") or 1024),
        reasoning_effort=settings.get("reasoning_effort"),
        run=str(run_dir),
        phase=summary.get("best_phase"),
    )
    return learned, student


def _existing(path: str, run: Path, what: str) -> Path:
    """``path`` as recorded (absolute, or relative to where the run was started), else the same
    tail under the run folder (a run folder that was moved or copied)."""
    candidate = Path(path)
    if candidate.is_dir():
        return candidate.resolve()  # the replicas may not share this process's working folder
    parts = candidate.parts
    for index in range(len(parts)):
        moved = run.joinpath(*parts[index:])
        if moved.is_dir() and "optimize" in parts[index:]:
            return moved.resolve()
    raise LearnedError(f"the run's {what} {path} is not there (nor under {run})")


def serve_hint(student: dict[str, Any], run: str) -> str | None:
    """The command that serves ``run``'s best student in Claude's place, from the run config's
    ``student`` section (None when it names neither a profile nor an endpoint)."""
    if student.get("serve"):
        return f"tooldistill serve --config {student['serve']} --student {run}"
    if student.get("endpoint"):
        return f"tooldistill serve --endpoint {student['endpoint']} --student {run}"
    return None
