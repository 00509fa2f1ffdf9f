"""S3 under faults: throttling (503 SlowDown), 500s and dropped connections, injected by a proxy
between our S3 clients and the moto server (``tooldistill.testing.s3faults``).

Datasets written and read through a faulty endpoint must equal the ones written without faults, and
a publish whose manifest cannot be written must leave the previous dataset as the current one.
Every test checks the proxy's counts, so none of them passes by going around the proxy.
"""

from __future__ import annotations

import hashlib
import pickle
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pyarrow as pa
import pytest
from click.testing import CliRunner

from conftest import CLAUDE_CODE
from tooldistill import runlock, store
from tooldistill.cli import main
from tooldistill.curate.split import SPLITS, SplitConfig, run_split
from tooldistill.testing.s3faults import FAULT_KINDS, FaultProxy, FaultRule

#: the share of requests that fail in the "survives" tests, and the kinds (equal weights)
RATE = 0.25
RANDOM_KINDS = ("slowdown", "internal", "drop", "lost_response")
#: input files per part in the "survives" test: one part, and few requests (each fault costs the
#: SDK's backoff, about half a second at the first retry)
SHARD = 4


@pytest.fixture()
def proxy(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    """A fault proxy in front of the moto server, and this process's S3 clients pointed at it."""
    with FaultProxy(s3_server, seed=17) as running:
        monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
        monkeypatch.setenv("AWS_ENDPOINT_URL", running.endpoint)
        yield running


def ingest_args(source: Path | str, out: str, files_per_shard: int = 2) -> list[str]:
    return [
        *("ingest", str(source), "--format", "claude_code", "--out", out),
        *("--executor", "local", "--files-per-shard", str(files_per_shard)),
    ]


def ingest(source: Path | str, out: str, files_per_shard: int = 2) -> None:
    result = CliRunner().invoke(main, ingest_args(source, out, files_per_shard))
    assert result.exit_code == 0, result.output


def sorted_table(dataset: store.Dataset) -> pa.Table:
    return dataset.to_arrow().sort_by("id")


def direct_bytes(endpoint: str, uri: str) -> bytes:
    """An object's bytes straight from the moto server, around the proxy."""
    bucket, _, key = uri[len("s3://") :].partition("/")
    return boto3.client("s3", endpoint_url=endpoint).get_object(Bucket=bucket, Key=key)["Body"].read()


def keys_under(endpoint: str, uri: str) -> set[str]:
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    listing = boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket=bucket, Prefix=prefix + "/")
    return {o["Key"][len(prefix) + 1 :] for o in listing.get("Contents", [])}


def report(label: str, proxy: FaultProxy, started: float) -> dict[str, object]:
    stats = proxy.stats()
    print(f"\n{label}: {time.monotonic() - started:.1f} s, {stats}")
    return stats


