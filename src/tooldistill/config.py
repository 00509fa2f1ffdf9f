"""The pipeline config: one YAML file says what ``tooldistill run`` does.

Every shipped YAML under ``configs/`` is loaded and validated by the tests.  Unknown keys are
errors, so a typo fails loudly instead of being ignored.  A section that feeds a stage holds that
stage's own options model (its config without what the run provides: input and output), so it is
validated once, here, and the stage's config is made from it (``options.config(dataset=, out=)``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from tooldistill.curate import registry as curate_registry
from tooldistill.optimize.reflection import ReflectionSettings
from tooldistill.optimize.run import (
    OptimizeConfig,
    OptimizeError,
    PhaseConfig,
    TuneSettings,
    check_phase_names,
)
from tooldistill.optimize.student import StudentSettings
from tooldistill.readers import ReaderOptions
from tooldistill.student import EndpointSettings, EndpointURL
from tooldistill.teacher.options import CaptureOptions


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class IngestSection(_Section):
    #: Files, folders or ``s3://`` prefixes; ``~`` and ``$VAR``/``${VAR}`` are expanded, and
    #: ``${VAR:-default}`` takes the default when the variable is unset or empty.
    sources: tuple[str, ...] = Field(min_length=1)
    format: str
    reader: ReaderOptions = Field(default_factory=ReaderOptions)
    strict: bool = False

    @field_validator("sources", mode="before")
    @classmethod
    def _expand(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return tuple(expand_source(str(v)) if isinstance(v, str) else v for v in value)
        return value


_DEFAULTED = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*):-([^}]*)\}")


def expand_source(source: str) -> str:
    """A source as written in a config with its variables and ``~`` expanded."""
    if source.startswith("s3://"):
        return source
    source = _DEFAULTED.sub(lambda m: os.environ.get(m.group(1)) or m.group(2), source)
    return os.path.expanduser(os.path.expandvars(source))


class RaySection(_Section):
    executor: Literal["ray", "local"] = "ray"
    #: Cluster address; None starts Ray on this machine (or uses RAY_ADDRESS).
    address: str | None = None
    num_cpus: int | None = None


class TeacherSection(_Section):
    """Where the teacher's calls come from.

    ``data``: the calls recorded in the traces are the teacher's (no capture).  ``claude``: ask Claude
    for ``capture.samples`` answers per trace (``tooldistill teacher capture``), which also measures
    Claude's self-consistency.  ``auto``: ``claude`` when the key variable is set, else ``data``.
    """

    mode: Literal["data", "claude", "auto"] = "auto"
    #: ``CaptureConfig`` fields other than ``dataset`` and ``out`` (``model`` is required when
    #: ``capture`` is written).
    capture: CaptureOptions = Field(
        default_factory=lambda: CaptureOptions(model="claude-sonnet-4-5", samples=3)
    )

    def key_env(self) -> str:
        return self.capture.api_key_env or "ANTHROPIC_API_KEY"

    def resolved_mode(self) -> Literal["data", "claude"]:
        if self.mode == "auto":
            return "claude" if os.environ.get(self.key_env()) else "data"
        return self.mode


class CurateSectionBase(_Section):
    """Options of each curation stage (the fields of its config, without ``dataset``/``out``), one
    field per entry of ``tooldistill.curate.registry.STAGES``: a stage's options default to its
    model's defaults, and an optional stage is off (None) unless its field is written."""


def _curate_section() -> type[CurateSectionBase]:
    fields: dict[str, Any] = {
        entry.name: (entry.options | None, None)
        if entry.optional
        else (entry.options, Field(default_factory=entry.options))
        for entry in curate_registry.STAGES
    }
    return create_model("CurateSection", __base__=CurateSectionBase, **fields)


if TYPE_CHECKING:
    CurateSection = CurateSectionBase
else:
    CurateSection = _curate_section()


class StudentSection(_Section):
    """The student: start a Ray Serve profile for the run, or use an endpoint that is already up.

    ``endpoint``, ``model`` and ``api_key_env`` are ``student.EndpointSettings``' fields (the same
    URL check); how the student is asked (``timeout_s``, ``retries``, ``max_timeouts``, with that
    model's defaults) is set in ``optimize.student``, whose settings extend it.
    """

    #: A serve profile (``configs/serve/*.yaml``) deployed on the run's Ray cluster and shut down after.
    serve: str | None = None
    #: An OpenAI-compatible endpoint (``.../v1``) that is already answering.
    endpoint: EndpointURL | None = None
    #: The served model name (default: the profile's model id).
    model: str | None = None
    #: ``tooldistill models prepare NAME`` before serving (e.g. ``smollm2`` for the CPU profile).
    prepare: str | None = None
    replicas: int | None = Field(default=None, ge=1)
    port: int | None = None
    #: The variable holding the key clients send (only its hash reaches the server).
    api_key_env: str | None = "TOOLDISTILL_SERVE_API_KEY"
    wait_timeout_s: float = Field(default=900.0, gt=0)

    @model_validator(mode="after")
    def _one_source(self) -> StudentSection:
        if (self.serve is None) == (self.endpoint is None):
            raise ValueError("student: give exactly one of `serve` (a profile to start) or `endpoint`")
        if self.endpoint is not None and self.model is None:
            raise ValueError("student: `model` is required with `endpoint`")
        return self

    def settings(self, **how: Any) -> EndpointSettings:
        """The endpoint settings of a student that is already up (``endpoint``), with ``how`` it is
        asked (``timeout_s``, ``retries``, ...; the model's defaults otherwise)."""
        if self.endpoint is None or self.model is None:
            raise ValueError("student: settings need `endpoint` and `model` (a profile has neither yet)")
        fields: dict[str, Any] = {"endpoint": self.endpoint, "model": self.model, **how}
        if self.api_key_env:
            fields["api_key_env"] = self.api_key_env
        return EndpointSettings(**fields)


