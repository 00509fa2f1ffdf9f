"""The run folder's layout: one place that names every path a run writes and reads.

``RunLayout(root)`` takes a local folder, an ``s3://`` URI, or ``""`` for paths relative to the
run folder (the report reads a run folder by relative name).  Every attribute is a string: the
root joined with the part's name, with ``/`` as the separator whatever the root is.  Stages, the
pipeline and the report ask the layout instead of spelling the names, so a name changes in one
place.  The names are those run folders have always had; ``tests/test_layout.py`` holds the list
of literals they replaced, and a run folder written before the layout still reads the same.

::

    RUN/run.json, run.log, student.json, .lock          the run's record, log, student, lock
    RUN/traces/                                           ingest output (+ quarantine-*.jsonl)
    RUN/teacher/ (+ summary.json, requests/)              teacher capture, its cache (TeacherLayout)
    RUN/curate/embedded|deduped|fitting|curated|split/ ... curation, one dataset per stage (CurateLayout)
    RUN/curate/funnel.json                                the data funnel in numbers
    RUN/optimize/ (config, baseline, summary, best/, <phase>/)   OptimizeLayout, PhaseLayout
    RUN/train/<phase>/                                    Ray Train's checkpoints of an s3:// run's finetune phase
    RUN/adapters/                                         LoRA adapters served from a cloud run folder
    RUN/report/ (report.md, report.html, *.png)           ReportLayout
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from tooldistill.curate import registry
from tooldistill.store import MANIFEST


def join(root: str, *names: str) -> str:
    """``root/name/...``; with an empty root the bare relative name."""
    path = root
    for name in names:
        path = f"{path.rstrip('/')}/{name}" if path else name
    return path


def manifest(dataset: str) -> str:
    """The manifest file of the dataset folder ``dataset``."""
    return join(dataset, MANIFEST)


def parent_and_name(path: str) -> tuple[str, str]:
    """``path`` cut before its last part, as ``store.write_file(folder, name, data)`` takes it."""
    folder, _, name = path.rstrip("/").rpartition("/")
    return folder, name


def _root(value: str | os.PathLike[str]) -> str:
    return os.fspath(value)


@dataclass(frozen=True)
class TeacherLayout:
    """A teacher capture's output folder (``RUN/teacher``, or ``tooldistill teacher capture --out``):
    the dataset itself, its summary and its request cache."""

    root: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", _root(self.root))

    @property
    def summary(self) -> str:
        """The capture's summary: requests, tokens, cost and the teacher's consistency."""
        return join(self.root, "summary.json")

    @property
    def requests(self) -> str:
        """The default request cache (one JSON file per answer, ``batches/`` for batch state)."""
        return join(self.root, "requests")


@dataclass(frozen=True)
class CurateLayout:
    """The curate folder (``RUN/curate``, or ``tooldistill curate all --out``): one dataset per
    stage, each skipped on its own when its input and options are unchanged."""

    root: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", _root(self.root))

    def output(self, stage: str) -> str:
        """The output dataset of the curation stage called ``stage`` (``curate.registry``)."""
        return join(self.root, registry.stage(stage).folder)

    @property
    def outputs(self) -> tuple[str, ...]:
        """Every curation stage's output, in the registry's order (optional stages included)."""
        return tuple(self.output(entry.name) for entry in registry.STAGES)

    @property
    def embedded(self) -> str:
        """The traces with an ``embedding`` column (not written when the input came embedded)."""
        return join(self.root, "embedded")

    @property
    def deduped(self) -> str:
        """SemDeDup's kept traces; its manifest's stats hold the removal rates per ε."""
        return join(self.root, "deduped")

    @property
    def dedup_decisions(self) -> str:
        """Every trace SemDeDup read with its cluster, highest similarity and kept flag."""
        return join(self.deduped, "decisions")

    @property
    def curated(self) -> str:
        """The CaR selection (the best traces per cluster and overall)."""
        return join(self.root, "curated")

    @property
    def car_decisions(self) -> str:
        """Every trace CaR scored, with its score and whether it was selected."""
        return join(self.curated, "decisions")

    @property
    def split(self) -> str:
        """The split stage's dataset (every trace with its part); the parts are folders in it."""
        return join(self.root, "split")

    def split_part(self, name: str) -> str:
        """One part of the split: ``train``, ``val`` or ``test``."""
        return join(self.split, name)

    @property
    def train(self) -> str:
        """The train split."""
        return self.split_part("train")

    @property
    def val(self) -> str:
        """The validation split."""
        return self.split_part("val")

    @property
    def test(self) -> str:
        """The test split."""
        return self.split_part("test")

    @property
    def funnel(self) -> str:
        """``funnel.json``: traces in and out of every curate stage, and SemDeDup's rates."""
        return join(self.root, "funnel.json")


