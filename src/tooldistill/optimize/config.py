"""The optimize config: the phases of a schedule, the data, the student, reflection and Tune.

The config models only: the schedule that runs them is ``optimize.run``, the phase kinds are
``optimize.phases`` (each validates its own options through ``optimize.kinds`` when a config
loads).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

from tooldistill import store
from tooldistill.optimize import kinds
from tooldistill.optimize.reflection import ReflectionSettings
from tooldistill.optimize.student import StudentSettings
from tooldistill.schema import content_hash


class OptimizeError(ValueError):
    """The optimize config or its inputs cannot be used."""


class TuneSettings(BaseModel):
    """How GEPA's candidate evaluations run as Ray Tune trials."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: ``tune``: one Ray Tune trial per (candidate, examples); ``threads``: a thread pool here.
    executor: Literal["tune", "threads"] = "tune"
    max_concurrent_trials: int = Field(default=8, ge=1)
    requests_per_trial: int = Field(default=4, ge=1)
    #: Ray Tune cannot place a trial that asks for nothing: use a small share (e.g. 0.01), not 0.
    cpus_per_trial: float = Field(default=0.25, gt=0)
    resources_per_trial: dict[str, float] | None = None
    warm_start: bool = True
    ray_address: str | None = None


class PhaseConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    #: One of ``phases.PHASE_KINDS``: ``dspy``, ``gepa``, ``finetune``.
    kind: str
    #: Train examples: the first N of the train split, the N best by CaR quality (``car``), or N
    #: spread over the whole split (``sample``: ordered by trace id, a content hash, so the choice
    #: is fixed but not tied to the split's cluster order).
    train: int = Field(default=50, ge=1)
    select: Literal["first", "car", "sample"] = "first"
    #: Where the train examples come from: the train split, or ``pool``: the train split's (chosen
    #: by ``select``) and, when it holds fewer than ``train``, then every deduplicated trace that
    #: is in no split (CaR left it out), in trace-id order: never a val or test trace.
    source: Literal["train", "pool"] = "train"
    #: Pass over the first ``offset`` traces of that order: a later phase (a reward phase after a
    #: finetune phase, say) takes traces the earlier one did not train on.
    offset: int = Field(default=0, ge=0)
    #: Validation examples GEPA scores candidates on (also random search's / MIPRO's valset).
    val: int = Field(default=50, ge=1)
    # DSPy
    optimizer: Literal["bootstrap", "random_search", "mipro"] = "bootstrap"
    max_bootstrapped_demos: int = Field(default=4, ge=0)
    max_labeled_demos: int = Field(default=0, ge=0)
    num_candidate_programs: int = Field(default=4, ge=1)
    num_threads: int = Field(default=8, ge=1)
    # GEPA
    max_metric_calls: int = Field(default=500, ge=1)
    max_reflection_usd: float | None = Field(default=5.0, ge=0)
    minibatch_size: int = Field(default=3, ge=1)
    #: PxNSampling: P parents, N mutations each = P*N candidates per iteration, evaluated side by side.
    parents_per_iteration: int = Field(default=2, ge=1)
    mutations_per_parent: int = Field(default=4, ge=1)
    candidate_selection: Literal["pareto", "current_best", "epsilon_greedy", "top_k_pareto"] = "pareto"
    use_merge: bool = False
    seed: int = 0
    #: finetune: which examples and how to train (``finetune.phase.FinetuneOptions``).
    finetune: dict[str, Any] | None = None
    #: The own options of a kind registered with a ``section`` that is not a field above (a kind
    #: added later): written in the phase as ``<section>: {...}``, kept here by section name.
    sections: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _kind_sections(cls, data: Any) -> Any:
        """A registered kind's section key (not a field of its own) moves into ``sections``."""
        if not isinstance(data, dict):
            return data
        own = {k.section for k in kinds.KINDS.values() if k.section and k.section not in cls.model_fields}
        moved = {key: data[key] for key in data if key in own}
        if not moved:
            return data
        rest = {key: value for key, value in data.items() if key not in moved}
        return {**rest, "sections": {**(data.get("sections") or {}), **moved}}

    @model_serializer(mode="wrap")
    def _without_empty_sections(self, handler: Any) -> Any:
        """``sections`` left out when empty, ``source`` when the train split, ``offset`` when 0:
        configs, hashes and stamps read as before phases had them."""
        dumped = handler(self)
        if isinstance(dumped, dict) and not dumped.get("sections"):
            dumped.pop("sections", None)
        if isinstance(dumped, dict) and dumped.get("source") == "train":
            dumped.pop("source", None)  # the default, as before phases had a source
        if isinstance(dumped, dict) and dumped.get("offset") == 0:
            dumped.pop("offset", None)
        return dumped

    def section(self, name: str) -> Any:
        """The phase's options section called ``name`` (a field, or one of ``sections``); None when
        it is not written."""
        if name in type(self).model_fields and name != "sections":
            return getattr(self, name)
        return self.sections.get(name)

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        kinds.phase_kind(kind)
        return kind

    @model_validator(mode="after")
    def _kind_options(self) -> PhaseConfig:
        own = kinds.phase_kind(self.kind)
        for other in kinds.KINDS.values():
            if other is not own and other.section and self.section(other.section) is not None:
                raise ValueError(
                    f"phase {self.name}: a '{other.section}' section belongs to a {other.name} phase"
                )
        own.validate(self)
        return self

    def config_hash(self) -> str:
        return content_hash(self.model_dump(mode="json"), 16)


