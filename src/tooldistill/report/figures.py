"""The report's plots: matplotlib on the Agg canvas (no pyplot, no display, no global backend
change), one PNG per figure.  Each function takes plain numbers and a path and writes the file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

DPI = 110
BLUE, GREY, RED, GREEN = "#3a6ea5", "#9aa3b0", "#c0504d", "#4f8a4f"


def _figure(width: float, height: float) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot(1, 1, 1)


def _save(figure: Any, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=DPI, metadata={"Software": None})
    return path


def funnel(path: Path, steps: Sequence[tuple[str, int, bool]]) -> Path:
    """Horizontal bars, first step on top; ``(label, count, side)`` where side steps (quarantined,
    duplicates) are grey."""
    figure, axes = _figure(7.5, 0.45 * len(steps) + 1.2)
    labels = [s[0] for s in steps]
    counts = [s[1] for s in steps]
    y = np.arange(len(steps))[::-1]
    bars = axes.barh(y, counts, color=[GREY if s[2] else BLUE for s in steps])
    axes.set_yticks(y, labels)
    top = max(counts, default=0) or 1
    for bar, count in zip(bars, counts, strict=True):
        axes.text(bar.get_width() + top * 0.01, bar.get_y() + bar.get_height() / 2, f"{count:,}", va="center")
    axes.set_xlim(0, top * 1.15)
    axes.set_xlabel("traces")
    axes.set_title("Data funnel")
    axes.spines[["top", "right"]].set_visible(False)
    return _save(figure, path)


def eps_curve(
    path: Path,
    recorded: Sequence[tuple[float, float]],
    chosen: float | None,
    curve: tuple[np.ndarray, np.ndarray] | None,
) -> Path:
    """Removal rate (share of traces, %) against ε: the recorded points, the full curve when the
    per-trace similarities are known, and the ε the run used."""
    figure, axes = _figure(7.0, 3.8)
    if curve is not None:
        axes.plot(curve[0], curve[1] * 100, color=BLUE, lw=1.6, label="from per-trace max similarity")
    if recorded:
        xs, ys = zip(*recorded, strict=True)
        axes.plot(xs, [v * 100 for v in ys], "o", color=RED, label="recorded by the stage")
    if chosen is not None:
        axes.axvline(chosen, color=GREY, ls="--", lw=1)
        axes.text(chosen, axes.get_ylim()[1] * 0.95, f" ε = {chosen:g}", color="#555", va="top")
    axes.set_xlabel("ε (a trace is removed when its similarity to a better one exceeds 1 − ε)")
    axes.set_ylabel("removed (%)")
    axes.set_ylim(bottom=0)
    axes.set_title("SemDeDup removal rate vs ε")
    axes.legend(loc="lower right", fontsize="small")
    axes.spines[["top", "right"]].set_visible(False)
    return _save(figure, path)


def cluster_sizes(path: Path, sizes: np.ndarray, dropped: np.ndarray | None, bars_up_to: int = 40) -> Path:
    """Up to ``bars_up_to`` clusters: one bar per cluster, largest first, duplicates stacked in grey;
    more: a histogram of cluster sizes."""
    figure, axes = _figure(7.0, 3.6)
    if len(sizes) <= bars_up_to:
        order = np.argsort(-sizes, kind="stable")
        x = np.arange(len(order))
        removed = dropped[order] if dropped is not None else np.zeros(len(order), dtype=int)
        axes.bar(x, sizes[order] - removed, color=BLUE, label="kept")
        if dropped is not None:
            axes.bar(x, removed, bottom=sizes[order] - removed, color=GREY, label="duplicates removed")
            axes.legend(fontsize="small")
        axes.set_xticks(x, [str(int(c)) for c in order], fontsize="small")
        axes.set_xlabel("cluster (largest first)")
        axes.set_ylabel("traces")
    else:
        axes.hist(sizes, bins=min(40, max(5, len(sizes) // 5)), color=BLUE)
        axes.set_xlabel("cluster size (traces)")
        axes.set_ylabel("clusters")
    axes.set_title(f"SemDeDup cluster sizes ({len(sizes)} clusters)")
    axes.spines[["top", "right"]].set_visible(False)
    return _save(figure, path)


def match_rates(
    path: Path,
    rows: Sequence[tuple[str, float, float, float, int]],
    ceiling: float | None,
    ceiling_label: str,
) -> Path:
    """Match rate per phase with its 95% interval as error bars; the teacher ceiling as a line.

    ``rows``: (label, rate, low, high, endpoint errors); a point whose test had errors says how
    many beside its rate."""
    figure, axes = _figure(7.5, 4.0)
    x = np.arange(len(rows))
    rates = np.array([r[1] for r in rows])
    low = rates - np.array([r[2] for r in rows])
    high = np.array([r[3] for r in rows]) - rates
    axes.errorbar(x, rates * 100, yerr=[low * 100, high * 100], fmt="o", color=BLUE, capsize=5, lw=1.5)
    for xi, rate, row in zip(x, rates, rows, strict=True):
        failed = f"\n{row[4]} error{'' if row[4] == 1 else 's'}" if row[4] else ""
        axes.text(xi + 0.08, rate * 100, f"{rate:.1%}{failed}", va="center", fontsize="small")
    if ceiling is not None:
        axes.axhline(ceiling * 100, color=RED, ls="--", lw=1.2, label=ceiling_label)
        axes.legend(loc="best", fontsize="small")
    axes.set_xticks(x, [r[0] for r in rows], fontsize="small")
    axes.set_xlim(-0.5, len(rows) - 0.3)
    axes.set_ylim(0, 105)
    axes.set_ylabel("match rate on the test split (%)")
    axes.set_title("Match rate per phase (95% Wilson interval)")
    axes.spines[["top", "right"]].set_visible(False)
    return _save(figure, path)


def confusion(path: Path, expected: Sequence[str], called: Sequence[str], counts: np.ndarray) -> Path:
    """Counts of (expected tool, called tool) as a heat map, the count in every cell."""
    figure, axes = _figure(max(5.5, 2.5 + 0.9 * len(called)), max(3.4, 1.8 + 0.55 * len(expected)))
    axes.imshow(counts, cmap="Blues", aspect="auto", vmin=0)
    top = counts.max() if counts.size else 0
    for (i, j), value in np.ndenumerate(counts):
        if value:
            axes.text(
                j, i, str(int(value)), ha="center", va="center", color="white" if value > top / 2 else "black"
            )
    axes.set_xticks(np.arange(len(called)), list(called), rotation=30, ha="right", fontsize="small")
    axes.set_yticks(np.arange(len(expected)), list(expected), fontsize="small")
    axes.set_xlabel("called by the student")
    axes.set_ylabel("expected (reference)")
    axes.set_title("Per-tool confusion")
    return _save(figure, path)


def step_curves(
    path: Path,
    curves: Sequence[tuple[str, Sequence[int], Sequence[float]]],
    ylabel: str,
    top: float | None = None,
) -> Path:
    """One value per training step, one line per phase (from 0 up to ``top``)."""
    figure, axes = _figure(7.0, 3.2)
    for (label, steps, values), color in zip(curves, [BLUE, RED, GREEN, GREY], strict=False):
        axes.plot(list(steps), list(values), color=color, linewidth=1.6, label=label)
    axes.set_xlabel("step")
    axes.set_ylabel(ylabel)
    axes.set_ylim(0, top)
    axes.grid(alpha=0.3)
    if len(curves) > 1:
        axes.legend(frameon=False)
    return _save(figure, path)


def reward_curves(path: Path, curves: Sequence[tuple[str, Sequence[int], Sequence[float]]]) -> Path:
    """Mean reward of the sampled answers per step, one line per reward phase."""
    return step_curves(path, curves, "mean reward of the samples", top=1.02)


def loss_curves(path: Path, curves: Sequence[tuple[str, Sequence[int], Sequence[float]]]) -> Path:
    """Training loss per step, one line per finetune phase."""
    return step_curves(path, curves, "training loss (completion tokens)")
