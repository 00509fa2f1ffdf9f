"""MLflow tracking of a run (``tracking.mlflow`` in the run config): every GEPA candidate as a Ray
Tune trial in ``<experiment>-candidates``, and one run per pipeline run in ``<experiment>`` with
the match rate of the baseline and of each phase, and each finetune phase's loss curve,
tokens/s and training time."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tooldistill.config import PipelineConfig
from tooldistill.layout import OptimizeLayout
from tooldistill.stage import PipelineError

Finish = Callable[[dict[str, Any]], None]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def tracking(config: PipelineConfig, run_dir: str, optimize_folder: Path) -> tuple[list[Any], Finish]:
    """Ray Tune callbacks for the candidates, and what logs the run's summary when it is done;
    no callbacks and nothing to do when tracking is off."""
    settings = config.tracking.mlflow
    if settings is None:
        return [], lambda _: None
    try:
        import mlflow
        from ray.air.integrations.mlflow import MLflowLoggerCallback
    except ImportError:
        raise PipelineError("tracking.mlflow needs MLflow: pip install 'tooldistill[tracking]'") from None
    callback = MLflowLoggerCallback(
        tracking_uri=settings.tracking_uri,
        experiment_name=f"{settings.experiment}-candidates",
        save_artifact=False,
    )

    def finish(summary: dict[str, Any]) -> None:
        mlflow.set_tracking_uri(settings.tracking_uri)
        mlflow.set_experiment(settings.experiment)
        with mlflow.start_run(run_name=config.name):
            mlflow.log_param("run_dir", run_dir)
            mlflow.log_param("best_phase", summary["best_phase"])
            baseline = summary["baseline"]
            if baseline.get("rate") is not None:
                mlflow.log_metric("match_rate_baseline", baseline["rate"])
            for phase in summary["phases"]:
                if phase["test"].get("rate") is not None:
                    mlflow.log_metric(f"match_rate_{phase['phase']}", phase["test"]["rate"])
                if "finetune" in phase:  # the training's loss per step, tokens/s and time
                    name, row = phase["phase"], phase["finetune"]
                    record = _read_json(Path(OptimizeLayout(str(optimize_folder)).phase(name).finetune)) or {}
                    for point in (record.get("training") or {}).get("loss_curve") or []:
                        mlflow.log_metric(f"train_loss_{name}", point["loss"], step=point["step"])
                    for key in ("tokens_per_s", "train_seconds", "final_loss"):
                        if row.get(key) is not None:
                            mlflow.log_metric(f"train_{key}_{name}", row[key])

    return [callback], finish