def default_phases() -> list[PhaseConfig]:
    return [
        PhaseConfig(name="phase1", kind="dspy", train=50, optimizer="bootstrap"),
        PhaseConfig(name="phase2", kind="gepa", train=50),
        PhaseConfig(name="phase3", kind="gepa", train=15, select="car"),
    ]


def check_phase_names(phases: Sequence[PhaseConfig]) -> None:
    """A ``ValueError`` unless every phase has a name of its own."""
    names = [p.name for p in phases]
    if len(set(names)) != len(names):
        raise ValueError(f"phase names must be unique: {names}")


class DataSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    train: str
    val: str
    test: str
    #: CaR-curated traces to rank for ``select: car`` (default: the train split, which carries CaR's
    #: ``quality`` column when it was split from ``curate car``'s output).
    curated: str | None = None
    #: Cap on the test examples (None: all).
    test_limit: int | None = None
    #: The traces with their ``embedding`` column, whose manifest names the embedding model: what
    #: a ``dicl`` phase embeds requests with.  Given only to a schedule with a phase that reads it.
    embedded: str | None = None
    #: The deduplicated traces before CaR's selection: where a phase with ``source: pool`` finds
    #: more train examples than the train split holds.  Given only to a schedule that reads it.
    pool: str | None = None

    @model_serializer(mode="wrap")
    def _without_optional(self, handler: Any) -> Any:
        """``embedded`` and ``pool`` left out when not given: configs and resume keys read as
        before they existed."""
        dumped = handler(self)
        if isinstance(dumped, dict):
            for name in OPTIONAL_DATA:
                if dumped.get(name) is None:
                    dumped.pop(name, None)
        return dumped


#: The datasets a run hands its optimize config only when a phase reads them.
OPTIONAL_DATA = ("embedded", "pool")


def data_read_by(phase: PhaseConfig) -> set[str]:
    """Of :data:`OPTIONAL_DATA`, what ``phase`` reads: the run's embeddings for a kind that needs
    them, the pool for ``source: pool``.  The others are not inputs of the phase (nor of its key)."""
    wanted = set()
    if getattr(kinds.phase_kind(phase.kind), "needs_embeddings", False):
        wanted.add("embedded")
    if phase.source == "pool":
        wanted.add("pool")
    return wanted


def optional_data_read(phases: Sequence[PhaseConfig]) -> set[str]:
    """Of :data:`OPTIONAL_DATA`, what any of ``phases`` reads."""
    return set().union(*(data_read_by(p) for p in phases)) if phases else set()


class OptimizeConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    run_dir: str
    data: DataSettings
    student: StudentSettings = Field(default_factory=StudentSettings)
    reflection: ReflectionSettings = Field(default_factory=ReflectionSettings)
    tune: TuneSettings = Field(default_factory=TuneSettings)
    #: The starting prompt: {"system": ..., "demos": [...]}, or a path to a prompt artifact.
    seed_prompt: dict[str, Any] | str | None = None
    phases: list[PhaseConfig] = Field(default_factory=default_phases)

    @model_validator(mode="after")
    def _unique(self) -> OptimizeConfig:
        check_phase_names(self.phases)
        return self

    def phase(self, selector: str) -> list[PhaseConfig]:
        """``all``, a phase name, or its 1-based number."""
        if selector == "all":
            return list(self.phases)
        for number, phase in enumerate(self.phases, start=1):
            if selector in (phase.name, str(number)):
                return [phase]
        raise OptimizeError(f"no phase {selector!r}; phases: {', '.join(p.name for p in self.phases)}")


def load_config(path: str, overrides: dict[str, Any] | None = None) -> OptimizeConfig:
    import yaml

    try:
        raw = yaml.safe_load(store.read_file(path).decode("utf-8")) or {}
    except (store.StoreError, yaml.YAMLError) as error:
        raise OptimizeError(f"cannot read optimize config {path}: {error}") from error
    return config_from_dict(raw, overrides)


def config_from_dict(raw: dict[str, Any], overrides: dict[str, Any] | None = None) -> OptimizeConfig:
    raw = json.loads(json.dumps(raw))
    for dotted, value in (overrides or {}).items():
        apply_override(raw, dotted, value)
    try:
        return OptimizeConfig.model_validate(raw)
    except ValueError as error:
        raise OptimizeError(f"bad optimize config: {error}") from error


def apply_override(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in a config dict; ``phases.*.x`` (or ``phases.phase2.x``) reaches into phases."""
    parts = dotted.split(".")
    if parts[0] == "phases" and len(parts) >= 3:
        phases = raw.setdefault("phases", [p.model_dump() for p in default_phases()])
        for phase in phases:
            if parts[1] in ("*", phase.get("name")):
                phase[parts[2]] = value
        return
    node = raw
    for key in parts[:-1]:
        node = node.setdefault(key, {})
    node[parts[-1]] = value
