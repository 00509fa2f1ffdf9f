"""The run report: one run folder → ``report.md`` and a self-contained ``report.html``, with the
plots as PNG files beside them (the HTML embeds them as data URIs; the Markdown links them).

``render_report(run_dir)`` reads whatever parts of the run are there (``run.json``, ``traces/``,
``teacher/``, ``curate/``, ``student.json``, ``optimize/``); a part that did not run becomes a
short "not run in this run" line and a file that cannot be parsed a line saying which and why, so a
partial or damaged run folder still gets its report.  See ``docs/report.md`` for the sections.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from tooldistill.layout import ReportLayout, RunLayout
from tooldistill.report.document import Document, render_html, render_markdown
from tooldistill.report.mask import mask_text
from tooldistill.report.sections import (
    LAYOUT,
    Context,
    RunFolder,
    Unreadable,
    build_sections,
    duration,
    figures_of,
    make_context,
    number,
    when,
)

__all__ = ["ReportError", "ReportPaths", "render_report"]


class ReportError(ValueError):
    """The report cannot be made at all: the run folder does not exist or is not local."""


@dataclass
class ReportPaths:
    markdown: Path
    html: Path
    figures: list[Path] = field(default_factory=list)
    #: section key → "rendered", "partial", "not run", "unreadable" or "failed"
    sections: dict[str, str] = field(default_factory=dict)


def render_report(run_dir: str, out: str | None = None, *, run_uri: str | None = None) -> ReportPaths:
    """Render the report of the run folder ``run_dir`` into ``out`` (default ``RUN/report``).

    ``run_dir`` is a local folder, or an ``s3://`` run folder (then ``out`` must be given: the
    report is written locally).  ``run_uri``: where the rest of the run lives when ``run_dir`` is
    the local staging folder of an ``s3://`` run (``run.json``, ``student.json``, ``optimize/``
    there; the datasets, ``teacher/summary.json`` and ``curate/funnel.json`` in the bucket); a
    file is read from ``run_dir`` first, then from ``run_uri``.

    Returns the paths written and each section's status.  Raises ``ReportError`` only when
    ``run_dir`` is not an existing local folder (or a remote one without ``out``) or ``out``
    cannot be written; everything inside the run folder is optional.
    """
    remote = "://" in run_dir and not run_dir.startswith("file://")
    if remote and out is None:
        raise ReportError(f"{run_dir} is not a local folder: pass out, a local folder for the report")
    root = run_dir if remote else str(Path(run_dir.removeprefix("file://")).expanduser().resolve())
    if not remote and not Path(root).is_dir():
        raise ReportError(f"run folder not found: {run_dir}")
    target = Path(out).expanduser() if out else Path(RunLayout(root).report.root)
    layout = ReportLayout(str(target))
    try:
        target.mkdir(parents=True, exist_ok=True)
        for figure in layout.figures:  # figures of an earlier render that this one may not draw again
            Path(figure).unlink(missing_ok=True)
    except OSError as error:
        raise ReportError(f"cannot write the report to {target}: {error}") from None

    roots = [root] + ([run_uri] if run_uri and run_uri.rstrip("/") != root.rstrip("/") else [])
    ctx = make_context(RunFolder(roots), target)
    sections = build_sections(ctx)
    document = Document(_title(ctx, run_uri or root), _subtitle(ctx, roots), sections)
    markdown = _write(Path(layout.markdown), render_markdown(document))
    html = _write(Path(layout.html), render_html(document))
    return ReportPaths(markdown, html, figures_of(sections), {s.key: s.status for s in sections})


def _run_info(ctx: Context) -> tuple[dict[str, object], str | None]:
    try:
        info = ctx.run.json(LAYOUT.run_record)
    except Unreadable as error:
        return {}, str(error)
    return (info or {}), None if info is not None else f"no {LAYOUT.run_record}"


def _title(ctx: Context, shown: str) -> str:
    info, _ = _run_info(ctx)
    name = info.get("name")
    return f"Run report: {name if isinstance(name, str) and name else shown.rstrip('/').rsplit('/', 1)[-1]}"


def _shown_folder(folder: str) -> str:
    """How the report names a run folder: a remote one by its URI; a local one by its path relative
    to the working directory, else by its name.  A report is shared: it names no path of the
    machine it was made on."""
    if "://" in folder and not folder.startswith("file://"):
        return mask_text(folder)
    path = Path(folder.removeprefix("file://")).expanduser().resolve()
    try:
        relative = path.relative_to(Path.cwd().resolve())
    except ValueError:
        relative = None
    if relative is None or str(relative) == ".":
        return f"{path.name or '/'} (a local folder)"
    return mask_text(relative.as_posix())


def _subtitle(ctx: Context, roots: list[str]) -> list[str]:
    info, problem = _run_info(ctx)
    lines = [f"Run folder: {_shown_folder(roots[-1])}"]
    if len(roots) > 1:
        lines.append(
            "Plain files (run.json, student.json, optimize/) were staged in a local folder and synced "
            "to the run folder."
        )
    if problem:
        lines.append(f"Run: {problem}")
    else:
        started, finished = number(info.get("started")), number(info.get("finished"))
        span = f" ({duration(finished - started)})" if started is not None and finished is not None else ""
        ended = (
            f"finished {when(info.get('finished'))}{span}"
            if info.get("finished") is not None
            else "still running when this report was made"
        )
        lines.append(f"Started {when(info.get('started'))}, {ended}")
    lines.append(f"Report generated {datetime.now(UTC).strftime('%Y-%m-%d %H:%M:%S UTC')}")
    return lines


def _write(path: Path, text: str) -> Path:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
    return path
