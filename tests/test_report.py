"""The run report, rendered from a real run folder.

The folder is made by the real stages on a small input: ingest of a JSONL file (with two bad lines,
so the quarantine is real), teacher capture against the local Anthropic-compatible server (three
samples per trace, some disagreeing), ``run_chain`` with the packaged MiniLM model, and
``optimize`` (DSPy, GEPA, GEPA on CaR-best) against the local student and reflection servers.  Only
``run.json`` and ``student.json`` are written here, as the pipeline writes them.  Every assertion
compares the report with the files the stages wrote.
"""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import struct
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.stats import binomtest

from tooldistill import store
from tooldistill.curate.chain import run_chain
from tooldistill.curate.registry import StageContext
from tooldistill.curate.runner import LocalRunner
from tooldistill.executor import LocalExecutor
from tooldistill.ingest import IngestConfig, ingest
from tooldistill.optimize.run import config_from_dict, optimize
from tooldistill.optimize.student import Outcome, summarize
from tooldistill.optimize.testing import (
    BETTER_INSTRUCTION,
    CLOCK,
    WEATHER,
    ReflectionServer,
    StudentServer,
    city_of,
)
from tooldistill.report import ReportError, render_report
from tooldistill.report.sections import BUILDERS, RunFolder, build_sections, make_context, removal_curve
from tooldistill.schema import Message, ToolCall, Trace
from tooldistill.teacher.capture import CaptureConfig, capture
from tooldistill.teacher.pricing import Price
from tooldistill.testing.anthropic_server import AnthropicServer, ReferencePolicy

MODEL = "claude-sonnet-4-6"
CAPTURE_KEY = "sk-ant-api03-REPORTcaptureKEYnotreal0123456789abcdef"
SECRETS = {
    "api_key": "sk-ant-api03-REPORTsecretNEVERshown0123456789abcdef",
    "hf_token": "hf_ReportTestTokenNeverShownABCDEFGHIJ",
    "aws_secret_access_key": "tdReportSecretNeverShown0123456789ABCDEFGH",
    "free_text": "sk-proj-ReportSecretInFreeText0123456789abc",
    "url_password": "pw-secret-xyz",
}
#: the reflection model's instruction: holds the student server's key phrase, and HTML to escape
INSTRUCTION = (
    BETTER_INSTRUCTION + ' Write <tool_call> & "quote" it; never </script><script>alert(1)</script>.'
)
ZONES = [
    "Europe/Oslo", "Asia/Tokyo", "America/Lima", "Africa/Cairo", "Europe/Rome", "Asia/Baku",
    "Europe/Riga", "Australia/Perth", "Asia/Pune", "Europe/Bern", "America/Quito", "Africa/Dakar",
]  # fmt: skip
PNG = b"\x89PNG\r\n\x1a\n"


def weather(i: int, source_id: str | None = None) -> Trace:
    return Trace(
        source_id=source_id or f"w{i}",
        source="test",
        category="weather",
        messages=[Message(role="user", content=f"What is the weather in {city_of(i)}?")],
        tools=[WEATHER, CLOCK],
        reference_calls=[ToolCall(name="weather.current", arguments={"city": city_of(i)})],
    )


def clock(i: int) -> Trace:
    # the student server cannot read these questions and answers with unparseable text: (none)
    return Trace(
        source_id=f"c{i}",
        source="test",
        category="clock",
        messages=[Message(role="user", content=f"What time is it in {ZONES[i]}?")],
        tools=[WEATHER, CLOCK],
        reference_calls=[ToolCall(name="clock.now", arguments={"tz": ZONES[i]})],
    )