@dataclass(frozen=True)
class PhaseLayout:
    """One optimize phase's folder (``RUN/optimize/<phase name>``)."""

    root: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", _root(self.root))

    @property
    def key(self) -> str:
        """The phase's input key, written first: other inputs start the phase over."""
        return join(self.root, "key.json")

    @property
    def result(self) -> str:
        """The finished phase's record: kind, train count, test summary, time."""
        return join(self.root, "result.json")

    @property
    def progress(self) -> str:
        """GEPA's progress while it runs: metric calls against the budget, reflection dollars."""
        return join(self.root, "progress.json")

    @property
    def candidates(self) -> str:
        """GEPA's candidates with their validation scores, the Pareto front and the best."""
        return join(self.root, "candidates.json")

    @property
    def trials(self) -> str:
        """GEPA's candidate evaluations as Ray Tune trials."""
        return join(self.root, "trials.json")

    @property
    def reflection(self) -> str:
        """The reflection model's usage in this phase: calls, tokens, dollars."""
        return join(self.root, "reflection.json")

    @property
    def prompt(self) -> str:
        """The phase's prompt (system text and few-shot messages), as the student takes it."""
        return join(self.root, "prompt.json")

    @property
    def program(self) -> str:
        """The phase's prompt as a saved DSPy program."""
        return join(self.root, "program.json")

    @property
    def test(self) -> str:
        """The test split's summary and every outcome, for the confusion table."""
        return join(self.root, "test.json")

    @property
    def test_answers(self) -> str:
        """The journal of test answers, one line per finished answer (a killed test resumes)."""
        return join(self.root, "test.answers.jsonl")

    @property
    def tune(self) -> str:
        """Ray Tune's storage for the phase's candidate trials."""
        return join(self.root, "tune")

    @property
    def gepa(self) -> str:
        """GEPA's own run folder (its state, so a killed search resumes)."""
        return join(self.root, "gepa")

    @property
    def gepa_state(self) -> str:
        """GEPA's saved search state."""
        return join(self.gepa, "gepa_state.bin")

    # -- a finetune phase ----------------------------------------------------------------------

    @property
    def finetune(self) -> str:
        """A finetune phase's record: examples, training, adapter, served model."""
        return join(self.root, "finetune.json")

    @property
    def reward(self) -> str:
        """A reward (GRPO) phase's record: prompts, training, reward curve, adapter, served model."""
        return join(self.root, "reward.json")

    @property
    def examples(self) -> str:
        """The prompt-completion rows trained on."""
        return join(self.root, "examples.jsonl")

    @property
    def examples_summary(self) -> str:
        """What was kept and left out of training, calls against no-calls, per tool and category."""
        return join(self.root, "examples.json")

    @property
    def train_log(self) -> str:
        """Step, loss, tokens/s and ETA per logged training step."""
        return join(self.root, "train_log.jsonl")

    @property
    def train_result(self) -> str:
        """The training's result as its rank-0 worker wrote it."""
        return join(self.root, "train_result.json")

    def train_worker_log(self, rank: int) -> str:
        """The output of the Ray Train worker of this rank."""
        return join(self.root, f"train_worker_{rank}.log")

    @property
    def checkpoints(self) -> str:
        """Hugging Face checkpoints (a killed training resumes from the newest)."""
        return join(self.root, "checkpoints")

    @property
    def adapter(self) -> str:
        """The PEFT adapter and its ``tooldistill-adapter.json``."""
        return join(self.root, "adapter")

    @property
    def merged(self) -> str:
        """Base model and adapter merged into one model folder (``serve_as: merged``)."""
        return join(self.root, "merged")

    @property
    def ray(self) -> str:
        """Ray Train's storage for the training run."""
        return join(self.root, "ray")

    @property
    def restart_files(self) -> tuple[str, ...]:
        """The files removed when the phase starts over with other inputs."""
        return (
            self.result, self.progress, self.candidates, self.finetune, self.reward, self.examples_summary,
            self.examples, self.train_log, self.train_result, self.test_answers,
        )  # fmt: skip

    @property
    def restart_folders(self) -> tuple[str, ...]:
        """The folders removed when the phase starts over with other inputs."""
        return (self.gepa, self.checkpoints, self.adapter, self.merged, self.ray)


