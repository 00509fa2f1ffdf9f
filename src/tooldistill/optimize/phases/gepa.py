"""The ``gepa`` phase kind: GEPA evolves the student's instructions; the demos it starts with stay.

Candidates are scored by our adapter (``optimize.adapter.ToolCallAdapter``), their evaluations run
as Ray Tune trials side by side (``CandidateEvaluators``, one warm experiment for every GEPA phase
of a run) or in a thread pool (``tune.executor: threads``, ``TuneSettings``).  Its files::

    RUN/tune/                    Ray Tune's experiment: every candidate evaluation of every GEPA phase
    RUN/phaseN/trials.json       the phase's Tune trials: candidate, examples, start and end times
    RUN/phaseN/gepa/             GEPA's own state (gepa_state.bin, run_log.txt), rewritten every iteration
    RUN/phaseN/candidates.json   every candidate: instructions, parents, val scores; the Pareto front
    RUN/phaseN/progress.json     budget used, best so far, front size (rewritten every iteration)
    RUN/phaseN/reflection.json   the reflection model's calls, tokens and dollars

A killed phase finds ``gepa/gepa_state.bin`` and resumes at its last iteration (GEPA reloads the
candidates, their scores, the Pareto front and the metric calls spent; the reflection dollars come
back through the adapter state).

**The budget.**  GEPA checks ``max_metric_calls`` only between iterations, and one iteration of
``PxNSampling`` evaluates P x N parent minibatches, up to P x N children on the same minibatches and
the validation set for every accepted child, so the last iteration used to run past the budget
(``make demo``: 46 of 40, the third iteration's 12 parent evaluations starting at 34).
:class:`MetricBudget` keeps the phase within it through three public hooks of GEPA: a stop
condition (``StopperProtocol``), the adapter's evaluations (it refuses the minibatch evaluations
the budget left cannot pay for) and the selection strategy (no more accepted children than the
budget left can validate).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tooldistill.layout import OptimizeLayout, PhaseLayout
from tooldistill.optimize.config import OptimizeConfig, OptimizeError, PhaseConfig
from tooldistill.optimize.phases.base import (
    PhaseContext,
    PhaseKind,
    PhaseOutput,
    PhaseResources,
    Progress,
    read_json,
    write_json,
)
from tooldistill.optimize.student import Prompt
from tooldistill.schema import Trace


class GepaKind(PhaseKind):
    name = "gepa"

    def run(self, ctx: PhaseContext) -> PhaseOutput:
        import gepa
        from gepa.strategies.proposal_sampling import PxNSampling

        from tooldistill.optimize.adapter import COMPONENT, ToolCallAdapter
        from tooldistill.optimize.reflection import ReflectionLM

        phase, config, start = ctx.phase, ctx.config, ctx.start
        train, val = ctx.train, ctx.val()
        if not train or not val:
            raise OptimizeError(
                f"{phase.name}: GEPA needs train and val examples (got {len(train)}, {len(val)})"
            )
        if phase.max_metric_calls < len(val):
            raise OptimizeError(
                f"{phase.name}: max_metric_calls {phase.max_metric_calls} does not pay for scoring the "
                f"starting prompt on the {len(val)} validation examples; raise it or lower val"
            )
        paths = PhaseLayout(str(ctx.folder))
        previous = read_json(paths.progress) or {}
        reflection = ReflectionLM(
            config.reflection, spent_before=float(previous.get("reflection_usd") or 0.0)
        )
        own = ctx.resources.evaluators is None
        pool = ctx.resources.evaluators or CandidateEvaluators(config)
        evaluator = pool.get()
        first_trial = len(evaluator.trials) if evaluator is not None else 0
        budget = MetricBudget(phase.max_metric_calls, phase.minibatch_size, val, merges=phase.use_merge)
        adapter = ToolCallAdapter(
            ctx.student,
            start.demos,
            evaluator=evaluator,
            reflection_lm=reflection,
            parallel_candidates=config.tune.max_concurrent_trials,
            admit=budget.admit,
            bank=start.bank,
        )
        watcher = _GepaProgress(phase, ctx.folder, adapter, reflection, ctx.progress)
        resumed = Path(paths.gepa_state).exists()
        ctx.progress(
            {"phase": phase.name, "event": "start", "resumed": resumed, "train": len(train), "val": len(val)}
        )
        try:
            result: Any = gepa.optimize(
                seed_candidate={COMPONENT: start.system},
                trainset=train,
                valset=val,
                adapter=adapter,  # type: ignore[arg-type]
                reflection_lm=reflection,
                candidate_selection_strategy=phase.candidate_selection,
                reflection_minibatch_size=phase.minibatch_size,
                max_metric_calls=phase.max_metric_calls,
                max_reflection_cost=phase.max_reflection_usd,
                stop_callbacks=[budget],
                selection_strategy=budget,
                sampling_strategy=PxNSampling(phase.parents_per_iteration, phase.mutations_per_parent),
                use_merge=phase.use_merge,
                run_dir=paths.gepa,
                callbacks=[watcher, *ctx.resources.callbacks],  # type: ignore[list-item]
                track_best_outputs=False,
                seed=phase.seed,
                raise_on_exception=True,
            )
        finally:
            if evaluator is not None:
                write_json(paths.trials, [t.__dict__ for t in evaluator.trials[first_trial:]])
            if own:
                pool.close()
        best = result.best_candidate
        assert isinstance(best, dict)
        write_json(paths.reflection, reflection.usage())
        return PhaseOutput(start.with_system(best[COMPONENT]))


GEPA = GepaKind()


def run_gepa_phase(
    config: OptimizeConfig,
    phase: PhaseConfig,
    start: Prompt,
    folder: Path,
    progress: Progress,
    callbacks: Sequence[Any] = (),
    evaluators: CandidateEvaluators | None = None,
) -> Prompt:
    """One GEPA phase outside the schedule (no resume key, no test split): its best prompt."""
    resources = PhaseResources(evaluators=evaluators, callbacks=callbacks)
    return GEPA.run(PhaseContext(config, phase, start, folder, progress, resources)).prompt


# ---------------------------------------------------------------------------------------------
# the budget


def _key(candidate: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(candidate.items()))


class MetricBudget:
    """Keeps one GEPA run within ``limit`` metric calls (one call: one example scored).

    GEPA's iteration (reflective mutation with ``PxNSampling``) spends in three steps: the parents
    on their minibatches, the proposed children on the same minibatches, then the validation set
    for every child accepted.  GEPA counts the calls as they are spent, but checks the budget only
    before an iteration.  So the budget works at all three points:

    - as a stop condition (GEPA's ``StopperProtocol``, called before every iteration): stop when
      what is left cannot pay for one parent minibatch, one child minibatch and one validation
      (with merges on, also for a merge step: a validation subsample and a full validation);
    - as the gate of the adapter's evaluations (:meth:`admit`): a minibatch evaluation runs only
      while the budget left pays for it, for its child's minibatch too when it is a parent's, and
      for one validation; a refused one comes back empty (no scores, no trajectories, no calls),
      which GEPA treats as a parent with nothing to reflect on or a child that did not improve;
    - as the selection strategy (GEPA's ``SelectionStrategy``): the children that pass GEPA's
      acceptance criterion go on to validation, as many as the budget left can validate (the most
      improved first when it cannot validate them all).

    Validation evaluations (every example from the val set) are never refused: the stop condition
    and the selection made room for them.  The one exception is GEPA's own: a resumed run scores the
    seed on the validation set again, which GEPA does not count.
    """

    def __init__(self, limit: int, minibatch: int, val: Sequence[Trace], merges: bool = False) -> None:
        self.limit = limit
        self.val_ids = frozenset(t.id for t in val)
        self.validation = len(val)
        #: the least an iteration can need: a parent's minibatch, its child's, one validation
        self.floor = 2 * minibatch + self.validation
        if merges:
            self.floor = max(self.floor, 2 * self.validation)
        #: metric calls spent, as GEPA counted them at the last check plus what was admitted since
        self.spent = 0
        #: the candidates in GEPA's pool at the last check (a minibatch of theirs is a parent's)
        self.pool: set[tuple[tuple[str, str], ...]] = set()
        #: evaluations refused so far (one per (candidate, examples) pair)
        self.refused = 0
        self._checks = 0
        self._admitted = 0

    def left(self) -> int:
        return self.limit - self.spent

    # GEPA's StopperProtocol
    def __call__(self, gepa_state: Any) -> bool:
        stalled = self._checks > 0 and self._admitted == 0  # the last iteration could pay for nothing
        self._checks += 1
        self._admitted = 0
        self.spent = int(gepa_state.total_num_evals)
        self.pool = {_key(c) for c in gepa_state.program_candidates}
        return stalled or self.left() < self.floor

    def admit(self, pairs: Sequence[tuple[Mapping[str, str], Sequence[Trace]]]) -> list[bool]:
        """Which of one call's (candidate, examples) pairs may be evaluated, in order."""
        verdicts: list[bool] = []
        left = self.left()
        committed = 0  # what the admitted pairs spend, and hold back for what must follow them
        holds_validation = False
        for candidate, traces in pairs:
            size = len(traces)
            if traces and all(t.id in self.val_ids for t in traces):
                verdicts.append(True)  # a validation: room was made for it
                committed += size
                self.spent += size
                continue
            need = 2 * size if _key(candidate) in self.pool else size
            if not holds_validation:
                need += self.validation
            if committed + need <= left:
                verdicts.append(True)
                committed += need
                holds_validation = True
                self.spent += size
            else:
                verdicts.append(False)
                self.refused += 1
        self._admitted += sum(verdicts)
        return verdicts

    # GEPA's SelectionStrategy
    def select(self, proposals: list[Any], state: Any, acceptance_criterion: Any) -> list[Any]:
        self.spent = int(state.total_num_evals)
        passing = [
            p for p in proposals if p.subsample_scores_after and acceptance_criterion.should_accept(p, state)
        ]
        room = self.left() // self.validation if self.validation else len(passing)
        if len(passing) <= room:
            return passing

        def improvement(p: Any) -> float:
            return sum(p.subsample_scores_after) - sum(p.subsample_scores_before or [])

        kept = {id(p) for p in sorted(passing, key=improvement, reverse=True)[: max(0, room)]}
        return [p for p in passing if id(p) in kept]


# ---------------------------------------------------------------------------------------------
# progress and evaluators


class _GepaProgress:
    """A GEPA callback: after every iteration, write the candidates and the progress, and report."""

    def __init__(
        self, phase: PhaseConfig, folder: Path, adapter: Any, reflection: Any, progress: Progress
    ) -> None:
        self.phase, self.folder, self.adapter, self.reflection = phase, folder, adapter, reflection
        self.paths = PhaseLayout(str(folder))
        self.report = progress
        self.started = time.time()

    def snapshot(self, state: Any, report: bool = True) -> dict[str, Any]:
        from gepa.core.result import GEPAResult

        result = GEPAResult.from_state(state)
        front = sorted({i for ids in result.per_val_instance_best_candidates.values() for i in ids})
        candidates: list[dict[str, Any]] = [
            {
                "index": i,
                "instructions": c["instructions"],
                "parents": result.parents[i],
                "val_score": round(result.val_aggregate_scores[i], 4),
                "val_scores": {str(k): v for k, v in result.val_subscores[i].items()},
                "found_after_metric_calls": result.discovery_eval_counts[i],
                "on_pareto_front": i in front,
            }
            for i, c in enumerate(result.candidates)
        ]
        scores = [float(c["val_score"]) for c in candidates]
        best = max(range(len(scores)), key=scores.__getitem__)
        write_json(self.paths.candidates, {"best": best, "pareto_front": front, "candidates": candidates})
        status = {
            "phase": self.phase.name,
            "event": "iteration",
            "iteration": state.i + 1,
            "metric_calls": state.total_num_evals,
            "max_metric_calls": self.phase.max_metric_calls,
            "reflection_usd": round(float(getattr(self.reflection, "total_cost", 0.0)), 6),
            "max_reflection_usd": self.phase.max_reflection_usd,
            "candidates": len(candidates),
            "best_val_score": candidates[best]["val_score"],
            "pareto_front": len(front),
            "elapsed_s": round(time.time() - self.started, 1),
        }
        write_json(self.paths.progress, status)
        if report:
            self.report(status)
        return status

    def on_iteration_end(self, event: Any) -> None:
        self.snapshot(event["state"])

    def on_optimization_end(self, event: Any) -> None:
        state = event.get("final_state") if isinstance(event, dict) else None
        if state is not None:
            self.snapshot(state, report=False)  # the files; the last iteration was reported already


def make_evaluator(config: OptimizeConfig, folder: Path, tune_callbacks: Sequence[Any] = ()) -> Any:
    if config.tune.executor != "tune":
        return None
    from tooldistill.optimize.tune_eval import TuneEvaluator
    from tooldistill.raycluster import ensure_ray

    ensure_ray(config.tune.ray_address)
    return TuneEvaluator(
        config.student,
        OptimizeLayout(str(folder)).tune,
        max_concurrent_trials=config.tune.max_concurrent_trials,
        requests_per_trial=config.tune.requests_per_trial,
        cpus_per_trial=config.tune.cpus_per_trial,
        resources_per_trial=config.tune.resources_per_trial,
        warm_start=config.tune.warm_start,
        callbacks=tune_callbacks,
    )


class CandidateEvaluators:
    """One Tune evaluator for every GEPA phase of a run: its trial actors start once (tens of
    seconds on a small machine) and stay warm from phase 2 into phase 3."""

    def __init__(self, config: OptimizeConfig, tune_callbacks: Sequence[Any] = ()) -> None:
        self.config, self.tune_callbacks = config, tune_callbacks
        self.evaluator: Any = None

    def get(self) -> Any:
        if self.evaluator is None:
            self.evaluator = make_evaluator(self.config, Path(self.config.run_dir), self.tune_callbacks)
        return self.evaluator

    def close(self) -> None:
        if self.evaluator is not None:
            self.evaluator.close()
            self.evaluator = None
