"""The pipeline config: one YAML file says what ``tooldistill run`` does.

Every shipped YAML under ``configs/`` is loaded and validated by the tests.  Unknown keys are
errors, so a typo fails loudly instead of being ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tooldistill.readers import ReaderOptions


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class IngestSection(_Section):
    sources: tuple[str, ...] = Field(min_length=1)
    format: str
    reader: ReaderOptions = Field(default_factory=ReaderOptions)
    strict: bool = False


class RaySection(_Section):
    executor: Literal["ray", "local"] = "ray"
    #: Cluster address; None starts Ray on this machine (or uses RAY_ADDRESS).
    address: str | None = None
    num_cpus: int | None = None


class PipelineConfig(_Section):
    """The whole pipeline; sections are added as stages land."""

    name: str = "tooldistill"
    #: Where the run's datasets go (local folder or s3://); ``--out`` overrides it.
    run_dir: str = "runs/default"
    ray: RaySection = Field(default_factory=RaySection)
    ingest: IngestSection


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
