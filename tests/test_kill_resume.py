"""A run killed with SIGKILL, then run again, ends where an uninterrupted run ends; and one writer per
output folder.

The pipeline runs as a real process (``python -m tooldistill.cli run``) in its own process group,
which is killed whole at a point inside each stage group:

(b) teacher capture, once the local Anthropic server has answered some of the requests;
(a) curation, once the run has started the embed stage (it prints ``embed …`` when it does);
(c) the student's baseline evaluation, once the student stand-in has finished some requests.

One run is killed at each point in turn (each rerun resumes the previous kill), then a last rerun
goes to the end (``--until baseline``: optimizing comes after and has its own resume tests).  Claude
and the student are the only network edges: the local Anthropic server of
``tooldistill.testing.anthropic_server`` and an OpenAI-compatible stand-in student on 127.0.0.1 that
counts every answer it finished, per request body.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from test_teacher import SECRET_LINES, leaked
from tooldistill import runlock
from tooldistill.cli import main
from tooldistill.optimize.testing import _Server, _StudentHandler, make_traces
from tooldistill.schema import trace_to_json
from tooldistill.store import Dataset
from tooldistill.teacher.cache import RequestCache
from tooldistill.testing.anthropic_server import AnthropicServer, Faults, ReferencePolicy

N_TRACES, SAMPLES, TEST_LIMIT, CONCURRENCY = 40, 2, 12, 2
API_KEY = "sk-ant-local-kill-resume"


def invoke(*args: Any, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(main, [str(a) for a in args], env=env, catch_exceptions=False)


# ---------------------------------------------------------------------------------------------
# the network edges


class _CountingHandler(_StudentHandler):
    """The stand-in student's answers; an answer counts as finished once it is written out."""

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        self._body_hash = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
        return super().answer(body)

    def _send(self, code: int, body: dict[str, Any]) -> None:
        super()._send(code, body)
        self.wfile.flush()
        if code == 200 and getattr(self, "_body_hash", None):
            with self.owner.lock:
                self.owner.finished[self._body_hash] += 1
        self._body_hash = None  # a keep-alive connection's next request may be a GET


class CountingStudent(_Server):
    """``optimize.testing``'s student stand-in, counting the answers it finished per request body."""

    def __init__(self, latency_s: float) -> None:
        self.latency_s = latency_s
        self.api_key = None
        self.finished: Counter[str] = Counter()
        super().__init__(type("CountingHandler", (_CountingHandler,), {}))

    def snapshot(self) -> Counter[str]:
        with self.lock:
            return Counter(self.finished)


class ClaudeWithSecrets(ReferencePolicy):
    """The traces' reference calls, after a text that repeats secrets from a config file."""

    def answer(self, body: dict[str, Any], key: str) -> list[dict[str, Any]]:
        text = {"type": "text", "text": f"The config says:\n{SECRET_LINES}\nso I call the tool."}
        return [text, *super().answer(body, key)]


# ---------------------------------------------------------------------------------------------
# running and killing


