"""What every reader shares: the source file, quarantine records, JSON-lines parsing, options.

A reader is a function ``read(source, context) -> Iterator[Trace | Quarantined | Ignored]``.  It
never raises for one bad record: it yields a ``Quarantined`` with the line and the reason and goes
on.  Valid lines that hold no decision are yielded as ``Ignored`` counts by kind (handled on purpose,
or not recognised), so a file that gives no traces always says why.  A reader raises only when the
whole file cannot be opened.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import pyarrow.fs as pafs
from pydantic import BaseModel, ConfigDict

from tooldistill.redact import Redactor
from tooldistill.schema import Trace

EXCERPT_CHARS = 300


@dataclass(frozen=True)
class Quarantined:
    """A record that could not become a trace: where it was and why.

    ``line`` is 1-based; 0 means the file as a whole (empty, unreadable).
    """

    source: str
    line: int
    reason: str
    excerpt: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "line": self.line, "reason": self.reason, "excerpt": self.excerpt}


@dataclass(frozen=True)
class Ignored:
    """Valid lines a reader left out, counted by kind.

    ``known`` is true for line kinds the reader handles on purpose (a Claude Code ``progress``
    line, a ``summary``); false for valid JSON the reader does not recognise, which the ingest
    summary reports so that a file in an unexpected shape is never silently empty.
    """

    source: str
    kind: str
    count: int = 1
    known: bool = True


class ReaderOptions(BaseModel):
    """Options shared by all readers; part of the ingest config hash."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Claude Code tool catalog (JSON file); None uses the catalog shipped with tooldistill.
    catalog: str | None = None
    #: Keep assistant replies that call no tool as "no call" decisions (API logs).
    include_no_call: bool = False
    #: BFCL categories to read; None means the single-turn default set.
    categories: tuple[str, ...] | None = None
    #: Replace secrets in every string with [REDACTED:kind].
    redact: bool = True
    #: The prompt of ``claude -p`` runs (stream-json logs hold no prompt line): used for files with
    #: no ``<file>.prompt.txt`` sidecar.  Without either, such traces are kept and flagged.
    prompt: str | None = None


@dataclass
class ReadContext:
    """Per-worker state for readers: options, the redactor, a cache for loaded catalogs."""

    options: ReaderOptions = field(default_factory=ReaderOptions)
    redactor: Redactor = field(default_factory=Redactor)
    cache: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, options: ReaderOptions) -> ReadContext:
        return cls(options=options, redactor=Redactor(enabled=options.redact))


@dataclass(frozen=True)
class SourceFile:
    """One input file, on any pyarrow filesystem.  ``.gz`` files are decompressed on read."""

    uri: str
    path: str
    filesystem: pafs.FileSystem

    @cached_property
    def data(self) -> bytes:
        with self.filesystem.open_input_stream(self.path, compression=None) as stream:
            raw = stream.read()
        if self.path.endswith(".gz"):
            raw = gzip.decompress(raw)
        return bytes(raw)

    def sibling(self, relative: str) -> SourceFile:
        """Another file relative to this file's folder (e.g. BFCL's possible answers)."""
        folder = self.path.rsplit("/", 1)[0]
        base_uri = self.uri.rsplit("/", 1)[0]
        return SourceFile(f"{base_uri}/{relative}", f"{folder}/{relative}", self.filesystem)


Reader = Callable[[SourceFile, ReadContext], Iterator["Trace | Quarantined | Ignored"]]


def count_ignored(source: SourceFile, kinds: dict[str, int], known: bool) -> Iterator[Ignored]:
    """``Ignored`` records for a ``{kind: count}`` tally."""
    for kind, count in sorted(kinds.items()):
        if count:
            yield Ignored(source.uri, kind, count, known)


#: Longest line a reader parses.  A longer line is quarantined unread: parsing it could hold
#: several times its size in memory, and no real log record comes near it (a Claude Code line
#: with a pasted screenshot is a few MB).
MAX_LINE_BYTES = 32 * 1024 * 1024
#: How much of a line the excerpt redacts before cutting it to ``EXCERPT_CHARS``: far more than a
#: secret is long, far less than a huge line, so a bad multi-MB line costs no full regex pass.
EXCERPT_WINDOW = 64 * 1024
#: Keys of the wrapper some SDK test fixtures and HTTP recorders write around each record:
#: ``{"timestamp": ..., "raw": {...}}``.  ``raw`` is required, the others optional.
WRAPPER_KEYS = frozenset({"raw", "timestamp"})


def excerpt(raw: bytes | str, redactor: Redactor) -> str:
    """The first ``EXCERPT_CHARS`` of a line, redacted; only ``EXCERPT_WINDOW`` of it is read."""
    text = raw[: EXCERPT_WINDOW * 4].decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    text = text[:EXCERPT_WINDOW]
    # Redact before cutting: a secret that straddles the cut would otherwise leak its prefix.
    text = redactor.text(text)
    if len(text) > EXCERPT_CHARS:
        text = text[:EXCERPT_CHARS] + "…"
    return text


