"""What the curation stages share: the error type, progress bars, and reading and writing datasets.

Every curate stage reads one traces dataset and writes one: the traces it keeps, with every column
they came with plus the stage's own columns (``embedding``, ``dedup_*``, ``car_*``, ``split``), so
the output is still a traces dataset that every other command reads.  The decision made about each
input trace, kept or not, goes to a side dataset ``<out>/decisions`` (kind ``curation``), published
before the main manifest.  Both carry the same fingerprint, and a stage is up to date only when both
are.

Outputs are written part by part from the input's parts (read a part, keep and annotate its rows,
write one part), so a stage holds one part of trace data in memory at a time; only the columns a
decision needs (ids, embeddings, quality inputs) are read for the whole dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tooldistill import store
from tooldistill.console import progress_bar
from tooldistill.schema import TRACE_SCHEMA

DECISIONS = "decisions"
#: Columns the curate stages add; a stage drops its own before writing them again.
EMBED_COLUMNS = ("text", "embedding")


class CurateError(ValueError):
    """Curation cannot give a meaningful answer for this input; the message says why and what to do."""


def open_traces(uri: str) -> store.Dataset:
    """The input dataset; a ``CurateError`` when it is empty or not a traces dataset."""
    dataset = store.Dataset.open(uri)
    if dataset.manifest.kind != "traces":
        raise CurateError(f"{uri} is a {dataset.manifest.kind!r} dataset; curation reads traces datasets")
    if dataset.manifest.rows == 0:
        raise CurateError(f"dataset {uri} has no traces; nothing to curate")
    return dataset


def input_stamp(dataset: store.Dataset) -> list[Any]:
    """What identifies an input dataset's content, for a stage's fingerprint."""
    return [
        dataset.uri,
        dataset.manifest.fingerprint,
        [p.sha256 for p in dataset.manifest.parts],
    ]


def read_part(dataset: store.Dataset, index: int, columns: Sequence[str] | None = None) -> pa.Table:
    filesystem, paths = dataset.part_paths()
    try:
        return pq.read_table(
            paths[index],
            filesystem=filesystem,
            columns=list(columns) if columns else None,
        )
    except (OSError, pa.ArrowInvalid) as error:
        raise store.StoreError(f"cannot read {paths[index]}: {error}") from error


def read_columns(dataset: store.Dataset, columns: Sequence[str]) -> pa.Table:
    """Only ``columns`` of every part, concatenated in manifest order."""
    names = read_part(dataset, 0, None).schema.names if dataset.manifest.parts else []
    missing = [c for c in columns if c not in names]
    if missing:
        raise CurateError(f"dataset {dataset.uri} has no column {', '.join(map(repr, missing))}")
    tables = [read_part(dataset, i, columns) for i in range(len(dataset.manifest.parts))]
    return pa.concat_tables(tables) if tables else pa.table({c: [] for c in columns})


def first_occurrences(table: pa.Table) -> tuple[pa.Table, int]:
    """The rows of ``table`` whose ``id`` was not seen in an earlier row, and how many were left out.

    Ingest drops repeated traces within a shard only, so the same trace (same content, same id) can
    sit in two parts.  Curation keeps its first occurrence in manifest order; ``rewrite_parts``
    writes first occurrences only, so the two agree.
    """
    ids = table.column("id").to_pylist()
    seen: set[str] = set()
    keep = np.zeros(len(ids), dtype=bool)
    for i, trace_id in enumerate(ids):
        if trace_id not in seen:
            seen.add(trace_id)
            keep[i] = True
    repeats = int((~keep).sum())
    return (table.filter(pa.array(keep)) if repeats else table), repeats


def has_column(dataset: store.Dataset, name: str) -> bool:
    if not dataset.manifest.parts:
        return False
    filesystem, paths = dataset.part_paths()
    return name in pq.read_schema(paths[0], filesystem=filesystem).names


def embeddings_of(table: pa.Table, uri: str) -> np.ndarray:
    """The ``embedding`` column as a float32 matrix; ``CurateError`` for NaN, infinite or zero rows."""
    column = table.column("embedding").combine_chunks()
    if not pa.types.is_fixed_size_list(column.type):
        raise CurateError(f"column 'embedding' of {uri} is {column.type}, expected fixed_size_list<float>")
    if column.null_count:
        raise CurateError(f"{column.null_count} traces of {uri} have no embedding; run `curate embed` again")
    dim = column.type.list_size
    vectors = column.values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)
    check_vectors(vectors, table.column("id").to_pylist() if "id" in table.column_names else None)
    return vectors


def check_vectors(vectors: np.ndarray, ids: Sequence[str] | None = None) -> None:
    """Refuse what would give a silent wrong answer: no rows, NaN or infinite values, zero vectors."""
    if vectors.ndim != 2 or vectors.shape[0] == 0 or vectors.shape[1] == 0:
        raise CurateError(f"expected a non-empty N x d matrix of embeddings, got shape {vectors.shape}")
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        raise CurateError(
            f"{int(bad.sum())} embeddings contain NaN or infinite values{_first(bad, ids)}; "
            "re-embed them (`curate embed --force`) or remove those traces"
        )
    zero = np.einsum("ij,ij->i", vectors, vectors) == 0
    if zero.any():
        raise CurateError(
            f"{int(zero.sum())} embeddings are all zeros{_first(zero, ids)}; their direction, and so "
            "their similarity to anything, is undefined"
        )


def _first(mask: np.ndarray, ids: Sequence[str] | None) -> str:
    rows = np.flatnonzero(mask)[:3]
    names = [ids[i] for i in rows] if ids is not None else [f"row {i}" for i in rows]
    return " (first: " + ", ".join(names) + ")"


def rewrite_parts(
    dataset: store.Dataset,
    out: str,
    token: str,
    annotations: pa.Table,
    *,
    keep: np.ndarray | None = None,
    drop_columns: Sequence[str] = (),
    description: str = "write",
    show_progress: bool = True,
) -> list[store.PartInfo]:
    """Write the input's rows that ``keep`` marks (all when None), part by part, with the columns of
    ``annotations`` (one row per input trace, joined on ``id``; its other columns are appended).

    ``keep`` is aligned with ``annotations``.  Columns named in ``drop_columns`` or in
    ``annotations`` are removed from the input first, so a stage run on its own output replaces its
    columns instead of adding a second copy.
    """
    ids = annotations.column("id").to_pylist()
    position = {trace_id: i for i, trace_id in enumerate(ids)}
    extra = [name for name in annotations.column_names if name != "id"]
    parts: list[store.PartInfo] = []
    written: set[str] = set()
    with progress_bar(description, len(dataset.manifest.parts), show_progress) as advance:
        for index in range(len(dataset.manifest.parts)):
            table = read_part(dataset, index)
            drop = [n for n in table.column_names if n in set(drop_columns) | set(extra)]
            table = table.drop_columns(drop)
            part_ids = table.column("id").to_pylist()
            rows = np.array([position[i] for i in part_ids], dtype=np.int64)
            # first occurrence of an id only (see ``first_occurrences``)
            mask = np.array([i not in written for i in part_ids], dtype=bool)
            written.update(part_ids)
            if keep is not None:
                mask &= keep[rows]
            if not mask.all():
                table = table.filter(pa.array(mask))
                rows = rows[mask]
            if table.num_rows:
                taken = annotations.take(pa.array(rows))
                for name in extra:
                    table = table.append_column(annotations.schema.field(name), taken.column(name))
                parts.append(store.write_part(out, token, len(parts), table))
            advance(1)
    return parts


def decisions_of(out: str) -> pa.Table:
    """The decisions side dataset of a stage's output."""
    return store.Dataset.open(store.join(out, DECISIONS)).to_arrow()


