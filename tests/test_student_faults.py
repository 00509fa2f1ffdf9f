"""A student replica killed during an evaluation costs retries, not wrong scores.

The student stand-in of ``optimize/testing.py`` runs in a process of its own on a fixed port.  Each
evaluation path — ``evaluate.evaluate`` (the ``tooldistill evaluate`` code) and the optimizer's
``run_batch`` + ``summarize`` — runs once undisturbed, then again while the stand-in is SIGKILLed
with a request in flight (it holds its N-th request unanswered, so the kill always finds one) and:

- started again on the same port shortly after: with the default retries every trace gets the
  same verdict as undisturbed, and more requests reached the student than there are traces;
- left down, with ``retries=0``: the traces that could not be asked are endpoint errors, counted
  beside the match rate and left out of its n; every answered trace keeps its verdict, so no trace
  is a miss because of the endpoint.

Both paths' summaries agree (matched, n, rate, interval, errors) on the same answers.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tooldistill.evaluate import EvaluateConfig, evaluate
from tooldistill.optimize.student import Outcome, Prompt, StudentSettings, run_batch, summarize
from tooldistill.optimize.testing import make_traces, write_traces
from tooldistill.schema import Trace
from tooldistill.student import DEFAULTS

TRACES = 12
#: The stand-in holds this chat request unanswered until it is killed.
HOLD_AT = 5
LATENCY_S = 0.05
RATE_KEYS = ("matched", "n", "rate", "ci95", "mean_score")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class StandIn:
    """The stand-in student in a subprocess on ``port``; with ``hold_at``, SIGKILLed as soon as that
    chat request comes in and, with ``restart``, started again on the same port ``down_s`` later."""

    def __init__(self, port: int, hold_at: int | None = None, restart: bool = False, down_s: float = 0.3):
        self.port, self.hold_at, self.restart, self.down_s = port, hold_at, restart, down_s
        self.url = f"http://127.0.0.1:{port}/v1"
        self.requests = 0  # chat requests that reached any life of the stand-in
        self.kills = 0
        self.process: subprocess.Popen[str] | None = None
        self.watchers: list[threading.Thread] = []

    def _start(self, hold_at: int | None) -> None:
        command = [sys.executable, "-u", "-m", "tooldistill.optimize.testing", "--port", str(self.port)]
        command += ["--latency", str(LATENCY_S)] + (["--hold-at", str(hold_at)] if hold_at else [])
        process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=os.environ.copy())
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith("listening"), first
        self.process = process
        watcher = threading.Thread(target=self._watch, args=(process, hold_at), daemon=True)
        watcher.start()
        self.watchers.append(watcher)

    def _watch(self, process: subprocess.Popen[str], hold_at: int | None) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            if not line.startswith("request "):
                continue
            self.requests += 1
            if hold_at is not None and int(line.split()[1]) == hold_at:
                process.send_signal(signal.SIGKILL)
                process.wait()
                self.kills += 1
                if self.restart:
                    time.sleep(self.down_s)
                    self._start(None)
                return

    def __enter__(self) -> StandIn:
        self._start(self.hold_at)
        return self

    def __exit__(self, *_: Any) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for watcher in self.watchers:
            watcher.join(timeout=10)


@pytest.fixture(scope="module")
def traces() -> list[Trace]:
    return make_traces(TRACES)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, traces: list[Trace]) -> str:
    return write_traces(str(tmp_path_factory.mktemp("faults") / "test"), traces)


def run_evaluate(dataset: str, url: str, out: Path, **how: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    config = EvaluateConfig(
        dataset=dataset, endpoint=url, model="student", out=str(out), modes=("chain", "names"),
        force=True, **how,
    )  # fmt: skip
    result = evaluate(config, show_progress=False)
    return result.summary, {row["trace_id"]: row for row in result.dataset.to_arrow().to_pylist()}


def run_optimize(traces: list[Trace], url: str, **how: Any) -> tuple[dict[str, Any], dict[str, Outcome]]:
    settings = StudentSettings(endpoint=url, mode="chain", also_modes=("names",), **how)
    outcomes = run_batch(traces, Prompt(""), settings)
    return summarize(outcomes), {o.trace_id: o for o in outcomes}


def verdict_of_row(row: dict[str, Any]) -> tuple[Any, ...]:
    verdicts = json.loads(row["verdicts"])
    return (verdicts["chain"]["match"], verdicts["chain"]["score"], verdicts["names"]["match"], row["calls"])


def verdict_of_outcome(outcome: Outcome) -> tuple[Any, ...]:
    return (
        outcome.match,
        outcome.score,
        outcome.modes["names"],
        json.dumps(outcome.calls, ensure_ascii=False),
    )


def assert_same_summaries(evaluated: dict[str, Any], optimized: dict[str, Any]) -> None:
    """The two paths' summaries of the same answers are the same figures."""
    chain, names = evaluated["modes"]["chain"], evaluated["modes"]["names"]
    assert {k: chain[k] for k in RATE_KEYS} == {k: optimized[k] for k in RATE_KEYS}
    assert evaluated["errors"] == optimized["errors"]
    assert {k: names[k] for k in ("matched", "n", "rate", "ci95")} == {
        k: optimized["also"]["names"][k] for k in ("matched", "n", "rate", "ci95")
    }