def write_source(folder: Path) -> None:
    """48 weather and 12 clock questions, 6 exact re-asks (other source id), 2 bad lines."""
    traces = [weather(i) for i in range(48)] + [clock(i) for i in range(12)]
    traces += [weather(i * 7, f"again{i}") for i in range(6)]
    lines = [t.model_dump_json(exclude={"id"}) for t in traces]
    lines.insert(10, "{not json")
    lines.insert(
        20,
        json.dumps(
            {"source_id": "bad", "source": "test", "messages": [], "tools": [], "reference_calls": []}
        ),
    )
    folder.mkdir(parents=True)
    (folder / "traces.jsonl").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report")
    run = root / "run"
    write_source(root / "source")
    started = time.time()
    stages: list[dict[str, Any]] = []

    def timed(stage: str, detail: dict[str, Any] | None = None) -> None:
        nonlocal started
        now = time.time()
        stages.append(
            {"stage": stage, "status": "ran", "elapsed_s": round(now - started, 3), "detail": detail or {}}
        )
        started = now

    ingested = ingest(
        IngestConfig(sources=(str(root / "source"),), format="jsonl", out=str(run / "traces")),
        LocalExecutor(show_progress=False),
    )
    timed("ingest", {"rows": ingested.dataset.manifest.rows})

    server = AnthropicServer(ReferencePolicy(ingested.dataset.to_traces(), disagree_rate=0.15)).start()
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("ANTHROPIC_BASE_URL", server.url)
            env.setenv("ANTHROPIC_API_KEY", CAPTURE_KEY)
            capture(
                CaptureConfig(
                    dataset=str(run / "traces"),
                    out=str(run / "teacher"),
                    model=MODEL,
                    samples=3,
                    prices={MODEL: Price(input=3.0, output=15.0, cache_write=3.75, cache_read=0.3)},
                    retry_base_s=0.01,
                ),
                show_progress=False,
            )
    finally:
        server.stop()
    timed("teacher", {"samples": 3, "api_key": SECRETS["api_key"]})

    curated = run_chain(  # writes curate/funnel.json
        str(run / "teacher"),
        str(run / "curate"),
        {
            "semdedup": {"k": 3},
            "car": {"per_cluster": 2, "top_overall": 36},
            "split": {"fractions": (0.5, 0.2, 0.3)},
        },
        StageContext(LocalRunner(show_progress=False), show_progress=False),
    )
    assert curated is not None
    for stage in ("embed", "semdedup", "car", "split"):
        timed(stage)

    split = run / "curate" / "split"
    with StudentServer() as student, ReflectionServer(instruction=INSTRUCTION) as reflection:
        timed("student", {"endpoint": student.url, "token": SECRETS["hf_token"]})
        config = config_from_dict(
            {
                "run_dir": str(run / "optimize"),
                "data": {name: str(split / name) for name in ("train", "val", "test")},
                "student": {"endpoint": student.url, "model": "student"},
                "reflection": {
                    "kind": "openai",
                    "model": "reflector",
                    "endpoint": reflection.url,
                    "input_usd_per_mtok": 3.0,
                    "output_usd_per_mtok": 15.0,
                },
                "tune": {"executor": "threads"},
                "phases": [
                    {"name": "phase1", "kind": "dspy", "train": 50, "max_bootstrapped_demos": 2},
                    {
                        "name": "phase2",
                        "kind": "gepa",
                        "train": 50,
                        "val": 8,
                        # the seed's validation (8) and one whole iteration (2 parent and 2 child
                        # minibatches of 3, a validation per accepted child) within the budget
                        "max_metric_calls": 40,
                        "parents_per_iteration": 1,
                        "mutations_per_parent": 2,
                    },
                    {
                        "name": "phase3",
                        "kind": "gepa",
                        "train": 10,
                        "select": "car",
                        "val": 8,
                        "max_metric_calls": 30,
                        "parents_per_iteration": 1,
                        "mutations_per_parent": 2,
                    },
                ],  # fmt: skip
            }
        )
        optimize(config)
        student_url = student.url
    timed("optimize")
    stages.insert(-1, {"stage": "baseline", "status": "ran", "elapsed_s": 0.4, "detail": {}})
    stages.append(
        {"stage": "report", "status": "skipped", "elapsed_s": 0.0, "detail": {"reason": "not asked"}}
    )
    run_config = {
        "name": "report-test",
        "teacher": {"model": MODEL, "api_key": SECRETS["api_key"], "api_key_env": "ANTHROPIC_API_KEY"},
        "hub": {"hf_token": SECRETS["hf_token"]},
        "s3": {
            "endpoint": f"https://minio:{SECRETS['url_password']}@minio.local:9000",
            "aws_secret_access_key": SECRETS["aws_secret_access_key"],
        },
        "notes": "pasted by mistake: " + SECRETS["free_text"],
    }
    now = time.time()
    (run / "run.json").write_text(
        json.dumps(
            {
                "name": "report-test",
                "config": run_config,
                "stages": stages,
                "started": now - 60,
                "finished": now,
            }
        )
    )
    (run / "student.json").write_text(
        json.dumps(
            {
                "endpoint": student_url,
                "model": "student",
                "profile": "cpu-test",
                "replicas": 2,
                "gpus_per_replica": 1,
                "started": now - 900,
                "stopped": now,
                "serve_seconds": 900.0,
                "gpu_hours": 0.5,
            }
        )
    )
    return run


@pytest.fixture(scope="module")
def report(run_dir: Path) -> Any:
    return render_report(str(run_dir))


@pytest.fixture(scope="module")
def texts(report: Any) -> tuple[str, str]:
    return report.markdown.read_text(encoding="utf-8"), report.html.read_text(encoding="utf-8")