def trace_columns(table: pa.Table) -> pa.Table:
    """Only the trace schema's columns (for ``traces_from_table`` on a table with extra columns)."""
    return table.select([field.name for field in TRACE_SCHEMA])


def hash_order(ids: Sequence[str], seed: int) -> np.ndarray:
    """A deterministic pseudo-random float in [0, 1) per id (same id and seed, same value)."""
    import hashlib

    out = np.empty(len(ids), dtype=np.float64)
    prefix = f"{seed}:".encode()
    for i, trace_id in enumerate(ids):
        out[i] = (
            int.from_bytes(
                hashlib.blake2b(prefix + trace_id.encode(), digest_size=8).digest(),
                "big",
            )
            / 2**64
        )
    return out


def id_ranks(ids: Sequence[str]) -> np.ndarray:
    """Each id's position in sorted order: the tie-breaker that makes every ranking deterministic."""
    return np.argsort(np.argsort(np.asarray(ids, dtype=object), kind="stable"), kind="stable").astype(
        np.int64
    )


__all__ = [
    "DECISIONS",
    "CurateError",
    "check_vectors",
    "decisions_of",
    "embeddings_of",
    "first_occurrences",
    "has_column",
    "hash_order",
    "id_ranks",
    "input_stamp",
    "open_traces",
    "progress_bar",
    "read_columns",
    "read_part",
    "rewrite_parts",
    "trace_columns",
]
