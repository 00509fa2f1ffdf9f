"""The ``dspy`` phase kind: DSPy bootstraps few-shot demonstrations (MIPROv2 also proposes
instructions) for the student program (``optimize.program.StudentProgram``).

Optimizers (``optimizer:``): ``bootstrap`` (``BootstrapFewShot``, one round), ``random_search``
(``BootstrapFewShotWithRandomSearch`` over ``num_candidate_programs``, scored on the val split)
and ``mipro`` (``MIPROv2`` in its light setting, the reflection model proposing instructions).
The compiled program is saved in DSPy's format as the phase's ``program.json``.
"""

from __future__ import annotations

import os
from typing import Any

from tooldistill.layout import PhaseLayout
from tooldistill.optimize.phases.base import PhaseContext, PhaseKind, PhaseOutput
from tooldistill.optimize.student import Prompt


class DspyKind(PhaseKind):
    name = "dspy"

    def run(self, ctx: PhaseContext) -> PhaseOutput:
        import dspy

        from tooldistill.optimize.program import StudentProgram, example_of, match_metric, student_lm

        phase, config = ctx.phase, ctx.config
        dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
        train = [example_of(t) for t in ctx.train]
        val = [example_of(t) for t in ctx.val()]
        student = StudentProgram.from_prompt(ctx.student, ctx.start)
        ctx.progress(
            {"phase": phase.name, "event": "start", "optimizer": phase.optimizer, "train": len(train)}
        )
        with dspy.context(lm=student_lm(ctx.student)):
            optimizer: Any
            if phase.optimizer == "bootstrap":
                optimizer = dspy.BootstrapFewShot(
                    metric=match_metric,
                    max_bootstrapped_demos=phase.max_bootstrapped_demos,
                    max_labeled_demos=phase.max_labeled_demos,
                    max_rounds=1,
                )
                compiled = optimizer.compile(student, trainset=train)
            elif phase.optimizer == "random_search":
                optimizer = dspy.BootstrapFewShotWithRandomSearch(
                    metric=match_metric,
                    max_bootstrapped_demos=phase.max_bootstrapped_demos,
                    max_labeled_demos=phase.max_labeled_demos,
                    num_candidate_programs=phase.num_candidate_programs,
                    num_threads=phase.num_threads,
                )
                compiled = optimizer.compile(student, trainset=train, valset=val)
            else:
                if config.reflection.kind != "openai":
                    prompt_model = dspy.LM(f"anthropic/{config.reflection.model}", cache=False)
                else:
                    prompt_model = dspy.LM(
                        f"openai/{config.reflection.model}",
                        api_base=config.reflection.endpoint,
                        api_key=os.environ.get(config.reflection.api_key_env or "", "unused"),
                        cache=False,
                    )
                optimizer = dspy.MIPROv2(
                    metric=match_metric,
                    prompt_model=prompt_model,
                    task_model=student_lm(ctx.student),
                    auto="light",
                    max_bootstrapped_demos=phase.max_bootstrapped_demos,
                    max_labeled_demos=phase.max_labeled_demos,
                    num_threads=phase.num_threads,
                    verbose=False,
                )
                compiled = optimizer.compile(student, trainset=train, valset=val)
        compiled.save(PhaseLayout(str(ctx.folder)).program)
        prompt = compiled.prompt()
        if not compiled.step.demos and ctx.start.demos:
            prompt = Prompt(
                prompt.system, tuple(ctx.start.demos), prompt.bank
            )  # nothing bootstrapped: keep what we had
        ctx.progress({"phase": phase.name, "event": "compiled", "demos": len(compiled.step.demos)})
        return PhaseOutput(prompt)


DSPY = DspyKind()
