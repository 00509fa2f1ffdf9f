"""The pipeline as a Ray job: ``ray job submit`` and ``tooldistill submit`` against a local head.

The head is a real ``ray start --head`` on 127.0.0.1 with its job server; the job ships this
checkout through ``ray_jobs/runtime_env.yaml``.  The run folder the job writes must hold the same
datasets (same fingerprints, same rows) as a run of the same config in this process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tooldistill.optimize.testing import make_traces
from tooldistill.schema import trace_to_json
from tooldistill.store import Dataset

ROOT = Path(__file__).parent.parent
RAY = Path(sys.executable).parent / "ray"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Ray head with the job server on 127.0.0.1, in its own process group, killed afterwards."""
    if not RAY.exists():
        pytest.skip("the ray CLI is not installed")
    port, dashboard = _free_port(), _free_port()
    # short: Ray's Unix sockets live under it, and a socket path may not pass 107 bytes
    temp = tempfile.mkdtemp(prefix="tdray", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # Ray 2.5x+ heads require a token (written to ~/.ray/auth_token); clients opt in by mode
    env["RAY_AUTH_MODE"] = "token"
    # the jobs' `python` is this environment's (CI runs pytest without activating the venv)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    process = subprocess.Popen(
        [
            str(RAY),
            "start",
            "--head",
            "--block",
            "--node-ip-address",
            "127.0.0.1",
            "--port",
            str(port),
            "--include-dashboard",
            "true",
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            str(dashboard),
            "--num-cpus",
            "2",
            "--disable-usage-stats",
            "--temp-dir",
            str(temp),
            # the session's own Ray instance holds the default agent ports
            "--dashboard-agent-listen-port",
            str(_free_port()),
            "--metrics-export-port",
            str(_free_port()),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{address}/api/version", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except urllib.error.HTTPError as error:
                if error.code == 401:  # up, and asking for the token
                    break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the Ray head did not start (exit {process.poll()})")
            time.sleep(1)
        # the job agent comes up after the dashboard: a first trivial job says when jobs are taken
        while True:
            probe = subprocess.run(
                [str(RAY), "job", "submit", "--address", address, "--", "true"],
                env=env, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            if probe.returncode == 0:
                break
            if time.monotonic() > deadline:
                logs = Path(temp) / "session_latest" / "logs"
                agent = "".join(
                    f"--- {f.name}\n{f.read_text(errors='replace')[-1500:]}\n"
                    for f in sorted(logs.glob("*agent*"))
                )
                pytest.fail(f"the Ray head takes no jobs: {probe.stderr[-800:]}\n{agent}")
            time.sleep(2)
        yield address
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


def small_config(tmp_path: Path) -> Path:
    logs = tmp_path / "logs.jsonl"
    logs.write_text("\n".join(json.dumps(trace_to_json(t)) for t in make_traces(30)) + "\n")
    config: dict[str, Any] = {
        "name": "job-test",
        "ray": {"executor": "ray"},
        "ingest": {"sources": [str(logs)], "format": "jsonl"},
        "curate": {
            "semdedup": {"eps": 0.0005, "cluster_size": 15},
            "car": {"per_cluster": 100, "top_overall": 0},
            "split": {"fractions": [0.5, 0.2, 0.3], "by_cluster": False, "by_tool": False},
        },
        "report": {"enabled": False},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


DATASETS = [
    "traces",
    "curate/embedded",
    "curate/deduped",
    "curate/curated",
    "curate/split/train",
    "curate/split/val",
    "curate/split/test",
]


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A command from the repository root (where `ray job submit` ships the checkout from)."""
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def contents(run: str | Path) -> dict[str, tuple[str, list[str]]]:
    """Each dataset's config hash and trace ids (fingerprints also name the folder, which differs);
    ``run`` a local folder or an ``s3://`` prefix."""
    found = {}
    for name in DATASETS:
        dataset = Dataset.open(f"{run}/{name}")
        found[name] = (dataset.manifest.config_hash, sorted(dataset.to_arrow().column("id").to_pylist()))
    return found


@pytest.mark.slow
def test_ray_job_submit_runs_the_pipeline_like_a_local_run(
    head: str, tmp_path: Path, ray_cluster: None
) -> None:
    from tooldistill.config import load_config
    from tooldistill.pipeline import run_pipeline

    config = small_config(tmp_path)
    local = tmp_path / "local"
    run_pipeline(load_config(config), str(local), until="split")

    job_run = tmp_path / "job"
    env = {**os.environ, "RAY_API_SERVER_ADDRESS": head, "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    ray_job = [
        str(RAY),
        "job",
        "submit",
        "--address",
        head,
        "--runtime-env",
        "ray_jobs/runtime_env.yaml",
        "--",
    ]
    submitted = run_cli(
        [*ray_job, "python", "ray_jobs/pipeline.py", str(config), "--out", str(job_run), "--until", "split"],
        env,
    )
    assert "succeeded" in submitted.stdout.lower()
    # the driver ran on the head's cluster, and produced the same datasets
    assert Dataset.open(str(job_run / "traces")).manifest.stats["executor"] == "ray"
    assert contents(job_run) == contents(local)
    stages = {s["stage"]: s["status"] for s in json.loads((job_run / "run.json").read_text())["stages"]}
    assert stages["split"] == "ran" and stages["optimize"] == "not selected"

    # tooldistill submit: the git revision in the submission id; a re-run skips every stage
    tooldistill = str(Path(sys.executable).parent / "tooldistill")
    result = run_cli(
        [tooldistill, "submit", str(config), "--address", head, "--out", str(job_run), "--until", "split"],
        env,
    )
    from tooldistill.submit import git_revision

    assert f"tooldistill-job-test-{git_revision(ROOT)}-" in result.stdout + result.stderr
    stages = {s["stage"]: s["status"] for s in json.loads((job_run / "run.json").read_text())["stages"]}
    assert {stages[s] for s in ("ingest", "embed", "semdedup", "car", "split")} == {"skipped"}


def test_submit_reports_a_failed_job(head: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tooldistill.submit import SubmitError, submit

    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: broken\ningest: {sources: [/nowhere/at/all.jsonl], format: jsonl}\n")
    lines: list[str] = []
    with pytest.raises(SubmitError, match="FAILED"):
        submit(head, str(bad), ["--out", str(tmp_path / "run")], name="broken", root=ROOT,
               runtime_env={"working_dir": str(ROOT), "excludes": [".git", ".venv", "runs"]},
               write=lines.append, timeout_s=300)  # fmt: skip
    assert any("/nowhere/at/all.jsonl" in line for line in lines)  # the job's own error came through


def test_submit_without_a_head_is_a_clear_error(tmp_path: Path) -> None:
    from tooldistill.submit import SubmitError, submit

    with pytest.raises(SubmitError, match="no Ray job server"):
        submit(f"http://127.0.0.1:{_free_port()}", "x.yaml", name="x", root=ROOT)


def test_every_stage_has_a_job_entrypoint() -> None:
    names = {p.stem for p in (ROOT / "ray_jobs").glob("*.py")}
    assert {
        "pipeline",
        "ingest",
        "teacher",
        "curate",
        "serve",
        "evaluate",
        "optimize",
        "sweep",
        "report",
    } <= names
    for name in sorted(names - {"_entry"}):
        shown = subprocess.run(
            [sys.executable, str(ROOT / "ray_jobs" / f"{name}.py"), "--help"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert shown.returncode == 0, (name, shown.stderr[-2000:])
        assert "Usage:" in shown.stdout
