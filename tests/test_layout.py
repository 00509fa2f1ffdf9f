"""The run folder's layout: every path ``RunLayout`` names is the literal the code spelled before
it, for relative, local and ``s3://`` roots."""

from __future__ import annotations

from dataclasses import FrozenInstanceError
from pathlib import Path
from typing import Any

import pytest

from tooldistill.curate import registry
from tooldistill.layout import CurateLayout, RunLayout, TeacherLayout, join, manifest, parent_and_name
from tooldistill.runlock import LOCK_NAME

#: The literal each attribute replaced (relative to the run folder), and how to reach it.
LEGACY: list[tuple[str, Any]] = [
    ("run.json", lambda r: r.run_record),
    ("run.log", lambda r: r.run_log),
    ("student.json", lambda r: r.student_record),
    (LOCK_NAME, lambda r: r.lock),
    ("traces", lambda r: r.traces),
    ("traces/quarantine-abc.jsonl", lambda r: r.quarantine("quarantine-abc.jsonl")),
    ("teacher", lambda r: r.teacher),
    ("teacher/summary.json", lambda r: r.teacher_summary),
    ("teacher/requests", lambda r: r.teacher_requests),
    ("adapters", lambda r: r.adapters),
    ("train/phase2", lambda r: r.training("phase2")),
    ("curate", lambda r: r.curate.root),
    ("curate/embedded", lambda r: r.curate.embedded),
    ("curate/deduped", lambda r: r.curate.deduped),
    ("curate/deduped/decisions", lambda r: r.curate.dedup_decisions),
    ("curate/curated", lambda r: r.curate.curated),
    ("curate/curated/decisions", lambda r: r.curate.car_decisions),
    ("curate/split", lambda r: r.curate.split),
    ("curate/split/train", lambda r: r.curate.train),
    ("curate/split/val", lambda r: r.curate.val),
    ("curate/split/test", lambda r: r.curate.test),
    ("curate/split/test", lambda r: r.curate.split_part("test")),
    ("curate/funnel.json", lambda r: r.curate.funnel),
    ("optimize", lambda r: r.optimize.root),
    ("optimize/config.json", lambda r: r.optimize.config),
    ("optimize/baseline.json", lambda r: r.optimize.baseline),
    ("optimize/baseline.answers.jsonl", lambda r: r.optimize.baseline_answers),
    ("optimize/summary.json", lambda r: r.optimize.summary),
    ("optimize/stamp.json", lambda r: r.optimize.stamp),
    ("optimize/tune", lambda r: r.optimize.tune),
    ("optimize/best", lambda r: r.optimize.best),
    ("optimize/best/prompt.json", lambda r: r.optimize.best_prompt),
    ("optimize/best/program.json", lambda r: r.optimize.best_program),
    ("optimize/phase2", lambda r: r.optimize.phase("phase2").root),
    ("optimize/phase2/key.json", lambda r: r.optimize.phase("phase2").key),
    ("optimize/phase2/result.json", lambda r: r.optimize.phase("phase2").result),
    ("optimize/phase2/progress.json", lambda r: r.optimize.phase("phase2").progress),
    ("optimize/phase2/candidates.json", lambda r: r.optimize.phase("phase2").candidates),
    ("optimize/phase2/trials.json", lambda r: r.optimize.phase("phase2").trials),
    ("optimize/phase2/reflection.json", lambda r: r.optimize.phase("phase2").reflection),
    ("optimize/phase2/prompt.json", lambda r: r.optimize.phase("phase2").prompt),
    ("optimize/phase2/program.json", lambda r: r.optimize.phase("phase2").program),
    ("optimize/phase2/test.json", lambda r: r.optimize.phase("phase2").test),
    ("optimize/phase2/test.answers.jsonl", lambda r: r.optimize.phase("phase2").test_answers),
    ("optimize/phase2/tune", lambda r: r.optimize.phase("phase2").tune),
    ("optimize/phase2/gepa", lambda r: r.optimize.phase("phase2").gepa),
    ("optimize/phase2/gepa/gepa_state.bin", lambda r: r.optimize.phase("phase2").gepa_state),
    ("optimize/phase3/finetune.json", lambda r: r.optimize.phase("phase3").finetune),
    ("optimize/phase3/examples.jsonl", lambda r: r.optimize.phase("phase3").examples),
    ("optimize/phase3/examples.json", lambda r: r.optimize.phase("phase3").examples_summary),
    ("optimize/phase3/train_log.jsonl", lambda r: r.optimize.phase("phase3").train_log),
    ("optimize/phase3/train_result.json", lambda r: r.optimize.phase("phase3").train_result),
    ("optimize/phase3/train_worker_1.log", lambda r: r.optimize.phase("phase3").train_worker_log(1)),
    ("optimize/phase3/checkpoints", lambda r: r.optimize.phase("phase3").checkpoints),
    ("optimize/phase3/adapter", lambda r: r.optimize.phase("phase3").adapter),
    ("optimize/phase3/merged", lambda r: r.optimize.phase("phase3").merged),
    ("optimize/phase3/ray", lambda r: r.optimize.phase("phase3").ray),
    ("report", lambda r: r.report.root),
    ("report/report.md", lambda r: r.report.markdown),
    ("report/report.html", lambda r: r.report.html),
    ("report/funnel.png", lambda r: r.report.funnel_figure),
    ("report/eps_curve.png", lambda r: r.report.eps_figure),
    ("report/cluster_sizes.png", lambda r: r.report.clusters_figure),
    ("report/match_rates.png", lambda r: r.report.match_rates_figure),
    ("report/loss_curve.png", lambda r: r.report.loss_figure),
    ("report/confusion.png", lambda r: r.report.confusion_figure),
]


