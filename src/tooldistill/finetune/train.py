"""LoRA fine-tuning of the student: TRL's ``SFTTrainer`` with a PEFT LoRA config inside a Ray Train
``TorchTrainer``.

**Workers.**  One CPU worker on a laptop; ``workers: N`` runs N data-parallel workers (gloo on CPUs,
nccl with ``use_gpu: true``): Ray Train sets up the process group, the Hugging Face trainer shards
the examples and averages the gradients.  The driver sends the examples with the training's config,
so a worker needs nothing from the driver's disk.

**Checkpoints.**  Every ``save_steps`` steps (and at the last step) each worker's trainer saves a
Hugging Face checkpoint into a scratch folder of its own machine and reports it to Ray Train
(``ray.train.report``): rank 0's adapter, optimizer, scheduler and trainer state and every rank's
RNG state become one checkpoint on the run's storage, ``<storage>/<run name>/checkpoint_<step>``.
The storage is the phase's ``ray`` folder, or a folder of the run on S3 (``storage``); the newest
checkpoint is kept.  The run name is made from the examples, the base model and the settings.

**Resume.**  Ray Train restarts the worker group after a lost worker (``max_failures`` times), and
a rerun with the same inputs finds its run again (same name, same storage: Ray Train loads the
run's checkpoint list back); either way the workers start from ``ray.train.get_checkpoint()`` and
the step count goes on.

**Result.**  The adapter is copied from the result's checkpoint into the phase's ``adapter``
folder, and the figures (steps, loss, tokens/s, the loss curve, where the workers ran) are the
metrics reported with it.  Where the phase folder is on a worker's machine (a local run), rank 0
also writes one JSON line per logged step to ``train_log.jsonl``, which the driver prints as it
goes, and each worker's library output goes to ``train_worker_<rank>.log``; neither is needed for
the result.

Training runs in float32 on CPUs (master weights and gradients: bf16 would be emulated on CPUs
without native bf16, and is too coarse for the LoRA update here), bf16 on GPUs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer

from tooldistill.console import output_to
from tooldistill.layout import PhaseLayout, RunLayout

#: The steps earlier trainings of the run went on from, in each checkpoint beside the trainer's files.
RESUMES_FILE = "tooldistill-resumes.json"
#: A checkpoint's files that only a resumed training needs: left out of the adapter folder.
TRAINING_STATE = ("optimizer.pt", "scheduler.pt", "scaler.pt", "trainer_state.json",
                  "training_args.bin", "rng_state*.pth", RESUMES_FILE)  # fmt: skip


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


class RayScaling(BaseModel):
    """How a training is spread over Ray Train (``TrainSettings``, ``grpo.RewardOptions``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Ray Train workers (data parallel: gloo on CPUs, nccl on GPUs) and whether each takes a GPU.
    workers: int = Field(default=1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(default=1, gt=0)
    #: Custom Ray resources each worker asks for besides its CPUs (and GPU), e.g. ``{trainer: 1}``
    #: where every node declares one ``trainer``: one worker a node; or a node type's own resource.
    resources_per_worker: dict[str, float] = Field(default_factory=dict)
    #: Restarts of the worker group after a lost or failed worker, each going on from the newest
    #: checkpoint (Ray Train's ``FailureConfig(max_failures)``); 0: a lost worker fails the training.
    max_failures: int = Field(default=2, ge=0)

    @model_serializer(mode="wrap")
    def _without_default_placement(self, handler: Any) -> Any:
        """``resources_per_worker`` left out when empty: configs, hashes and phase stamps read as
        before the field existed."""
        dumped = handler(self)
        if isinstance(dumped, dict) and not dumped.get("resources_per_worker"):
            dumped.pop("resources_per_worker", None)
        return dumped


#: What a training's run name leaves out: how often it is retried and where its workers run.
NOT_IN_RUN_NAME = frozenset({"max_failures", "resources_per_worker"})


class TrainSettings(RayScaling):
    lora: LoraSettings = Field(default_factory=LoraSettings)
    epochs: float = Field(default=2.0, gt=0)
    learning_rate: float = Field(default=2e-4, gt=0)
    max_length: int = Field(default=512, ge=16)
    batch_size: int = Field(default=4, ge=1)
    gradient_accumulation: int = Field(default=1, ge=1)
    warmup_ratio: float = Field(default=0.05, ge=0, lt=1)
    save_steps: int = Field(default=10, ge=1)
    #: Mixed precision: bf16 autocast over float32 weights on GPUs and on CPUs with native bf16
    #: (``auto``), float32 elsewhere; or pinned.
    precision: Literal["auto", "float32", "bfloat16"] = "auto"
    #: LoRA on the top N decoder layers only (None: all).  Backpropagation then stops at the
    #: lowest adapted layer, which makes a CPU training step much cheaper.
    top_layers: int | None = Field(default=None, ge=1)
    seed: int = 0


@dataclass
class TrainResult:
    adapter: Path
    steps: int
    final_loss: float | None
    train_seconds: float
    tokens: int
    tokens_per_s: float | None
    #: The step the training that finished went on from (0: it started from the base).
    resumed_from_step: int
    #: Step and loss of every logged step, from the start of the run (resumes included).
    log: list[dict[str, Any]]
    #: Every step a training of this run went on from: reruns and worker-group restarts.
    resumes: list[int] = field(default_factory=list)
    #: Where each worker ran: rank, node, device.
    placement: list[dict[str, Any]] = field(default_factory=list)
    #: The checkpoint the adapter was taken from (its path on the run's storage).
    checkpoint: str | None = None


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete Hugging Face checkpoint in ``folder`` (one with its trainer state)."""
    found = []
    for path in folder.glob("checkpoint-*"):
        step = path.name.split("-")[-1]
        if step.isdigit() and (path / "trainer_state.json").is_file():
            found.append((int(step), path))
    return max(found)[1] if found else None


def ray_storage(uri: str) -> tuple[str, Any]:
    """Ray Train's ``storage_path`` and ``storage_filesystem`` for a local folder or an ``s3://``
    URI: S3 through the dataset store's filesystem (endpoint from ``AWS_ENDPOINT_URL``, region and
    retries from the environment, credentials by the AWS chain)."""
    from tooldistill import store

    try:
        filesystem, path = store.resolve(uri)
    except store.StoreError as error:
        raise TrainError(f"training storage: {error}") from None
    return path, (filesystem if uri.startswith("s3://") else None)


def train_storage(run_dir: str | None, phase: str) -> str | None:
    """Ray Train's storage for a phase's training when the run folder is on S3:
    ``RUN/train/<phase>``, beside the optimize folder rather than in it (the pipeline stages that
    folder on local disk and copies it back, which would put an older checkpoint list over the
    newer one).  None for a local run folder: the phase's own ``ray`` folder."""
    if run_dir and run_dir.startswith("s3://"):
        return RunLayout(run_dir).training(phase)
    return None


def run_name(base_model: str, rows: Sequence[Mapping[str, Any]], settings: TrainSettings) -> str:
    """The Ray Train run's name: ``finetune-`` and a hash of what the training depends on (the
    examples, the base model's config and weights, the settings but ``max_failures`` and where the
    workers run).  A rerun with the same inputs finds its checkpoints under it; other inputs start
    a run of their own."""
    digest = hashlib.sha256()
    digest.update(json.dumps(base_identity(base_model), sort_keys=True).encode())
    digest.update(
        json.dumps(
            settings.model_dump(mode="json", exclude=set(NOT_IN_RUN_NAME)),
            sort_keys=True,
        ).encode()
    )
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
    return f"finetune-{digest.hexdigest()[:16]}"


def base_identity(base_model: str) -> Any:
    """A base model folder's config and weights (their checksums from a prepared or merged folder's
    manifest, else name and size), wherever the folder is; a model id as it is."""
    from tooldistill.finetune.merge import MERGED_MANIFEST

    folder = Path(base_model)
    config = folder / "config.json"
    if not config.is_file():
        return base_model
    listed: dict[str, str] = {}
    with contextlib.suppress(OSError, ValueError):
        listed = dict(json.loads((folder / MERGED_MANIFEST).read_text()).get("files") or {})
    return {
        "config": hashlib.sha256(config.read_bytes()).hexdigest(),
        "weights": {
            p.name: listed.get(p.name) or p.stat().st_size for p in sorted(folder.glob("*.safetensors"))
        },
    }


def placement_line(placement: Sequence[Mapping[str, Any]], backend: str | None, gpu: bool) -> str:
    """``training on 2 workers (CPU, gloo): node 10.0.0.5 ×2``: how many workers, on what, where.
    Nodes are told apart by their Ray node id; where two share an address (containers, or the
    loopback test cluster) the id's first characters follow it."""
    nodes = Counter((str(w.get("node")), str(w.get("node_id") or w.get("node"))) for w in placement)
    shared = Counter(address for address, _ in nodes)
    count = len(placement)
    where = ", ".join(
        f"node {address}{f' ({node_id[:8]})' if shared[address] > 1 else ''} ×{n}"
        for (address, node_id), n in nodes.items()
    )
    return f"training on {count} worker{'' if count == 1 else 's'} ({'GPU' if gpu else 'CPU'}, {backend or 'no process group'}): {where}"


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
    """One Ray Train worker: SFTTrainer with LoRA on the examples, checkpoints reported to Ray Train."""
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    # the libraries' own output (weight-loading bars, TRL and datasets chatter) goes to the phase
    # folder where this machine has it, else to the machine's temp folder; not through Ray to the
    # console: progress reaches it from train_log.jsonl, and an error as the exception
    folder = Path(config["folder"])
    log = (
        Path(PhaseLayout(str(folder)).train_worker_log(rank))
        if folder.is_dir()
        else Path(tempfile.gettempdir()) / f"tooldistill-train_worker_{rank}.log"
    )
    with output_to(log):
        run_sft(config, rank, ray_train=True)


def unnice() -> None:
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


def worker_placement(rank: int, gpu: bool) -> tuple[list[dict[str, Any]], str | None]:
    """Where every worker runs (rank, node, device), gathered over the process group, and the
    group's backend."""
    import ray
    import torch.distributed as dist

    me = {
        "rank": rank,
        "node": ray.util.get_node_ip_address(),
        "node_id": ray.get_runtime_context().get_node_id(),
        "device": f"GPU {','.join(str(g) for g in ray.get_gpu_ids())}" if gpu else "CPU",
    }
    if not (dist.is_available() and dist.is_initialized()):
        return [me], None
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, me)
    return sorted(everyone, key=lambda w: int(w["rank"])), str(dist.get_backend())


