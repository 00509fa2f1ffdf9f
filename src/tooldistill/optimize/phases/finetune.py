"""The ``finetune`` phase kind: LoRA distillation of the student's weights (``finetune.phase``).

The prompt stays; the student changes.  The phase trains on its train traces rendered with the
prompt it starts from, has the student's host serve the result under a new name, and hands the
new student's settings to the schedule, which every later phase then asks.  Its options are the
phase's ``finetune:`` section (``finetune.phase.FinetuneOptions``), checked when the config loads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tooldistill.layout import PhaseLayout
from tooldistill.optimize.config import OptimizeConfig, OptimizeError, PhaseConfig
from tooldistill.optimize.phases.base import (
    PhaseContext,
    PhaseKind,
    PhaseOutput,
    pool_beyond_splits,
    read_json,
    read_traces,
)
from tooldistill.optimize.student import StudentSettings
from tooldistill.schema import Trace


class FinetuneKind(PhaseKind):
    name = "finetune"
    section = "finetune"
    #: training takes every core: the warm trial actors of GEPA's evaluators let go of theirs
    exclusive_cpus = True
    summary_fields = ("finetune",)

    def validate(self, phase: PhaseConfig) -> None:
        options(phase)  # the section's errors at load, not after an hour

    def run(self, ctx: PhaseContext) -> PhaseOutput:
        student, record = self._train_and_serve(ctx)
        return PhaseOutput(ctx.start, student, {"finetune": finetune_row(record)})

    def on_skip(self, ctx: PhaseContext, result: Mapping[str, Any]) -> StudentSettings | None:
        # trained before: the adapter is checked and served again, for the phases after it
        student, _ = self._train_and_serve(ctx)
        return student

    def _train_and_serve(self, ctx: PhaseContext) -> tuple[StudentSettings, dict[str, Any]]:
        host = ctx.resources.host
        if host is None:
            raise OptimizeError(
                f"{ctx.phase.name}: a finetune phase needs a student that tooldistill serves "
                "(tooldistill run with student.serve), so that the fine-tuned weights can be served "
                "and measured"
            )
        from tooldistill.finetune.phase import run_finetune_phase

        return run_finetune_phase(
            ctx.train, options(ctx.phase), ctx.phase.name, ctx.start, ctx.student, ctx.folder, host,
            ctx.progress, reserve=finetune_reserve(ctx.config, ctx.phase, ctx.train),
        )  # fmt: skip


def options(phase: PhaseConfig) -> Any:
    """The phase's ``finetune:`` section as ``finetune.phase.FinetuneOptions`` (defaults when absent)."""
    from tooldistill.finetune.phase import FinetuneOptions

    return FinetuneOptions.model_validate(phase.finetune or {})


def finetune_reserve(config: OptimizeConfig, phase: PhaseConfig, train: Sequence[Trace]) -> list[Trace]:
    """The traces a finetune phase could have selected and did not (where ``min_no_call_share``
    finds no-call answers to add), in id order: the rest of the train split, and with
    ``source: pool`` the rest of the pool too."""
    chosen = {t.id for t in train}
    candidates = read_traces(config.data.train)
    if phase.source == "pool":
        candidates += pool_beyond_splits(config)
    return sorted((t for t in candidates if t.id not in chosen), key=lambda t: t.id)


def finetune_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """What the phase table shows of a finetune phase (``result.json``'s ``finetune``)."""
    training, examples = record["training"], record["examples"]
    return {
        "examples": examples["examples"],
        "calls": examples["calls"],
        "no_calls": examples["no_calls"],
        "tokens": examples["tokens"],
        "left_out": examples["left_out"],
        "steps": training["steps"],
        "train_seconds": training["train_seconds"],
        "tokens_per_s": training["tokens_per_s"],
        "final_loss": training["final_loss"],
        "device": training["device"],
        "adapter_bytes": record["adapter"]["adapter_bytes"],
        "adapter_sha256": record["adapter"]["adapter_sha256"],
        "served_model": record["served_model"],
    }


def fine_tuned_note(phases: Path, model: str) -> dict[str, Any]:
    """What an exported prompt says of a fine-tuned student served as ``model``: its base, adapter
    and checksum, from the record of the phase (a folder under ``phases``) that made it; nothing for
    a student no phase made."""
    record = None
    for folder in sorted(p for p in phases.iterdir() if p.is_dir()):
        # a finetune phase's record, or a reward phase's (GRPO): both name the weights they served
        for path in (PhaseLayout(str(folder)).finetune, PhaseLayout(str(folder)).reward):
            found = read_json(path)
            if found and found.get("served_model") == model:
                record = found
    if not record:
        return {}
    return {
        "base_model": record["adapter"]["base_model"],
        "adapter": record["adapter"]["path"],
        "adapter_sha256": record["adapter"]["adapter_sha256"],
        "served_as": record.get("served_as", "merged"),
        "merged_model": record.get("merged"),
        **({"adapter_uri": record["adapter_uri"]} if record.get("adapter_uri") else {}),
    }


FINETUNE = FinetuneKind()
