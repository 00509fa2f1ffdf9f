"""tooldistill's own JSONL: one trace per line, with the schema's fields (``tooldistill export``).

A dataset exported and ingested again without edits comes back unchanged, ids included.  When a
line was edited its id is recomputed from the new content and the old one is kept in
``metadata.edited_from``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from pydantic import ValidationError

from tooldistill.readers.base import Quarantined, ReadContext, SourceFile, excerpt, iter_json_lines
from tooldistill.schema import Trace, compute_trace_id, validate_trace


def _first_error(error: ValidationError) -> str:
    details = error.errors()
    first = details[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    return f"invalid trace: {where}: {first.get('msg')}{more}"


def read_jsonl(source: SourceFile, context: ReadContext) -> Iterator[Trace | Quarantined]:
    """Traces from tooldistill JSONL; a line that does not fit the schema is quarantined."""
    for item in iter_json_lines(source, context):
        if isinstance(item, Quarantined):
            yield item
            continue
        number, record = item
        given_id = record.pop("id", None) or ""
        try:
            trace = Trace.model_validate(context.redactor.value(record))
        except ValidationError as error:
            yield Quarantined(
                source.uri, number, _first_error(error), excerpt(json.dumps(record), context.redactor)
            )
            continue
        problem = validate_trace(trace)
        if problem:
            yield Quarantined(source.uri, number, problem, excerpt(json.dumps(record), context.redactor))
            continue
        computed = compute_trace_id(trace)
        if given_id and given_id != computed:
            trace = trace.model_copy(update={"metadata": {**trace.metadata, "edited_from": given_id}})
        yield trace.model_copy(update={"id": computed})