def started_from(checkpoint: str | None) -> tuple[int, list[int]]:
    """The step a checkpoint folder holds (0 without one) and the steps earlier trainings went on from."""
    if checkpoint is None:
        return 0, []
    folder = Path(checkpoint)
    state = json.loads((folder / "trainer_state.json").read_text())
    earlier: list[int] = []
    with contextlib.suppress(OSError, ValueError):
        earlier = [int(s) for s in json.loads((folder / RESUMES_FILE).read_text())]
    return int(state.get("global_step") or 0), earlier


@contextlib.contextmanager
def resume_folder(config: Mapping[str, Any], ray_train: bool) -> Iterator[str | None]:
    """The checkpoint to go on from, as a local folder: Ray Train's newest (downloaded when it is on
    S3), else a Hugging Face checkpoint of the phase folder from before checkpoints went to Ray
    Train (``resume_from``, one worker only), else None."""
    checkpoint = None
    if ray_train:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            yield str(folder)
        return
    legacy = config.get("resume_from")
    yield legacy if legacy and Path(legacy, "trainer_state.json").is_file() else None


def prepare_worker(seed: int, use_gpu: bool, threads: int, ray_train: bool) -> None:
    """A training process's settings: normal priority in Ray, the seed, its CPU threads."""
    import torch

    if ray_train:
        unnice()
    torch.manual_seed(seed)
    if not use_gpu:
        torch.set_num_threads(threads)


