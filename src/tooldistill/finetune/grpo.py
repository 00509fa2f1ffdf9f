"""The ``reward`` phase's training: GRPO with TRL's ``GRPOTrainer`` and a PEFT LoRA config inside a
Ray Train ``TorchTrainer``, rewarded by the project's own comparison of each sampled answer with
the teacher's calls.

**Prompts.**  Each train trace becomes the text the served student reads: the request ``evaluate``
sends with the phase's start prompt (``optimize.student.fitted_request``: fitted into the window by
the context policy), rendered by the student's own chat template with the generation prompt, as
``finetune.examples`` renders a training example's prompt.  A trace that cannot fit, or whose
prompt is longer than ``max_prompt_tokens``, is left out and counted.

**Reward.**  Each of the ``group_size`` answers sampled for a prompt is parsed as the student's
reply is (``match.parse.parse_text``: ``<tool_call>`` blocks, JSON, Python calls; prose is no
call) and scored against the trace's reference calls (:func:`reward_of`), in parts of [0, 1]:

- ``format``: the answer has the reference's form: readable calls where calls are expected,
  anything readable (prose, or calls) where none are;
- ``names``: the tools called against the tools expected (the ``names`` verdict of
  ``scoring.judge``: as many of each, order free);
- ``argument_names``: per call paired with an expected call of the same tool, the overlap of the
  argument names (Jaccard), over the larger number of calls;
- ``values``: per paired call, the share of the arguments given with the expected value (both
  normalized by the tool's JSON Schema, ``match.normalize``), over the larger number of calls:
  partial credit;
- ``no_call``: where the teacher called nothing, 1 for an answer without a call.

The first four say nothing about a trace without reference calls, ``no_call`` nothing about one
with them (None): the total is the weighted mean of the parts that apply, so it lies in [0, 1]
and 1 is the right answer.  The chain verdict (``match``) is logged beside, not rewarded.

**Flat groups.**  GRPO learns from the differences between the answers to one prompt (the
advantage is the reward less its group's mean); a group whose answers all got the same reward
teaches nothing.  Each step counts them (TRL's ``frac_reward_zero_std`` times the groups).

**Checkpoints, resume, failures** as ``finetune.train``: the trainer's checkpoints are reported to
Ray Train (its ``ReportCheckpoints`` callback) on the phase's ``ray`` folder or the run's S3
storage, the newest kept; a worker group restarted after a lost worker (``max_failures``) and a
rerun with the same inputs go on from ``ray.train.get_checkpoint()``.  Rank 0 writes a line per
step to ``train_log.jsonl`` (step, mean reward, its parts, flat groups, tokens/s, ETA) which the
driver prints as it goes.

**Generation** with transformers' ``generate`` on CPUs; TRL's vLLM generation (colocated with the
trainer) needs a GPU, so ``generation: auto`` takes it only with ``use_gpu`` and vLLM installed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from tooldistill.finetune.train import (
    NOT_IN_RUN_NAME,
    LoraSettings,
    RayScaling,
    TrainError,
    adapter_from_checkpoint,
    append_line,
    base_identity,
    check_targets,
    console_note,
    fit_on_ray,
    lora_model,
    prepare_worker,
    resume_folder,
    start_worker_log,
    trainer_callbacks,
)
from tooldistill.layout import PhaseLayout
from tooldistill.match.compare import compare, same_value
from tooldistill.match.normalize import normalize_arguments
from tooldistill.match.parse import parse_text, resolve_names
from tooldistill.schema import ToolCall, Trace
from tooldistill.scoring import schemas_of

#: The parts of the reward, in the order the logs and the docs name them.
PARTS = ("format", "names", "argument_names", "values", "no_call")
#: Their weights where the phase's ``weights`` leaves them out.
DEFAULT_WEIGHTS: dict[str, float] = {
    "format": 0.2,
    "names": 1.0,
    "argument_names": 0.5,
    "values": 1.0,
    "no_call": 1.0,
}


class RewardError(TrainError):
    """A reward phase cannot start (no prompt left) or its training did not finish."""


class RewardOptions(RayScaling):
    """A reward phase's ``reward:`` section (and, from ``RayScaling``, how its workers are spread)."""

    #: Weight of each reward part (:data:`PARTS`); parts left out keep :data:`DEFAULT_WEIGHTS`.
    weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    #: Answers sampled per prompt (TRL's ``num_generations``).
    group_size: int = Field(default=4, ge=2)
    #: Sampled tokens per answer at most (TRL's ``max_completion_length``).
    max_completion_tokens: int = Field(default=96, ge=1)
    #: Prompts longer than this (in the student's tokens) are left out and counted.
    max_prompt_tokens: int = Field(default=1024, ge=16)
    #: The KL coefficient against the starting student (TRL's ``beta``; 0: no reference pass).
    beta: float = Field(default=0.04, ge=0)
    learning_rate: float = Field(default=5e-5, gt=0)
    #: Optimizer steps; each samples ``group_size`` answers for ``batch_size`` prompts per worker.
    steps: int = Field(default=50, ge=1)
    batch_size: int = Field(default=2, ge=1)
    temperature: float = Field(default=1.0, gt=0)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    #: LoRA on the top N decoder layers only (None: all), as ``finetune.training.top_layers``.
    top_layers: int | None = Field(default=None, ge=1)
    save_steps: int = Field(default=10, ge=1)
    #: Who samples the answers: transformers' ``generate``, or TRL's vLLM (colocated; GPU only).
    generation: Literal["auto", "transformers", "vllm"] = "auto"
    seed: int = 0

    @field_validator("weights", mode="before")
    @classmethod
    def _known_parts(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value
        unknown = sorted(str(k) for k in value if k not in PARTS)
        if unknown:
            raise ValueError(
                f"unknown reward part {', '.join(repr(u) for u in unknown)} in reward.weights; "
                f"known parts: {', '.join(PARTS)}"
            )
        return {**DEFAULT_WEIGHTS, **value}

    @field_validator("weights")
    @classmethod
    def _positive(cls, value: dict[str, float]) -> dict[str, float]:
        negative = [k for k, w in value.items() if w < 0]
        if negative:
            raise ValueError(f"reward.weights: a weight is 0 or more ({', '.join(negative)} below)")
        if not any(value.values()):
            raise ValueError("reward.weights: at least one part needs a weight above 0")
        return value

    @model_validator(mode="after")
    def _generation(self) -> RewardOptions:
        if self.generation == "vllm" and not self.use_gpu:
            raise ValueError(
                "reward.generation: vllm needs use_gpu: true (TRL's vLLM generation runs on GPUs)"
            )
        return self

    def use_vllm(self) -> bool:
        """Whether TRL samples through vLLM: asked for, or ``auto`` on GPUs with vLLM installed."""
        if self.generation != "auto":
            return self.generation == "vllm"
        if not self.use_gpu:
            return False
        import importlib.util

        return importlib.util.find_spec("vllm") is not None


# ---------------------------------------------------------------------------------------------
# the reward


def _normalized(call: ToolCall, schemas: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    return call.name, normalize_arguments(dict(call.arguments), schemas.get(call.name))


def _value_share(predicted: Mapping[str, Any], expected: Mapping[str, Any]) -> float:
    keys = set(predicted) | set(expected)
    if not keys:
        return 1.0
    same = sum(1 for k in keys if k in predicted and k in expected and same_value(predicted[k], expected[k]))
    return same / len(keys)


def _name_share(predicted: Mapping[str, Any], expected: Mapping[str, Any]) -> float:
    keys = set(predicted) | set(expected)
    return len(set(predicted) & set(expected)) / len(keys) if keys else 1.0


def _argument_parts(
    calls: Sequence[ToolCall], expected: Sequence[ToolCall], schemas: Mapping[str, Any]
) -> tuple[float, float]:
    """(argument_names, values): each expected call, in order, paired with the unused answered call
    of the same tool whose values agree most; unpaired calls on either side count 0."""
    got = [_normalized(c, schemas) for c in calls]
    want = [_normalized(c, schemas) for c in expected]
    used: set[int] = set()
    names = values = 0.0
    for name, arguments in want:
        options = [(i, a) for i, (n, a) in enumerate(got) if n == name and i not in used]
        if not options:
            continue
        index, best = max(options, key=lambda o: (_value_share(o[1], arguments), -o[0]))
        used.add(index)
        names += _name_share(best, arguments)
        values += _value_share(best, arguments)
    most = max(len(got), len(want))
    return names / most, values / most


def reward_of(trace: Trace, completion: str, weights: Mapping[str, float] | None = None) -> dict[str, Any]:
    """The reward of one sampled answer (the decoded completion text) against ``trace``'s reference
    calls: each part of :data:`PARTS` (None where it does not apply), ``total`` (the weighted mean
    of the parts that apply) and ``match`` (the chain verdict)."""
    from tooldistill.scoring import judge

    weights = {**DEFAULT_WEIGHTS, **(weights or {})}
    parsed = parse_text(completion)
    expected = list(trace.reference_calls)
    calls = resolve_names(parsed.calls, trace.tool_names())
    parts: dict[str, float | None] = dict.fromkeys(PARTS)
    if not expected:
        parts["format"] = 1.0 if parsed.ok else 0.0
        parts["no_call"] = 1.0 if parsed.ok and not calls else 0.0
    elif not parsed.ok or not calls:
        parts.update(format=0.0, names=0.0, argument_names=0.0, values=0.0)
    else:
        verdicts = judge(trace, parsed, ("names",))["verdicts"]
        argument_names, values = _argument_parts(calls, expected, schemas_of(trace))
        parts.update(
            format=1.0, names=float(verdicts["names"]["score"]), argument_names=argument_names, values=values
        )
    applied = [(weights[p], v) for p, v in parts.items() if v is not None]
    weight = sum(w for w, _ in applied)
    total = sum(w * v for w, v in applied) / weight if weight > 0 else 0.0
    match = (
        parsed.ok
        and compare(calls, expected, "chain", schemas_of(trace), trace.acceptable, trace.category).match
    )
    return {**parts, "total": round(total, 6), "match": bool(match)}


def reward_function(
    traces: Mapping[str, Trace], weights: Mapping[str, float]
) -> Callable[..., list[float | None]]:
    """The reward function for ``GRPOTrainer``: one total per completion, found by the row's
    ``trace_id``; the parts' means of the batch go to the trainer's logs (``part/<name>``)."""

    def tool_match(
        prompts: Sequence[str],
        completions: Sequence[Any],
        trace_id: Sequence[str],
        log_metric: Callable[[str, float], None] | None = None,
        **_: Any,
    ) -> list[float | None]:
        rewards = []
        for tid, completion in zip(trace_id, completions, strict=True):
            text = completion if isinstance(completion, str) else str(completion[-1].get("content") or "")
            rewards.append(reward_of(traces[tid], text, weights))
        if log_metric is not None:
            for part in (*PARTS, "match"):
                values = [float(r[part]) for r in rewards if r[part] is not None]
                if values:
                    log_metric(f"part/{part}", sum(values) / len(values))
        return [float(r["total"]) for r in rewards]

    return tool_match


# ---------------------------------------------------------------------------------------------
# prompts


@dataclass
class Prompts:
    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def build_prompts(
    traces: Sequence[Trace], start: Any, student: Any, tokenizer: Any, max_prompt_tokens: int
) -> Prompts:
    """One row per trace: the text the served student reads for it (``start``: the phase's start
    prompt, ``student``: its settings), its length and its trace id; what was left out, counted."""
    from tooldistill.context import DoesNotFit
    from tooldistill.optimize.student import fitted_request

    rows, left = [], {"longer than the student's window": 0, "longer than max_prompt_tokens": 0}
    cut = 0
    for trace in traces:
        try:
            served = fitted_request(trace, start, student)
        except DoesNotFit:
            left["longer than the student's window"] += 1
            continue
        request = served.request
        text = tokenizer.apply_chat_template(
            request["messages"], tools=request.get("tools"), add_generation_prompt=True, tokenize=False
        )
        tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if tokens > max_prompt_tokens:
            left["longer than max_prompt_tokens"] += 1
            continue
        cut += bool(served.cut)
        rows.append(
            {"trace_id": trace.id, "prompt": text, "tokens": tokens, "no_call": not trace.reference_calls}
        )
    summary = {
        "traces": len(traces),
        "prompts": len(rows),
        "no_calls": sum(r["no_call"] for r in rows),
        "tokens": sum(r["tokens"] for r in rows),
        "left_out": {k: v for k, v in left.items() if v},
        "cut_to_fit": cut,
    }
    return Prompts(rows, summary)


# ---------------------------------------------------------------------------------------------
# training


@dataclass
class GRPOResult:
    adapter: Path
    steps: int
    train_seconds: float
    #: Prompt and sampled tokens through the model per second (steady rate, rank 0's view of all).
    tokens_per_s: float | None
    sampled_tokens_per_s: float | None
    samples_per_s: float | None
    resumed_from_step: int
    #: (step, mean reward) of every step, from the start of the run (resumes included).
    curve: list[tuple[int, float]]
    #: Groups whose answers all got the same reward, over every step; and how many groups there were.
    flat_groups: int
    groups: int
    #: The last step's figures (reward parts, KL, ...).
    last: dict[str, Any] = field(default_factory=dict)
    resumes: list[int] = field(default_factory=list)
    placement: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: str | None = None


def run_name(base_model: str, rows: Sequence[Mapping[str, Any]], settings: RewardOptions) -> str:
    """``reward-`` and a hash of what the training depends on (base, settings but ``max_failures``,
    prompts and their traces' reference calls): a rerun with the same inputs finds its checkpoints."""
    digest = hashlib.sha256()
    digest.update(json.dumps(base_identity(base_model), sort_keys=True).encode())
    digest.update(
        json.dumps(settings.model_dump(mode="json", exclude=set(NOT_IN_RUN_NAME)), sort_keys=True).encode()
    )
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
    return f"reward-{digest.hexdigest()[:16]}"


def _grpo_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: GRPOTrainer with LoRA, checkpoints reported to Ray Train."""
    import ray.train

    from tooldistill.console import output_to

    rank = ray.train.get_context().get_world_rank()
    folder = Path(config["folder"])
    log = (
        Path(PhaseLayout(str(folder)).train_worker_log(rank))
        if folder.is_dir()
        else Path(tempfile.gettempdir()) / f"tooldistill-reward_worker_{rank}.log"
    )
    with output_to(log):
        run_grpo(config, rank, ray_train=True)


def run_grpo(config: dict[str, Any], rank: int = 0, ray_train: bool = False) -> None:
    """The training (``_grpo_loop``'s body), from the newest checkpoint when there is one."""
    with resume_folder(config, ray_train) as resume:
        if resume is not None:
            state = json.loads(Path(resume, "trainer_state.json").read_text())
            if int(state.get("global_step") or 0) >= int(state.get("max_steps") or 0) > 0:
                return  # a rerun of a finished training: its last checkpoint is the result
        _grpo(config, rank, ray_train, resume)


def _grpo(config: dict[str, Any], rank: int, ray_train: bool, resume: str | None) -> None:
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    settings = RewardOptions.model_validate(config["settings"])
    folder = Path(config["folder"])
    prepare_worker(settings.seed, settings.use_gpu, int(config["threads"]), ray_train)
    traces = {t["id"]: Trace.model_validate(t) for t in config["traces"]}
    rows = config["rows"]
    dataset = Dataset.from_list([{"prompt": r["prompt"], "trace_id": r["trace_id"]} for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(config["base_model"], padding_side="left")
    model, lora = lora_model(config["base_model"], settings.lora, settings.top_layers, settings.use_gpu)
    scratch = tempfile.mkdtemp(prefix="tooldistill-reward-")
    args = GRPOConfig(
        output_dir=scratch,
        max_steps=settings.steps,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="constant",
        # completions per worker and step: every prompt's whole group (TRL's batch counts answers)
        per_device_train_batch_size=settings.batch_size * settings.group_size,
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_generations=settings.group_size,
        max_completion_length=settings.max_completion_tokens,
        temperature=settings.temperature,
        beta=settings.beta,
        use_vllm=settings.use_vllm(),
        vllm_mode="colocate",
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=1,
        logging_steps=1,
        report_to=[],
        use_cpu=not settings.use_gpu,
        # TRL's defaults are bf16 and gradient checkpointing: float32 on CPUs (bf16 is emulated on
        # most), and a 135M student's activations are small
        bf16=settings.use_gpu,
        gradient_checkpointing=False,
        seed=settings.seed,
        data_seed=settings.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
        remove_unused_columns=False,
        log_completions=False,
    )
    try:
        start = start_worker_log(folder, rank, settings.use_gpu, ray_train, resume)
        groups = settings.batch_size * max(1, int(config.get("world_size") or 1))
        progress = _progress_type()(start.log_path, groups, settings.group_size)
        callbacks: list[Any] = [progress]
        if ray_train:
            callbacks.append(
                trainer_callbacks()[1](rank, progress, start.placement, start.backend, start.resumes)
            )
        callbacks.extend(config.get("callbacks") or ())
        trainer: Any = GRPOTrainer(
            model=model, reward_funcs=[reward_function(traces, settings.weights)], args=args,
            train_dataset=dataset, processing_class=tokenizer, peft_config=lora, callbacks=callbacks,
        )  # fmt: skip
        trainer.train(resume_from_checkpoint=resume)
        if not ray_train and rank == 0:
            trainer.save_model(PhaseLayout(str(folder)).adapter)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _progress_type() -> type:
    """The trainer callback that turns each logged step into the phase's figures (built when a
    worker needs it: importing transformers takes seconds, and the driver never does)."""
    from transformers import TrainerCallback

    class RewardProgress(TrainerCallback):  # type: ignore[misc]
        """Step, mean reward, its parts, flat groups, tokens/s and ETA of each step: kept for the
        checkpoint's metrics, and a line of the train log (rank 0, where the folder is)."""

        def __init__(self, log_path: Path | None, groups: int, group_size: int) -> None:
            self.log_path, self.groups, self.group_size = log_path, groups, group_size
            self.last: dict[str, Any] | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            self.started = time.perf_counter()
            self.step0 = state.global_step
            self.tokens0 = int(getattr(state, "num_input_tokens_seen", 0) or 0)
            self.sampled = 0.0

        def flat(self, entry: Mapping[str, Any]) -> int:
            return round(float(entry.get("frac_reward_zero_std") or 0.0) * self.groups)

        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **_: Any
        ) -> None:
            if not logs or logs.get("reward") is None:
                return
            now = time.perf_counter()
            tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0)
            done = state.global_step - self.step0
            elapsed = max(now - self.started, 1e-9)
            samples = self.groups * self.group_size
            self.sampled += float(logs.get("completions/mean_length") or 0.0) * samples
            # the steady rate: from the end of the first step, which also pays for warming up
            if done == 1:
                self.first_end, self.first_tokens, self.first_sampled = now, tokens, self.sampled
            since = max(now - getattr(self, "first_end", self.started), 1e-9)
            steady = done > 1
            rate = (tokens - self.first_tokens) / since if steady else (tokens - self.tokens0) / elapsed
            sampled_rate = (self.sampled - self.first_sampled) / since if steady else self.sampled / elapsed
            samples_rate = (done - 1) * samples / since if steady else done * samples / elapsed
            history = [e for e in state.log_history if e.get("reward") is not None and "step" in e]

            def figure(key: str) -> float | None:
                value = logs.get(key)
                return None if value is None else float(f"{float(value):.4g}")

            self.last = {
                "step": state.global_step,
                "max_steps": state.max_steps,
                "reward": round(float(logs["reward"]), 4),
                "reward_std": figure("reward_std"),
                "parts": {p: figure(f"part/{p}") for p in PARTS},
                "match": figure("part/match"),
                "flat_groups": self.flat(logs),
                "groups": self.groups,
                "kl": figure("kl"),
                "loss": figure("loss"),
                "completion_tokens": figure("completions/mean_length"),
                "tokens_seen": tokens,
                "tokens_per_s": round(rate, 1) if done else None,
                "sampled_tokens_per_s": round(sampled_rate, 1) if done else None,
                "samples_per_s": round(samples_rate, 3) if done else None,
                "step_s": figure("step_time"),
                "eta_s": round((state.max_steps - state.global_step) * elapsed / done, 1) if done else None,
                "time": time.time(),
            }
            if self.log_path is not None:
                append_line(self.log_path, self.last)
            # for the checkpoint's metrics: the whole run's curve, resumes included
            self.last = {
                **self.last,
                "reward_curve": [[int(e["step"]), round(float(e["reward"]), 4)] for e in history],
                "flat_groups_total": sum(self.flat(e) for e in history),
                "groups_total": self.groups * len(history),
            }

    return RewardProgress


def train_grpo(
    base_model: str,
    folder: Path,
    settings: RewardOptions,
    rows: Sequence[Mapping[str, Any]],
    traces: Sequence[Trace],
    say: Callable[[dict[str, Any]], None] = lambda _: None,
    threads: int | None = None,
    *,
    storage: str | None = None,
    note: Callable[[str], None] | None = None,
    callbacks: Sequence[Any] = (),
) -> GRPOResult:
    """GRPO on ``rows`` (``build_prompts``) through Ray Train; returns where the adapter is and what
    the training did.  ``storage``, ``threads``, ``note`` and ``callbacks`` as ``finetune.train.train``."""
    if not rows:
        raise RewardError("a reward phase needs at least one prompt to sample answers for")
    paths = PhaseLayout(str(folder))
    check_targets(base_model, settings.lora.target_modules)
    wanted = {r["trace_id"] for r in rows}
    name = run_name(base_model, rows, settings)
    per_worker = max(1, threads // settings.workers) if threads else max(1, int(settings.cpus_per_worker))
    fitted = fit_on_ray(
        _grpo_loop,
        {
            "settings": settings.model_dump(mode="json"),
            "folder": str(folder.resolve()),
            "rows": [dict(r) for r in rows],
            "traces": [t.model_dump(mode="json") for t in traces if t.id in wanted],
            "base_model": base_model,
            "threads": per_worker,
            "world_size": settings.workers,
            "callbacks": list(callbacks),
        },
        settings,
        name=name,
        storage=storage or paths.ray,
        train_log=Path(paths.train_log),
        say=say,
        note=note or console_note(folder.name),
        error=RewardError,
    )
    result, metrics, placement = fitted.result, fitted.metrics, fitted.placement
    adapter_from_checkpoint(result.checkpoint, Path(paths.adapter))
    curve = [(int(s), float(r)) for s, r in metrics.get("reward_curve") or []]
    return GRPOResult(
        adapter=Path(paths.adapter),
        steps=int(metrics.get("step") or 0),
        train_seconds=fitted.seconds,
        tokens_per_s=metrics.get("tokens_per_s"),
        sampled_tokens_per_s=metrics.get("sampled_tokens_per_s"),
        samples_per_s=metrics.get("samples_per_s"),
        resumed_from_step=int(metrics.get("resumed_from_step") or 0),
        curve=curve,
        flat_groups=int(metrics.get("flat_groups_total") or 0),
        groups=int(metrics.get("groups_total") or 0),
        last={
            k: metrics.get(k)
            for k in ("reward", "reward_std", "parts", "match", "kl", "loss", "completion_tokens", "step_s")
        },
        resumes=[int(s) for s in metrics.get("resumes") or []],
        placement=placement,
        checkpoint=str(result.checkpoint.path),
    )


# ---------------------------------------------------------------------------------------------
# the phase


def start_folder(host: Any, model: str) -> Path:
    """The model folder of the student the phase starts from: the folder the host last served as
    ``model`` (a finetune or reward phase before this one), else the host's base; absolute, since
    the training workers do not run in this process's working folder."""
    served = getattr(getattr(host, "student", None), "info", {}).get("served") or []
    for entry in reversed(served):
        if entry.get("model") == model and entry.get("folder"):
            return Path(entry["folder"]).resolve()
    if ":" in model:
        raise RewardError(
            f"the student {model} is an adapter served beside its base; a reward phase starts from a "
            "model folder (use serve_as: merged in the finetune phase before it)"
        )
    return Path(host.base_model()).resolve()


def reward_phase(
    traces: Sequence[Trace],
    options: RewardOptions,
    phase_name: str,
    start: Any,
    student: Any,
    folder: Path,
    host: Any,
    progress: Callable[[dict[str, Any]], None] = lambda _: None,
    threads: int | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Prompts, GRPO (resumed from the newest checkpoint), the adapter merged into a model folder,
    served by ``host``; returns the new student's settings and the phase's record
    (``reward.json``).  Done before: checked, merged and served again."""
    from transformers import AutoTokenizer

    from tooldistill.console import say as console_say
    from tooldistill.finetune.merge import check_adapter, describe_adapter, merge
    from tooldistill.finetune.phase import _read, _write, served_name
    from tooldistill.finetune.train import train_storage

    base = start_folder(host, student.model)
    name = served_name(student.model, phase_name)
    paths = PhaseLayout(str(folder))
    record_path = Path(paths.reward)
    record = _read(record_path)
    if record is not None and Path(paths.adapter).is_dir():
        check_adapter(Path(paths.adapter), base)
        merge(Path(paths.adapter), base, Path(paths.merged), dtype=host.dtype())
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(base))
        prompts = build_prompts(traces, start, student, tokenizer, options.max_prompt_tokens)
        if not prompts.rows:
            raise RewardError(
                f"no prompt left from {len(traces)} train traces "
                f"({', '.join(f'{k}: {v}' for k, v in prompts.summary['left_out'].items()) or 'none given'})"
            )
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "prompts.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in prompts.rows)
        )
        summary = prompts.summary
        progress({"phase": phase_name, "event": "prompts", **summary})
        console_say(
            f"  {phase_name}: {summary['prompts']} prompts ({summary['no_calls']} without a call; "
            f"{summary['tokens']:,} tokens) × {options.group_size} samples, left out: "
            f"{summary['left_out'] or 'none'}"
        )

        def step(entry: dict[str, Any]) -> None:
            progress({"phase": phase_name, "event": "reward_step", **entry})
            number, last = int(entry["step"]), int(entry["max_steps"])
            if number == 1 or number == last or number % max(1, last // 10) == 0:
                console_say(step_line(phase_name, entry))

        if threads is None and not options.use_gpu:
            from tooldistill.serve.cpu import usable_cores

            threads = usable_cores()
        started = time.time()
        result = train_grpo(
            str(base), folder, options, prompts.rows, traces, say=step, threads=threads,
            storage=train_storage(getattr(host, "run_dir", None), phase_name),
        )  # fmt: skip
        adapter = describe_adapter(result.adapter, base, name)
        merged, _ = merge(result.adapter, base, Path(paths.merged), dtype=host.dtype())
        record = {
            "prompts": summary,
            "training": {
                "steps": result.steps,
                "resumed_from_step": result.resumed_from_step,
                "train_seconds": result.train_seconds,
                "tokens_per_s": result.tokens_per_s,
                "sampled_tokens_per_s": result.sampled_tokens_per_s,
                "samples_per_s": result.samples_per_s,
                "flat_groups": result.flat_groups,
                "groups": result.groups,
                "last": result.last,
                "generation": "vllm" if options.use_vllm() else "transformers",
                "device": "gpu" if options.use_gpu else "cpu",
                "workers": options.workers,
                # where each worker trained (rank, node address and Ray node id, device)
                "placement": result.placement,
                "settings": options.model_dump(mode="json"),
                "reward_curve": [{"step": s, "reward": r} for s, r in result.curve],
            },
            "start_model": str(base),
            "adapter": {**adapter, "path": str(result.adapter)},
            "served_as": "merged",
            "merged": str(merged),
            "served_model": name,
            "elapsed_s": round(time.time() - started, 1),
        }
        _write(record_path, record)
    endpoint, model = host.serve(Path(paths.merged), record["served_model"])
    return student.model_copy(update={"endpoint": endpoint, "model": model}), record


def step_line(phase: str, entry: Mapping[str, Any]) -> str:
    """``phase4: step 3/50, mean reward 0.412, 1/2 flat groups, 310 tokens/s, ETA 80 s``."""
    step, last = int(entry["step"]), int(entry["max_steps"])
    rate, eta = entry.get("tokens_per_s"), entry.get("eta_s")
    return (
        f"  {phase}: step {step}/{last}, mean reward {float(entry['reward']):.3f}, "
        f"{entry.get('flat_groups', 0)}/{entry.get('groups', '?')} flat groups"
        + (f", {rate:.0f} tokens/s" if rate else "")
        + (f", ETA {eta:.0f} s" if eta is not None else "")
    )
