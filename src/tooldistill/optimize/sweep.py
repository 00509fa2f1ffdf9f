"""``tooldistill sweep``: a Ray Tune search whose every trial is an optimize-and-evaluate run.

A sweep config names a base optimize config (a path, or inline under ``optimize``) and a search
space of dotted keys into it::

    optimize: configs/optimize/cpu-smollm2.yaml
    run_dir: runs/sweep
    space:
      student.temperature: [0.0, 0.7]                 # a list: grid search
      phases.*.max_bootstrapped_demos: [2, 4]         # phases.* reaches every phase
      phases.phase2.minibatch_size: {choice: [3, 5]}  # sampled: choice, uniform, loguniform, randint
    num_samples: 1
    metric: test_rate                                 # the last phase's test match rate
    resources_per_trial: {cpu: 1}                     # {gpu: 1} on a cluster: trials spread over GPU nodes
    max_concurrent_trials: 2

Each trial runs ``optimize`` in its own run folder (``RUN/trial-<id>``) with GEPA's candidate
evaluations in threads inside the trial (a trial is already one Tune worker; nesting a second Tune
experiment in it would compete for the same resources).  The result is one row per trial: the
parameters, the test match rate of every phase, the best phase; written to ``RUN/results.json``
and returned sorted by the metric.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tooldistill import store
from tooldistill.optimize.run import OptimizeError, config_from_dict, optimize


class SweepConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    optimize: str | dict[str, Any]
    run_dir: str
    space: dict[str, Any]
    num_samples: int = Field(default=1, ge=1)
    metric: str = "test_rate"
    mode: str = "max"
    resources_per_trial: dict[str, float] = Field(default_factory=lambda: {"cpu": 1.0})
    max_concurrent_trials: int | None = None
    #: Which phases each trial runs (``all`` or one phase).
    phase: str = "all"
    ray_address: str | None = None


def load_sweep(path: str) -> SweepConfig:
    import yaml

    try:
        raw = yaml.safe_load(store.read_file(path).decode("utf-8")) or {}
        return SweepConfig.model_validate(raw)
    except (store.StoreError, yaml.YAMLError, ValueError) as error:
        raise OptimizeError(f"cannot use sweep config {path}: {error}") from error


def base_config(sweep: SweepConfig) -> dict[str, Any]:
    if isinstance(sweep.optimize, dict):
        return dict(sweep.optimize)
    import yaml

    try:
        return dict(yaml.safe_load(store.read_file(sweep.optimize).decode("utf-8")) or {})
    except (store.StoreError, yaml.YAMLError) as error:
        raise OptimizeError(f"cannot read optimize config {sweep.optimize}: {error}") from error


def search_space(space: dict[str, Any]) -> dict[str, Any]:
    """Tune's search space from the sweep's: lists are grids, ``{kind: args}`` are samplers."""
    from ray import tune

    samplers = {
        "choice": lambda a: tune.choice(a),
        "uniform": lambda a: tune.uniform(*a),
        "loguniform": lambda a: tune.loguniform(*a),
        "randint": lambda a: tune.randint(*a),
    }
    out: dict[str, Any] = {}
    for key, value in space.items():
        if isinstance(value, list):
            out[key] = tune.grid_search(value)
        elif isinstance(value, dict) and len(value) == 1 and next(iter(value)) in samplers:
            kind, args = next(iter(value.items()))
            out[key] = samplers[kind](args)
        else:
            out[key] = value
    return out


def sweep_trial(config: dict[str, Any]) -> None:
    """One Tune trial: optimize with the trial's parameters, then report the phases' test rates."""
    from ray import tune

    base = json.loads(config["__base"])
    params = {k: v for k, v in config.items() if not k.startswith("__")}
    trial_dir = os.path.join(config["__run_dir"], f"trial-{tune.get_context().get_trial_id()}")
    overrides = {**params, "run_dir": trial_dir, "tune.executor": "threads"}
    optimize_config = config_from_dict(base, overrides)
    summary = optimize(optimize_config, phase=config["__phase"])
    rates = {p["phase"]: p["test"].get("rate") for p in summary["phases"]}
    last = summary["phases"][-1]["test"]
    tune.report(
        {
            "test_rate": last.get("rate"),
            "test_ci95": last.get("ci95"),
            "baseline_rate": summary["baseline"].get("rate"),
            "phase_rates": json.dumps(rates),
            "best_phase": summary["best_phase"],
            "run_dir": trial_dir,
        }
    )


def run_sweep(sweep: SweepConfig) -> list[dict[str, Any]]:
    """Run the sweep; returns one row per trial, best first."""

    from ray import tune

    from tooldistill.raycluster import ensure_ray

    if not sweep.space:
        raise OptimizeError("the sweep has an empty search space")
    base = base_config(sweep)
    run_dir = os.path.abspath(sweep.run_dir)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    ensure_ray(sweep.ray_address)
    space = search_space(sweep.space)
    space.update({"__base": json.dumps(base), "__run_dir": run_dir, "__phase": sweep.phase})
    tuner = tune.Tuner(
        tune.with_resources(sweep_trial, sweep.resources_per_trial),
        param_space=space,
        tune_config=tune.TuneConfig(
            num_samples=sweep.num_samples,
            max_concurrent_trials=sweep.max_concurrent_trials,
            trial_dirname_creator=lambda trial: trial.trial_id,
        ),
        run_config=tune.RunConfig(storage_path=os.path.join(run_dir, "tune"), name="sweep", verbose=0),
    )
    results = tuner.fit()
    rows = []
    for index in range(len(results)):
        result = results[index]
        params = {k: v for k, v in (result.config or {}).items() if not k.startswith("__")}
        metrics = result.metrics or {}
        row = {
            "params": params,
            "test_rate": metrics.get("test_rate"),
            "test_ci95": metrics.get("test_ci95"),
            "baseline_rate": metrics.get("baseline_rate"),
            "phase_rates": json.loads(metrics["phase_rates"]) if metrics.get("phase_rates") else {},
            "best_phase": metrics.get("best_phase"),
            "run_dir": metrics.get("run_dir"),
            "error": str(result.error) if result.error else None,
        }
        rows.append(row)
    key = sweep.metric
    rows.sort(
        key=lambda r: (r.get(key) is None, -(r.get(key) or 0.0) if sweep.mode == "max" else r.get(key) or 0.0)
    )
    Path(run_dir, "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows
