"""The phase-kind registry: one contract for every kind, a schedule that knows no kind by name.

A kind made here (not one of the three shipped) runs through ``optimize`` like the others: its
options are checked at load, its output lands in ``prompt.json`` and ``result.json``, a student it
hands back is the one the phases after it ask, ``on_skip`` runs when its result is on file, and
``exclusive_cpus`` frees the candidate evaluators before it.  GEPA's budget gate is checked on its
own rules here; the end-to-end budget test is in ``test_optimize.py``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tooldistill.optimize import run
from tooldistill.optimize.phases import (
    PHASE_KINDS,
    PhaseContext,
    PhaseKind,
    PhaseOutput,
    phase_kind,
    register,
)
from tooldistill.optimize.phases.gepa import MetricBudget
from tooldistill.optimize.run import OptimizeError, config_from_dict, load_config, optimize
from tooldistill.optimize.student import Prompt, StudentSettings
from tooldistill.optimize.testing import StudentServer, make_traces, write_traces

DATA = {"train": "a", "val": "b", "test": "c"}
OPTIMIZE_CONFIGS = sorted((Path(__file__).parent.parent / "configs" / "optimize").glob("*.yaml"))


def test_the_shipped_kinds_and_their_hooks() -> None:
    assert sorted(PHASE_KINDS) == ["dicl", "dspy", "finetune", "gepa", "reward"]
    assert all(isinstance(kind, PhaseKind) and kind.name == name for name, kind in PHASE_KINDS.items())
    assert sorted(n for n, k in PHASE_KINDS.items() if k.exclusive_cpus) == ["finetune", "reward"]
    sections = {n: k.section for n, k in PHASE_KINDS.items() if k.section}
    assert sections == {"finetune": "finetune", "dicl": "dicl", "reward": "reward"}
    assert [n for n, k in PHASE_KINDS.items() if k.needs_embeddings] == ["dicl"]
    with pytest.raises(ValueError, match="registered already"):
        register(type("Again", (PhaseKind,), {"name": "gepa"})())


def test_an_unknown_kind_names_the_known_ones() -> None:
    with pytest.raises(
        OptimizeError, match="unknown phase kind 'distill'; known kinds: dicl, dspy, finetune, gepa, reward"
    ):
        config_from_dict({"run_dir": "r", "data": DATA, "phases": [{"name": "p", "kind": "distill"}]})
    with pytest.raises(ValueError, match="known kinds"):
        phase_kind("nope")


@pytest.mark.parametrize("path", OPTIMIZE_CONFIGS, ids=lambda p: p.name)
def test_every_optimize_config_still_loads(path: Path) -> None:
    config = load_config(str(path))
    assert config.phases and all(p.kind in PHASE_KINDS for p in config.phases)


class Stamp(PhaseKind):
    """A kind for the test: appends its word to the instructions; with ``model``, it also changes
    the student's model name (as a finetune phase does)."""

    name = "stamp"
    exclusive_cpus = True

    def __init__(self, model: str | None = None) -> None:
        self.model = model
        self.runs: list[PhaseContext] = []
        self.skips: list[Mapping[str, Any]] = []

    def validate(self, phase: Any) -> None:
        if phase.train > 100:
            raise ValueError("a stamp phase takes at most 100 traces")

    def run(self, ctx: PhaseContext) -> PhaseOutput:
        self.runs.append(ctx)
        student = ctx.student.model_copy(update={"model": self.model}) if self.model else None
        prompt = Prompt(f"{ctx.start.system} {ctx.phase.name}.", ctx.start.demos)
        return PhaseOutput(prompt, student, {"stamp": {"train": len(ctx.train), "model": ctx.student.model}})

    def on_skip(self, ctx: PhaseContext, result: Mapping[str, Any]) -> StudentSettings | None:
        self.skips.append(result)
        return ctx.student.model_copy(update={"model": self.model}) if self.model else None


class Recorder:
    """Stands for ``CandidateEvaluators``: counts how often the schedule closes it."""

    closed = 0

    def __init__(self, *_: Any) -> None:
        pass

    def close(self) -> None:
        Recorder.closed += 1


