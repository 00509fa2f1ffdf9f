"""What a phase trains on: ``source: pool`` reaches past CaR's selection, never into val or test,
and the optional datasets (the pool, the run's embeddings) are inputs only where a phase reads
them, so adding them changed no existing config, resume key or stamp."""

from __future__ import annotations

from pathlib import Path

import pytest

from tooldistill.config import OptimizeSection
from tooldistill.optimize.config import PhaseConfig
from tooldistill.optimize.phases.base import phase_train
from tooldistill.optimize.run import OptimizeError, config_from_dict, optimize
from tooldistill.optimize.testing import StudentServer, make_traces, write_traces


def _data(tmp_path: Path) -> dict[str, str]:
    train, val, test, rest = make_traces(4), make_traces(2, 100), make_traces(2, 200), make_traces(5, 300)
    data = {
        name: write_traces(str(tmp_path / name), traces)
        for name, traces in (("train", train), ("val", val), ("test", test))
    }
    data["pool"] = write_traces(str(tmp_path / "pool"), [*rest, *test, *train, *val])
    return data


def test_a_pool_phase_takes_the_train_split_then_traces_in_no_split(tmp_path: Path) -> None:
    data = _data(tmp_path)
    phases = [{"name": "p", "kind": "gepa", "train": 7, "select": "sample", "source": "pool"}]
    config = config_from_dict({"run_dir": "r", "data": data, "phases": phases})
    chosen = phase_train(config, config.phases[0])
    train = sorted(t.id for t in make_traces(4))
    rest = sorted(t.id for t in make_traces(5, 300))
    assert [t.id for t in chosen] == train + rest[:3]
    # enough in the split: the pool is not read
    config = config_from_dict({"run_dir": "r", "data": data, "phases": [{**phases[0], "train": 3}]})
    assert [t.id for t in phase_train(config, config.phases[0])] == train[:3]
    # a later phase passes over what an earlier one took
    config = config_from_dict(
        {"run_dir": "r", "data": data, "phases": [{**phases[0], "train": 3, "offset": 5}]}
    )
    assert [t.id for t in phase_train(config, config.phases[0])] == rest[1:4]
    assert "offset" not in PhaseConfig(name="g", kind="gepa").model_dump()
    # a larger ask than there is: everything outside val and test, once
    config = config_from_dict({"run_dir": "r", "data": data, "phases": [{**phases[0], "train": 50}]})
    assert sorted(t.id for t in phase_train(config, config.phases[0])) == sorted(train + rest)


def test_a_pool_phase_without_the_pool_stops_before_the_baseline(tmp_path: Path) -> None:
    data = _data(tmp_path)
    del data["pool"]
    phases = [{"name": "p", "kind": "gepa", "train": 7, "source": "pool"}]
    with StudentServer() as server:
        student = {"endpoint": server.url, "model": "m"}
        config = config_from_dict({"run_dir": str(tmp_path / "run"), "data": data, "student": student,
                                   "phases": phases})  # fmt: skip
        with pytest.raises(OptimizeError, match="source: pool needs the run's deduplicated traces"):
            optimize(config)
        assert server.received == []


def test_optional_data_reaches_the_config_only_where_a_phase_reads_it() -> None:
    data = {"train": "t", "val": "v", "test": "x", "embedded": "e", "pool": "p"}
    plain = OptimizeSection.model_validate({"phases": [{"name": "g", "kind": "gepa"}]})
    config = plain.config("r", data)
    assert config.data.pool is None and config.data.embedded is None
    assert set(config.model_dump()["data"]) == {"train", "val", "test", "curated", "test_limit"}
    # a phase written as before has the dump (and so the key) it had
    assert "source" not in PhaseConfig(name="g", kind="gepa").model_dump()
    pooled = OptimizeSection.model_validate({"phases": [{"name": "g", "kind": "gepa", "source": "pool"}]})
    assert pooled.config("r", data).data.pool == "p" and pooled.data_read() == {"pool"}
    assert pooled.data_for(data) == {"train": "t", "val": "v", "test": "x", "pool": "p"}


def test_a_pool_finetune_phase_finds_its_no_calls_in_the_pool_too(tmp_path: Path) -> None:
    from tooldistill.optimize.phases.finetune import finetune_reserve

    data = _data(tmp_path)
    phases = [{"name": "p", "kind": "finetune", "train": 6, "select": "sample", "source": "pool"}]
    config = config_from_dict({"run_dir": "r", "data": data, "phases": phases})
    chosen = phase_train(config, config.phases[0])
    reserve = finetune_reserve(config, config.phases[0], chosen)
    rest = sorted(t.id for t in make_traces(5, 300))
    assert [t.id for t in reserve] == rest[2:]  # the pool's traces the phase did not take
    plain = config_from_dict({"run_dir": "r", "data": data, "phases": [{**phases[0], "source": "train"}]})
    assert finetune_reserve(plain, plain.phases[0], phase_train(plain, plain.phases[0])) == []