@pytest.mark.parametrize("root", ["", "runs/demo", "/tmp/runs/demo/", "s3://bucket/runs/demo"])
def test_every_path_is_the_literal_it_replaced(root: str) -> None:
    layout = RunLayout(root)
    prefix = root.rstrip("/") + "/" if root else ""
    for literal, path in LEGACY:
        assert path(layout) == prefix + literal, literal


def test_relative_local_and_path_roots() -> None:
    assert RunLayout.relative() == RunLayout("") == RunLayout()
    assert RunLayout(Path("runs/demo")).run_record == "runs/demo/run.json"
    assert RunLayout("/").run_record == "/run.json"
    assert RunLayout("s3://bucket").curate.funnel == "s3://bucket/curate/funnel.json"
    assert CurateLayout("out").dedup_decisions == "out/deduped/decisions"  # curate all --out
    assert TeacherLayout("out").summary == "out/summary.json"  # teacher capture --out
    assert join("", "a", "b") == "a/b" and join("s3://b/", "a") == "s3://b/a"
    assert manifest("curate/deduped") == "curate/deduped/manifest.json"
    assert parent_and_name("s3://bucket/run/curate/funnel.json") == ("s3://bucket/run/curate", "funnel.json")


def test_groups_and_immutability() -> None:
    layout = RunLayout("run")
    phase = layout.optimize.phase("phase1")
    assert layout.plain_files == ("run/run.json", "run/run.log", "run/student.json")
    assert layout.plain_folders == ("run/optimize", "run/report")
    assert set(phase.restart_files) == {
        f"run/optimize/phase1/{name}"
        for name in ("result.json", "progress.json", "candidates.json", "finetune.json", "reward.json", "examples.json",
                     "examples.jsonl", "train_log.jsonl", "train_result.json", "test.answers.jsonl")
    }  # fmt: skip
    assert phase.restart_folders == tuple(
        f"run/optimize/phase1/{name}" for name in ("gepa", "checkpoints", "adapter", "merged", "ray")
    )
    assert len(set(layout.report.figures)) == 7
    # the registry's stages, optional ones too: what a standalone command must not be writing
    assert layout.curate.outputs == tuple(f"run/curate/{entry.folder}" for entry in registry.STAGES)
    assert {"run/curate/embedded", "run/curate/deduped", "run/curate/curated", "run/curate/split"} <= set(
        layout.curate.outputs
    )
    assert layout.stage_outputs == ("run/traces", "run/teacher", *layout.curate.outputs, "run/optimize")
    assert layout.curate.output("semdedup") == layout.curate.deduped
    with pytest.raises(FrozenInstanceError):
        layout.root = "other"  # type: ignore[misc]