def test_a_new_kind_runs_through_the_schedule_like_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stamp = Stamp(model="student-tuned")
    monkeypatch.setitem(PHASE_KINDS, "stamp", stamp)
    monkeypatch.setattr(run, "CandidateEvaluators", Recorder)
    data = {
        name: write_traces(str(tmp_path / name), make_traces(4, start))
        for name, start in (("train", 0), ("val", 100), ("test", 200))
    }
    with pytest.raises(OptimizeError, match="at most 100 traces"):
        config_from_dict(
            {"run_dir": "r", "data": data, "phases": [{"name": "p", "kind": "stamp", "train": 101}]}
        )
    with StudentServer() as server:
        config = config_from_dict(
            {
                "run_dir": str(tmp_path / "run"), "data": data, "tune": {"executor": "threads"},
                "student": {"endpoint": server.url, "model": "student"},
                "phases": [{"name": "one", "kind": "stamp", "train": 3}, {"name": "two", "kind": "stamp"}],
            }
        )  # fmt: skip
        summary = optimize(config)
        models = [body["model"] for body in server.received]
        # closed before each exclusive phase, when each phase hands on a new student, at the end
        assert Recorder.closed == 5
        again = optimize(config)
    assert [ctx.student.model for ctx in stamp.runs] == ["student", "student-tuned"]
    folder = tmp_path / "run"
    result = json.loads((folder / "one" / "result.json").read_text())
    assert result["stamp"] == {"train": 3, "model": "student"} and result["kind"] == "stamp"
    assert result["student"]["model"] == "student-tuned" and result["train"] == 3
    prompt = json.loads((folder / "two" / "prompt.json").read_text())
    assert prompt["system"].endswith(" one. two.") and prompt["student"]["model"] == "student-tuned"
    # the phases' test splits asked the student the phase before them handed on
    assert "student-tuned" in models and summary["best_phase"] in ("one", "two")
    # done before: skipped, the kind's on_skip hands the student on again
    assert len(stamp.runs) == 2 and [r["phase"] for r in stamp.skips] == ["one", "two"]
    assert again["phases"] == summary["phases"]


def _state(spent: int, *candidates: str) -> Any:
    return SimpleNamespace(
        total_num_evals=spent, program_candidates=[{"instructions": c} for c in candidates]
    )


def test_the_budget_refuses_what_it_cannot_pay_for() -> None:
    train, val = make_traces(12), make_traces(6, 100)
    budget = MetricBudget(40, minibatch=3, val=val)
    assert budget.admit([({"instructions": "seed"}, val)]) == [True]  # the seed's validation
    assert budget(_state(6, "seed")) is False  # 34 left: at least one parent, child, validation
    parent = {"instructions": "seed"}
    # parents hold room for their child's minibatch and one validation: 6 + 6 + 6 + 6 + 6 <= 34
    pairs = [(parent, train[i : i + 3]) for i in range(0, 12, 3)]
    assert budget.admit(pairs) == [True, True, True, True]
    assert budget.spent == 18
    # children: their minibatch and one validation must fit (22 left)
    children = [({"instructions": f"child {i}"}, train[:3]) for i in range(6)]
    assert budget.admit(children) == [True] * 5 + [False] and budget.spent == 33
    assert budget.refused == 1
    # the validation of a selected child is never refused: selection made room for it
    accepted = SimpleNamespace(subsample_scores_after=[1.0] * 3, subsample_scores_before=[0.0] * 3)
    better = SimpleNamespace(subsample_scores_after=[1.0] * 3, subsample_scores_before=[0.5] * 3)
    unasked = SimpleNamespace(subsample_scores_after=[], subsample_scores_before=[0.0] * 3)
    every = SimpleNamespace(should_accept=lambda p, s: True)
    assert budget.select([better, accepted, unasked], _state(33), every) == [accepted]  # 7 left: one
    assert budget.select([better, accepted], _state(20), every) == [better, accepted]
    assert budget(_state(39, "seed", "child 0")) is True  # 1 left: not one parent and child


def test_the_budget_stops_an_iteration_that_could_pay_for_nothing() -> None:
    val = make_traces(2, 100)
    budget = MetricBudget(100, minibatch=3, val=val)
    assert budget(_state(2, "seed")) is False
    assert budget.admit([({"instructions": "seed"}, make_traces(60))]) == [False]  # too big a batch
    assert budget(_state(2, "seed")) is True  # nothing went through: it would loop for ever