class Run:
    """``tooldistill run`` in its own process group; its console lines collected as they come."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def kill_when(self, reached: Callable[[], bool], what: str, timeout_s: float = 900) -> None:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if reached():
                os.killpg(self.process.pid, signal.SIGKILL)  # the whole group, children too
                self.process.wait()
                self.reader.join(5)
                return
            if self.process.poll() is not None:
                self.reader.join(5)
                pytest.fail(f"the run ended before {what}:\n{self.output[-3000:]}")
            time.sleep(0.01)
        os.killpg(self.process.pid, signal.SIGKILL)
        pytest.fail(f"no {what} within {timeout_s} s:\n{self.output[-3000:]}")

    def finish(self, timeout_s: float = 900) -> int:
        try:
            code = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            raise
        self.reader.join(5)
        return code


def stage_times(run: Path) -> list[str]:
    """What the last run in ``run`` did, stage by stage (``run.json`` is rewritten after each)."""
    value = json.loads((run / "run.json").read_text())
    return [f"{s['stage']} {s['status']} {s['elapsed_s']:.1f}s" for s in value["stages"]]


def content_hashes(run: Path) -> dict[str, list[str]]:
    """The sha256 of every part of every dataset in a run folder, by dataset."""
    return {
        str(path.parent.relative_to(run)): [part["sha256"] for part in json.loads(path.read_text())["parts"]]
        for path in sorted(run.rglob("manifest.json"))
    }


def write_config(folder: Path, student: CountingStudent) -> Path:
    logs = folder / "logs.jsonl"
    logs.write_text("\n".join(json.dumps(trace_to_json(t)) for t in make_traces(N_TRACES)) + "\n")
    config = {
        "name": "kill-resume",
        "run_dir": str(folder / "unused"),
        "ray": {"executor": "local"},
        "ingest": {"sources": [str(logs)], "format": "jsonl"},
        "teacher": {
            "mode": "claude",
            "capture": {"model": "claude-sonnet-4-6", "samples": SAMPLES, "concurrency": CONCURRENCY},
        },
        "curate": {
            "semdedup": {"eps": 0.0005, "cluster_size": 20},
            "car": {"per_cluster": 100, "top_overall": 0},
            "split": {"fractions": [0.5, 0.2, 0.3], "by_cluster": False, "by_tool": False},
        },
        "student": {"endpoint": student.url, "model": "student", "api_key_env": None},
        "optimize": {
            "test_limit": TEST_LIMIT,
            "student": {"concurrency": CONCURRENCY, "retries": 0},
            "reflection_without_key": "student",
            "phases": [{"name": "phase1", "kind": "dspy", "train": 4}],
        },
        "report": {"enabled": False},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """An uninterrupted run, then the same config killed at (b), (a) and (c) and run to the end."""
    folder = tmp_path_factory.mktemp("kill-resume")
    claude = AnthropicServer(
        ClaudeWithSecrets(make_traces(N_TRACES), disagree_rate=0.2),
        # every answer takes a little while, so a kill can land between two of them
        Faults(rate=1.0, kinds=("slow",), slow_s=0.05),
        min_cache_tokens=10**9,
    ).start()
    student = CountingStudent(latency_s=0.3).start()
    for httpd in (claude.httpd, student.httpd):  # a killed client's reset connection is no error here
        httpd.handle_error = lambda *_: None  # type: ignore[method-assign]
    env = {**os.environ, "ANTHROPIC_BASE_URL": claude.url, "ANTHROPIC_API_KEY": API_KEY}
    config = write_config(folder, student)
    figures: dict[str, Any] = {"folder": folder}
    try:
        # the uninterrupted run (in this process: it needs no killing)
        started = time.time()
        reference = folder / "whole"
        result = invoke("run", config, "--out", reference, "--until", "baseline", env=env)
        assert result.exit_code == 0, result.output
        figures["whole_s"] = round(time.time() - started, 1)
        figures["stages"] = {"whole": stage_times(reference)}
        figures["whole_claude"] = Counter(claude.stats()["answered"])
        received_before = Counter(claude.stats()["received"])
        figures["whole_student"] = student.snapshot()
        claude_before, student_before = figures["whole_claude"], figures["whole_student"]

        def claude_now() -> Counter[str]:
            return Counter(claude.stats()["answered"]) - claude_before

        def student_now() -> Counter[str]:
            return student.snapshot() - student_before

        run = folder / "killed"
        command = [sys.executable, "-m", "tooldistill.cli", "run", str(config), "--out", str(run)]
        command += ["--until", "baseline"]
        cache = RequestCache(str(run / "teacher" / "requests"))
        started = time.time()

        # (b) teacher capture: killed once the server has answered a quarter of the requests
        first = Run(command, env)
        first.kill_when(lambda: sum(claude_now().values()) >= N_TRACES * SAMPLES // 4, "20 answers")
        figures["b"] = {
            "answered_at_kill": sum(claude_now().values()),
            "stored_at_kill": sorted(cache.done_keys()),
            "published": (run / "teacher" / "manifest.json").exists(),
        }
        figures["stages"]["b"] = stage_times(run)

        # (a) curation: killed as the embed stage starts (loading the embedding model takes seconds)
        second = Run(command, env)
        second.kill_when(lambda: any(line.startswith("embed") for line in second.lines), "embed stage")
        figures["a"] = {
            "teacher_published": (run / "teacher" / "manifest.json").exists(),
            "embedded_published": (run / "curate" / "embedded" / "manifest.json").exists(),
            "claude_after": sum(claude_now().values()),
            "takeover": "taking over the stale run lock" in " ".join(second.output.split()),
        }
        figures["stages"]["a"] = stage_times(run)

        # (c) the baseline: killed once the student has finished a third of the test requests
        third = Run(command, env)
        third.kill_when(lambda: sum(student_now().values()) >= TEST_LIMIT // 3, "4 student answers")
        figures["c"] = {
            "student_finished_at_kill": sum(student_now().values()),
            "split_published": (run / "curate" / "split" / "manifest.json").exists(),
            "baseline_written": (run / "optimize" / "baseline.json").exists(),
        }
        figures["stages"]["c"] = stage_times(run)

        # to the end
        last = Run(command, env)
        assert last.finish() == 0, last.output[-3000:]
        figures["chain_s"] = round(time.time() - started, 1)
        figures["stages"]["last"] = stage_times(run)
        figures["claude"] = claude_now()
        figures["claude_received"] = Counter(claude.stats()["received"]) - received_before
        figures["student"] = student_now()
        figures["runs"] = (reference, run)
        yield figures
    finally:
        claude.stop()
        student.close()


def test_killed_runs_resume_to_the_uninterrupted_result(killed_and_resumed: dict[str, Any]) -> None:
    figures = killed_and_resumed
    reference, run = figures["runs"]
    print(
        json.dumps({k: v for k, v in figures.items() if k in ("whole_s", "chain_s", "stages")}),
        json.dumps({k: {n: v for n, v in figures[k].items() if n != "stored_at_kill"} for k in "bac"}),
    )
    # each kill landed inside its stage group: nothing of the stage was published yet
    assert not figures["b"]["published"] and 0 < len(figures["b"]["stored_at_kill"]) < N_TRACES * SAMPLES
    assert figures["a"]["teacher_published"] and not figures["a"]["embedded_published"]
    assert figures["a"]["takeover"]  # the killed run's lock was stale, and taken over
    assert figures["c"]["split_published"] and not figures["c"]["baseline_written"]

    # every dataset has the same content as the uninterrupted run's, part for part
    hashes = content_hashes(run)
    assert hashes == content_hashes(reference)
    assert {"traces", "teacher", "curate/embedded", "curate/split/test"} <= set(hashes)
    baseline = json.loads((run / "optimize" / "baseline.json").read_text())["test"]
    whole = json.loads((reference / "optimize" / "baseline.json").read_text())["test"]
    assert (baseline["matched"], baseline["n"], baseline["errors"]) == (whole["matched"], TEST_LIMIT, 0)

    # Claude: every request answered; nothing stored before the kill was sent again, and at most the
    # requests in flight at the kill were answered twice (their answers never reached the cache)
    claude = figures["claude"]
    assert len(claude) == N_TRACES * SAMPLES == len(figures["whole_claude"])
    stored = figures["b"]["stored_at_kill"]
    assert stored and all(figures["claude_received"][key] == 1 for key in stored)
    assert sum(n - 1 for n in claude.values()) <= CONCURRENCY
    assert figures["a"]["claude_after"] == sum(claude.values())  # the curate rerun asked nothing

    # the teacher's secrets: counted alike after the kill, and in no file of either run folder
    counts = Dataset.open(str(run / "teacher")).manifest.stats["secrets_redacted"]
    expected = {"aws_access_key_id": 80, "basic_auth": 80, "jwt": 80, "secret_keyword": 80}
    assert counts == expected == Dataset.open(str(reference / "teacher")).manifest.stats["secrets_redacted"]
    assert not leaked(run) and not leaked(reference)


def test_a_killed_baseline_asks_the_student_nothing_twice(killed_and_resumed: dict[str, Any]) -> None:
    """Each answer is journaled as it comes in (``RUN/optimize/baseline.answers.jsonl``): the rerun
    asks only what had no answer. The only repeats allowed are requests in flight at the kill (the
    stand-in had sent the answer, the killed client never read it): at most the concurrency."""
    student = killed_and_resumed["student"]
    assert len(student) == TEST_LIMIT
    repeated = {body: n for body, n in student.items() if n > 1}
    assert all(n == 2 for n in repeated.values()), repeated
    assert len(repeated) <= CONCURRENCY, f"{len(repeated)} finished student requests were asked again"
    assert killed_and_resumed["c"]["student_finished_at_kill"] >= TEST_LIMIT // 3
    _, run = killed_and_resumed["runs"]
    assert (run / "optimize" / "baseline.answers.jsonl").is_file()


# ---------------------------------------------------------------------------------------------
# one writer per output folder


HOLDER = """
import sys, time
from tooldistill import runlock
with runlock.hold(sys.argv[1], command="tooldistill ingest first.jsonl --out data"):
    print("held", flush=True)
    time.sleep(600)