def table_after(markdown: str, header: str) -> list[list[str]]:
    """The body rows of the Markdown table whose header line starts with ``header``."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip()[1:-1].split(" | ")])
    return rows


def manifest(run: Path, rel: str) -> store.Manifest:
    return store.Dataset.open(str(run / rel)).manifest


def pct(value: float) -> str:
    return f"{value * 100:.1f}%"


def read(path: Path) -> Any:
    return json.loads(path.read_text())


def test_funnel_numbers_are_the_manifests_rows(run_dir: Path, report: Any, texts: tuple[str, str]) -> None:
    markdown, page = texts
    traces = manifest(run_dir, "traces")
    deduped = manifest(run_dir, "curate/deduped")
    expected = {
        "Ingested": traces.rows,
        "Quarantined": traces.quarantine.total,
        "Teacher answered": manifest(run_dir, "teacher").rows,
        "Embedded": manifest(run_dir, "curate/embedded").rows,
        "Duplicates removed": deduped.stats["duplicates"],
        "After SemDeDup": deduped.rows,
        "Selected (CaR)": manifest(run_dir, "curate/curated").rows,
        "Not selected (CaR)": manifest(run_dir, "curate/curated").stats["not_selected"],
        "Train": manifest(run_dir, "curate/split/train").rows,
        "Val": manifest(run_dir, "curate/split/val").rows,
        "Test": manifest(run_dir, "curate/split/test").rows,
    }
    # the input: 66 good lines, two bad ones, six re-asks that SemDeDup must find
    assert traces.rows == 66 and traces.quarantine.total == 2 and deduped.stats["duplicates"] >= 6
    assert expected["Selected (CaR)"] < expected["After SemDeDup"]
    assert expected["Selected (CaR)"] + expected["Not selected (CaR)"] == expected["After SemDeDup"]
    rows = {r[0]: r[1] for r in table_after(markdown, "| Step | Traces |")}
    assert rows == {label: f"{n:,}" for label, n in expected.items()}
    for label, n in expected.items():
        assert f'<td>{html.escape(label)}</td><td class="num">{n:,}</td>' in page
    assert "Mismatch" not in markdown  # curate/funnel.json agrees with the manifests
    reasons = dict(r for r in table_after(markdown, "| Reason | Records |"))
    assert reasons == {k: str(v) for k, v in traces.quarantine.by_reason.items()}
    assert report.sections["funnel"] == "rendered"


def test_eps_table_and_curve_are_semdedups(run_dir: Path, texts: tuple[str, str]) -> None:
    markdown, _ = texts
    stats = manifest(run_dir, "curate/deduped").stats
    rows = table_after(markdown, "| ε | Removed |")
    shown = {r[0].replace(" (used)", ""): r[1] for r in rows}
    assert shown == {eps: pct(rate) for eps, rate in stats["removal_rates"].items()}
    assert [r[0] for r in rows if "(used)" in r[0]] == [f"{stats['eps']:g} (used)"]
    # the plotted curve comes from the per-trace similarities; at the recorded ε it is the stage's rate
    decisions = store.Dataset.open(str(run_dir / "curate/deduped/decisions")).to_arrow()
    sims = decisions.column("dedup_max_sim").to_numpy(zero_copy_only=False)
    eps = [float(e) for e in stats["removal_rates"]]
    assert np.allclose(removal_curve(sims, eps), list(stats["removal_rates"].values()), atol=1e-6)
    assert "give other rates" not in markdown


def test_cluster_sizes_are_the_dedup_clusters(run_dir: Path, report: Any, texts: tuple[str, str]) -> None:
    markdown, _ = texts
    stats = manifest(run_dir, "curate/deduped").stats
    sizes = stats["cluster_sizes"]
    assert (
        f"{stats['in']} traces in {stats['k']} clusters: sizes {sizes['min']}–{sizes['max']}, mean {sizes['mean']:.1f}"
        in markdown
    )
    rows = table_after(markdown, "| Cluster | Traces |")
    assert sum(int(r[1]) for r in rows) == stats["in"]
    assert sum(int(r[2]) for r in rows) == stats["duplicates"]
    assert report.sections["clusters"] == "rendered"


def test_phase_table_equals_the_phase_results(run_dir: Path, report: Any, texts: tuple[str, str]) -> None:
    markdown, page = texts
    opt = run_dir / "optimize"
    baseline = read(opt / "baseline.json")["test"]
    train_rows = manifest(run_dir, "curate/split/train").rows
    rows = table_after(markdown, "|   | Method |")

    def names(test: dict) -> str:  # the tool-name chain, measured beside the optimized mode
        low, high = test["also"]["names"]["ci95"]
        return f"{pct(test['also']['names']['rate'])} {low * 100:.1f}–{high * 100:.1f}%"

    assert rows[0] == ["Baseline", "seed prompt", "—", str(baseline["n"]), pct(baseline["rate"]),
                       f"{baseline['ci95'][0] * 100:.1f}–{baseline['ci95'][1] * 100:.1f}%",
                       str(baseline["errors"]), "—", "—", names(baseline)]  # fmt: skip
    labels = {"phase1": "phase1 (dspy)", "phase2": "phase2 (gepa)", "phase3": "phase3 (gepa, curated)"}
    caps = {"phase1": 50, "phase2": 50, "phase3": 10}
    before = {o["trace_id"]: o["match"] for o in read(opt / "baseline.json")["outcomes"]}
    for row, (name, label) in zip(rows[1:], labels.items(), strict=True):
        result = read(opt / name / "result.json")
        test = result["test"]
        low, high = test["ci95"]
        # the paired comparison, counted here from the two evaluations' answers
        after = {o["trace_id"]: o["match"] for o in read(opt / name / "test.json")["outcomes"]}
        gained = sum(1 for t, ok in after.items() if ok and not before[t])
        lost = sum(1 for t, ok in after.items() if before[t] and not ok)
        assert gained > lost  # every phase of this run beats the seed prompt on some trace
        paired = test["vs_baseline"]
        assert (paired["gained"], paired["lost"], paired["n"]) == (gained, lost, len(after))
        assert paired["difference"] == pytest.approx(test["rate"] - baseline["rate"], abs=1e-4)
        chance = binomtest(gained, gained + lost, 0.5).pvalue
        d_low, d_high = paired["ci95"]
        assert d_low <= paired["difference"] <= d_high
        assert row[0] == label
        assert row[2] == str(min(caps[name], train_rows))  # the traces it had, not the cap
        assert [cell.replace("\\[", "[").replace("\\]", "]") for cell in row[3:]] == [
            str(test["n"]),
            pct(test["rate"]),
            f"{low * 100:.1f}–{high * 100:.1f}%",
            str(test["errors"]),
            f"{paired['difference'] * 100:+.1f} pp [{d_low * 100:+.1f} to {d_high * 100:+.1f}] "
            f"({gained} gained, {lost} lost)",
            "< 0.0001" if chance < 1e-4 else f"{chance:.4f}".rstrip("0").rstrip("."),
            names(test),
        ]
        assert f"<td>{html.escape(label)}</td>" in page
    # the optimizers did something: demos beat the seed prompt, the reflection's instruction beats both
    assert read(opt / "phase1/result.json")["test"]["rate"] > baseline["rate"]
    assert read(opt / "phase2/result.json")["test"]["rate"] > read(opt / "phase1/result.json")["test"]["rate"]
    assert report.sections["phases"] == "rendered"
    search = {r[0]: r for r in table_after(markdown, "| Phase | Candidates |")}
    candidates = read(opt / "phase2/candidates.json")
    assert search["phase2"][1:3] == [str(len(candidates["candidates"])), str(len(candidates["pareto_front"]))]


def test_confusion_counts_are_the_best_phases_outcomes(
    run_dir: Path, report: Any, texts: tuple[str, str]
) -> None:
    markdown, _ = texts
    best = read(run_dir / "optimize/summary.json")["best_phase"]
    outcomes = read(run_dir / f"optimize/{best}/test.json")
    expected_of = {
        t.id: t.reference_calls[0].name
        for t in store.Dataset.open(str(run_dir / "curate/split/test")).to_traces()
    }
    pairs = Counter(
        (expected_of[o["trace_id"]], o["calls"][0]["name"] if o["calls"] else "(none)")
        for o in outcomes["outcomes"]
    )
    assert ("clock.now", "(none)") in pairs and ("weather.current", "weather.current") in pairs
    header = next(line for line in markdown.splitlines() if line.startswith("| Expected"))
    columns = [c.strip() for c in header.strip()[1:-1].split(" | ")][1:-2]
    shown = Counter()
    total = 0
    for row in table_after(markdown, "| Expected"):
        for column, cell in zip(columns, row[1:-2], strict=True):
            if int(cell):
                shown[(row[0], column)] = int(cell)
        assert int(row[-2]) == sum(int(c) for c in row[1:-2])
        matched = sum(o["match"] for o in outcomes["outcomes"] if expected_of[o["trace_id"]] == row[0])
        assert int(row[-1]) == matched
        total += int(row[-2])
    assert shown == pairs
    assert total == outcomes["summary"]["n"] == len(outcomes["outcomes"])
    assert outcomes["summary"]["errors"] == 0
    assert f"{best} on the test split: {total} traces, 0 endpoint errors." in markdown
    assert report.sections["confusion"] == "rendered"


def test_exported_prompt_is_shown_escaped(run_dir: Path, texts: tuple[str, str]) -> None:
    markdown, page = texts
    prompt = read(run_dir / "optimize/best/prompt.json")
    assert prompt["system"] == INSTRUCTION and prompt["demos"]
    assert html.escape(prompt["system"]) in page
    assert "<script>" not in page and "<tool_call>" not in page
    assert f"```text\n{prompt['system']}\n```" in markdown  # verbatim inside a fence
    first_user = next(m["content"] for m in prompt["demos"] if m["role"] == "user")
    call = next(m for m in prompt["demos"] if m["role"] == "assistant")["tool_calls"][0]["function"]
    for text in (first_user, f"→ {call['name']}({call['arguments']})"):
        assert text in markdown and html.escape(text) in page


def test_figures_are_pngs_next_to_the_report_and_inside_the_html(report: Any, texts: tuple[str, str]) -> None:
    markdown, page = texts
    names = sorted(p.name for p in report.figures)
    assert names == sorted(
        ["funnel.png", "eps_curve.png", "cluster_sizes.png", "match_rates.png", "confusion.png"]
    )
    for path in report.figures:
        data = path.read_bytes()
        assert path.parent == report.markdown.parent
        assert data[:8] == PNG and data[12:16] == b"IHDR"
        width, height = struct.unpack(">II", data[16:24])
        assert width > 200 and height > 100
        assert f"]({path.name})" in markdown
        assert f"data:image/png;base64,{base64.b64encode(data).decode()}" in page
    assert "<img" in page and 'src="http' not in page and "funnel.png" not in page  # one self-contained file


def test_teacher_ceiling_and_cost_come_from_the_run(
    run_dir: Path, report: Any, texts: tuple[str, str]
) -> None:
    markdown, _ = texts
    summary = read(run_dir / "teacher/summary.json")
    consistency = summary["consistency"]
    figures = {r[0]: r[1:] for r in table_after(markdown, "| Figure | Value |")}
    assert figures["Two samples agree (mean pairwise agreement): the ceiling"][0] == pct(
        consistency["mean_pairwise_agreement"]
    )
    low, high = consistency["all_agree"]["ci95"]
    assert figures["All samples of a trace agree"] == [
        pct(consistency["all_agree"]["rate"]),
        f"{low * 100:.1f}–{high * 100:.1f}%",
    ]
    assert 0 < consistency["all_agree"]["rate"] < 1  # some samples disagreed
    requests = summary["requests"]
    answered = (
        f"({requests['answered']} of {requests['total']} requests answered, {requests['failed']} failed)"
    )
    assert f"over {consistency['traces_with_samples']} traces {answered}" in markdown
    assert f"Teacher consistency ceiling: {pct(consistency['mean_pairwise_agreement'])}" in markdown
    cost = {r[0]: r[1:] for r in table_after(markdown, "| Item | Amount |")}
    assert cost["Teacher (Claude)"][0] == f"${summary['cost_usd']:,.4f}" and summary["cost_usd"] > 0
    reflection = sum(read(p)["usd"] for p in (run_dir / "optimize").glob("phase*/reflection.json"))
    assert reflection > 0 and cost["Reflection, all phases"][0] == f"${reflection:,.4f}"
    assert cost["Student serving"][0] == "0.50 GPU h"
    assert cost["Dollars in all (teacher + reflection)"][0] == f"${summary['cost_usd'] + reflection:,.4f}"
    assert report.sections["teacher"] == report.sections["cost"] == "rendered"


def test_stage_table_and_all_sections_rendered(run_dir: Path, report: Any, texts: tuple[str, str]) -> None:
    markdown, _ = texts
    stages = read(run_dir / "run.json")["stages"]
    rows = table_after(markdown, "| Stage | Status |")
    assert [(r[0], r[1]) for r in rows] == [(s["stage"], s["status"]) for s in stages]
    assert markdown.startswith("# Run report: report-test\n")
    assert set(report.sections.values()) == {"rendered"}


def test_secrets_never_reach_the_report(texts: tuple[str, str]) -> None:
    markdown, page = texts
    for text in texts:
        for secret in [*SECRETS.values(), CAPTURE_KEY]:
            assert secret not in text
        # env var names are not secrets; a URL keeps its host, not its user and password
        assert '"api_key": "***"' in html.unescape(
            text
        ) and '"api_key_env": "ANTHROPIC_API_KEY"' in html.unescape(text)
        assert "https://***@minio.local:9000" in text


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("report"))
    return copy


def test_a_run_without_teacher_samples_says_not_measured(run_dir: Path, tmp_path: Path) -> None:
    run = copy_run(run_dir, tmp_path)
    shutil.rmtree(run / "teacher")
    paths = render_report(str(run))
    markdown, page = paths.markdown.read_text(), paths.html.read_text()
    assert paths.sections["teacher"] == "not run"
    for text in (markdown, page):
        assert "Not measured (no teacher samples in this run)." in text
        assert "Teacher consistency ceiling: not measured (no teacher samples in this run)." in text
    assert "Teacher answered" not in markdown
    cost = {r[0]: r[1:] for r in table_after(markdown, "| Item | Amount |")}
    assert cost["Teacher (Claude)"] == ["—", "not run in this run (no teacher/summary.json)"]
    assert paths.sections["phases"] == "rendered"


def test_corrupt_files_are_reported_not_raised(run_dir: Path, tmp_path: Path) -> None:
    run = copy_run(run_dir, tmp_path)
    (run / "optimize/phase2/candidates.json").write_text('{"best": 1, "candi')
    (run / "optimize/phase3/result.json").write_text("")
    (run / "student.json").write_text("[1, 2]")
    (run / "curate/deduped/decisions/manifest.json").write_text("{}")
    paths = render_report(str(run), str(tmp_path / "out"))
    markdown, page = paths.markdown.read_text(), paths.html.read_text()
    assert paths.markdown.parent == tmp_path / "out"
    assert paths.sections["phases"] == "partial"
    assert "optimize/phase2/candidates.json could not be read: JSONDecodeError" in page
    phase3 = next(r for r in table_after(markdown, "|   | Method |") if r[0].startswith("phase3"))
    assert "optimize/phase3/result.json could not be read" in phase3[1].replace("\\", "") and phase3[4] == "—"
    assert "student.json could not be read: expected a JSON dict, found list" in page
    assert paths.sections["cost"] == "partial"
    # a damaged decisions manifest: the ε table still comes from the deduped manifest
    assert "curate/deduped/decisions/manifest.json could not be read" in page
    assert paths.sections["eps_curve"] == "partial" and paths.sections["funnel"] == "rendered"


def test_a_partial_or_empty_run_folder_still_gets_its_report(run_dir: Path, tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copytree(run_dir / "traces", partial / "traces")
    (partial / "run.json").write_text(
        json.dumps(
            {"name": "p", "stages": [{"stage": "ingest", "status": "failed", "elapsed_s": 1.5, "detail": {}}]}
        )
    )
    out = tmp_path / "out"
    out.mkdir()
    (out / "confusion.png").write_bytes(PNG)  # left from an earlier report
    paths = render_report(str(partial), str(out))
    assert paths.sections["funnel"] == "partial" and paths.sections["stages"] == "rendered"
    assert {
        paths.sections[k] for k in ("eps_curve", "clusters", "teacher", "phases", "confusion", "prompt")
    } == {"not run"}
    markdown = paths.markdown.read_text()
    assert "Not run in this run (no optimize/ folder)." in markdown
    assert "Not run in this run: Embedded, After SemDeDup, Selected (CaR), Test." in markdown
    assert [p.name for p in paths.figures] == ["funnel.png"] and not (out / "confusion.png").exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    paths = render_report(str(empty))
    assert set(paths.sections.values()) == {"not run"} and paths.figures == []
    assert paths.html.read_text().startswith("<!DOCTYPE html>")
    with pytest.raises(ReportError, match="run folder not found"):
        render_report(str(tmp_path / "nowhere"))


def body(markdown: str) -> str:
    """The report without its header lines (run folder, time of rendering)."""
    return markdown[markdown.index("| Section | Status |") :]


def test_an_s3_run_and_a_staged_s3_run_give_the_same_report(
    run_dir: Path, texts: tuple[str, str], bucket: str, tmp_path: Path
) -> None:
    import pyarrow.fs as pafs

    s3 = store.s3_filesystem()
    pafs.copy_files(
        str(run_dir), f"{bucket}/run", source_filesystem=pafs.LocalFileSystem(), destination_filesystem=s3
    )
    s3.delete_dir_contents(f"{bucket}/run/report", missing_dir_ok=True)
    uri = f"s3://{bucket}/run"
    markdown, _ = texts

    remote = render_report(uri, str(tmp_path / "remote"))
    assert body(remote.markdown.read_text()) == body(markdown)
    assert f"Run folder: {uri}" in remote.markdown.read_text()
    with pytest.raises(ReportError, match="pass out"):
        render_report(uri)

    # a pipeline run into s3:// keeps run.json, student.json and optimize/ in a local staging
    # folder, whose optimize config names the splits in the bucket
    staging = tmp_path / "staging"
    staging.mkdir()
    for name in ("run.json", "student.json"):
        shutil.copy(run_dir / name, staging / name)
    shutil.copytree(run_dir / "optimize", staging / "optimize")
    config = read(staging / "optimize/config.json")
    config["data"] = {k: f"{uri}/curate/split/{k}" for k in ("train", "val", "test")}
    (staging / "optimize/config.json").write_text(json.dumps(config))
    staged = render_report(str(staging), run_uri=uri)
    assert staged.markdown.parent == staging / "report"
    assert body(staged.markdown.read_text()) == body(markdown)
    assert set(staged.sections.values()) == {"rendered"}


def test_the_context_policys_cuts_are_reported_per_phase(run_dir: Path, tmp_path: Path) -> None:
    run = copy_run(run_dir, tmp_path)
    baseline = json.loads((run / "optimize" / "baseline.json").read_text())
    baseline["test"]["context"] = {
        "requests": 12, "cut": 5, "skipped": 2, "tokens_cut": 41000, "median_share_cut": 0.62,
        "max_share_cut": 0.9,
    }  # fmt: skip
    (run / "optimize" / "baseline.json").write_text(json.dumps(baseline))
    markdown = render_report(str(run)).markdown.read_text()
    assert "Context policy (test traces longer than the student's window" in markdown
    assert "Baseline: 5 cut (median 62.0% of their tokens, at most 90.0%), 2 skipped as too long" in markdown


#: Today's names of everything in a run folder the report reads, spelled out (not taken from
#: ``tooldistill.layout``): a run folder written before the layout must still give the same report.
LEGACY_NAMES = [
    "run.json", "student.json", "traces", "teacher", "teacher/summary.json", "curate/funnel.json",
    "curate/embedded", "curate/deduped", "curate/deduped/decisions", "curate/curated", "curate/split",
    "curate/split/train", "curate/split/val", "curate/split/test", "optimize/config.json",
    "optimize/baseline.json", "optimize/summary.json", "optimize/best/prompt.json",
    *[f"optimize/{phase}/{name}" for phase in ("phase1", "phase2", "phase3")
      for name in ("result.json", "test.json", "candidates.json", "progress.json", "reflection.json")],
]  # fmt: skip


def test_a_run_folder_with_todays_literal_names_gives_the_same_report(
    run_dir: Path, texts: tuple[str, str], tmp_path: Path
) -> None:
    legacy = tmp_path / "legacy"
    for name in LEGACY_NAMES:
        source, target = run_dir / name, legacy / name
        if source.is_dir():  # a dataset: its manifest, parts and quarantine file, not its sub-datasets
            target.mkdir(parents=True, exist_ok=True)
            for item in source.iterdir():
                if item.is_file():
                    shutil.copy(item, target / item.name)
        elif source.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target)
    paths = render_report(str(legacy))
    assert set(paths.sections.values()) == {"rendered"}
    assert body(paths.markdown.read_text()) == body(texts[0])


def _blocks(sections: list[Any]) -> dict[str, Any]:
    return {s.key: (s.title, s.status, s.blocks) for s in sections}


def test_sections_do_not_depend_on_the_order_they_are_built_in(run_dir: Path, tmp_path: Path) -> None:
    import random
    from dataclasses import FrozenInstanceError

    def build(order: list[Any]) -> list[Any]:
        ctx = make_context(RunFolder([str(run_dir)]), tmp_path)  # a fresh cache each time
        return build_sections(ctx, order)

    normal = build(list(BUILDERS))
    assert [s.key for s in normal] == [key for key, _, _ in BUILDERS]
    shuffled = list(BUILDERS)
    random.Random(7).shuffle(shuffled)
    for order in (list(reversed(BUILDERS)), shuffled):
        again = build(order)
        assert [s.key for s in again] == [key for key, _, _ in order]
        assert _blocks(again) == _blocks(normal)
    # the values sections share are computed once, up front, and cannot be changed by a builder
    shared = make_context(RunFolder([str(run_dir)]), tmp_path).shared
    assert shared.best_phase == read(run_dir / "optimize/summary.json")["best_phase"]
    assert shared.ceiling == read(run_dir / "teacher/summary.json")["consistency"]["mean_pairwise_agreement"]
    with pytest.raises(FrozenInstanceError):
        shared.best_phase = "phase1"  # type: ignore[misc]
    with pytest.raises(TypeError):
        shared.optimize_config["data"] = {}  # type: ignore[index]
    with pytest.raises(TypeError):
        shared.tests["baseline"]["rate"] = 1.0  # type: ignore[index]


def test_every_match_rate_shows_its_endpoint_errors(run_dir: Path, tmp_path: Path) -> None:
    run = copy_run(run_dir, tmp_path)
    opt = run / "optimize"
    baseline = read(opt / "baseline.json")
    baseline["test"]["errors"] = 2
    (opt / "baseline.json").write_text(json.dumps(baseline))
    result = read(opt / "phase1/result.json")
    result["test"]["errors"] = 1
    (opt / "phase1/result.json").write_text(json.dumps(result))
    result = read(opt / "phase2/result.json")
    del result["test"]["errors"]  # a summary from before errors were counted
    (opt / "phase2/result.json").write_text(json.dumps(result))
    info = read(run / "run.json")
    rates = {
        name: read(opt / name / "result.json")["test"]["rate"] for name in ("phase1", "phase2", "phase3")
    }
    for stage in info["stages"]:
        if stage["stage"] == "baseline":
            stage["detail"] = {"test": baseline["test"], "note": "4/11 = 36.4% [15.2%–64.6%]"}
        if stage["stage"] == "optimize":
            stage["detail"] = {"best_phase": "phase2", "phases": rates, "note": "best phase2: 10/11 = 90.9%"}
    (run / "run.json").write_text(json.dumps(info))
    paths = render_report(str(run))
    markdown = paths.markdown.read_text()
    errors = {r[0]: r[6] for r in table_after(markdown, "|   | Method |")}
    assert errors == {
        "Baseline": "2",
        "phase1 (dspy)": "1",
        "phase2 (gepa)": "—",
        "phase3 (gepa, curated)": "0",
    }
    stages = {r[0]: re.sub(r"\\(.)", r"\1", r[3]) for r in table_after(markdown, "| Stage | Status |")}
    test = baseline["test"]
    low, high = test["ci95"]
    names = test["also"]["names"]
    assert stages["baseline"] == (
        f"test={test['matched']}/{test['n']} = {pct(test['rate'])} [{low * 100:.1f}–{high * 100:.1f}%], 2 errors; "
        f"names: {names['matched']}/{names['n']} = {pct(names['rate'])} "
        f"[{names['ci95'][0] * 100:.1f}–{names['ci95'][1] * 100:.1f}%]"
    )
    assert stages["optimize"] == (
        f"best_phase=phase2; phases=phase1 {pct(rates['phase1'])} (1 error), phase2 {pct(rates['phase2'])} "
        f"(errors unknown), phase3 {pct(rates['phase3'])} (0 errors)"
    )
    assert paths.sections["phases"] == "rendered" and "match_rates.png" in [p.name for p in paths.figures]


def _machine_paths(text: str, *folders: Path) -> list[str]:
    """The paths of this machine that ``text`` names: the given folders, the home folder, the
    working directory, and any absolute path under the usual roots of a machine."""
    named = {str(f) for f in (*folders, Path.home(), Path.cwd())} | {str(f.resolve()) for f in folders}
    found = [f for f in named if f in text]
    found += re.findall(r"(?<![\w:/.])/(?:tmp|home|Users|root|var|private|work|mnt|srv|opt)/[\w.\-/]+", text)
    return found


def test_the_report_names_no_path_of_this_machine(
    run_dir: Path, texts: tuple[str, str], bucket: str, tmp_path: Path
) -> None:
    for text in texts:
        assert not _machine_paths(text, run_dir, run_dir.parent)
    assert "Run folder: run (a local folder)" in texts[0]
    # a staged s3:// run: the run folder is the bucket's; the staging folder is not named
    import pyarrow.fs as pafs

    uri = f"s3://{bucket}/run"
    pafs.copy_files(
        str(run_dir), f"{bucket}/run", source_filesystem=pafs.LocalFileSystem(),
        destination_filesystem=store.s3_filesystem(),
    )  # fmt: skip
    staging = tmp_path / "staging"
    staging.mkdir()
    for name in ("run.json", "student.json"):
        shutil.copy(run_dir / name, staging / name)
    shutil.copytree(run_dir / "optimize", staging / "optimize")
    staged = render_report(str(staging), run_uri=uri)
    for path in (staged.markdown, staged.html):
        text = path.read_text()
        assert not _machine_paths(text, run_dir, staging, tmp_path), path.name
        assert "staged in a local folder and synced to the run folder" in text
    assert f"Run folder: {uri}" in staged.markdown.read_text()


def _outcomes(names: int, chain: int, n: int = 20) -> list[Outcome]:
    """``n`` answers of which ``names`` match on the tool names and ``chain`` of those on the full
    chain too."""
    return [Outcome(f"t{i}", float(i < names), i < names, "", modes={"chain": i < chain}) for i in range(n)]


@pytest.fixture()
def names_run(tmp_path: Path) -> Path:
    """A run optimized on the tool-name chain with the full chain measured beside it, as
    ``configs/claude-code.yaml`` runs: a GEPA phase, a finetune phase, another GEPA phase."""
    run = tmp_path / "names-run"
    opt = run / "optimize"
    config = config_from_dict(
        {
            "run_dir": str(opt),
            "data": {name: str(run / "curate" / "split" / name) for name in ("train", "val", "test")},
            "student": {"endpoint": "http://127.0.0.1:9", "model": "student", "mode": "names",
                        "also_modes": ["chain"]},
            "phases": [
                {"name": "phase1", "kind": "gepa", "train": 16, "val": 12, "max_metric_calls": 60},
                {"name": "phase2", "kind": "finetune", "train": 24, "select": "sample"},
                {"name": "phase3", "kind": "gepa", "train": 16, "val": 12, "max_metric_calls": 40},
            ],
        }
    )  # fmt: skip
    tests = {
        "baseline": summarize(_outcomes(6, 2)),
        "phase1": summarize(_outcomes(9, 3)),
        "phase2": summarize(_outcomes(14, 8)),
        "phase3": summarize(_outcomes(13, 7)),
    }
    opt.mkdir(parents=True)
    (opt / "config.json").write_text(json.dumps(config.model_dump(mode="json")))
    (opt / "baseline.json").write_text(json.dumps({"test": tests["baseline"]}))
    for name, kind in (("phase1", "gepa"), ("phase2", "finetune"), ("phase3", "gepa")):
        (opt / name).mkdir()
        (opt / name / "result.json").write_text(json.dumps({"kind": kind, "test": tests[name]}))
    (opt / "summary.json").write_text(json.dumps({"best_phase": "phase2"}))
    (run / "tests.json").write_text(json.dumps(tests))
    return run


def test_a_names_mode_run_says_which_chain_and_shows_the_full_chain(names_run: Path) -> None:
    tests = read(names_run / "tests.json")
    paths = render_report(str(names_run))
    markdown, page = paths.markdown.read_text(), paths.html.read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("|   | Method |"))
    headers = [cell.strip() for cell in header.strip()[1:-1].split(" | ")]
    assert headers[4] == "Match rate (tool names)" and headers[-1] == "Full chain (95%)"
    assert "Tool names (95%)" not in markdown  # the optimized mode is not shown twice
    rows = {r[0]: r for r in table_after(markdown, "|   | Method |")}
    labels = {"baseline": "Baseline", "phase1": "phase1 (gepa)", "phase2": "phase2 (finetune)",
              "phase3": "phase3 (gepa)"}  # fmt: skip
    assert list(rows) == list(labels.values())
    for name, label in labels.items():
        test, chain = tests[name], tests[name]["also"]["chain"]
        assert chain["rate"] < test["rate"]  # the fixture's full chain is stricter than the names
        low, high = chain["ci95"]
        assert rows[label][4] == pct(test["rate"])
        assert rows[label][-1] == f"{pct(chain['rate'])} {low * 100:.1f}–{high * 100:.1f}%"
        assert f"<td>{html.escape(label)}</td>" in page
    # the text names the best phase as the table does, and says what each column judges
    text = " ".join(markdown.split())
    assert "Best phase: phase2 (finetune)" in text
    assert "in the optimized match mode, names: the tool names alone" in text
    assert "Full chain: the same answers judged on the full chain, the same calls in the same order" in text
    assert paths.sections["phases"] == "rendered"


def test_a_dicl_phase_is_named_with_its_bank(run_dir: Path, tmp_path: Path) -> None:
    run = copy_run(run_dir, tmp_path)
    config_path = run / "optimize" / "config.json"
    config = json.loads(config_path.read_text())
    phase = {"name": "phase3", "kind": "dicl", "train": 1000, "source": "pool", "dicl": {"k": 4}}
    config["phases"] = [p if p["name"] != "phase3" else phase for p in config["phases"]]
    config_path.write_text(json.dumps(config))
    result_path = run / "optimize" / "phase3" / "result.json"
    result = json.loads(result_path.read_text())
    result.update(kind="dicl", train=321, dicl={"entries": 321, "k": 4, "floor": 0.3, "dim": 384})
    result_path.write_text(json.dumps(result))
    markdown = render_report(str(run)).markdown.read_text()
    row = next(r for r in table_after(markdown, "|   | Method |") if r[0] == "phase3 (dicl)")
    assert row[1].startswith("the teacher's nearest train examples as each request's demonstrations")
    assert row[2] == "321"  # past the train split (source: pool): what the phase found
    search = {r[0]: r for r in table_after(markdown, "| Phase | Candidates |")}
    assert search["phase3"][1] == "dicl: the 4 nearest of 321 examples, similarity ≥ 0.3"
