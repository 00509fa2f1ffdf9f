"""The finetune phases: what they trained on, how long, the final loss, the adapter, and the
loss curves (a table and a figure inside the phases section); the reward (GRPO) phases the same
way: prompts, steps, mean reward first and last, flat groups, and the reward curves."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tooldistill.report import figures
from tooldistill.report.document import Heading, Section, Table
from tooldistill.report.mask import mask_text
from tooldistill.report.sections.context import Context
from tooldistill.report.sections.format import DASH, count, duration, general, number, obj
from tooldistill.report.sections.reading import LAYOUT


def _bytes(value: Any) -> str:
    size = number(value)
    return DASH if size is None else f"{size / 1e6:.1f} MB"


def finetune_rows(ctx: Context, names: Sequence[str], section: Section, problems: list[str]) -> None:
    """The finetune phases' table and loss curves, added to ``section``."""
    rows, curves = [], []
    for name in names:
        path = LAYOUT.optimize.phase(name).finetune
        if not ctx.run.has(path):
            continue
        record = ctx.run.try_json(path, problems)
        if not isinstance(record, dict):
            continue
        examples, training, adapter = (obj(record.get(k)) for k in ("examples", "training", "adapter"))
        rows.append(
            [
                name,
                f"{count(examples.get('examples'))} ({count(examples.get('calls'))} calls, "
                f"{count(examples.get('no_calls'))} no-call)",
                count(examples.get("tokens")),
                count(training.get("steps")),
                duration(training.get("train_seconds")),
                f"{number(training.get('tokens_per_s')) or 0:.0f}",
                general(training.get("final_loss")),
                _bytes(adapter.get("adapter_bytes")),
                mask_text(str(record.get("served_model", "?"))),
            ]
        )
        curve = [e for e in training.get("loss_curve") or [] if isinstance(e, dict)]
        if curve:
            curves.append((name, [int(e["step"]) for e in curve], [float(e["loss"]) for e in curve]))
        left = obj(examples.get("left_out"))
        if left:
            section.note(
                f"{name}: left out of training: " + ", ".join(f"{k}: {v}" for k, v in sorted(left.items()))
            )
    if not rows:
        return
    section.add(Heading("Weight distillation"))
    section.add(
        Table(
            ["Phase", "Train examples", "Tokens", "Steps", "Training time", "Tokens/s", "Final loss",
             "Adapter", "Served as"],
            rows,
            {2, 3, 4, 5, 6, 7},
        )
    )  # fmt: skip
    if curves:
        ctx.figure(
            ctx.report.loss_figure,
            lambda path: figures.loss_curves(path, curves),
            "Training loss per step of the finetune phases",
            section,
        )


def reward_rows(ctx: Context, names: Sequence[str], section: Section, problems: list[str]) -> None:
    """The reward phases' table and reward curves, added to ``section``."""
    rows, curves = [], []
    for name in names:
        path = LAYOUT.optimize.phase(name).reward
        if not ctx.run.has(path):
            continue
        record = ctx.run.try_json(path, problems)
        if not isinstance(record, dict):
            continue
        prompts, training = obj(record.get("prompts")), obj(record.get("training"))
        curve = [e for e in training.get("reward_curve") or [] if isinstance(e, dict)]
        first, last = (curve[0].get("reward"), curve[-1].get("reward")) if curve else (None, None)
        rows.append(
            [
                name,
                f"{count(prompts.get('prompts'))} ({count(prompts.get('no_calls'))} no-call)",
                count(training.get("steps")),
                f"{_reward(first)} → {_reward(last)}",
                f"{count(training.get('flat_groups'))}/{count(training.get('groups'))}",
                duration(training.get("train_seconds")),
                f"{number(training.get('tokens_per_s')) or 0:.0f}",
                mask_text(str(record.get("served_model", "?"))),
            ]
        )
        if curve:
            curves.append((name, [int(e["step"]) for e in curve], [float(e["reward"]) for e in curve]))
        left = obj(prompts.get("left_out"))
        if left:
            section.note(
                f"{name}: left out of sampling: " + ", ".join(f"{k}: {v}" for k, v in sorted(left.items()))
            )
    if not rows:
        return
    section.add(Heading("Reward training (GRPO)"))
    section.add(
        Table(
            ["Phase", "Prompts", "Steps", "Mean reward (first → last)", "Flat groups", "Training time",
             "Tokens/s", "Served as"],
            rows,
            {2, 4, 5, 6},
        )
    )  # fmt: skip
    if curves:
        ctx.figure(
            ctx.report.reward_figure,
            lambda path: figures.reward_curves(path, curves),
            "Mean reward of the sampled answers per step of the reward phases",
            section,
        )


def _reward(value: Any) -> str:
    n = number(value)
    return DASH if n is None else f"{n:.3f}"