def test_a_killed_student_costs_retries_not_wrong_scores(
    tmp_path: Path, dataset: str, traces: list[Trace]
) -> None:
    port = _free_port()
    with StandIn(port) as student:
        base_eval, base_rows = run_evaluate(dataset, student.url, tmp_path / "base")
        base_opt, base_outcomes = run_optimize(traces, student.url)
    assert base_eval["errors"] == 0 and base_eval["modes"]["chain"]["n"] == TRACES
    assert base_eval["modes"]["chain"]["matched"] == TRACES // 3  # the stand-in gets a third right
    assert_same_summaries(base_eval, base_opt)
    expected = {tid: verdict_of_row(row) for tid, row in base_rows.items()}
    assert expected == {tid: verdict_of_outcome(o) for tid, o in base_outcomes.items()}

    # killed with a request in flight and back on the same port: the default retries cover it
    assert DEFAULTS.retries >= 2
    with StandIn(port, hold_at=HOLD_AT, restart=True) as student:
        summary, rows = run_evaluate(dataset, student.url, tmp_path / "restarted", concurrency=2)
    assert student.kills == 1 and student.requests > TRACES  # the lost requests were sent again
    assert summary["errors"] == 0 and max(r["attempts"] for r in rows.values()) > 1
    assert {tid: verdict_of_row(row) for tid, row in rows.items()} == expected
    assert {k: summary["modes"]["chain"][k] for k in RATE_KEYS} == {
        k: base_eval["modes"]["chain"][k] for k in RATE_KEYS
    }
    with StandIn(port, hold_at=HOLD_AT, restart=True) as student:
        optimized, outcomes = run_optimize(traces, student.url, concurrency=2)
    assert student.kills == 1 and student.requests > TRACES
    assert optimized["errors"] == 0
    assert {tid: verdict_of_outcome(o) for tid, o in outcomes.items()} == expected
    assert_same_summaries(summary, optimized)

    # killed and left down, no retries: one request at a time, so both paths lose the same traces
    with StandIn(port, hold_at=HOLD_AT) as student:
        down_eval, down_rows = run_evaluate(dataset, student.url, tmp_path / "down", concurrency=1, retries=0)
    with StandIn(port, hold_at=HOLD_AT) as student:
        down_opt, down_outcomes = run_optimize(traces, student.url, concurrency=1, retries=0)
    answered = [t.id for t in traces[: HOLD_AT - 1]]
    lost = [t.id for t in traces[HOLD_AT - 1 :]]
    assert down_eval["errors"] == len(lost) and down_eval["scored"] == len(answered)
    assert all(down_rows[tid]["error"] and down_rows[tid]["verdicts"] is None for tid in lost)
    assert all(
        down_outcomes[tid].error and down_outcomes[tid].reason.startswith("endpoint error") for tid in lost
    )
    # the answered traces keep their verdicts; the errors are in no denominator
    assert {tid: verdict_of_row(down_rows[tid]) for tid in answered} == {
        tid: expected[tid] for tid in answered
    }
    assert {tid: verdict_of_outcome(down_outcomes[tid]) for tid in answered} == {
        tid: expected[tid] for tid in answered
    }
    hits = sum(1 for tid in answered if expected[tid][0])
    chain = down_eval["modes"]["chain"]
    assert (chain["matched"], chain["n"]) == (hits, len(answered))
    assert chain["rate"] == round(hits / len(answered), 4)
    assert_same_summaries(down_eval, down_opt)
    assert down_opt["first_error"].startswith("gave up after 1 attempts: connection error")
