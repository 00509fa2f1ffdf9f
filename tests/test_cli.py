"""The command line: summary table, clear errors, export/ingest round trip, run from a config."""

import json
from pathlib import Path

import yaml
from click.testing import CliRunner

from conftest import CLAUDE_CODE
from tooldistill.cli import main
from tooldistill.config import load_config
from tooldistill.store import Dataset

CONFIGS = Path(__file__).parent.parent / "configs"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_ingest_prints_a_summary_and_strict_fails_cleanly(tmp_path):
    out = tmp_path / "traces"
    result = invoke(
        "ingest", CLAUDE_CODE / "projects", "--format", "claude_code", "--out", out, "--executor", "local"
    )
    assert result.exit_code == 0, result.output
    for word in ("files", "traces", "tools called", "quarantined", "truncated last line: 1"):
        assert word in result.output
    strict = invoke(
        "ingest",
        CLAUDE_CODE / "projects",
        "--format",
        "claude_code",
        "--out",
        tmp_path / "s",
        "--executor",
        "local",
        "--strict",
    )
    assert (
        strict.exit_code == 2
        and "--strict: 6 bad records" in strict.output
        and "Traceback" not in strict.output
    )
    assert not (tmp_path / "s" / "manifest.json").exists()
    missing = invoke(
        "ingest", tmp_path / "nope", "--format", "openai", "--out", tmp_path / "m", "--executor", "local"
    )
    assert missing.exit_code == 2 and "source not found" in missing.output


def test_export_then_ingest_is_unchanged(tmp_path):
    first = tmp_path / "first"
    assert (
        invoke(
            "ingest", CLAUDE_CODE, "--format", "claude_code", "--out", first, "--executor", "local"
        ).exit_code
        == 0
    )
    exported = tmp_path / "export" / "traces.jsonl"
    exported.parent.mkdir()
    assert invoke("export", first, "--out", exported).exit_code == 0
    again = tmp_path / "again"
    result = invoke(
        "ingest", exported, "--format", "jsonl", "--out", again, "--executor", "local", "--strict"
    )
    assert result.exit_code == 0, result.output
    key = lambda t: t.id  # noqa: E731
    assert sorted(Dataset.open(str(first)).to_traces(), key=key) == sorted(
        Dataset.open(str(again)).to_traces(), key=key
    )

    # an edited line gets a new id that remembers the old one; a broken line is quarantined
    lines = exported.read_text().splitlines()
    edited = json.loads(lines[0])
    edited["messages"][-1]["content"] += " (edited)"
    broken = dict(edited, messages=[])
    exported.write_text("\n".join([json.dumps(edited), json.dumps(broken), *lines[1:]]) + "\n")
    result = invoke("ingest", exported, "--format", "jsonl", "--out", again, "--executor", "local")
    assert result.exit_code == 0
    dataset = Dataset.open(str(again))
    changed = [t for t in dataset.to_traces() if t.metadata.get("edited_from") == edited["id"]]
    assert len(changed) == 1 and changed[0].id != edited["id"]
    assert [q["reason"] for q in dataset.quarantined()] == [
        "invalid trace: messages: Value error, a trace needs at least one message before the decision point"
    ]


def test_every_shipped_config_validates():
    from tooldistill.optimize.run import load_config as load_optimize
    from tooldistill.optimize.sweep import load_sweep
    from tooldistill.serve.runner import load_profile

    # each folder holds one kind of config, read by its own loader
    loaders = {"optimize": load_optimize, "sweep": load_sweep, "serve": load_profile}
    paths = sorted(CONFIGS.glob("**/*.yaml"))
    assert paths and {p.parent.name for p in paths} >= {"configs", *loaders}
    for path in paths:
        loaders.get(path.parent.name, load_config)(str(path))


def test_run_from_config(ray_cluster, tmp_path):
    config = yaml.safe_load((CONFIGS / "demo.yaml").read_text())
    config["ingest"]["reader"] = {"categories": ["simple_python", "irrelevance"]}
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(config))
    result = invoke("run", path, "--out", tmp_path / "run", "--until", "ingest")
    assert result.exit_code == 0, result.output
    assert "run folder" in result.output
    dataset = Dataset.open(str(tmp_path / "run" / "traces"))
    assert set(dataset.to_pandas()["category"]) == {"simple_python", "irrelevance"}
    assert dataset.manifest.stats["executor"] == "ray"
    assert "skipped" in invoke("run", path, "--out", tmp_path / "run", "--until", "ingest").output

    bad = tmp_path / "bad.yaml"
    bad.write_text("ingest: {sources: [bfcl], format: bfcl, sauces: 1}\n")
    result = invoke("run", bad)
    assert result.exit_code == 2 and "sauces" in result.output and "Traceback" not in result.output


def test_run_keeps_the_libraries_output_in_run_log_unless_verbose(tmp_path):
    """``tooldistill run`` in a process of its own (its own Ray): the console holds our stage lines
    only, while what Ray prints (its start-up line, the workers' output) lands in ``run.log``;
    ``--verbose`` puts Ray's lines back on the console."""
    import os
    import subprocess
    import sys

    config = yaml.safe_load((CONFIGS / "demo.yaml").read_text())
    config["ingest"]["reader"] = {"categories": ["simple_python"]}
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "TOOLDISTILL_VERBOSE")}

    def run(out, *flags):
        command = [sys.executable, "-m", "tooldistill.cli", *flags, "run", str(path), "--out", str(out)]
        done = subprocess.run(
            [*command, "--until", "ingest"], capture_output=True, text=True, env=env, timeout=600
        )
        assert done.returncode == 0, done.stderr
        return done.stdout + done.stderr

    quiet = run(tmp_path / "quiet")
    assert "ingest" in quiet and "run folder" in quiet
    assert "Started a local Ray instance" not in quiet and "INFO" not in quiet
    log = (tmp_path / "quiet" / "run.log").read_text()
    assert "Started a local Ray instance" in log  # Ray's line, kept where the run's log is
    assert "ingest: ran" in log  # our own record beside it
    loud = run(tmp_path / "loud", "--verbose")
    assert "Started a local Ray instance" in loud
