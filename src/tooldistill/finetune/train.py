"""LoRA fine-tuning of the student: TRL's ``SFTTrainer`` with a PEFT LoRA config inside a Ray Train
``TorchTrainer``.

One CPU worker on a laptop; ``workers: N`` with ``use_gpu: true`` on a cluster runs N data-parallel
workers (Ray Train sets up the process group, the Hugging Face trainer shards the data and
averages the gradients).  Checkpoints go to ``<phase folder>/checkpoints`` every ``save_steps``
steps; a training that was killed resumes from the newest one, so the step count continues.  The
worker of rank 0 writes the adapter to ``<phase folder>/adapter`` and one JSON line per logged
step (step, loss, tokens/s, ETA) to ``<phase folder>/train_log.jsonl``, which the driver prints.

Training runs in float32 on CPUs (master weights and gradients: bf16 would be emulated on CPUs
without native bf16, and is too coarse for the LoRA update here), bf16 on GPUs.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tooldistill.console import output_to
from tooldistill.layout import PhaseLayout


class TrainError(RuntimeError):
    """Training cannot start or did not finish."""


class LoraSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    r: int = Field(default=16, ge=1)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: tuple[str, ...] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )
    #: Parameters (not modules) to adapt, e.g. a mixture-of-experts model's stacked expert weights
    #: (``mlp.experts.gate_up_proj`` in GPT-OSS): PEFT's ``target_parameters``.
    target_parameters: tuple[str, ...] = ()


class TrainSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    lora: LoraSettings = Field(default_factory=LoraSettings)
    epochs: float = Field(default=2.0, gt=0)
    learning_rate: float = Field(default=2e-4, gt=0)
    max_length: int = Field(default=512, ge=16)
    batch_size: int = Field(default=4, ge=1)
    gradient_accumulation: int = Field(default=1, ge=1)
    warmup_ratio: float = Field(default=0.05, ge=0, lt=1)
    save_steps: int = Field(default=10, ge=1)
    #: Ray Train workers (data parallel) and whether each takes a GPU.
    #: Mixed precision: bf16 autocast over float32 weights on GPUs and on CPUs with native bf16
    #: (``auto``), float32 elsewhere; or pinned.
    precision: Literal["auto", "float32", "bfloat16"] = "auto"
    #: LoRA on the top N decoder layers only (None: all).  Backpropagation then stops at the
    #: lowest adapted layer, which makes a CPU training step much cheaper.
    top_layers: int | None = Field(default=None, ge=1)
    workers: int = Field(default=1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(default=1, gt=0)
    seed: int = 0


@dataclass
class TrainResult:
    adapter: Path
    steps: int
    final_loss: float | None
    train_seconds: float
    tokens: int
    tokens_per_s: float | None
    resumed_from_step: int
    log: list[dict[str, Any]]


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete Hugging Face checkpoint in ``folder`` (one with its trainer state)."""
    found = []
    for path in folder.glob("checkpoint-*"):
        step = path.name.split("-")[-1]
        if step.isdigit() and (path / "trainer_state.json").is_file():
            found.append((int(step), path))
    return max(found)[1] if found else None


def check_targets(base_model: str, modules: Sequence[str]) -> None:
    """Every LoRA target module names a layer the model has (a clear error before training)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(base_model)
    import torch

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in modules if m not in names]
    if missing:
        linear = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        )
        raise TrainError(
            f"LoRA target modules {missing} are not in {base_model}; its linear layers: {', '.join(linear)}"
        )


def precision_bf16(settings: TrainSettings) -> bool:
    """Whether training autocasts to bf16: pinned, or on GPUs and CPUs with native bf16."""
    if settings.precision != "auto":
        return settings.precision == "bfloat16"
    if settings.use_gpu:
        return True
    from tooldistill.serve.cpu import capabilities, native_bf16

    return native_bf16(capabilities())[0]


def _train_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: SFTTrainer with LoRA on the examples, checkpoints in the run folder."""
    import ray.train

    context = ray.train.get_context()
    rank = context.get_world_rank()
    # the libraries' own output (weight-loading bars, TRL and datasets chatter) goes to the phase
    # folder, not through Ray to the console: progress reaches it from train_log.jsonl, and an error
    # reaches the driver as the exception
    with output_to(Path(PhaseLayout(config["folder"]).train_worker_log(rank))):
        run_sft(config, rank, ray_train=True)