def test_ingest_and_split_through_faults_equal_the_fault_free_datasets(
    s3_server: str, bucket: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    source = CLAUDE_CODE / "projects"
    local = str(tmp_path / "traces")
    ingest(source, local, SHARD)
    run_split(SplitConfig(dataset=local, out=str(tmp_path / "split")), show_progress=False)

    out = f"s3://{bucket}/datasets/traces"
    proxy.configure(rate=RATE, kinds=RANDOM_KINDS)
    started = time.monotonic()
    ingest(source, out, SHARD)
    written = report("ingest", proxy, started)

    # the same parts, byte for byte, as the fault-free local ingest, and what S3 holds is what the
    # manifest says
    expected = store.Dataset.open(local)
    dataset = store.Dataset.open(out)
    assert dataset.manifest.rows == expected.manifest.rows == 9
    assert [p.sha256 for p in dataset.manifest.parts] == [p.sha256 for p in expected.manifest.parts]
    for part in dataset.manifest.parts:
        data = direct_bytes(s3_server, store.join(out, part.name))
        assert hashlib.sha256(data).hexdigest() == part.sha256 and len(data) == part.bytes
    assert sorted_table(dataset).equals(sorted_table(expected))
    assert dataset.quarantined() == expected.quarantined()

    # an unchanged re-run is skipped through the faults too
    again = CliRunner().invoke(main, ingest_args(source, out, SHARD))
    assert again.exit_code == 0 and "skipped" in again.output, again.output

    # a curation stage from S3 to S3 (four datasets: the split and train/val/test)
    split_out = f"s3://{bucket}/datasets/split"
    run_split(SplitConfig(dataset=out, out=split_out), show_progress=False)
    for name in (None, *SPLITS):
        here = store.join(split_out, name) if name else split_out
        there = str(tmp_path / "split" / name) if name else str(tmp_path / "split")
        got, want = store.Dataset.open(here), store.Dataset.open(there)
        assert [p.sha256 for p in got.manifest.parts] == [p.sha256 for p in want.manifest.parts]
        assert sorted_table(got).equals(sorted_table(want))
    stats = report("ingest + skip check + split + reads", proxy, started)

    assert isinstance(written["injected"], dict) and isinstance(stats["injected"], dict)
    assert written["faults"], "the ingest met no fault: did it go around the proxy?"
    assert all(stats["injected"][kind] > 0 for kind in RANDOM_KINDS), stats
    assert proxy.forwarded < proxy.requests


def test_an_interrupted_publish_leaves_the_previous_dataset(
    s3_server: str,
    bucket: str,
    proxy: FaultProxy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = tmp_path / "logs"
    files = sorted((CLAUDE_CODE / "projects").rglob("*.jsonl"))
    first = source / files[0].relative_to(CLAUDE_CODE / "projects")
    first.parent.mkdir(parents=True)
    shutil.copy(files[0], first)
    out = f"s3://{bucket}/datasets/traces"
    ingest(source, out)
    before = store.read_manifest(out)
    assert before is not None and before.rows > 0
    old_rows = sorted_table(store.Dataset.open(out))

    # more input, and every attempt to write the manifest fails: throttled, a 500, then dropped
    shutil.copytree(CLAUDE_CODE / "projects", source, dirs_exist_ok=True)
    monkeypatch.setenv(store.MAX_ATTEMPTS_ENV, "3")  # keeps the backoff short
    proxy.reset_counts()
    manifest_put = {"method": "PUT", "key_suffix": f"/{store.MANIFEST}"}
    proxy.configure(
        rules=[
            FaultRule("slowdown", **manifest_put, times=1),
            FaultRule("internal", **manifest_put, times=1),
            FaultRule("drop", **manifest_put),
        ]
    )
    result = CliRunner().invoke(main, ingest_args(source, out))
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert f"cannot publish {out}/{store.MANIFEST}" in message and "Traceback" not in result.output
    assert "readers still see the previous dataset" in message
    attempts = [k for m, k, _ in proxy.log if m == "PUT" and k.endswith(f"/{store.MANIFEST}")]
    assert len(attempts) == 3 and proxy.stats()["faults"] == 3

    # the previous manifest, as it was, and exactly its rows; the new parts are there but unlisted
    after = store.read_manifest(out)
    assert after is not None and after.model_dump() == before.model_dump()
    assert sorted_table(store.Dataset.open(out)).equals(old_rows)
    keys = keys_under(s3_server, out)
    listed = {p.name for p in before.parts} | {before.quarantine.file}
    orphans = {k for k in keys - listed - {store.MANIFEST} if k.startswith("part-")}
    assert orphans and listed - {None} <= keys

    # once S3 is well again the run publishes, and the orphans of the failed run are gone
    proxy.configure(rules=[])
    ingest(source, out)
    published = store.read_manifest(out)
    assert published is not None and published.rows > before.rows
    assert not orphans & keys_under(s3_server, out)


def test_run_lock_retries_through_faults(bucket: str, proxy: FaultProxy) -> None:
    """The run lock's boto3 client (``store.s3_client``) retries throttling, 500s and drops."""
    proxy.configure(
        rules=[FaultRule(kind, key_suffix=f"/{runlock.LOCK_NAME}", times=1) for kind in FAULT_KINDS[:3]]
    )
    run = f"s3://{bucket}/runs/faulty"
    with runlock.hold(run, command="faulty") as lock:
        assert runlock.read_holder(run) == lock.holder
    assert runlock.read_holder(run) is None
    assert proxy.injected["slowdown"] == proxy.injected["internal"] == proxy.injected["drop"] == 1


def test_a_lost_answer_to_the_locks_create_is_still_our_lock(bucket: str, proxy: FaultProxy) -> None:
    """The conditional create lands but its answer is lost; the retry gets 412. The lock names our
    own token, so it is ours (not "in use by another run" naming ourselves), and is released."""
    proxy.configure(
        rules=[FaultRule("lost_response", method="PUT", key_suffix=f"/{runlock.LOCK_NAME}", times=1)]
    )
    run = f"s3://{bucket}/runs/lost"
    with runlock.hold(run, command="lost") as lock:
        assert runlock.read_holder(run) == lock.holder
    assert runlock.read_holder(run) is None
    assert proxy.injected["lost_response"] == 1


def test_attempts_are_configurable_and_survive_pickling(
    bucket: str, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = f"s3://{bucket}/files"
    store.write_file(folder, "big.bin", bytes(4096))
    monkeypatch.setenv(store.MAX_ATTEMPTS_ENV, "2")  # pyarrow's own default is 3
    proxy.configure(rules=[FaultRule("slowdown", method="GET", key_suffix="/big.bin")])
    filesystem = pickle.loads(pickle.dumps(store.s3_filesystem()))  # as Ray ships it to a worker
    monkeypatch.delenv(store.MAX_ATTEMPTS_ENV)
    with pytest.raises(OSError, match="GetObject"):  # SLOW_DOWN or SERVICE_UNAVAILABLE
        store._read_bytes(filesystem, f"{bucket}/files/big.bin")
    assert proxy.injected["slowdown"] == 2

    proxy.reset_counts()
    monkeypatch.setenv(store.MAX_ATTEMPTS_ENV, "2")
    client = store.s3_client()
    with pytest.raises(Exception, match="SlowDown"):
        client.get_object(Bucket=bucket, Key="files/big.bin")
    assert proxy.injected["slowdown"] == 2

    for bad in ("0", "many"):
        monkeypatch.setenv(store.MAX_ATTEMPTS_ENV, bad)
        with pytest.raises(store.StoreError, match=store.MAX_ATTEMPTS_ENV):
            store.s3_filesystem()


def test_a_throttled_read_of_a_tiny_object_is_retried(bucket: str, proxy: FaultProxy) -> None:
    """An error answer longer than the object itself overflows the SDK's buffer for the range, which
    the SDK does not retry (``Failed to flush response stream``); ``store`` retries it."""
    store.write_file(f"s3://{bucket}/files", "tiny.txt", b"ok")
    proxy.configure(
        rules=[
            FaultRule(kind, method="GET", key_suffix="/tiny.txt", times=1)
            for kind in ("slowdown", "internal")
        ]
    )
    assert store.read_file(f"s3://{bucket}/files/tiny.txt") == b"ok"
    assert proxy.injected["slowdown"] == proxy.injected["internal"] == 1


@pytest.mark.slow  # Ray start-up and Ray Data's first execution: most of this file's time on 2 cores
def test_ray_data_reads_through_faults(
    ray_cluster: None, s3_server: str, bucket: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    """``Dataset.to_ray`` sends the filesystem to Ray workers: they reach the proxy and retry too."""
    out = f"s3://{bucket}/datasets/traces"
    ingest(CLAUDE_CODE / "projects", out)
    dataset = store.Dataset.open(out)
    ids = sorted(dataset.to_pandas()["id"])
    proxy.reset_counts()
    # the first two reads of a part fail whatever the draw, so the workers' retries are certain
    part_get = FaultRule("slowdown", method="GET", key_suffix=".parquet", times=2)
    proxy.configure(rate=RATE, kinds=("slowdown", "internal", "drop"), rules=[part_get])
    started = time.monotonic()
    assert sorted(row["id"] for row in dataset.to_ray().take_all()) == ids
    stats = report("ray read", proxy, started)
    assert isinstance(stats["faults"], int) and stats["faults"] >= 2, stats
