"""Learning curve of the CPU student: the demo's finetune phase with 32 … 512 training traces.

On the demo's split (``configs/demo.yaml``: BFCL short-prompt traces, SemDeDup, CaR, a test split
of 115), the optimize stage's finetune phase (``phase1``: LoRA with TRL + PEFT on Ray Train, the
merged student served by Ray Serve, then measured on the test split) runs once per point with
``N`` training traces, each time from the base student, and the match rate after it is recorded:
the full chain (arguments included) and the tool-name chain, each with its 95% Wilson interval,
beside the training tokens and time.

Training traces: the CaR train split first (ordered by trace id: its first 64 are the demo's
``select: sample`` choice), then, where CaR selected too few, the deduplicated traces that are in
neither the val nor the test split, also by trace id.  That pool is published with
``tooldistill.store`` as the train split of a working copy of the run folder (``--work``); the
phase takes its first ``N`` (``select: first``) with phase1's example options unchanged, so the
no-call top-up (``min_no_call_share``) draws from the rest of the pool.  Each point is
``tooldistill run CONFIG --from student --until optimize`` on that copy, with CONFIG the demo's
config whose only phase is phase1 as ``nN`` (``--set`` changes the phase's options, e.g.
``--set finetune.training.max_length=384``).  The base student's test evaluation (the baseline)
runs with the first point and is kept for the others.

Writes ``benchmarks/results/learning_curve.json`` after every point; a rerun skips the points
already there with the same settings (phase options, test limit, split).  ``--plot PNG`` draws the
curve (matplotlib), ``--render-docs docs/finetune.md`` puts the table and a sparkline between the
``learning-curve`` markers there; ``--render-only`` does both from the JSON without running.

    .venv/bin/python benchmarks/learning_curve.py --run runs/demo --points 32,64,128,256,512 \\
        --plot docs/learning_curve.png --render-docs docs/finetune.md

About 10 minutes a point of 32 traces on a 2-core CPU, longer for larger points (training tokens
grow with N; the 115 test answers take ~4 minutes); the student's start (~1.5 min) is paid per point.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "learning_curve.json"
DEMO = REPO / "configs" / "demo.yaml"
#: The demo's finetune phase (``configs/demo.yaml``), the one every point runs.
PHASE = "phase1"
POOL_STAGE = "learning_curve_pool"
BEGIN, END = "<!-- learning-curve:begin -->", "<!-- learning-curve:end -->"
SPARK = "▁▂▃▄▅▆▇█"


def shown(path: str | Path) -> str:
    """A folder as the results name it: relative to the repository or the working folder, else by
    its name (the results are committed: no path of the machine that measured them)."""
    text = str(path)
    if "://" in text:
        return text
    resolved = Path(text).expanduser().resolve()
    for root in (REPO, Path.cwd().resolve()):
        if resolved.is_relative_to(root) and resolved != root:
            return resolved.relative_to(root).as_posix()
    return resolved.name


def machine() -> dict[str, Any]:
    """The CPU the figures come from: the student's dtype and the training speed follow its flags."""
    from tooldistill.serve.cpu import capabilities, native_bf16, usable_cores

    caps = capabilities()
    bf16, why = native_bf16(caps)
    return {
        "cpus": os.cpu_count(),
        "usable_cores": usable_cores(),
        "gpu": None,
        "cpu": caps.get("cpu_name"),
        "flags": {k: bool(caps.get(k)) for k in ("avx2", "avx512_f", "avx512_bf16", "amx_bf16", "bf16")},
        "student_dtype": "bfloat16" if bf16 else "float32",
        "student_dtype_reason": why,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


# ---------------------------------------------------------------------------------------------
# the run folder and the training pool


def is_finished_split(run: Path) -> bool:
    names = ("curate/split/train", "curate/split/val", "curate/split/test", "curate/deduped", "traces")
    return all((run / name / "manifest.json").exists() for name in names)


def ensure_run(run: Path) -> None:
    """The demo's dataset in ``run``: ``tooldistill run configs/demo.yaml --until split`` if absent."""
    if is_finished_split(run):
        return
    print(f"no finished split in {run}: running the demo up to its split there", flush=True)
    command = [
        sys.executable,
        "-m",
        "tooldistill.cli",
        "run",
        str(DEMO),
        "--out",
        str(run),
        "--until",
        "split",
    ]
    subprocess.run(command, cwd=REPO, check=True)


def prepare_work(run: Path, work: Path) -> dict[str, Any]:
    """A working copy of ``run``'s datasets with the training pool as its train split; returns the
    pool's figures.  Kept as it is when it was made from the same split."""
    from tooldistill import store
    from tooldistill.schema import content_hash, traces_to_table

    def dataset(name: str) -> Any:
        return store.Dataset.open(str(run / name))

    sources = {
        name: dataset(f"curate/{name}") for name in ("split/train", "split/val", "split/test", "deduped")
    }
    fingerprint = content_hash({name: d.manifest.fingerprint for name, d in sources.items()}, 32)
    target = work / "curate" / "split" / "train"
    existing = store.read_manifest(str(target)) if (target / "manifest.json").exists() else None
    if existing is not None and existing.stage == POOL_STAGE and existing.fingerprint == fingerprint:
        return {**existing.stats, "fingerprint": fingerprint}
    print(f"preparing {work}: a copy of the run's datasets with the training pool", flush=True)
    for name in ("traces", "teacher", "curate"):
        shutil.rmtree(work / name, ignore_errors=True)
        if (run / name).is_dir():
            shutil.copytree(run / name, work / name, ignore=shutil.ignore_patterns(".lock", "*.tmp"))
    car_train = sorted(sources["split/train"].to_traces(), key=lambda t: t.id)
    held_out = {t.id for key in ("split/val", "split/test") for t in sources[key].to_traces()}
    chosen = {t.id for t in car_train}
    deduped = sources["deduped"].to_traces()
    beyond = sorted((t for t in deduped if t.id not in held_out and t.id not in chosen), key=lambda t: t.id)
    pool = car_train + beyond
    stats = {
        "car_train": len(car_train),
        "beyond_car": len(beyond),
        "pool": len(pool),
        "deduped": len(deduped),
        "val": len(sources["split/val"].to_traces()),
        "test": len(sources["split/test"].to_traces()),
        "pool_no_calls": sum(1 for t in pool if not t.reference_calls),
        "fingerprint": fingerprint,
    }
    token = store.new_token()
    part = store.write_part(str(target), token, 0, traces_to_table(pool))
    manifest = store.Manifest(
        kind="traces",
        stage=POOL_STAGE,
        rows=len(pool),
        parts=[part],
        config_hash="car-train-then-deduped-by-id",
        fingerprint=fingerprint,
        parents=[str(run / "curate" / n) for n in ("split/train", "split/val", "split/test", "deduped")],
        stats=stats,
    )
    store.publish(str(target), token=token, manifest=manifest)
    return stats


# ---------------------------------------------------------------------------------------------
# one point


def set_dotted(node: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for key in parts[:-1]:
        node = node.setdefault(key, {})
    node[parts[-1]] = value


def demo_phase(overrides: list[str]) -> dict[str, Any]:
    """The demo's finetune phase with ``KEY=VALUE`` overrides (YAML values), without name and size."""
    raw = yaml.safe_load(DEMO.read_text())
    phase = copy.deepcopy(next(p for p in raw["optimize"]["phases"] if p["name"] == PHASE))
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE (e.g. finetune.training.max_length=384)")
        set_dotted(phase, key, yaml.safe_load(value))
    for key in ("name", "train", "select"):
        phase.pop(key, None)
    return phase


def point_config(
    n: int, phase: dict[str, Any], run: Path, work: Path, test_limit: int | None
) -> dict[str, Any]:
    raw: dict[str, Any] = yaml.safe_load(DEMO.read_text())
    raw["name"] = "demo-learning-curve"
    raw["run_dir"] = str(work)
    if not (run / "teacher" / "manifest.json").exists():
        raw["teacher"] = {"mode": "data"}  # the run used the traces' own calls: no teacher dataset
    raw["report"] = {"enabled": False}
    optimize = raw["optimize"]
    if test_limit is not None:
        optimize["test_limit"] = test_limit
    optimize["phases"] = [{"name": f"n{n}", "kind": "finetune", "train": n, "select": "first", **phase}]
    return raw


def rate(summary: dict[str, Any] | None) -> dict[str, Any] | None:
    if not summary:
        return None
    return {k: summary.get(k) for k in ("n", "matched", "rate", "ci95")}


def paired(work: Path, n: int) -> dict[str, Any] | None:
    """The point's test answers against the base student's on the same traces (the paired
    difference, its interval, McNemar's p: ``optimize.run.versus_baseline``); None when the work
    folder no longer holds them."""
    from tooldistill.layout import OptimizeLayout
    from tooldistill.optimize.run import phase_versus_baseline

    return phase_versus_baseline(OptimizeLayout(str(work / "optimize")), f"n{n}")


def run_point(n: int, config: dict[str, Any], work: Path, pool: dict[str, Any]) -> dict[str, Any]:
    folder = work / "learning_curve"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"n{n}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    phase = work / "optimize" / f"n{n}"
    earlier = phase / "result.json"
    if earlier.exists() and json.loads(earlier.read_text())["test"].get("errors"):
        # the phase's test evaluation again: its journal keeps the answers, the failed ones are asked
        earlier.unlink()
    command = [sys.executable, "-m", "tooldistill.cli", "run", str(path), "--out", str(work),
               "--from", "student", "--until", "optimize"]  # fmt: skip
    print(
        f"\n== {n} training traces: tooldistill run {shown(path)} --from student --until optimize", flush=True
    )
    started = time.time()
    done = subprocess.run(command, cwd=REPO)
    wall = round(time.time() - started, 1)
    if done.returncode != 0:
        raise SystemExit(f"the point of {n} traces failed (exit {done.returncode}); see {work / 'run.log'}")
    result = json.loads((phase / "result.json").read_text())
    record = json.loads((phase / "finetune.json").read_text())
    examples, training = record["examples"], record["training"]
    test = result["test"]
    return {
        "examples": n,
        "from_car": min(n, pool["car_train"]),
        "beyond_car": max(0, n - pool["car_train"]),
        "trained_examples": examples["examples"],
        "calls": examples["calls"],
        "no_calls": examples["no_calls"],
        "no_calls_added": examples.get("no_calls_added_from_split", 0),
        "no_calls_repeated": examples.get("no_calls_repeated", 0),
        "left_out": examples.get("left_out", {}),
        "distinct_tools": examples.get("distinct_tools"),
        "tokens": examples["tokens"],
        "tokens_trained": training["tokens"],
        "steps": training["steps"],
        "final_loss": training["final_loss"],
        "seconds": training["train_seconds"],
        "tokens_per_s": training["tokens_per_s"],
        "phase_seconds": result.get("elapsed_s"),
        "wall_s": wall,
        "full_chain": rate(test),
        "tool_names": rate((test.get("also") or {}).get("names")),
        "vs_baseline": paired(work, n),
        "errors": test.get("errors"),
        "measured": datetime.date.today().isoformat(),
    }


# ---------------------------------------------------------------------------------------------
# the results


def saturation(points: list[dict[str, Any]], metric: str) -> int | None:
    """The fewest training traces whose 95% interval reaches the best rate measured with as many or
    more: past it, no point is told apart from it by this test split."""
    ordered = sorted((p for p in points if p.get(metric)), key=lambda p: p["examples"])
    for i, point in enumerate(ordered):
        best = max(p[metric]["rate"] for p in ordered[i:])
        if point[metric]["ci95"][1] >= best:
            return int(point["examples"])
    return None


def write(out: Path, report: dict[str, Any]) -> None:
    report["points"] = sorted(report["points"], key=lambda p: p["examples"])
    report["saturation"] = {
        "rule": "the fewest training traces whose 95% interval reaches the best rate of every larger point",
        "full_chain": saturation(report["points"], "full_chain"),
        "tool_names": saturation(report["points"], "tool_names"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(out)


def pct(value: dict[str, Any] | None) -> str:
    if not value or value.get("rate") is None:
        return "—"
    low, high = value["ci95"]
    return f"{100 * value['rate']:.1f}% [{100 * low:.1f}–{100 * high:.1f}]"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s" if minutes else f"{rest} s"


def sparkline(values: list[float]) -> str:
    """Rates (0-1) as block characters on a 0-100% scale."""
    return "".join(SPARK[min(len(SPARK) - 1, int(v * len(SPARK)))] for v in values)


def markdown(report: dict[str, Any], image: str | None = None) -> str:
    """The table (and sparkline) that ``--render-docs`` writes between the markers."""
    from tooldistill.progress import versus_text

    points = report.get("points") or []
    lines = [
        "| training traces | examples (calls + no-calls) | tokens | train time | tokens/s | full chain [95%] "
        "| vs base student, paired [95%] | tool names [95%] |",
        "|---|---|---|---|---|---|---|---|",
    ]
    baseline = report.get("baseline") or {}
    if baseline:
        lines.append(f"| 0 (base student) | — | — | — | — | {pct(baseline.get('full_chain'))} | — "
                     f"| {pct(baseline.get('tool_names'))} |")  # fmt: skip
    for p in points:
        beyond = f" ({p['beyond_car']} beyond CaR)" if p.get("beyond_car") else ""
        lines.append(
            f"| {p['examples']}{beyond} | {p['trained_examples']} ({p['calls']} + {p['no_calls']}) "
            f"| {p['tokens']:,} | {duration(p['seconds'])} | {p['tokens_per_s']} | {pct(p['full_chain'])} "
            f"| {versus_text(p.get('vs_baseline'), label='') or '—'} | {pct(p['tool_names'])} |"
        )
    if not points:
        for n in report.get("planned", []):
            lines.append(f"| {n} | — | — | — | — | — | — | — |")
        lines.append("")
        lines.append("*Not measured yet: the command above fills this table.*")
        return "\n".join(lines)
    chain = [p["full_chain"]["rate"] for p in points if p.get("full_chain")]
    names = [p["tool_names"]["rate"] for p in points if p.get("tool_names")]
    sizes = ", ".join(str(p["examples"]) for p in points)
    m = report.get("machine") or {}
    flags = ", ".join(k for k, v in (m.get("flags") or {}).items() if v) or "none"
    tested = max((p["full_chain"]["n"] + (p.get("errors") or 0) for p in points), default=0)
    tested = ((report.get("baseline") or {}).get("full_chain") or {}).get("n") or tested
    lines += [
        "",
        f"- Full chain `{sparkline(chain)}`, tool names `{sparkline(names)}` (0-100%; {sizes} traces).",
        f"- Saturation (the fewest traces whose interval reaches the best rate of every larger point): "
        f"full chain {report['saturation']['full_chain']}, tool names {report['saturation']['tool_names']}.",
        f"- Measured on {m.get('cpus')} cores of {m.get('cpu') or 'an unnamed CPU'} ({flags}; student "
        f"{m.get('student_dtype')}), {tested} test traces; `benchmarks/results/learning_curve.json`.",
    ]
    failed = [p for p in points if p.get("errors")]
    if failed:
        lines.append(
            "- Test requests that failed (timeouts: a loaded machine), left out of the rates: "
            + ", ".join(f"{p['errors']} at {p['examples']} traces" for p in failed)
            + "."
        )
    if image:
        lines += ["", f"![learning curve]({image})"]
    return "\n".join(lines)


def render_docs(doc: Path, report: dict[str, Any], image: str | None) -> None:
    text = doc.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{doc} has no {BEGIN} … {END} markers to fill")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(f"{head}{BEGIN}\n{markdown(report, image)}\n{END}{tail}")
    print(f"rendered the table into {doc}")


def plot(path: Path, report: dict[str, Any]) -> None:
    """Both match rates with their intervals against the training traces (log scale), matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = report["points"]
    xs = [p["examples"] for p in points]
    figure, axis = plt.subplots(figsize=(6.4, 3.8))
    series = (("full_chain", "full chain (arguments)", 0.97), ("tool_names", "tool-name chain", 1.03))
    for metric, label, shift in series:  # shifted apart a little, so both intervals show
        ys = [100 * p[metric]["rate"] for p in points]
        low = [y - 100 * p[metric]["ci95"][0] for y, p in zip(ys, points, strict=True)]
        high = [100 * p[metric]["ci95"][1] - y for y, p in zip(ys, points, strict=True)]
        line = axis.errorbar(
            [x * shift for x in xs], ys, yerr=[low, high], marker="o", capsize=3, label=label
        )
        base = (report.get("baseline") or {}).get(metric)
        if base:
            axis.axhline(100 * base["rate"], linestyle=":", color=line[0].get_color(), linewidth=1)
    axis.set_xscale("log", base=2)
    axis.set_xticks(xs, [str(x) for x in xs])
    axis.set_xlabel("training traces (dotted: the base student)")
    axis.set_ylabel("test match rate, % (95% interval)")
    axis.set_ylim(0, 100)
    axis.grid(alpha=0.3)
    axis.legend(loc="best")
    axis.set_title("SmolLM2-135M, demo finetune phase: learning curve")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    print(f"plotted {path}")


# ---------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--run", default="runs/demo", help="a finished demo run (made up to its split if absent)"
    )
    parser.add_argument("--work", default=None, help="working copy of the run (default: RUN-learning-curve)")
    parser.add_argument("--points", default="32,64,128,256,512", help="training traces per point")
    parser.add_argument(
        "--test-limit", type=int, default=None, help="test examples (demo: 120, i.e. all 115)"
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="an option of the finetune phase, e.g. finetune.training.max_length=384")  # fmt: skip
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--plot", default=None, help="PNG of the curve (matplotlib)")
    parser.add_argument("--render-docs", default=None, help="Markdown file with the learning-curve markers")
    parser.add_argument("--render-only", action="store_true", help="plot/render from --out; run nothing")
    args = parser.parse_args()
    out = Path(args.out)
    points = sorted({int(p) for p in args.points.split(",") if p.strip()})

    if args.render_only:
        report = json.loads(out.read_text()) if out.exists() else {"points": [], "planned": points}
    else:
        from tooldistill.schema import content_hash

        run = Path(args.run).resolve()
        work = Path(args.work).resolve() if args.work else run.with_name(run.name + "-learning-curve")
        ensure_run(run)
        pool = prepare_work(run, work)
        if max(points) > pool["pool"]:
            raise SystemExit(f"{max(points)} traces asked for; the pool holds {pool['pool']}")
        phase = demo_phase(args.overrides)
        settings = {"phase": phase, "test_limit": args.test_limit, "split": pool}
        key = content_hash(settings, 16)
        report = json.loads(out.read_text()) if out.exists() else {}
        kept = [p for p in report.get("points", []) if p.get("key") == key]
        if len(kept) < len(report.get("points", [])):
            print(
                f"{len(report['points']) - len(kept)} earlier point(s) had other settings: dropped",
                flush=True,
            )
        if report.get("key") != key:
            report.pop("baseline", None)
        report.update(
            {
                "benchmark": "learning_curve",
                "machine": machine(),
                "run": shown(run),
                "work": shown(work),
                "student": "smollm2-135m-instruct (configs/serve/cpu-smollm2.yaml)",
                "teacher": "BFCL ground truth (no ANTHROPIC_API_KEY)"
                if not (run / "teacher" / "manifest.json").exists()
                else "Claude samples (the run's teacher stage)",
                "key": key,
                "settings": settings,
                "points": kept,
                "planned": points,
                "command": "python benchmarks/learning_curve.py " + " ".join(
                    f"{flag} {value}" for flag, value in (("--points", ",".join(map(str, points))),
                    ("--test-limit", args.test_limit)) if value is not None
                ) + "".join(f" --set {item}" for item in args.overrides),
            }
        )  # fmt: skip
        for point in kept:  # a point measured before the paired comparison: from its answers
            if point.get("vs_baseline") is None:
                point["vs_baseline"] = paired(work, point["examples"])
        done = {p["examples"] for p in kept if not p.get("errors")}  # failed requests: asked again
        for n in points:
            if n in done:
                print(f"{n} training traces: in {out} with the same settings, skipped", flush=True)
                continue
            config = point_config(n, phase, run, work, args.test_limit)
            point = run_point(n, config, work, pool)
            point["key"] = key
            before = next((p for p in report["points"] if p["examples"] == n), None)
            if before is not None:  # its failed test requests asked again: the first call's phase time
                point["phase_seconds"] = before["phase_seconds"]
                point["wall_s"] = round(before["wall_s"] + point["wall_s"], 1)
                point["retried_errors"] = before["errors"]
            baseline = json.loads((work / "optimize" / "baseline.json").read_text())["test"]
            report["baseline"] = {
                "full_chain": rate(baseline),
                "tool_names": rate((baseline.get("also") or {}).get("names")),
            }
            report["points"] = [p for p in report["points"] if p["examples"] != n] + [point]
            write(out, report)
            print(f"{n} traces: {point['trained_examples']} examples, {point['tokens']} tokens, "
                  f"{point['seconds']} s at {point['tokens_per_s']} tokens/s; full chain "
                  f"{pct(point['full_chain'])}, tool names {pct(point['tool_names'])}; wrote {out}",
                  flush=True)  # fmt: skip
            if point["errors"]:
                print(f"  {point['errors']} test requests failed (left out of the rates): a rerun asks "
                      "them again", flush=True)  # fmt: skip
        write(out, report)
    image = None
    if args.plot and report.get("points"):
        plot(Path(args.plot), report)
        if args.render_docs:
            image = os.path.relpath(Path(args.plot).resolve(), Path(args.render_docs).resolve().parent)
    if args.render_docs:
        render_docs(Path(args.render_docs), report, image)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
