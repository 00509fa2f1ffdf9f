"""The report as plain blocks, and the two renderers (Markdown and one self-contained HTML file).

Both renderers walk the same blocks, so the two files always say the same thing.  Every piece of
text passes through ``safe_text`` (secret patterns replaced) and is then escaped for its target:
``html.escape`` for HTML; entities and backslashes for Markdown text, a fence longer than any
backtick run for Markdown code.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tooldistill.redact import Redactor

#: What ``ReportPaths.sections`` says about each section.
RENDERED, PARTIAL, NOT_RUN, UNREADABLE, FAILED = "rendered", "partial", "not run", "unreadable", "failed"


def safe_text(value: object) -> str:
    """``value`` as text with known secret formats replaced (a last guard: inputs are masked too)."""
    return Redactor().text(str(value))


@dataclass
class Text:
    """A paragraph."""

    text: str
    #: a note about something missing or unreadable (rendered in italics)
    note: bool = False


@dataclass
class Heading:
    text: str


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    #: indexes of right-aligned (numeric) columns
    numeric: set[int] = field(default_factory=set)


@dataclass
class Figure:
    path: Path
    alt: str


@dataclass
class Code:
    text: str
    #: collapsed by default in HTML (``<details>``), with this summary
    summary: str | None = None


Block = Text | Heading | Table | Figure | Code


@dataclass
class Section:
    key: str
    title: str
    status: str = RENDERED
    blocks: list[Block] = field(default_factory=list)

    def add(self, *blocks: Block) -> Section:
        self.blocks.extend(blocks)
        return self

    def note(self, text: str) -> Section:
        return self.add(Text(text, note=True))


@dataclass
class Document:
    title: str
    subtitle: list[str]
    sections: list[Section]


# ---------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------

_MD_SPECIAL = re.compile(r"([\\`*_\[\]|#~])")


def md_text(value: object, cell: bool = False) -> str:
    text = safe_text(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = _MD_SPECIAL.sub(r"\\\1", text)
    if cell:
        text = " ".join(text.split()) or " "
    return text


def md_code(text: str) -> str:
    runs = [len(r) for r in re.findall(r"`+", text)]
    fence = "`" * max(3, max(runs, default=0) + 1)
    return f"{fence}text\n{text.rstrip()}\n{fence}"


def render_markdown(document: Document) -> str:
    out = [f"# {md_text(document.title)}", ""]
    out += [f"{md_text(line)}  " for line in document.subtitle]
    out.append("")
    out.append("| Section | Status |")
    out.append("|---|---|")
    for section in document.sections:
        out.append(f"| [{md_text(section.title, cell=True)}](#{section.key}) | {section.status} |")
    out.append("")
    for section in document.sections:
        out.append(f'<a id="{section.key}"></a>')
        out.append("")
        out.append(f"## {md_text(section.title)}")
        out.append("")
        for block in section.blocks:
            out.append(_md_block(block))
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def _md_block(block: Block) -> str:
    if isinstance(block, Text):
        text = md_text(block.text)
        return f"*{text}*" if block.note else text
    if isinstance(block, Heading):
        return f"#### {md_text(block.text)}"
    if isinstance(block, Table):
        lines = ["| " + " | ".join(md_text(h, cell=True) for h in block.headers) + " |"]
        lines.append(
            "|" + "|".join("---:" if i in block.numeric else "---" for i in range(len(block.headers))) + "|"
        )
        for row in block.rows:
            lines.append("| " + " | ".join(md_text(c, cell=True) for c in row) + " |")
        return "\n".join(lines)
    if isinstance(block, Figure):
        return f"![{md_text(block.alt, cell=True)}]({block.path.name})"
    lead = f"{md_text(block.summary)}:\n\n" if block.summary else ""
    return lead + md_code(safe_text(block.text))


# ---------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #1d2430; line-height: 1.45; }
h1 { margin-bottom: .2em; } h2 { border-bottom: 1px solid #d8dde6; padding-bottom: .2em; margin-top: 2em; }
.sub { color: #5a6475; margin: 0; }
table { border-collapse: collapse; margin: .6em 0; font-size: .92em; }
th, td { border: 1px solid #d8dde6; padding: .3em .6em; vertical-align: top; text-align: left; }
th { background: #f2f4f8; } td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.note { color: #6b5d3a; font-style: italic; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; white-space: pre-wrap; word-break: break-word; }
img { max-width: 100%; border: 1px solid #e3e7ee; }
.status { font-size: .75em; padding: .1em .5em; border-radius: .6em; margin-left: .6em;
          vertical-align: middle; background: #e3e7ee; color: #333; font-weight: normal; }
.status.rendered { background: #dff3e4; } .status.partial { background: #fdf1d6; }
.status.unreadable, .status.failed { background: #fbdcdc; }
"""


def _e(value: object) -> str:
    return html.escape(safe_text(value), quote=True)


def render_html(document: Document) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(document.title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{_e(document.title)}</h1>",
    ]
    parts += [f'<p class="sub">{_e(line)}</p>' for line in document.subtitle]
    parts.append("<table><tr><th>Section</th><th>Status</th></tr>")
    for section in document.sections:
        parts.append(
            f'<tr><td><a href="#{_e(section.key)}">{_e(section.title)}</a></td>'
            f"<td>{_e(section.status)}</td></tr>"
        )
    parts.append("</table>")
    for section in document.sections:
        status = _e(section.status).replace(" ", "-")
        parts.append(
            f'<section id="{_e(section.key)}"><h2>{_e(section.title)}'
            f'<span class="status {status}">{_e(section.status)}</span></h2>'
        )
        parts += [_html_block(block) for block in section.blocks]
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _html_block(block: Block) -> str:
    if isinstance(block, Text):
        return f'<p class="note">{_e(block.text)}</p>' if block.note else f"<p>{_e(block.text)}</p>"
    if isinstance(block, Heading):
        return f"<h4>{_e(block.text)}</h4>"
    if isinstance(block, Table):
        return _html_table(block.headers, block.rows, block.numeric)
    if isinstance(block, Figure):
        data = base64.b64encode(block.path.read_bytes()).decode("ascii")
        return f'<p><img alt="{_e(block.alt)}" src="data:image/png;base64,{data}"></p>'
    pre = f"<pre>{_e(block.text)}</pre>"
    if block.summary:
        return f"<details><summary>{_e(block.summary)}</summary>{pre}</details>"
    return pre


def _html_table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: set[int]) -> str:
    def cls(i: int) -> str:
        return ' class="num"' if i in numeric else ""

    head = "".join(f"<th{cls(i)}>{_e(h)}</th>" for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(f"<td{cls(i)}>{_e(c)}</td>" for i, c in enumerate(row)) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"