@dataclass(frozen=True)
class OptimizeLayout:
    """The optimize folder (``RUN/optimize``, the optimize config's ``run_dir``)."""

    root: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", _root(self.root))

    @property
    def config(self) -> str:
        """The optimize config as it ran (data, student, reflection, phases)."""
        return join(self.root, "config.json")

    @property
    def baseline(self) -> str:
        """The seed prompt measured on the test split, before any phase."""
        return join(self.root, "baseline.json")

    @property
    def baseline_answers(self) -> str:
        """The journal of the baseline's test answers (a killed baseline asks only the rest)."""
        return join(self.root, "baseline.answers.jsonl")

    @property
    def summary(self) -> str:
        """Every phase's test summary, the baseline's and the best phase."""
        return join(self.root, "summary.json")

    @property
    def tune(self) -> str:
        """Ray Tune's storage: every candidate evaluation of every GEPA phase of the run (one
        evaluator per run, so its trial actors stay warm from phase to phase)."""
        return join(self.root, "tune")

    @property
    def stamp(self) -> str:
        """The pipeline's stamp of the inputs the optimize stages ran with (up to date or not)."""
        return join(self.root, "stamp.json")

    @property
    def best(self) -> str:
        """The exported artifact: the best phase's prompt and program."""
        return join(self.root, "best")

    @property
    def best_prompt(self) -> str:
        """The exported prompt (``tooldistill evaluate --prompt`` takes it as it is)."""
        return join(self.best, "prompt.json")

    @property
    def best_program(self) -> str:
        """The exported DSPy program."""
        return join(self.best, "program.json")

    def phase(self, name: str) -> PhaseLayout:
        """The folder of the phase called ``name`` in the optimize config."""
        return PhaseLayout(join(self.root, name))


@dataclass(frozen=True)
class ReportLayout:
    """A report folder (``RUN/report`` by default, or wherever the report is written)."""

    root: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", _root(self.root))

    @property
    def markdown(self) -> str:
        """The report in Markdown, linking the figures beside it."""
        return join(self.root, "report.md")

    @property
    def html(self) -> str:
        """The report as one self-contained HTML file (figures embedded)."""
        return join(self.root, "report.html")

    @property
    def funnel_figure(self) -> str:
        """Traces left after each step of the data funnel."""
        return join(self.root, "funnel.png")

    @property
    def eps_figure(self) -> str:
        """SemDeDup's removal rate against ε."""
        return join(self.root, "eps_curve.png")

    @property
    def clusters_figure(self) -> str:
        """SemDeDup's cluster sizes."""
        return join(self.root, "cluster_sizes.png")

    @property
    def match_rates_figure(self) -> str:
        """The match rate per phase with its interval, and the teacher ceiling."""
        return join(self.root, "match_rates.png")

    @property
    def loss_figure(self) -> str:
        """The finetune phases' training loss per step."""
        return join(self.root, "loss_curve.png")

    @property
    def reward_figure(self) -> str:
        """The reward phases' mean reward per step."""
        return join(self.root, "reward_curve.png")

    @property
    def confusion_figure(self) -> str:
        """Expected against called tool, best phase."""
        return join(self.root, "confusion.png")

    @property
    def figures(self) -> tuple[str, ...]:
        """Every figure a report may draw (an earlier render's are deleted before a new one)."""
        return (
            self.funnel_figure, self.eps_figure, self.clusters_figure, self.match_rates_figure,
            self.loss_figure, self.reward_figure, self.confusion_figure,
        )  # fmt: skip