def _unnice() -> None:
    """Run the training worker at normal priority where the OS lets us.

    Ray starts worker processes niced (``worker_niceness``, 15), so that its own daemons stay
    responsive.  A training worker is the run's main work: niced, on a small machine, its compute
    threads lose the CPU to every Ray helper process that wakes up, and multi-threaded kernels
    stall while one thread waits (measured here: ~0.75-0.8 of a plain run's tokens/s).  Lowering
    a niceness needs privileges an ordinary user may lack; then it stays as it is."""
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) > 0:
            os.setpriority(os.PRIO_PROCESS, 0, 0)
    except (OSError, AttributeError):  # not permitted, or not a POSIX system
        pass


def run_sft(config: dict[str, Any], rank: int = 0, ray_train: bool = False) -> None:
    """The training itself (``_train_loop``'s body); ``ray_train=False`` runs it in this process
    without Ray, as a plain TRL run (``benchmarks/finetune.py`` compares the two)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    settings = TrainSettings.model_validate(config["settings"])
    paths = PhaseLayout(config["folder"])
    if ray_train:
        _unnice()
    torch.manual_seed(settings.seed)
    if not settings.use_gpu:
        torch.set_num_threads(int(config["threads"]))
    rows = [json.loads(line) for line in Path(paths.examples).read_text().splitlines() if line]
    dataset = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(config["base_model"])
    bf16 = bool(config["bf16"])
    # float32 weights on CPUs (bf16 autocast computes in bf16 where that is native)
    model = AutoModelForCausalLM.from_pretrained(
        config["base_model"], dtype=torch.bfloat16 if settings.use_gpu else torch.float32
    )
    layers = int(model.config.num_hidden_layers)
    top = settings.top_layers
    extra: dict[str, Any] = {}
    if settings.lora.target_parameters:
        extra["target_parameters"] = list(settings.lora.target_parameters)
    lora = LoraConfig(
        r=settings.lora.r,
        lora_alpha=settings.lora.alpha,
        lora_dropout=settings.lora.dropout,
        target_modules=list(settings.lora.target_modules),
        layers_to_transform=list(range(max(0, layers - top), layers)) if top else None,
        task_type="CAUSAL_LM",
        **extra,
    )
    args = SFTConfig(
        output_dir=paths.checkpoints,
        num_train_epochs=settings.epochs,
        learning_rate=settings.learning_rate,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation,
        warmup_steps=settings.warmup_ratio,  # below 1: a share of the steps
        lr_scheduler_type="cosine",
        max_length=settings.max_length,
        completion_only_loss=True,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=2,
        logging_steps=1,
        report_to=[],
        use_cpu=not settings.use_gpu,
        bf16=bf16,
        seed=settings.seed,
        data_seed=settings.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        dataset_num_proc=None,
    )
    log_path = Path(paths.train_log)

    class Report(TrainerCallback):  # type: ignore[misc]
        """Step, loss, tokens/s and ETA to the run folder (rank 0)."""

        def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            # after a resume the state holds the steps and tokens of before: rates count from here
            self.started = time.perf_counter()
            self.step0 = state.global_step
            self.tokens0 = int(getattr(state, "num_input_tokens_seen", 0) or 0)

        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **_: Any
        ) -> None:
            if not logs or "loss" not in logs or rank != 0:
                return
            tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0)
            now = time.perf_counter()
            elapsed = max(now - self.started, 1e-9)
            done = state.global_step - self.step0
            # the steady rate: counted from the end of the first step, which also pays for warming
            # up (allocations, kernel selection, the process group's first all-reduce)
            if done == 1:
                self.first_end, self.first_tokens = now, tokens
            steady = (
                (tokens - self.first_tokens) / max(now - self.first_end, 1e-9)
                if done > 1
                else (tokens - self.tokens0) / elapsed
            )
            entry = {
                "step": state.global_step,
                "max_steps": state.max_steps,
                "epoch": round(float(state.epoch or 0), 3),
                "loss": round(float(logs["loss"]), 4),
                "tokens_seen": tokens,
                # the trainer counts every worker's tokens (gathered), so this is the run's rate
                "tokens_per_s": round(steady, 1) if done else None,
                "eta_s": round((state.max_steps - state.global_step) * elapsed / done, 1) if done else None,
                "time": time.time(),
            }
            with log_path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry) + "\n")

    trainer: Any = SFTTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=lora,
        callbacks=[Report()],
    )  # fmt: skip
    if ray_train:
        from ray.train.huggingface.transformers import prepare_trainer

        trainer = prepare_trainer(trainer)
    resume = latest_checkpoint(Path(paths.checkpoints))
    output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if rank == 0:
        trainer.save_model(paths.adapter)
        state = trainer.state
        Path(paths.train_result).write_text(
            json.dumps(
                {
                    "steps": state.global_step,
                    "train_loss": output.training_loss,
                    "tokens_seen": int(getattr(state, "num_input_tokens_seen", 0) or 0),
                    "resumed_from": resume.name if resume else None,
                }
            )
            + "\n"
        )


def _follow(path: Path, say: Callable[[dict[str, Any]], None], stop: threading.Event) -> None:
    """Print the training log's new lines as they come."""
    offset = path.stat().st_size if path.exists() else 0
    while not stop.is_set():
        if path.exists():
            with path.open(encoding="utf-8") as handle:
                handle.seek(offset)
                for line in handle:
                    if line.endswith("\n"):
                        offset += len(line.encode("utf-8"))
                        say(json.loads(line))
        stop.wait(1.0)


