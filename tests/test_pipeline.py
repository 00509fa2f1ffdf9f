"""``tooldistill run``: every stage from one config into one run folder, skipping what is up to date.

The student and the reflection model are the local OpenAI-compatible servers of
``tooldistill.optimize.testing`` (the network edge); everything else is the real code: ingest,
MiniLM embedding, FAISS SemDeDup and CaR, the split, DSPy, GEPA, the report.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from conftest import FIXTURES
from tooldistill.cli import main
from tooldistill.curate import registry
from tooldistill.optimize.testing import ReflectionServer, StudentServer, make_traces
from tooldistill.pipeline import STAGES as PIPELINE_STAGES
from tooldistill.schema import trace_to_json
from tooldistill.store import Dataset

STAGES = list(PIPELINE_STAGES)


def invoke(*args: Any) -> Any:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def servers() -> Any:
    with StudentServer(latency_s=0.01) as student, ReflectionServer() as reflection:
        yield student, reflection


def write_config(tmp_path: Path, servers: Any, **changes: Any) -> Path:
    student, reflection = servers
    logs = tmp_path / "logs.jsonl"
    if not logs.exists():
        lines = [json.dumps(trace_to_json(t)) for t in make_traces(40)]
        logs.write_text("\n".join([*lines, "{not json"]) + "\n")  # one broken line: quarantined
    config: dict[str, Any] = {
        "name": "pipeline-test",
        "run_dir": str(tmp_path / "unused"),
        "ray": {"executor": "local"},
        "ingest": {"sources": [str(logs)], "format": "jsonl"},
        "teacher": {
            "mode": "auto",
            "capture": {"model": "claude-sonnet-4-5", "api_key_env": "TD_TEST_NO_KEY"},
        },
        "curate": {
            "semdedup": {"eps": 0.0005, "cluster_size": 20},
            "car": {"per_cluster": 100, "top_overall": 0},
            "split": {"fractions": [0.5, 0.2, 0.3], "by_cluster": False, "by_tool": False},
        },
        "student": {"endpoint": student.url, "model": "student", "api_key_env": None},
        "optimize": {
            "test_limit": 9,
            "reflection": {"kind": "openai", "model": "reflector", "endpoint": reflection.url},
            "tune": {"executor": "threads"},
            "phases": [
                {"name": "phase1", "kind": "dspy", "train": 8, "max_bootstrapped_demos": 2},
                {"name": "phase2", "kind": "gepa", "train": 8, "val": 6, "max_metric_calls": 40},
            ],
        },
    }
    for dotted, value in changes.items():
        node = config
        *parents, last = dotted.split(".")
        for key in parents:
            node = node[key]
        node[last] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def statuses(run: Path) -> dict[str, str]:
    value = json.loads((run / "run.json").read_text())
    return {s["stage"]: s["status"] for s in value["stages"]}


def test_run_every_stage_then_skip_what_is_up_to_date(tmp_path: Path, servers: Any) -> None:
    student, reflection = servers
    config = write_config(tmp_path, servers)
    run = tmp_path / "run"
    result = invoke("run", config, "--out", run)
    assert result.exit_code == 0, result.output
    assert statuses(run) == {
        **dict.fromkeys(STAGES, "ran"),
        "teacher": "disabled",  # no key: the traces' own calls are the teacher's
        **{e.name: "disabled" for e in registry.STAGES if e.optional},  # this config leaves them off
    }
    assert "TD_TEST_NO_KEY is not set" in result.output
    assert Dataset.open(str(run / "traces")).manifest.quarantine.total == 1
    funnel = json.loads((run / "curate" / "funnel.json").read_text())
    assert funnel["in"] == 40 and funnel["train"] + funnel["val"] + funnel["test"] == funnel["selected"]
    summary = json.loads((run / "optimize" / "summary.json").read_text())
    assert [p["phase"] for p in summary["phases"]] == ["phase1", "phase2"]
    # the student server answers every question right once the reflection model's phrase is in the
    # prompt: GEPA found it, so the last phase beats the baseline on the test split
    assert summary["phases"][-1]["test"]["rate"] > summary["baseline"]["rate"]
    assert json.loads((run / "optimize" / "best" / "prompt.json").read_text())["system"]
    assert json.loads((run / "student.json").read_text())["endpoint"] == student.url
    report = run / "report" / "report.html"
    assert report.exists() and str(report) in result.output.replace("\n", "")
    assert "report" in (run / "run.log").read_text()

    # the same run again: nothing is recomputed and the student is not asked anything
    asked = student.requests, reflection.requests
    again = invoke("run", config, "--out", run)
    assert again.exit_code == 0, again.output
    after = statuses(run)
    assert {
        after[s] for s in ("ingest", "embed", "semdedup", "car", "split", "student", "baseline", "optimize")
    } == {"skipped"}
    assert (student.requests, reflection.requests) == asked

    # a CaR change recomputes CaR onwards; embedding and SemDeDup stay
    config = write_config(
        tmp_path, servers, **{"curate.car": {"per_cluster": 100, "top_overall": 0, "seed": 1}}
    )
    third = invoke("run", config, "--out", run, "--until", "split")
    assert third.exit_code == 0, third.output
    after = statuses(run)
    assert (after["embed"], after["semdedup"], after["car"], after["split"]) == (
        "skipped",
        "skipped",
        "ran",
        "ran",
    )
    assert after["optimize"] == "not selected" and student.requests == asked[0]


def test_from_a_stage_that_has_no_input_is_a_clear_error(tmp_path: Path, servers: Any) -> None:
    config = write_config(tmp_path, servers)
    result = invoke("run", config, "--out", tmp_path / "fresh", "--from", "car")
    assert result.exit_code == 2
    assert "stage ingest has not run" in result.output and "Traceback" not in result.output
    result = invoke("run", config, "--out", tmp_path / "fresh", "--from", "nope")
    assert result.exit_code == 2 and "unknown stage 'nope'" in result.output


def test_unreachable_student_stops_before_optimizing(tmp_path: Path, servers: Any) -> None:
    config = write_config(tmp_path, servers, **{"student.endpoint": "http://127.0.0.1:9/v1"})
    run = tmp_path / "run"
    result = invoke("run", config, "--out", run)
    assert result.exit_code == 2
    assert "student endpoint http://127.0.0.1:9/v1 is not answering" in result.output
    assert statuses(run)["split"] == "ran" and statuses(run)["student"] == "failed"
    assert not (run / "optimize" / "summary.json").exists()


def test_run_folder_on_s3(tmp_path: Path, servers: Any, bucket: str) -> None:
    import boto3

    config = write_config(
        tmp_path, servers, **{"optimize.phases": [{"name": "phase1", "kind": "dspy", "train": 4}]}
    )
    uri = f"s3://{bucket}/runs/one"
    result = invoke("run", config, "--out", uri)
    assert result.exit_code == 0, result.output
    keys = {
        o["Key"]
        for o in boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix="runs/one/").get("Contents", [])
    }
    for expected in (
        "runs/one/traces/manifest.json",
        "runs/one/curate/split/test/manifest.json",
        "runs/one/curate/funnel.json",
        "runs/one/run.json",
        "runs/one/optimize/summary.json",
        "runs/one/optimize/best/prompt.json",
        "runs/one/report/report.html",
    ):
        assert expected in keys, sorted(keys)
    assert Dataset.open(f"{uri}/curate/split/train").manifest.rows > 0


def test_a_student_that_answers_only_errors_is_not_scored_as_zero(tmp_path: Path, servers: Any) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(BaseHTTPRequestHandler):  # answers every request 501, like a wrong base path
        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        config = write_config(
            tmp_path, servers, **{"student.endpoint": url, "optimize.student": {"retries": 0}}
        )
        run = tmp_path / "run"
        result = invoke("run", config, "--out", run)
    finally:
        server.shutdown()
    assert result.exit_code == 2
    assert "answered none of 9 test requests" in result.output and "HTTP 501" in result.output
    assert statuses(run)["baseline"] == "failed"
    assert not (run / "optimize" / "baseline.json").exists()


def test_until_a_middle_stage_leaves_the_rest_alone(tmp_path: Path, servers: Any) -> None:
    student, _ = servers
    asked = student.requests
    config = write_config(tmp_path, servers)
    run = tmp_path / "run"
    result = invoke("run", config, "--out", run, "--until", "semdedup")
    assert result.exit_code == 0, result.output
    after = statuses(run)
    assert (after["embed"], after["semdedup"]) == ("ran", "ran")
    assert {after[s] for s in ("car", "split", "student", "baseline", "optimize", "report")} == {
        "not selected"
    }
    assert not (run / "curate" / "curated").exists() and student.requests == asked


def test_mlflow_tracking_logs_the_phases_and_every_candidate_trial(
    tmp_path: Path, servers: Any, ray_cluster: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    mlflow = pytest.importorskip("mlflow")
    # MLflow 3 keeps its file store behind a flag; a tracking server is the same client calls
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    tracking_uri = (tmp_path / "mlruns").as_uri()
    phase = {"name": "phase2", "kind": "gepa", "train": 8, "val": 4, "max_metric_calls": 20}
    config = write_config(
        tmp_path,
        servers,
        **{
            "optimize.phases": [phase],
            "optimize.tune": {"executor": "tune", "max_concurrent_trials": 2, "cpus_per_trial": 0.25},
            "tracking": {"mlflow": {"tracking_uri": tracking_uri, "experiment": "td-test"}},
        },
    )
    run = tmp_path / "run"
    result = invoke("run", config, "--out", run)
    assert result.exit_code == 0, result.output

    mlflow.set_tracking_uri(tracking_uri)
    [pipeline_run] = mlflow.search_runs(experiment_names=["td-test"], output_format="list")
    summary = json.loads((run / "optimize" / "summary.json").read_text())
    assert pipeline_run.info.run_name == "pipeline-test"
    assert pipeline_run.data.metrics["match_rate_baseline"] == summary["baseline"]["rate"]
    assert pipeline_run.data.metrics["match_rate_phase2"] == summary["phases"][0]["test"]["rate"]
    assert pipeline_run.data.params["best_phase"] == summary["best_phase"]

    # every candidate evaluation Ray Tune ran is an MLflow run with its score
    trials = json.loads((run / "optimize" / "phase2" / "trials.json").read_text())
    candidates = mlflow.search_runs(experiment_names=["td-test-candidates"], output_format="list")
    scored = [c for c in candidates if "score" in c.data.metrics]
    assert len(scored) >= len(trials) > 0
    # a trial's parameters say which candidate on how many examples, not the traces it carried
    hashes = {t["candidate"] for t in trials}
    logged = {c.data.params.get("candidate") for c in scored}
    assert hashes <= logged
    assert all(len(value) < 100 for c in scored for value in c.data.params.values())


def test_the_claude_code_config_runs_on_session_logs_with_long_decisions_fitted(
    tmp_path: Path, servers: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """configs/claude-code.yaml as shipped, on Claude Code fixtures plus a session whose decisions
    are far over an 8,192-token window; only the student (the stand-in) and the folders change."""
    from tooldistill.serve.models import prepare

    student, _ = servers
    projects = tmp_path / "projects"
    shutil.copytree(FIXTURES / "claude_code", projects)
    # long sessions: a request, then ~20k tokens of file reads before each later decision
    asks = [
        "Find where totals are computed and fix the rounding.",
        "Why does the nightly export write empty CSV files?",
        "Add retry with backoff to the payment client.",
        "Rename the config loader and update every import.",
        "The login page is slow: profile it and fix the hot path.",
        "Port the date helpers from moment to the standard library.",
    ]
    for j, ask in enumerate(asks):
        lines: list[dict[str, Any]] = []
        parent: str | None = None
        for k in range(4):
            code = "\n".join(
                f"{i:5d}\tdef f{j}_{k}_{i}(rows): return round(sum(rows), {i % 4})" for i in range(1200)
            )
            turn = (
                [("user", ask, f"u{j}")]
                if k == 0
                else [
                    (
                        "user",
                        [{"type": "tool_result", "tool_use_id": f"toolu_{j}_{k - 1}", "content": code}],
                        f"r{j}{k}",
                    )
                ]
            )
            call = {
                "type": "tool_use",
                "id": f"toolu_{j}_{k}",
                "name": "Read",
                "input": {"file_path": f"/home/ana/app/m{k}.py"},
            }
            turn.append(("assistant", [call], f"a{j}{k}"))
            for role, content, uuid in turn:
                message: dict[str, Any] = {"role": role, "content": content}
                if role == "assistant":
                    message["id"] = f"msg_{j}_{k}"
                lines.append(
                    {
                        "type": role,
                        "uuid": uuid,
                        "parentUuid": parent,
                        "sessionId": f"long-{j}",
                        "message": message,
                    }
                )
                parent = uuid
        (projects / f"long-session-{j}.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    monkeypatch.setenv("CLAUDE_PROJECTS", str(projects))
    config = yaml.safe_load((Path(__file__).parent.parent / "configs" / "claude-code.yaml").read_text())
    assert config["ingest"]["sources"] == ["${CLAUDE_PROJECTS:-~/.claude/projects}"]
    config["ray"] = {"executor": "local"}
    config["student"] = {"endpoint": student.url, "model": "student", "api_key_env": None}
    config["curate"]["split"] = {"fractions": [0.2, 0.1, 0.7], "by_cluster": False, "by_tool": False}
    config["optimize"]["student"]["context"] = {"window": 8192, "tokenizer": str(prepare("smollm2")[0])}
    path = tmp_path / "claude-code.yaml"
    path.write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    result = invoke("run", path, "--out", run, "--until", "baseline")
    assert result.exit_code == 0, result.output
    traces = Dataset.open(str(run / "traces"))
    assert traces.manifest.rows >= 20
    assert {t.source for t in traces.to_traces()} == {"claude_code"}
    test = json.loads((run / "optimize" / "baseline.json").read_text())["test"]
    # scored on the tool-name chain, the full chain beside it; nothing was an endpoint error
    assert test["errors"] == 0 and "chain" in test["also"]
    # the long decisions in the test split were cut to fit, and none was sent too long
    assert test["context"]["cut"] >= 1 and test["context"]["median_share_cut"] > 0.5
