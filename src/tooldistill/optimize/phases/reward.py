"""The ``reward`` phase kind: GRPO on the student's weights, rewarded by the match verdict
(``finetune.grpo``).

The prompt stays; the student changes.  The phase starts from the student the phase before it
left (the base, or a finetune phase's merged model), samples ``group_size`` answers per train
trace with the prompt it starts from, rewards each by the project's comparison with the teacher's
calls, and has the student's host serve the merged result under a new name, which every later
phase then asks.  Its options are the phase's ``reward:`` section (``finetune.grpo.RewardOptions``),
checked when the config loads: a weight that names no reward part is an error then.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tooldistill.optimize.config import OptimizeConfig, OptimizeError, PhaseConfig
from tooldistill.optimize.phases.base import PhaseContext, PhaseKind, PhaseOutput, phase_train
from tooldistill.optimize.student import StudentSettings


class RewardKind(PhaseKind):
    name = "reward"
    section = "reward"
    #: sampling and training take every core: the warm trial actors of GEPA's evaluators let go
    exclusive_cpus = True
    summary_fields = ("reward",)

    def validate(self, phase: PhaseConfig) -> None:
        options(phase)  # the section's errors at load, not after an hour

    def check(self, config: OptimizeConfig, phase: PhaseConfig) -> None:
        if not phase_train(config, phase):  # before the baseline, not after the phases before it
            raise OptimizeError(
                f"{phase.name}: a reward phase needs train traces to sample answers for, and its "
                f"train split holds none (data.train: {config.data.train})"
            )

    def run(self, ctx: PhaseContext) -> PhaseOutput:
        student, record = self._train_and_serve(ctx)
        return PhaseOutput(ctx.start, student, {"reward": reward_row(record)})

    def on_skip(self, ctx: PhaseContext, result: Mapping[str, Any]) -> StudentSettings | None:
        # trained before: the adapter is checked, merged and served again, for the phases after it
        student, _ = self._train_and_serve(ctx)
        return student

    def _train_and_serve(self, ctx: PhaseContext) -> tuple[StudentSettings, dict[str, Any]]:
        settings = options(ctx.phase)
        host = ctx.resources.host
        if host is None:
            raise OptimizeError(
                f"{ctx.phase.name}: a reward phase needs a student that tooldistill serves "
                "(tooldistill run with student.serve), so that the trained weights can be served "
                "and measured"
            )
        if not ctx.train:
            raise OptimizeError(
                f"{ctx.phase.name}: a reward phase needs train traces to sample answers for, and "
                f"its train split holds none (phase train: {ctx.phase.train}, data.train: "
                f"{ctx.config.data.train})"
            )
        from tooldistill.finetune.grpo import reward_phase

        return reward_phase(
            ctx.train, settings, ctx.phase.name, ctx.start, ctx.student, ctx.folder, host, ctx.progress
        )


def options(phase: PhaseConfig) -> Any:
    """The phase's ``reward:`` section as ``finetune.grpo.RewardOptions`` (defaults when absent)."""
    from tooldistill.finetune.grpo import RewardOptions

    return RewardOptions.model_validate(phase.section("reward") or {})


def reward_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """What the phase table shows of a reward phase (``result.json``'s ``reward``)."""
    training = record["training"]
    curve = [(int(e["step"]), float(e["reward"])) for e in training.get("reward_curve") or []]
    return {
        "prompts": record["prompts"]["prompts"],
        "steps": training["steps"],
        "mean_reward_first": curve[0][1] if curve else None,
        "mean_reward_last": curve[-1][1] if curve else None,
        "flat_groups": training["flat_groups"],
        "groups": training["groups"],
        "train_seconds": training["train_seconds"],
        "tokens_per_s": training["tokens_per_s"],
        "samples_per_s": training.get("samples_per_s"),
        "served_model": record["served_model"],
        "curve": curve,
    }


REWARD = RewardKind()