"""


def _jsonl(folder: Path) -> Path:
    path = folder / "logs.jsonl"
    path.write_text("\n".join(json.dumps(trace_to_json(t)) for t in make_traces(4)) + "\n")
    return path


def test_a_second_writer_on_an_output_folder_stops_naming_the_holder(tmp_path: Path) -> None:
    logs, out = _jsonl(tmp_path), tmp_path / "data"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        second = [
            ("ingest", logs, "--format", "jsonl", "--out", out, "--executor", "local"),
            ("curate", "split", "--dataset", tmp_path / "any", "--out", out),
            ("curate", "all", "--dataset", tmp_path / "any", "--out", out, "--executor", "local"),
            ("teacher", "capture", "--dataset", tmp_path / "any", "--out", out, "--model", "claude-x"),
        ]
        for args in second:
            result = invoke(*args)
            text = " ".join(result.output.split())
            assert result.exit_code == 2, (args, result.output)
            assert "in use by another run" in text and f"pid {holder.pid}" in text, text
            assert "tooldistill ingest first.jsonl --out data" in text
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing written, the lock kept
        assert runlock.read_holder(str(out)).pid == holder.pid  # type: ignore[union-attr]
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    # its process is gone: the next writer takes the lock over, says so, and leaves none behind
    result = invoke("ingest", logs, "--format", "jsonl", "--out", out, "--executor", "local")
    assert result.exit_code == 0, result.output
    assert "taking over the stale run lock" in " ".join(result.output.split())
    assert Dataset.open(str(out)).manifest.rows == 4 and not (out / ".lock").exists()


def test_no_writing_inside_a_folder_a_run_holds(tmp_path: Path) -> None:
    logs, run = _jsonl(tmp_path), tmp_path / "run"
    with runlock.hold(str(run), command="tooldistill run configs/demo.yaml"):
        for args in (
            ("ingest", logs, "--format", "jsonl", "--out", run / "traces", "--executor", "local"),
            ("curate", "split", "--dataset", run / "traces", "--out", run / "curate" / "split"),
        ):
            result = invoke(*args)
            text = " ".join(result.output.split())
            assert result.exit_code == 2, result.output
            assert f"inside the run folder {run}, in use by another run" in text
            assert "tooldistill run configs/demo.yaml" in text and f"pid {os.getpid()}" in text
        assert sorted(p.name for p in run.iterdir()) == [".lock"]
    result = invoke("ingest", logs, "--format", "jsonl", "--out", run / "traces", "--executor", "local")
    assert result.exit_code == 0, result.output


def test_a_command_that_fails_leaves_no_output_folder(tmp_path: Path) -> None:
    result = invoke("ingest", tmp_path / "missing", "--format", "jsonl", "--out", tmp_path / "new" / "traces")
    assert result.exit_code == 2 and "source not found" in result.output
    assert not (tmp_path / "new").exists()
