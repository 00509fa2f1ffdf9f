"""The dataset store and the ingest stage: publishing, skipping, rebuilding, Ray and local paths."""

import json
import shutil

import pytest

from conftest import CLAUDE_CODE
from tooldistill import store
from tooldistill.executor import LocalExecutor, RayExecutor
from tooldistill.ingest import IngestConfig, IngestError, ingest

LOCAL = LocalExecutor(show_progress=False)


def claude_code_config(source, out, **kw):
    return IngestConfig(sources=(str(source),), format="claude_code", out=str(out), **kw)


@pytest.fixture()
def logs(tmp_path):
    target = tmp_path / "projects"
    shutil.copytree(CLAUDE_CODE / "projects", target)
    return target


def test_ray_and_local_paths_give_the_same_dataset(ray_cluster, logs, tmp_path):
    local = ingest(claude_code_config(logs, tmp_path / "local", files_per_shard=1), LOCAL)
    distributed = ingest(claude_code_config(logs, tmp_path / "ray", files_per_shard=1), RayExecutor())
    assert distributed.dataset.manifest.stats["executor"] == "ray"
    assert len(distributed.dataset.manifest.parts) == 3  # 4 files, the empty one writes no part
    key = lambda t: t.id  # noqa: E731
    assert sorted(local.dataset.to_traces(), key=key) == sorted(distributed.dataset.to_traces(), key=key)
    assert distributed.dataset.manifest.quarantine.total == local.dataset.manifest.quarantine.total == 6
    # the dataset reads back into Ray Data as well
    rows = distributed.dataset.to_ray().take_all()
    assert sorted(r["id"] for r in rows) == sorted(t.id for t in local.dataset.to_traces())


def test_manifest_describes_the_dataset(logs, tmp_path):
    result = ingest(claude_code_config(logs, tmp_path / "out"), LOCAL)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["kind"] == "traces" and manifest["schema_version"] == 1 and manifest["rows"] == 9
    assert manifest["quarantine"]["total"] == 6
    assert manifest["quarantine"]["by_reason"]["truncated last line"] == 1
    assert manifest["parents"] == [str(logs)] and manifest["code_version"]
    for part in manifest["parts"]:
        data = (tmp_path / "out" / part["name"]).read_bytes()
        import hashlib

        assert hashlib.sha256(data).hexdigest() == part["sha256"] and len(data) == part["bytes"]
    quarantined = result.dataset.quarantined()
    assert {q["reason"] for q in quarantined} >= {"empty file"}
    assert all({"source", "line", "reason", "excerpt"} <= set(q) for q in quarantined)
    (row,) = result.summary
    assert {k: row[k] for k in ("source", "files", "traces", "tools", "quarantined")} == {
        "source": str(logs),
        "files": 4,
        "traces": 9,
        "tools": 7,
        "quarantined": 6,
    }
    # the empty file is named as a file that gave no trace
    assert row["files_without_traces"] == 1 and row["empty_files"][0].endswith("8000-000000000000.jsonl")


def test_unchanged_input_is_skipped_and_changed_input_rebuilds(logs, tmp_path):
    out = tmp_path / "out"
    first = ingest(claude_code_config(logs, out), LOCAL)
    assert not first.skipped
    again = ingest(claude_code_config(logs, out), LOCAL)
    assert again.skipped and again.dataset.manifest.fingerprint == first.dataset.manifest.fingerprint
    # a changed option rebuilds
    assert not ingest(claude_code_config(logs, out, strict=False, reader={"redact": False}), LOCAL).skipped
    # a changed file rebuilds, and stale parts of earlier runs are gone
    session = next(logs.rglob("0a9b8c7d-*.jsonl"))
    session.write_bytes(session.read_bytes().replace(b"ls -la", b"ls -l"))
    rebuilt = ingest(claude_code_config(logs, out), LOCAL)
    assert not rebuilt.skipped
    ls = next(t for t in rebuilt.dataset.to_traces() if t.source_id == "msg_01XxxxLs")
    assert ls.reference_calls[0].arguments["command"] == "ls -l"
    names = {p.name for p in out.iterdir()}
    assert names == {p.name for p in rebuilt.dataset.manifest.parts} | {
        "manifest.json",
        rebuilt.dataset.manifest.quarantine.file,
    }
    # a deleted part makes the dataset out of date
    (out / rebuilt.dataset.manifest.parts[0].name).unlink()
    assert not ingest(claude_code_config(logs, out), LOCAL).skipped


def test_strict_mode_publishes_nothing_and_keeps_the_previous_dataset(logs, tmp_path):
    out = tmp_path / "out"
    before = ingest(claude_code_config(logs, out), LOCAL).dataset.manifest
    (logs / "extra.jsonl").write_text(
        '{"type": "user", "message": {"role": "user", "content": "x"}}\n{oops\n'
    )
    with pytest.raises(
        IngestError, match=r"--strict: 7 bad records, nothing published\. First: .*jsonl:2: invalid UTF-8"
    ):
        ingest(claude_code_config(logs, out, strict=True), LOCAL)
    assert store.Dataset.open(str(out)).manifest == before
    assert {p.name for p in out.glob("part-*")} == {p.name for p in before.parts}


def test_clear_errors_for_missing_input_and_datasets(tmp_path):
    with pytest.raises(IngestError, match="source not found"):
        ingest(claude_code_config(tmp_path / "nowhere", tmp_path / "out"), LOCAL)
    (tmp_path / "empty").mkdir()
    with pytest.raises(IngestError, match="no claude_code files found"):
        ingest(claude_code_config(tmp_path / "empty", tmp_path / "out"), LOCAL)
    with pytest.raises(store.StoreError, match="no dataset at"):
        store.Dataset.open(str(tmp_path / "out"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "manifest.json").write_text("{not json")
    with pytest.raises(store.StoreError, match="not a valid manifest"):
        store.Dataset.open(str(tmp_path / "broken"))


def test_a_reader_crash_on_one_file_loses_nothing_else(logs, tmp_path):
    # a file the format selects but cannot be opened as what its name says
    (logs / "bad.jsonl.gz").write_bytes(b"not gzip at all")
    result = ingest(claude_code_config(logs, tmp_path / "out"), LOCAL)
    assert result.dataset.manifest.rows == 9
    bad = [q for q in result.dataset.quarantined() if q["source"].endswith("bad.jsonl.gz")]
    assert (
        len(bad) == 1
        and bad[0]["line"] == 0
        and bad[0]["reason"].startswith("cannot read file: Not a gzipped file")
    )


def test_strict_rerun_over_an_up_to_date_dataset_with_quarantined_records_fails(logs, tmp_path):
    out = tmp_path / "out"
    first = ingest(claude_code_config(logs, out), LOCAL)
    assert first.dataset.manifest.quarantine.total > 0  # the fixtures hold bad lines
    with pytest.raises(IngestError, match="quarantined records"):
        ingest(claude_code_config(logs, out, strict=True), LOCAL)


def test_bfcl_categories_without_a_single_reference_call_are_refused(tmp_path):
    from tooldistill.readers import ReaderOptions

    config = IngestConfig(
        sources=("bfcl",),
        format="bfcl",
        out=str(tmp_path / "o"),
        reader=ReaderOptions(categories=("simple_python", "multi_turn_base")),
    )
    with pytest.raises(IngestError, match="multi_turn_base"):
        ingest(config, LOCAL)
