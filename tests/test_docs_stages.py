"""``docs/pipeline.md``'s table of curation stages is the registry's: a stage added, removed or
moved in ``tooldistill.curate.registry`` without the docs fails here, with the table to paste."""

from __future__ import annotations

import re
from pathlib import Path

from tooldistill.curate.registry import stage_table

DOC = Path(__file__).parent.parent / "docs" / "pipeline.md"


def test_the_pipeline_doc_holds_the_registry_stage_table() -> None:
    found = re.search(r"<!-- stage-table:start -->\n(.*?)<!-- stage-table:end -->", DOC.read_text(), re.S)
    assert found is not None, "docs/pipeline.md lost its stage-table markers"
    assert found.group(1).strip() == stage_table(), f"paste this between the markers:\n{stage_table()}"
