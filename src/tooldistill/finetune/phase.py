"""The ``finetune`` phase kind: LoRA distillation of the student's weights inside the phase schedule.

A schedule such as ``dspy → gepa → finetune → gepa`` runs this phase like the others: it starts
from the previous phase's prompt, trains the student on the teacher's train traces rendered with
that prompt (``examples``), and has the student's host serve the result under a new model name, in
one of two ways (``serve_as``):

- ``merged`` (the default): the adapter is folded into a new model folder (``merge``) and the
  host serves that folder in place of the base;
- ``adapter``: the adapter is published to a cloud folder (``adapter_store``; by default
  ``RUN/adapters`` when the run folder is on S3) and served by Ray Serve LLM's LoRA multiplexing
  beside the base, as ``<base model>:<phase>-<checksum>``, by the same replicas (started with
  ``lora_config`` when they were not).

It is then measured on the test split with the same prompt.  Every phase after it evaluates and
optimizes the fine-tuned student.

Phase folder::

    RUN/phaseN/examples.jsonl    the prompt-completion rows trained on
    RUN/phaseN/examples.json     what was kept and left out, calls against no-calls, per tool/category
    RUN/phaseN/ray/              Ray Train's run and newest checkpoint (RUN/train/phaseN on S3)
    RUN/phaseN/train_log.jsonl   step, loss, tokens/s, ETA per logged step
    RUN/phaseN/adapter/          the PEFT adapter and tooldistill-adapter.json (base, checksums)
    RUN/phaseN/merged/           base + adapter as one model folder, in the serving dtype (merged)
    RUN/phaseN/finetune.json     the phase's record: examples, training, adapter, served model
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from tooldistill.finetune.examples import ExampleSettings, build_examples
from tooldistill.finetune.merge import check_adapter, describe_adapter, merge, publish_adapter
from tooldistill.finetune.train import TrainSettings, train, train_storage
from tooldistill.layout import PhaseLayout
from tooldistill.optimize.student import Prompt, StudentSettings
from tooldistill.schema import Trace


class StudentHost(Protocol):
    """Who serves the student: the base model folder, and a way to serve another folder."""

    def base_model(self) -> Path: ...

    def dtype(self) -> str: ...

    def serve(self, folder: Path, name: str) -> tuple[str, str]:
        """Serve ``folder`` as model ``name``; returns (endpoint, model name)."""
        ...

    def adapter_store(self, configured: str | None) -> str:
        """Where adapters are published for LoRA serving (``configured``, else the host's default)."""
        ...

    def serve_adapter(self, store: str, name: str, max_rank: int) -> tuple[str, str]:
        """Serve the adapter published at ``<store>/<name>`` beside the base; returns (endpoint,
        model name)."""
        ...


class ExampleOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Leave out traces whose teacher samples agree less than this (consistency filter).
    min_consensus: float = Field(default=0.5, ge=0, le=1)
    #: At most this share of the examples are no-call answers.
    max_no_call_share: float = Field(default=0.1, ge=0, le=1)
    #: At least this share (up to ``max_no_call_share``): no-call traces from the rest of the train
    #: split are added when the phase's own traces hold fewer.
    min_no_call_share: float = Field(default=0.0, ge=0, lt=1)
    #: When the whole train split holds too few no-call traces for ``min_no_call_share``, repeat
    #: the ones it has (each copy is one more example; counted as ``no_calls_repeated``).
    repeat_no_calls: bool = False
    #: At most this many examples whose first call is the same tool (None: no cap).
    max_per_tool: int | None = Field(default=None, ge=1)
    no_call_answer: str = "No tool is needed."


class FinetuneOptions(BaseModel):
    """A finetune phase's ``finetune:`` section."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    examples: ExampleOptions = Field(default_factory=ExampleOptions)
    training: TrainSettings = Field(default_factory=TrainSettings)
    #: How the result is served: the adapter merged into a new model folder, or the adapter itself
    #: through Ray Serve LLM's LoRA support (``adapter_store`` then says where it is published).
    serve_as: Literal["merged", "adapter"] = "merged"
    #: A cloud folder (``s3://bucket/prefix``) the replicas load adapters from (``serve_as: adapter``);
    #: None: ``RUN/adapters`` when the run folder is on S3.
    adapter_store: str | None = None


def served_name(base_name: str, phase: str) -> str:
    """The fine-tuned student's model name: the base's, with the phase (``smollm2-135m-instruct-phase3``)."""
    return f"{base_name.split(':')[0]}-{phase}"


def run_finetune_phase(
    traces: list[Trace],
    options: FinetuneOptions,
    phase_name: str,
    start: Prompt,
    student: StudentSettings,
    folder: Path,
    host: StudentHost,
    progress: Callable[[dict[str, Any]], None],
    threads: int | None = None,
    reserve: Sequence[Trace] = (),
) -> tuple[StudentSettings, dict[str, Any]]:
    """Train, then serve merged or as an adapter; returns the fine-tuned student's settings and the
    phase's record."""
    store = host.adapter_store(options.adapter_store) if options.serve_as == "adapter" else None
    record = finetune(
        traces,
        options,
        phase_name,
        start,
        student,
        folder,
        host.base_model(),
        host.dtype(),
        progress,
        threads,
        reserve,
        storage=train_storage(getattr(host, "run_dir", None), phase_name),
    )
    if store is None:
        endpoint, model = host.serve(Path(record["merged"]), record["served_model"])
    else:
        lora_name = adapter_name(phase_name, record["adapter"]["adapter_sha256"])
        uri = publish_adapter(Path(record["adapter"]["path"]), store, lora_name)
        endpoint, model = host.serve_adapter(store, lora_name, options.training.lora.r)
        record = {**record, "served_model": model, "adapter_uri": uri}
        _write(Path(PhaseLayout(str(folder)).finetune), record)
    return student.model_copy(update={"endpoint": endpoint, "model": model}), record


def adapter_name(phase: str, checksum: str) -> str:
    """The adapter's folder under the store and its part of the served name (``phase3-1a2b3c4d``):
    the checksum keeps a replica's cache of an older adapter of the same phase from answering."""
    return f"{phase}-{checksum[:8]}"


def finetune(
    traces: list[Trace],
    options: FinetuneOptions,
    phase_name: str,
    start: Prompt,
    student: StudentSettings,
    folder: Path,
    base: Path,
    dtype: str,
    progress: Callable[[dict[str, Any]], None] = lambda _: None,
    threads: int | None = None,
    reserve: Sequence[Trace] = (),
    storage: str | None = None,
) -> dict[str, Any]:
    """Examples, training (resumed from the newest checkpoint), the adapter's manifest and the merged
    folder; returns the phase's record (``finetune.json``).  Done before: checked and returned.
    ``storage``: Ray Train's storage for the checkpoints (default: the phase's ``ray`` folder)."""
    from transformers import AutoTokenizer

    name = served_name(student.model, phase_name)
    paths = PhaseLayout(str(folder))
    record_path = Path(paths.finetune)
    done = _read(record_path)
    if done is not None and Path(paths.adapter).is_dir():
        check_adapter(Path(paths.adapter), base)
        if options.serve_as == "merged":
            merge(Path(paths.adapter), base, Path(paths.merged), dtype=dtype)
        return dict(done)
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    settings = ExampleSettings(
        max_length=options.training.max_length,
        min_consensus=options.examples.min_consensus,
        max_no_call_share=options.examples.max_no_call_share,
        min_no_call_share=options.examples.min_no_call_share,
        repeat_no_calls=options.examples.repeat_no_calls,
        max_per_tool=options.examples.max_per_tool,
        no_call_answer=options.examples.no_call_answer,
    )
    examples = build_examples(traces, start, student, tokenizer, settings, reserve)
    folder.mkdir(parents=True, exist_ok=True)
    Path(paths.examples).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in examples.rows))
    _write(Path(paths.examples_summary), examples.summary)
    summary = examples.summary
    progress(
        {
            "phase": phase_name,
            "event": "examples",
            "examples": summary["examples"],
            "calls": summary["calls"],
            "no_calls": summary["no_calls"],
            "no_calls_repeated": summary["no_calls_repeated"],
            "tokens": summary["tokens"],
            "left_out": summary["left_out"],
        }
    )

    def step(entry: dict[str, Any]) -> None:
        progress({"phase": phase_name, "event": "train_step", **entry})

    if threads is None and not options.training.use_gpu:
        from tooldistill.serve.cpu import usable_cores

        threads = usable_cores()  # the student is idle while it is trained: every core trains
    started = time.time()
    result = train(str(base), folder, options.training, say=step, threads=threads, storage=storage)
    adapter = describe_adapter(result.adapter, base, name)
    merged = None
    if options.serve_as == "merged":
        merged, _ = merge(result.adapter, base, Path(paths.merged), dtype=dtype)
    record = {
        "examples": summary,
        "training": {
            "steps": result.steps,
            "resumed_from_step": result.resumed_from_step,
            "final_loss": result.final_loss,
            "train_seconds": result.train_seconds,
            "tokens": result.tokens,
            "tokens_per_s": result.tokens_per_s,
            "device": "gpu" if options.training.use_gpu else "cpu",
            "workers": options.training.workers,
            # where each worker trained (rank, node address and Ray node id, device)
            "placement": result.placement,
            "settings": options.training.model_dump(mode="json"),
            "loss_curve": [{"step": e["step"], "loss": e["loss"]} for e in result.log],
        },
        "adapter": {**adapter, "path": str(result.adapter)},
        "served_as": options.serve_as,
        "merged": str(merged) if merged is not None else None,
        "served_model": name,
        "elapsed_s": round(time.time() - started, 1),
    }
    _write(record_path, record)
    return record


def _write(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(path)


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