@dataclass(frozen=True)
class RunLayout:
    """A run folder: a local path, an ``s3://`` URI, or ``""`` for names relative to it."""

    root: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", _root(self.root))

    @classmethod
    def relative(cls) -> RunLayout:
        """The layout with paths relative to the run folder (``run.json``, ``optimize/...``)."""
        return cls("")

    @property
    def run_record(self) -> str:
        """``run.json``: the run's name, masked config, every stage's status, time and detail."""
        return join(self.root, "run.json")

    @property
    def run_log(self) -> str:
        """``run.log``: one line per stage event, and tracebacks of failed stages."""
        return join(self.root, "run.log")

    @property
    def student_record(self) -> str:
        """``student.json``: the served student (endpoint, model, profile, replicas, GPU hours)."""
        return join(self.root, "student.json")

    @property
    def lock(self) -> str:
        """The run lock: one ``tooldistill run`` per run folder (``runlock.LOCK_NAME``)."""
        return join(self.root, ".lock")

    @property
    def traces(self) -> str:
        """The ingest stage's dataset of traces."""
        return join(self.root, "traces")

    def quarantine(self, file_name: str) -> str:
        """The ingest quarantine file ``file_name`` (the traces manifest names it: its name
        carries the run's token)."""
        return join(self.traces, file_name)

    @property
    def teacher(self) -> str:
        """The teacher capture's dataset: the traces with the teacher's samples."""
        return join(self.root, "teacher")

    @property
    def teacher_summary(self) -> str:
        """The capture's summary: requests, tokens, cost and the teacher's consistency."""
        return TeacherLayout(self.teacher).summary

    @property
    def teacher_requests(self) -> str:
        """The teacher's request cache (one JSON file per answer, ``batches/`` for batch state)."""
        return TeacherLayout(self.teacher).requests

    @property
    def curate(self) -> CurateLayout:
        """The curate folder."""
        return CurateLayout(join(self.root, "curate"))

    @property
    def optimize(self) -> OptimizeLayout:
        """The optimize folder: baseline, phases, exported prompt."""
        return OptimizeLayout(join(self.root, "optimize"))

    def training(self, phase: str) -> str:
        """Ray Train's storage for a finetune phase's training when the run folder is on S3 (beside
        the optimize folder, which is staged locally and copied back: ``finetune.train``)."""
        return join(self.root, "train", phase)

    @property
    def adapters(self) -> str:
        """Where LoRA adapters are published for serving when the run folder is on S3 and no
        ``adapter_store`` is configured."""
        return join(self.root, "adapters")

    @property
    def report(self) -> ReportLayout:
        """The report folder ``tooldistill report RUN`` writes by default."""
        return ReportLayout(join(self.root, "report"))

    @property
    def stage_outputs(self) -> tuple[str, ...]:
        """Every dataset a stage of the run writes (ingest, teacher, each curation stage) and the
        optimize folder: what a standalone command must not be writing while the run runs."""
        return (self.traces, self.teacher, *self.curate.outputs, self.optimize.root)

    @property
    def plain_files(self) -> tuple[str, ...]:
        """The run's plain files (not datasets), staged locally while an ``s3://`` run runs."""
        return (self.run_record, self.run_log, self.student_record)

    @property
    def plain_folders(self) -> tuple[str, ...]:
        """The run's plain-file folders, staged locally while an ``s3://`` run runs."""
        return (self.optimize.root, self.report.root)
