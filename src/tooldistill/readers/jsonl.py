"""tooldistill's own JSONL: one trace per line, with the schema's fields (``tooldistill export``).

A dataset exported and ingested again without edits comes back unchanged, ids included.  When a
line was edited its id is recomputed from the new content and the old one is kept in
``metadata.edited_from``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import ValidationError

from tooldistill.readers.base import Quarantined, ReadContext, SourceFile, read_records, record_excerpt
from tooldistill.schema import Trace, compute_trace_id, validate_trace


def _first_error(error: ValidationError) -> str:
    details = error.errors()
    first = details[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    return f"invalid trace: {where}: {first.get('msg')}{more}"


def read_jsonl(source: SourceFile, context: ReadContext) -> Iterator[Trace | Quarantined]:
    """Traces from tooldistill JSONL; a line that does not fit the schema is quarantined."""
    yield from read_records(source, context, _read_record)


def _read_record(
    source: SourceFile, context: ReadContext, number: int, record: dict[str, Any]
) -> Iterator[Trace | Quarantined]:
    """The trace of one line, or why it is not one."""
    given_id = record.pop("id", None) or ""
    try:
        trace = Trace.model_validate(context.redactor.value(record))
    except ValidationError as error:
        yield Quarantined(source.uri, number, _first_error(error), record_excerpt(record, context.redactor))
        return
    problem = validate_trace(trace)
    if problem:
        yield Quarantined(source.uri, number, problem, record_excerpt(record, context.redactor))
        return
    computed = compute_trace_id(trace)
    if isinstance(given_id, str) and given_id and given_id != computed:
        trace = trace.model_copy(update={"metadata": {**trace.metadata, "edited_from": given_id}})
    yield trace.model_copy(update={"id": computed})
