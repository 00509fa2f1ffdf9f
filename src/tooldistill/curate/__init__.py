"""Curation: embed traces, drop near-duplicates (SemDeDup), select by cluster and quality (CaR),
split into train/val/test.  Each step is a stage that reads a traces dataset and writes one;
``docs/curation.md`` describes the columns, the side tables and the algorithms."""

from tooldistill.curate.common import CurateError

__all__ = ["CurateError"]