def record_excerpt(record: Any, redactor: Redactor) -> str:
    """The excerpt of a parsed record; never raises, whatever the record holds."""
    try:
        text = json.dumps(record, ensure_ascii=False, default=str)
    except (RecursionError, ValueError, TypeError):  # nested deeper than the encoder goes
        text = f"<{type(record).__name__} nested too deeply to show>"
    return excerpt(text, redactor)


def describe_record(record: dict[str, Any]) -> str:
    """A short kind for a JSON object no reader recognises: its ``type``, else its keys.

    This is the key of the ingest summary's ``unrecognized`` counts, so it must be short and
    stable across lines of the same shape.
    """
    kind = record.get("type")
    if isinstance(kind, str) and kind:
        return f"type {kind[:60]}"
    keys = sorted(str(key)[:30] for key in record)
    shown = ",".join(keys[:8]) + (",…" if len(keys) > 8 else "")
    return f"object with keys {shown}" if keys else "empty object"


def unwrap(record: dict[str, Any]) -> dict[str, Any]:
    """The record inside a ``{"timestamp": ..., "raw": {...}}`` wrapper, or the record itself.

    Only that exact wrapper is opened (every key among ``WRAPPER_KEYS``, ``raw`` an object), so no
    reader's own records, which always have other keys, are mistaken for one.
    """
    inner = record.get("raw")
    if isinstance(inner, dict) and record.keys() <= WRAPPER_KEYS:
        return inner
    return record


def _lines(data: bytes) -> Iterator[tuple[int, bytes]]:
    """``(index, line)`` for each line, one line copied at a time (not the whole file at once)."""
    start = 0
    index = 0
    size = len(data)
    while start < size:
        end = data.find(b"\n", start)
        if end < 0:
            end = size
        yield index, data[start:end]
        start = end + 1
        index += 1


def iter_json_lines(
    source: SourceFile, context: ReadContext
) -> Iterator[tuple[int, dict[str, Any]] | Quarantined]:
    """Yield ``(line_number, object)`` for each JSON object line, ``Quarantined`` for bad lines.

    Blank lines are skipped.  A bad last line with no newline after it is reported as truncated
    (the usual result of a process killed mid-write).  Lines over ``MAX_LINE_BYTES`` and lines
    nested too deeply for the parser are quarantined like malformed ones: one line, never the
    file.  A record in the ``{"timestamp", "raw"}`` wrapper is yielded unwrapped.
    """
    data = source.data
    if not data.strip():
        yield Quarantined(source.uri, 0, "empty file")
        return
    truncated_tail = not data.endswith(b"\n")
    last_index = data.count(b"\n")
    for index, raw in _lines(data):
        raw = raw.rstrip(b"\r")
        if not raw.strip():
            continue
        number = index + 1
        if len(raw) > MAX_LINE_BYTES:
            yield Quarantined(
                source.uri,
                number,
                f"line of {len(raw)} bytes is over the {MAX_LINE_BYTES // (1024 * 1024)} MiB line limit",
                excerpt(raw, context.redactor),
            )
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            yield Quarantined(
                source.uri, number, f"invalid UTF-8 at byte {error.start}", excerpt(raw, context.redactor)
            )
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            if index == last_index and truncated_tail:
                reason = f"truncated last line ({error.msg} at column {error.colno})"
            else:
                reason = f"malformed JSON: {error.msg} at column {error.colno}"
            yield Quarantined(source.uri, number, reason, excerpt(text, context.redactor))
            continue
        except RecursionError:
            # json raises this, not JSONDecodeError, for nesting deeper than the interpreter's
            # recursion limit: valid JSON or not, the line cannot be read.
            yield Quarantined(
                source.uri, number, "JSON nested too deeply to parse", excerpt(text, context.redactor)
            )
            continue
        if not isinstance(value, dict):
            yield Quarantined(
                source.uri,
                number,
                f"expected a JSON object, got {type(value).__name__}",
                excerpt(text, context.redactor),
            )
            continue
        yield number, unwrap(value)


RecordReader = Callable[["SourceFile", "ReadContext", int, dict[str, Any]], Iterator[Any]]


def read_records(source: SourceFile, context: ReadContext, one: RecordReader) -> Iterator[Any]:
    """Run ``one`` on every JSON line of ``source``; bad lines and records that make ``one`` raise
    are quarantined, so one odd record never loses the rest of the file."""
    for item in iter_json_lines(source, context):
        if isinstance(item, Quarantined):
            yield item
            continue
        number, record = item
        try:
            produced = list(one(source, context, number, record))
        except Exception as error:  # RecursionError included: a record nested too deep to walk
            reason = f"reader failed on this record: {type(error).__name__}: {str(error)[:200]}"
            produced = [Quarantined(source.uri, number, reason, record_excerpt(record, context.redactor))]
        yield from produced
