"""One run per run folder: the run lock (``tooldistill.runlock``) and ``tooldistill run`` with it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from tooldistill import pipeline, runlock
from tooldistill.cli import main
from tooldistill.config import load_config
from tooldistill.optimize.testing import make_traces
from tooldistill.schema import trace_to_json


def invoke(*args: Any) -> Any:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def write_config(tmp_path: Path) -> Path:
    """An ingest-only config (``--until ingest``): a few traces as tooldistill JSONL."""
    logs = tmp_path / "logs.jsonl"
    logs.write_text("\n".join(json.dumps(trace_to_json(t)) for t in make_traces(6)) + "\n")
    config = {
        "name": "lock-test",
        "run_dir": str(tmp_path / "unused"),
        "ray": {"executor": "local"},
        "ingest": {"sources": [str(logs)], "format": "jsonl"},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def exited_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def write_lock(run: Path, **fields: Any) -> None:
    value = {"pid": os.getpid(), "host": socket.gethostname(), "since": 1_700_000_000.0}
    value |= {"command": "tooldistill run old.yaml", "token": "old"} | fields
    run.mkdir(parents=True, exist_ok=True)
    (run / ".lock").write_text(json.dumps(value))


def test_second_run_on_a_folder_stops_with_the_lock_error(tmp_path: Path) -> None:
    config, run = write_config(tmp_path), tmp_path / "run"
    with runlock.hold(str(run), command="tooldistill run first.yaml") as first:
        holder = first.holder
        assert holder is not None and (run / ".lock").exists()
        result = invoke("run", config, "--out", run, "--until", "ingest")
        assert result.exit_code == 2, result.output
        text = " ".join(result.output.split())
        assert "in use by another run" in text
        assert f"pid {os.getpid()}" in text and socket.gethostname() in text
        assert "tooldistill run first.yaml" in text and "since" in text
        # the second run wrote nothing and left the first run's lock alone
        assert not (run / "traces").exists() and not (run / "run.log").exists()
        assert runlock.read_holder(str(run)) == holder
    assert not (run / ".lock").exists()
    # free again: the run goes, and leaves no lock behind
    result = invoke("run", config, "--out", run, "--until", "ingest")
    assert result.exit_code == 0, result.output
    assert (run / "traces" / "manifest.json").exists()
    assert not (run / ".lock").exists()


def test_a_run_stops_while_a_standalone_command_writes_inside_its_folder(tmp_path: Path) -> None:
    """The other direction of the nesting check: ``tooldistill curate embed --out RUN/curate/embedded``
    holds that folder, so a ``tooldistill run`` on RUN stops before any stage, naming it."""
    config, run = write_config(tmp_path), tmp_path / "run"
    inside = run / "curate" / "embedded"
    with runlock.hold(str(inside), command="tooldistill curate embed"):
        result = invoke("run", config, "--out", run, "--until", "ingest")
        assert result.exit_code == 2, result.output
        text = " ".join(result.output.split())
        assert str(inside) in "".join(result.output.split())  # the console may wrap a long path
        assert "tooldistill curate embed" in text and "in use" in text
        assert not (run / "traces").exists() and not (run / ".lock").exists()
    result = invoke("run", config, "--out", run, "--until", "ingest")
    assert result.exit_code == 0, result.output


def test_a_second_lock_is_refused_and_names_the_holder(tmp_path: Path) -> None:
    run = str(tmp_path / "run")
    first = runlock.RunLock(run, command="one").acquire()
    with pytest.raises(runlock.RunLockError) as caught:
        runlock.RunLock(run, command="two").acquire()
    assert caught.value.holder == first.holder
    assert f"pid {os.getpid()}" in str(caught.value) and "command: one" in str(caught.value)
    first.release()
    first.release()  # twice is harmless
    assert runlock.read_holder(run) is None
    with runlock.hold(run, command="three") as third:
        assert runlock.read_holder(run) == third.holder


def test_stale_lock_is_taken_over_with_a_warning(tmp_path: Path) -> None:
    config, run = write_config(tmp_path), tmp_path / "run"
    write_lock(run, pid=exited_pid())
    result = invoke("run", config, "--out", run, "--until", "ingest")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "warning:" in text and "stale run lock" in text and "tooldistill run old.yaml" in text
    assert (run / "traces" / "manifest.json").exists()
    assert not (run / ".lock").exists()


def test_reused_pid_is_stale_other_host_is_not(tmp_path: Path) -> None:
    run = tmp_path / "run"
    # our own pid, but recorded with another process start time: the pid was reused
    write_lock(run, pid_start=1)
    warnings: list[str] = []
    with runlock.RunLock(str(run), command="new", warn=warnings.append):
        pass
    assert warnings and "stale" in warnings[0]
    # a lock from another host cannot be checked from here: refused, even with a dead pid
    write_lock(run, pid=exited_pid(), host="build-7.elsewhere")
    with pytest.raises(runlock.RunLockError, match="build-7.elsewhere"):
        runlock.RunLock(str(run), command="new").acquire()
    assert json.loads((run / ".lock").read_text())["token"] == "old"
    # an unreadable lock is refused too (it may be a run's, half written)
    (run / ".lock").write_text("{")
    with pytest.raises(runlock.RunLockError, match="unreadable lock"):
        runlock.RunLock(str(run), command="new").acquire()


def test_lock_is_released_on_errors_and_interrupts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config_path, run = write_config(tmp_path), tmp_path / "run"
    config = load_config(str(config_path))

    def interrupted(self: Any) -> str:
        assert runlock.read_holder(str(run)) is not None  # held while the stage runs
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline._Run, "ingest", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_pipeline(config, str(run), until="ingest")
    assert not (run / ".lock").exists()

    def failing(self: Any) -> str:
        raise pipeline.PipelineError("stage broke")

    monkeypatch.setattr(pipeline._Run, "ingest", failing)
    with pytest.raises(pipeline.PipelineError, match="stage broke"):
        pipeline.run_pipeline(config, str(run), until="ingest")
    assert not (run / ".lock").exists()


def test_s3_lock_is_a_conditional_create(bucket: str) -> None:
    run = f"s3://{bucket}/runs/locked"
    first = runlock.RunLock(run, command="one").acquire()
    with pytest.raises(runlock.RunLockError, match="in use by another run"):
        runlock.RunLock(run, command="two").acquire()
    assert runlock.read_holder(run) == first.holder
    first.release()
    assert runlock.read_holder(run) is None
    # a stale one (same host, process gone) is taken over
    stale = runlock.LockHolder(
        pid=exited_pid(), host=socket.gethostname(), since=1.0, command="old", token="t"
    )
    import boto3

    boto3.client("s3").put_object(Bucket=bucket, Key="runs/locked/.lock", Body=stale.to_json())
    with runlock.hold(run, command="new") as lock:
        assert runlock.read_holder(run) == lock.holder
    assert runlock.read_holder(run) is None