def train(
    base_model: str,
    folder: Path,
    settings: TrainSettings,
    say: Callable[[dict[str, Any]], None] = lambda _: None,
    threads: int | None = None,
) -> TrainResult:
    """Train on ``folder/examples.jsonl`` (written by the caller) through Ray Train; returns where the
    adapter is and what the training did."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from tooldistill.raycluster import ensure_ray

    paths = PhaseLayout(str(folder))
    check_targets(base_model, settings.lora.target_modules)
    resumed = latest_checkpoint(Path(paths.checkpoints))
    resumed_step = int(resumed.name.split("-")[-1]) if resumed else 0
    ensure_ray()
    cores = threads or max(1, int(settings.cpus_per_worker))
    bf16 = precision_bf16(settings)
    started = time.perf_counter()
    stop = threading.Event()
    follower = threading.Thread(target=_follow, args=(Path(paths.train_log), say, stop), daemon=True)
    follower.start()
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={
            "settings": settings.model_dump(mode="json"),
            "folder": str(folder.resolve()),
            "base_model": base_model,
            "threads": cores,
            "bf16": bf16,
        },
        scaling_config=ScalingConfig(
            num_workers=settings.workers,
            use_gpu=settings.use_gpu,
            resources_per_worker={
                "CPU": settings.cpus_per_worker,
                **({"GPU": 1} if settings.use_gpu else {}),
            },
        ),
        run_config=RunConfig(
            name="finetune",
            storage_path=str(Path(paths.ray).resolve()),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            failure_config=FailureConfig(max_failures=0),
        ),
    )
    try:
        trainer.fit()
    except Exception as error:  # Ray wraps the worker's error; its text is what the user needs
        raise TrainError(f"training failed: {error}") from None
    finally:
        stop.set()
        follower.join(timeout=5)
    seconds = time.perf_counter() - started
    result = json.loads(Path(paths.train_result).read_text())
    log = [json.loads(line) for line in Path(paths.train_log).read_text().splitlines() if line]
    rates = [e["tokens_per_s"] for e in log if e.get("tokens_per_s")]
    return TrainResult(
        adapter=Path(paths.adapter),
        steps=int(result["steps"]),
        final_loss=log[-1]["loss"] if log else None,
        train_seconds=round(seconds, 1),
        tokens=int(result["tokens_seen"]),
        tokens_per_s=rates[-1] if rates else None,
        resumed_from_step=resumed_step,
        log=log,
    )