class OptimizeSection(_Section):
    """``tooldistill optimize``'s config without ``run_dir`` and ``data`` (the run provides both).

    ``student`` here holds how the student is asked (temperature, max_tokens, ...); its endpoint and
    model come from the ``student`` section.  ``reflection_without_key``: what reflects when the
    reflection model is Claude and its key is not set: the student itself (``student``), or stop
    with an error (``error``).  ``phases``: None is ``optimize.run.default_phases()``.
    """

    student: StudentSettings = Field(default_factory=StudentSettings)
    reflection: ReflectionSettings = Field(default_factory=ReflectionSettings)
    reflection_without_key: Literal["student", "error"] = "student"
    tune: TuneSettings = Field(default_factory=TuneSettings)
    #: The starting prompt: {"system": ..., "demos": [...]}, or a path to a prompt artifact.
    seed_prompt: dict[str, Any] | str | None = None
    phases: list[PhaseConfig] | None = None
    test_limit: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _phase_names(self) -> OptimizeSection:
        if self.phases is not None:
            check_phase_names(self.phases)
        return self

    def data_read(self) -> set[str]:
        """The optional datasets (``optimize.config.OPTIONAL_DATA``) a phase of the schedule reads."""
        from tooldistill.optimize.config import optional_data_read

        return optional_data_read(self.phases or [])

    def data_for(self, data: dict[str, str]) -> dict[str, str]:
        """``data`` without the optional datasets no phase reads: they are then no input of the
        config, its resume keys or the run's stamp."""
        from tooldistill.optimize.config import OPTIONAL_DATA

        read = self.data_read()
        return {name: uri for name, uri in data.items() if name not in OPTIONAL_DATA or name in read}

    def config(
        self,
        run_dir: str,
        data: dict[str, str],
        *,
        student: dict[str, Any] | None = None,
        reflection: ReflectionSettings | None = None,
    ) -> OptimizeConfig:
        """The optimize config of a run: ``data`` the split's URIs (``train``, ``val``, ``test``,
        ``curated``, ``embedded``, ``pool``; those no phase reads are left out); ``student`` fields that replace the section's (where the student is served);
        ``reflection`` in place of the section's (the model that reflects in this run)."""
        data = self.data_for(data)
        fields: dict[str, Any] = {
            "run_dir": run_dir,
            "data": {**data, "test_limit": self.test_limit},
            "student": {**dict(self.student), **(student or {})},
            "reflection": reflection or self.reflection,
            "tune": self.tune,
            "seed_prompt": self.seed_prompt,
        }
        if self.phases is not None:
            fields["phases"] = self.phases
        try:
            return OptimizeConfig.model_validate(fields)
        except ValidationError as error:
            raise OptimizeError(f"bad optimize config: {error}") from error


class MlflowSection(_Section):
    tracking_uri: str
    experiment: str = "tooldistill"


class TrackingSection(_Section):
    #: Log each phase's figures to MLflow, and Ray Tune's trials through its MLflow callback.
    mlflow: MlflowSection | None = None


class ReportSection(_Section):
    enabled: bool = True


class PipelineConfig(_Section):
    """The whole pipeline.  Sections left out are stages not run (``ingest`` is required)."""

    name: str = "tooldistill"
    #: Where the run's datasets go (local folder or s3://); ``--out`` overrides it.
    run_dir: str = "runs/default"
    ray: RaySection = Field(default_factory=RaySection)
    ingest: IngestSection
    teacher: TeacherSection | None = None
    curate: CurateSection | None = None
    student: StudentSection | None = None
    optimize: OptimizeSection | None = None
    report: ReportSection = Field(default_factory=ReportSection)
    tracking: TrackingSection = Field(default_factory=TrackingSection)

    @model_validator(mode="after")
    def _needs(self) -> PipelineConfig:
        if self.optimize is not None and (self.curate is None or self.student is None):
            raise ValueError("optimize needs the curate section (its split) and a student")
        return self


class ConfigError(ValueError):
    """A config file cannot be read or does not validate."""


def load_config(path: str | Path) -> PipelineConfig:
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot read config {path}: {error}") from error
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} must be a YAML mapping")
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"config {path} is invalid:\n{error}") from error
