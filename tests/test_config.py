"""The pipeline config's stage sections are the stages' own options models: each is validated once,
when the config loads, and the stage's config made from it is the one the YAML mapping plus the
run's input and output made before (same fields, same ``config_hash()``), so run folders made
before stay up to date."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tooldistill.config import ConfigError, PipelineConfig, load_config
from tooldistill.curate import registry as curate_registry
from tooldistill.curate.car import CarOptions
from tooldistill.curate.embed import EmbedOptions
from tooldistill.curate.semdedup import SemDedupOptions
from tooldistill.curate.split import SplitOptions
from tooldistill.optimize.reflection import ReflectionSettings
from tooldistill.optimize.run import OptimizeError, PhaseConfig, TuneSettings, config_from_dict
from tooldistill.optimize.student import StudentSettings
from tooldistill.teacher.options import CaptureOptions

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
RUN = {"dataset": "s3://bucket/in", "out": "s3://bucket/out"}
INGEST = {"sources": ["logs.jsonl"], "format": "jsonl"}
STUDENT = {"endpoint": "http://127.0.0.1:9/v1", "model": "student"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_stage_configs_from_typed_sections(path: Path) -> None:
    raw = yaml.safe_load(path.read_text())
    config = load_config(path)
    if config.teacher is not None:
        from tooldistill.teacher.capture import CaptureConfig

        assert isinstance(config.teacher.capture, CaptureOptions)
        written = raw["teacher"].get("capture", {"model": "claude-sonnet-4-5", "samples": 3})
        before = CaptureConfig.model_validate({**written, **RUN})
        made = config.teacher.capture.config(**RUN)
        assert made == before and made.config_hash() == before.config_hash()
        assert made.cache_uri == before.cache_uri
    assert config.curate is not None
    for entry in curate_registry.STAGES:  # every registered stage, its section made into its config
        options = getattr(config.curate, entry.name)
        if options is None:  # an optional stage this config leaves off
            assert entry.optional and entry.name not in raw["curate"]
            continue
        made = options.config(**RUN)
        before = type(made).model_validate({**raw["curate"].get(entry.name, {}), **RUN})
        assert isinstance(options, entry.options) and made == before
        assert made.config_hash() == before.config_hash()


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_optimize_config_from_typed_section(path: Path) -> None:
    raw = yaml.safe_load(path.read_text())["optimize"]
    section = load_config(path).optimize
    assert section is not None
    assert isinstance(section.student, StudentSettings)
    assert isinstance(section.reflection, ReflectionSettings)
    assert isinstance(section.tune, TuneSettings)
    assert section.phases is not None and all(isinstance(p, PhaseConfig) for p in section.phases)
    data = {"train": "T", "val": "V", "test": "X", "curated": "C"}
    served = {"endpoint": "http://10.0.0.1:8000/v1", "model": "served", "api_key_env": "KEY"}
    before = config_from_dict(
        {
            **{k: v for k, v in raw.items() if k not in ("reflection_without_key", "test_limit")},
            "run_dir": "RUN",
            "data": {**data, "test_limit": raw.get("test_limit")},
            "student": {**raw.get("student", {}), **served},
        }
    )
    made = section.config("RUN", data, student=served)
    assert made == before
    assert [p.config_hash() for p in made.phases] == [p.config_hash() for p in before.phases]


def _load(tmp_path: Path, sections: dict[str, Any]) -> PipelineConfig:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"ingest": INGEST, **sections}))
    return load_config(path)


def test_defaults_when_sections_are_empty(tmp_path: Path) -> None:
    config = _load(tmp_path, {"teacher": {}, "curate": {}, "student": STUDENT, "optimize": {}})
    assert config.teacher is not None and config.curate is not None and config.optimize is not None
    assert (config.teacher.capture.model, config.teacher.capture.samples) == ("claude-sonnet-4-5", 3)
    assert config.teacher.key_env() == "ANTHROPIC_API_KEY"
    assert config.curate.embed == EmbedOptions() and config.curate.semdedup == SemDedupOptions()
    assert config.curate.car == CarOptions() and config.curate.split == SplitOptions()
    assert config.optimize.phases is None
    made = config.optimize.config("RUN", {"train": "T", "val": "V", "test": "X"})
    assert [p.name for p in made.phases] == ["phase1", "phase2", "phase3"]


@pytest.mark.parametrize(
    ("sections", "where"),
    [
        ({"teacher": {"capture": {"samples": 3}}}, "teacher.capture.model"),
        ({"teacher": {"capture": {"model": "m", "sampels": 3}}}, "teacher.capture.sampels"),
        ({"curate": {"car": {"per_clusterr": 3}}}, "curate.car.per_clusterr"),
        ({"curate": {"embed": {"view": {"bogus": 1}}}}, "curate.embed.view.bogus"),
        ({"curate": {"split": {"fractions": [0.5, 0.5, 0.5]}}}, "sum to 1"),
        ({"curate": {"semdedup": {"dataset": "x"}}}, "curate.semdedup.dataset"),
        ({"curate": {}, "student": STUDENT, "optimize": {"student": {"tmperature": 1}}}, "tmperature"),
        ({"curate": {}, "student": STUDENT, "optimize": {"tune": {"executor": "x"}}}, "optimize.tune"),
        (
            {"curate": {}, "student": STUDENT, "optimize": {"phases": [{"name": "a", "kind": "gepa"}] * 2}},
            "phase names must be unique",
        ),
    ],
)
def test_a_wrong_key_or_value_fails_at_load(tmp_path: Path, sections: dict[str, Any], where: str) -> None:
    with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
        _load(tmp_path, sections)


def test_a_bad_served_student_is_an_optimize_error(tmp_path: Path) -> None:
    config = _load(tmp_path, {"curate": {}, "student": STUDENT, "optimize": {}})
    assert config.optimize is not None
    with pytest.raises(OptimizeError, match="bad optimize config"):
        config.optimize.config("RUN", {"train": "T", "val": "V", "test": "X"}, student={"endpoint": "nope"})