def lora_model(base_model: str, lora: LoraSettings, top_layers: int | None, use_gpu: bool) -> tuple[Any, Any]:
    """The base model (bf16 on GPUs, float32 weights on CPUs: bf16 autocast computes in bf16 where
    that is native) and the PEFT ``LoraConfig`` on its top ``top_layers`` layers (None: all)."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        base_model, dtype=torch.bfloat16 if use_gpu else torch.float32
    )
    layers = int(model.config.num_hidden_layers)
    extra: dict[str, Any] = {}
    if lora.target_parameters:
        extra["target_parameters"] = list(lora.target_parameters)
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        layers_to_transform=list(range(max(0, layers - top_layers), layers)) if top_layers else None,
        task_type="CAUSAL_LM",
        **extra,
    )
    return model, config


@dataclass
class WorkerStart:
    """Where a training worker runs and what it goes on from, as rank 0 logs it."""

    placement: list[dict[str, Any]]
    backend: str | None
    #: rank 0's ``train_log.jsonl`` where this machine has the phase folder, else None
    log_path: Path | None
    #: the steps earlier trainings went on from, and this one's
    resumes: list[int]


def start_worker_log(
    folder: Path, rank: int, use_gpu: bool, ray_train: bool, resume: str | None
) -> WorkerStart:
    """Gather the workers' placement, read the step ``resume`` holds, and have rank 0 log where the
    workers run (the driver prints it)."""
    placement, backend = worker_placement(rank, use_gpu) if ray_train else ([], None)
    log_path = Path(PhaseLayout(str(folder)).train_log) if rank == 0 and folder.is_dir() else None
    step0, earlier = started_from(resume)
    resumes = [*earlier, step0] if resume else []
    if log_path is not None and ray_train:
        append_line(log_path, {"workers": placement, "backend": backend, "gpu": use_gpu})
    return WorkerStart(placement, backend, log_path, resumes)


def run_sft(config: dict[str, Any], rank: int = 0, ray_train: bool = False) -> None:
    """The training itself (``_train_loop``'s body); ``ray_train=False`` runs it in this process
    without Ray, as a plain TRL run (``benchmarks/finetune.py`` compares the two), and saves the
    adapter to the phase folder itself."""
    with resume_folder(config, ray_train) as resume:
        if resume is not None:
            state = json.loads(Path(resume, "trainer_state.json").read_text())
            if int(state.get("global_step") or 0) >= int(state.get("max_steps") or 0) > 0:
                # a rerun of a finished training: its last checkpoint is the result (resuming the
                # trainer there would train a step past the end)
                return
        _sft(config, rank, ray_train, resume)


def _sft(config: dict[str, Any], rank: int, ray_train: bool, resume: str | None) -> None:
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    settings = TrainSettings.model_validate(config["settings"])
    folder = Path(config["folder"])
    paths = PhaseLayout(str(folder))
    prepare_worker(settings.seed, settings.use_gpu, int(config["threads"]), ray_train)
    rows = config.get("rows")
    if rows is None:
        rows = [json.loads(line) for line in Path(paths.examples).read_text().splitlines() if line]
    dataset = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(config["base_model"])
    bf16 = bool(config["bf16"])
    model, lora = lora_model(config["base_model"], settings.lora, settings.top_layers, settings.use_gpu)
    # the trainer's own checkpoints: a scratch folder on this worker's machine, each checkpoint
    # removed once Ray Train has it
    scratch = tempfile.mkdtemp(prefix="tooldistill-train-")
    args = SFTConfig(
        output_dir=scratch,
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
        save_total_limit=1,
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
    try:
        start = start_worker_log(folder, rank, settings.use_gpu, ray_train, resume)
        progress_type, report_type = trainer_callbacks()
        progress = progress_type(start.log_path)
        callbacks: list[Any] = [progress]
        if ray_train:
            callbacks.append(report_type(rank, progress, start.placement, start.backend, start.resumes))
        callbacks.extend(config.get("callbacks") or ())
        trainer: Any = SFTTrainer(
            model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
            peft_config=lora, callbacks=callbacks,
        )  # fmt: skip
        trainer.train(resume_from_checkpoint=resume)
        if not ray_train and rank == 0:
            trainer.save_model(paths.adapter)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def append_line(path: Path, entry: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry) + "\n")


def trainer_callbacks() -> tuple[type, type]:
    """The trainer callbacks of a worker (built when a worker needs them: importing transformers
    takes seconds, and the driver never does)."""
    from transformers import TrainerCallback

    class Progress(TrainerCallback):  # type: ignore[misc]
        """Step, loss, tokens/s and ETA of each logged step: kept for the checkpoint's metrics, and a
        line of the phase folder's train log (rank 0, where the folder is on its machine)."""

        def __init__(self, log_path: Path | None) -> None:
            self.log_path = log_path
            self.last: dict[str, Any] | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            # after a resume the state holds the steps and tokens of before: rates count from here
            self.started = time.perf_counter()
            self.step0 = state.global_step
            self.tokens0 = int(getattr(state, "num_input_tokens_seen", 0) or 0)

        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **_: Any
        ) -> None:
            if not logs or "loss" not in logs:
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
            self.last = {
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
            if self.log_path is not None:
                append_line(self.log_path, self.last)

    class ReportCheckpoints(TrainerCallback):  # type: ignore[misc]
        """Each checkpoint the trainer saved, reported to Ray Train with the figures of its step (every
        rank reports its own files: Ray Train puts them into one checkpoint on the run's storage)."""

        def __init__(
            self,
            rank: int,
            progress: Any,
            placement: list[dict[str, Any]],
            backend: str | None,
            resumes: list[int],
        ) -> None:
            self.rank, self.progress, self.placement, self.backend = rank, progress, placement, backend
            self.resumes = resumes
            self.resumed_from = resumes[-1] if resumes else 0

        def on_save(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            import ray.train
            from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

            local = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            if self.rank == 0 and local.is_dir():
                (local / RESUMES_FILE).write_text(json.dumps(self.resumes) + "\n")
            figures = self.progress.last or {"step": state.global_step, "max_steps": state.max_steps}
            metrics = {
                **figures,
                "step": state.global_step,
                "resumed_from_step": self.resumed_from,
                "resumes": self.resumes,
                "placement": self.placement,
                "backend": self.backend,
                "loss_curve": [
                    [int(e["step"]), round(float(e["loss"]), 4)] for e in state.log_history if "loss" in e
                ],
            }
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(str(local)) if local.is_dir() else None,
                checkpoint_dir_name=f"checkpoint_{state.global_step:06d}",
                delete_local_checkpoint_after_upload=True,
            )

    return Progress, ReportCheckpoints


def follow_log(
    path: Path,
    say: Callable[[dict[str, Any]], None],
    workers: Callable[[dict[str, Any]], None],
    stop: threading.Event,
) -> None:
    """Print the training log's new lines as they come (steps to ``say``, where the workers run to
    ``workers``)."""
    offset = path.stat().st_size if path.exists() else 0
    while not stop.is_set():
        if path.exists():
            with path.open(encoding="utf-8") as handle:
                handle.seek(offset)
                for line in handle:
                    if line.endswith("\n"):
                        offset += len(line.encode("utf-8"))
                        entry = json.loads(line)
                        (workers if "workers" in entry else say)(entry)
        stop.wait(1.0)


def undeclared(wanted: Mapping[str, float], declared: Mapping[str, float]) -> list[str]:
    """The custom resources in ``wanted`` of which the cluster (``ray.cluster_resources()``) has
    less than one worker asks for: its workers would wait for a node that declares them."""
    return sorted(name for name, amount in wanted.items() if float(declared.get(name, 0)) < amount)


@dataclass
class Fitted:
    """What :func:`fit_on_ray` hands back: Ray Train's result, its final metrics, where the workers
    ran and how long it took."""

    result: Any
    metrics: dict[str, Any]
    placement: list[dict[str, Any]]
    seconds: float


def console_note(phase: str) -> Callable[[str], None]:
    """Lines about a phase's training on the console, indented under the phase's name."""
    from tooldistill.console import say as console_say

    def note(line: str) -> None:
        console_say(f"  {phase}: {line}")

    return note


def fit_on_ray(
    loop: Callable[[dict[str, Any]], None],
    loop_config: dict[str, Any],
    settings: RayScaling,
    *,
    name: str,
    storage: str,
    train_log: Path,
    say: Callable[[dict[str, Any]], None],
    note: Callable[[str], None],
    error: type[TrainError],
) -> Fitted:
    """Run ``loop`` on a Ray Train ``TorchTrainer`` as every tooldistill training runs: data-parallel
    workers (gloo on CPUs, NCCL on GPUs), the run ``name`` and its checkpoints on ``storage`` (a
    local folder or ``s3://``; the newest kept), ``FailureConfig(max_failures)``, rank 0's
    ``train_log`` followed for ``say`` as it grows and the workers' placement told to ``note`` once.
    A failure is raised as ``error`` with Ray's text; so is a training that reported no checkpoint."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from tooldistill.raycluster import ensure_ray

    storage_path, filesystem = ray_storage(storage)
    shown: list[str] = []

    def where(entry: dict[str, Any]) -> None:
        shown.append(placement_line(entry["workers"], entry.get("backend"), bool(entry.get("gpu"))))
        note(shown[-1])

    ensure_ray()
    import ray

    missing = undeclared(settings.resources_per_worker, ray.cluster_resources())
    if missing:
        note(
            f"no node of the cluster declares {', '.join(missing)} (training.resources_per_worker): "
            "the workers wait until one that does joins (an autoscaler's node type, or ray start "
            "--resources)"
        )
    train_log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    stop = threading.Event()
    follower = threading.Thread(target=follow_log, args=(train_log, say, where, stop), daemon=True)
    follower.start()
    trainer = TorchTrainer(
        loop,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if settings.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=settings.workers,
            use_gpu=settings.use_gpu,
            resources_per_worker={
                **settings.resources_per_worker,
                "CPU": settings.cpus_per_worker,
                **({"GPU": 1} if settings.use_gpu else {}),
            },
        ),
        run_config=RunConfig(  # type: ignore[call-arg]  # Ray Train v2's RunConfig (mypy sees v1's)
            name=name,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            failure_config=FailureConfig(max_failures=settings.max_failures),
            # Ray Train's print() to its logger ignores a swapped sys.stdout: dill's disassembly,
            # which the datasets library captures to hash a map function, landed in the log
            worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}},
        ),
    )
    try:
        result = trainer.fit()
    except Exception as failed:  # Ray wraps the worker's error; its text is what the user needs
        raise error(f"training failed: {failed}") from None
    finally:
        stop.set()
        follower.join(timeout=5)
    if result.checkpoint is None:
        raise error(f"training reported no checkpoint (run {name} in {storage})")
    metrics = dict(result.metrics or {})
    placement = list(metrics.get("placement") or [])
    if not shown and placement:  # the workers ran where the driver does not see the train log
        note(placement_line(placement, metrics.get("backend"), settings.use_gpu))
    return Fitted(result, metrics, placement, round(time.perf_counter() - started, 1))


def train(
    base_model: str,
    folder: Path,
    settings: TrainSettings,
    say: Callable[[dict[str, Any]], None] = lambda _: None,
    threads: int | None = None,
    *,
    storage: str | None = None,
    note: Callable[[str], None] | None = None,
    callbacks: Sequence[Any] = (),
) -> TrainResult:
    """Train on ``folder/examples.jsonl`` (written by the caller) through Ray Train; returns where the
    adapter is and what the training did.

    ``storage``: Ray Train's storage for the run and its checkpoints, a local folder or an
    ``s3://`` URI (default: the phase's ``ray`` folder).  ``threads``: the CPU threads of the
    training, shared by the workers.  ``note``: where the line that says where the workers run goes
    (default: the console).  ``callbacks``: more ``TrainerCallback`` objects for each worker's trainer
    (after tooldistill's own)."""
    paths = PhaseLayout(str(folder))
    check_targets(base_model, settings.lora.target_modules)
    rows = [json.loads(line) for line in Path(paths.examples).read_text().splitlines() if line]
    name = run_name(base_model, rows, settings)
    # a Hugging Face checkpoint an older version left in the phase folder (one worker: only the
    # driver's machine has it); Ray Train's checkpoints come first
    legacy = latest_checkpoint(Path(paths.checkpoints)) if settings.workers == 1 else None
    if note is None:
        note = console_note(folder.name)
    per_worker = max(1, threads // settings.workers) if threads else max(1, int(settings.cpus_per_worker))
    fitted = fit_on_ray(
        _train_loop,
        {
            "settings": settings.model_dump(mode="json"),
            "folder": str(folder.resolve()),
            "rows": rows,
            "base_model": base_model,
            "threads": per_worker,
            "bf16": precision_bf16(settings),
            "resume_from": str(legacy.resolve()) if legacy else None,
            "callbacks": list(callbacks),
        },
        settings,
        name=name,
        storage=storage or paths.ray,
        train_log=Path(paths.train_log),
        say=say,
        note=note,
        error=TrainError,
    )
    result, metrics, placement = fitted.result, fitted.metrics, fitted.placement
    adapter_from_checkpoint(result.checkpoint, Path(paths.adapter))
    return TrainResult(
        adapter=Path(paths.adapter),
        steps=int(metrics.get("step") or 0),
        final_loss=metrics.get("loss"),
        train_seconds=fitted.seconds,
        tokens=int(metrics.get("tokens_seen") or 0),
        tokens_per_s=metrics.get("tokens_per_s"),
        resumed_from_step=int(metrics.get("resumed_from_step") or 0),
        log=[{"step": int(s), "loss": float(v)} for s, v in metrics.get("loss_curve") or []],
        resumes=[int(s) for s in metrics.get("resumes") or []],
        placement=placement,
        checkpoint=str(result.checkpoint.path),
    )


def adapter_from_checkpoint(checkpoint: Any, adapter: Path) -> None:
    """The PEFT adapter of a Ray Train checkpoint (local or on S3) into the folder ``adapter``: every
    file but the training state, replacing what the folder held."""
    adapter.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{adapter.name}-", dir=adapter.parent))
    try:
        with checkpoint.as_directory() as source:
            for path in sorted(Path(source).iterdir()):
                if path.is_file() and not any(fnmatch(path.name, p) for p in TRAINING_STATE):
                    shutil.copy2(path, staging / path.name)
        if not (staging / "adapter_config.json").is_file():
            raise TrainError(f"checkpoint {checkpoint.path} holds no adapter (adapter_config.json missing)")
        if adapter.exists():
            shutil.rmtree(adapter)
        staging.rename(adapter)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