def test_a_finetune_phase_hands_on_its_student_and_serves_it_again_when_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The finetune kind's wiring, with the training and serving stood in for: its row and student
    in ``result.json`` (as before the registry), the adapter named in ``prompt.json``, and a skipped
    phase serving its student again for the phases after it."""
    from tooldistill.finetune import phase as finetune_phase
    from tooldistill.layout import PhaseLayout

    served: list[str] = []

    def trained(traces: Any, options: Any, name: str, start: Any, student: Any, folder: Path, host: Any,
                progress: Any, threads: Any = None, reserve: Any = ()) -> Any:  # fmt: skip
        record = {
            "examples": {"examples": len(traces), "calls": 3, "no_calls": 1, "tokens": 99, "left_out": {}},
            "training": {"steps": 2, "train_seconds": 1.5, "tokens_per_s": 66.0, "final_loss": 0.5,
                         "device": "cpu"},
            "adapter": {"adapter_bytes": 10, "adapter_sha256": "ab" * 32, "base_model": "base", "path": "a"},
            "served_model": f"student-{name}", "merged": "m",
        }  # fmt: skip
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "finetune.json").write_text(json.dumps(record))
        assert PhaseLayout(str(folder)).finetune == str(folder / "finetune.json")
        assert len(reserve) == 4 - len(traces)  # the rest of the train split
        served.append(record["served_model"])
        return student.model_copy(update={"model": record["served_model"]}), record

    monkeypatch.setattr(finetune_phase, "run_finetune_phase", trained)
    monkeypatch.setitem(PHASE_KINDS, "stamp", Stamp())
    data = {
        name: write_traces(str(tmp_path / name), make_traces(4, start))
        for name, start in (("train", 0), ("val", 100), ("test", 200))
    }
    with StudentServer() as server:
        config = config_from_dict(
            {
                "run_dir": str(tmp_path / "run"), "data": data, "tune": {"executor": "threads"},
                "student": {"endpoint": server.url, "model": "student"},
                "phases": [{"name": "ft", "kind": "finetune", "train": 3}, {"name": "after", "kind": "stamp"}],
            }
        )  # fmt: skip
        summary = optimize(config, host=object())
        optimize(config, host=object())
    assert served == ["student-ft", "student-ft"]  # trained and served, then served again
    result = json.loads((tmp_path / "run" / "ft" / "result.json").read_text())
    assert list(result)[:4] == ["student", "finetune", "phase", "kind"]
    assert result["student"]["model"] == "student-ft" and result["finetune"]["steps"] == 2
    assert summary["phases"][0]["finetune"]["served_model"] == "student-ft"
    note = json.loads((tmp_path / "run" / "after" / "prompt.json").read_text())["student"]
    assert note["model"] == "student-ft" and note["adapter_sha256"] == "ab" * 32


class Sectioned(PhaseKind):
    """A kind added later with options of its own (``tally: {...}``), none of PhaseConfig's fields."""

    name = "tally"
    section = "tally"

    def validate(self, phase: Any) -> None:
        options = phase.section("tally") or {}
        if options.get("steps", 1) < 1:
            raise ValueError("tally: steps must be at least 1")


def test_a_kind_with_its_own_section_needs_no_config_field(monkeypatch: pytest.MonkeyPatch) -> None:
    from tooldistill.optimize.config import PhaseConfig

    monkeypatch.setitem(PHASE_KINDS, "tally", Sectioned())
    phase = PhaseConfig.model_validate({"name": "p", "kind": "tally", "tally": {"steps": 3}})
    assert phase.section("tally") == {"steps": 3} and phase.section("finetune") is None
    assert PhaseConfig.model_validate(phase.model_dump(mode="json")) == phase  # config.json round trip
    with pytest.raises(ValueError, match="steps must be at least 1"):
        PhaseConfig.model_validate({"name": "p", "kind": "tally", "tally": {"steps": 0}})
    with pytest.raises(ValueError, match="a 'tally' section belongs to a tally phase"):
        PhaseConfig.model_validate({"name": "p", "kind": "gepa", "tally": {"steps": 3}})
    plain = PhaseConfig(name="p", kind="gepa")
    assert "sections" not in plain.model_dump()  # hashes and stamps of existing phases unchanged
