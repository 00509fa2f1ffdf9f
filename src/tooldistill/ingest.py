"""The ingest stage: source files in any supported format → one traces dataset.

Files are found under each source (a file, a folder searched recursively, or an ``s3://`` prefix;
``bfcl`` names the installed ``bfcl-eval`` data), grouped into shards, and read in parallel by an
executor (Ray Data on a cluster, or this process).  Each shard writes one Parquet part and returns
its counts and quarantined records; the driver publishes the manifest last.

The stage is skipped when the output's manifest has the same fingerprint: same files (path, size,
modification time), same format and reader options, same code version.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs
from pydantic import BaseModel, ConfigDict, Field

from tooldistill import store
from tooldistill.executor import Executor, LocalExecutor
from tooldistill.readers import Ignored, Quarantined, ReadContext, ReaderOptions, SourceFile, get_format
from tooldistill.readers.bfcl import SINGLE_TURN_CATEGORIES, package_data_dir
from tooldistill.schema import content_hash, traces_to_table
from tooldistill.stage import StageResult, StageRun

STAGE = "ingest"


class IngestError(RuntimeError):
    """The ingest cannot produce a meaningful dataset (no input, strict mode and bad records, ...)."""


class IngestConfig(BaseModel):
    """What to ingest and how."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sources: tuple[str, ...] = Field(min_length=1)
    format: str
    out: str
    reader: ReaderOptions = Field(default_factory=ReaderOptions)
    #: Any quarantined record fails the run (nothing is published).
    strict: bool = False
    #: Rebuild even when the output is up to date.
    force: bool = False
    #: Files per shard (one Parquet part each); None picks a size from the file count.
    files_per_shard: int | None = Field(default=None, ge=1)

    def config_hash(self) -> str:
        return content_hash({"format": self.format, "reader": self.reader.model_dump(mode="json")}, 16)


@dataclass(frozen=True)
class InputFile:
    uri: str
    source: str
    size: int
    mtime_ns: int
    #: The stamp (size, mtime) of a ``<file>.prompt.txt`` sidecar beside it, when there is one:
    #: part of the fingerprint, so a changed prompt rebuilds the dataset.
    sidecar: tuple[int, int] | None = None

    def stamp(self) -> list[Any]:
        return [self.uri, self.size, self.mtime_ns, *([list(self.sidecar)] if self.sidecar else [])]


SIDECAR_SUFFIX = ".prompt.txt"


class IngestResult(StageResult):
    """The stage result of ingest; ``summary`` is its per-source table."""

    @property
    def summary(self) -> list[dict[str, Any]]:
        """One row per source: source, files, traces, tools, quarantined."""
        return list(self.stats.get("summary") or [])


# ---------------------------------------------------------------------------------------------
# Finding files
# ---------------------------------------------------------------------------------------------


def discover(
    sources: tuple[str, ...] | list[str], format_name: str, options: ReaderOptions
) -> list[InputFile]:
    """Every input file under ``sources`` that the format reads, sorted, without repeats.

    Raises ``IngestError`` for a source that does not exist.
    """
    fmt = get_format(format_name)
    if format_name == "bfcl" and options.categories:
        unsupported = [c for c in options.categories if c not in SINGLE_TURN_CATEGORIES]
        if unsupported:
            raise IngestError(
                f"BFCL categories not supported: {', '.join(unsupported)} (multi-turn, agentic and "
                f"relevance-only sets have no single reference call); choose from {', '.join(SINGLE_TURN_CATEGORIES)}"
            )
    found: dict[str, InputFile] = {}
    for source in sources:
        root = str(package_data_dir()) if (format_name == "bfcl" and source == "bfcl") else source
        filesystem, path = store.resolve(root)
        try:
            info = filesystem.get_file_info(path)
        except OSError as error:
            raise IngestError(f"cannot reach source {source}: {error}") from error
        if info.type == pafs.FileType.NotFound:
            raise IngestError(f"source not found: {source}")
        if info.type == pafs.FileType.File:
            infos = [info]
            listed = [info]
            if format_name == "claude_code":
                listed.append(filesystem.get_file_info(path + SIDECAR_SUFFIX))
        else:
            try:
                listed = filesystem.get_file_info(pafs.FileSelector(path, recursive=True))
            except OSError as error:
                raise IngestError(f"cannot list source {source}: {error}") from error
            infos = [i for i in listed if i.type == pafs.FileType.File and fmt.selects(i.path, options)]
        sidecars = {
            i.path[: -len(SIDECAR_SUFFIX)]: (int(i.size or 0), int(i.mtime_ns or 0))
            for i in listed
            if i.type == pafs.FileType.File and i.path.endswith(SIDECAR_SUFFIX)
        }
        for file_info in infos:
            uri = f"s3://{file_info.path}" if root.startswith("s3://") else file_info.path
            mtime = file_info.mtime_ns if file_info.mtime_ns is not None else 0
            found.setdefault(
                uri,
                InputFile(uri, source, int(file_info.size or 0), int(mtime), sidecars.get(file_info.path)),
            )
    return sorted(found.values(), key=lambda f: f.uri)


# ---------------------------------------------------------------------------------------------
# One shard
# ---------------------------------------------------------------------------------------------


class ShardReader:
    """Reads the files of one shard, writes their traces as one part, returns counts.

    Never raises for bad input: an unreadable file or a reader failure becomes a quarantined
    record for that file, and the other files of the shard are still read.
    """

    def __init__(self, format_name: str, options: ReaderOptions, out: str, token: str) -> None:
        self.format_name = format_name
        self.options = options
        self.out = out
        self.token = token

    def __call__(self, shard: dict[str, Any]) -> dict[str, Any]:
        read = get_format(self.format_name).read
        context = ReadContext.create(self.options)
        filesystems: dict[bool, pafs.FileSystem] = {}
        traces = []
        seen: set[str] = set()
        quarantined: list[dict[str, Any]] = []
        per_file: dict[str, dict[str, Any]] = {}
        duplicates = 0
        for uri in shard["files"]:
            remote = uri.startswith("s3://")
            if remote not in filesystems:
                filesystems[remote] = store.resolve(uri)[0]
            path = uri[len("s3://") :] if remote else uri
            counts: dict[str, Any] = {
                "traces": 0,
                "quarantined": 0,
                "tools": set(),
                "ignored": Counter(),
                "unrecognized": Counter(),
            }
            per_file[uri] = counts
            source = SourceFile(uri, path, filesystems[remote])
            try:
                for item in read(source, context):
                    if isinstance(item, Quarantined):
                        quarantined.append(item.to_json())
                        counts["quarantined"] += 1
                    elif isinstance(item, Ignored):
                        counts["ignored" if item.known else "unrecognized"][item.kind] += item.count
                    elif item.id in seen:
                        duplicates += 1
                    else:
                        seen.add(item.id)
                        traces.append(item)
                        counts["traces"] += 1
                        counts["tools"].update(call.name for call in item.reference_calls)
            except OSError as error:
                quarantined.append(Quarantined(uri, 0, f"cannot read file: {error}").to_json())
                counts["quarantined"] += 1
            except Exception as error:  # a reader bug must not lose the other files
                quarantined.append(
                    Quarantined(uri, 0, f"reader failed: {type(error).__name__}: {error}").to_json()
                )
                counts["quarantined"] += 1
        part = None
        if traces:
            part = store.write_part(
                self.out, self.token, shard["index"], traces_to_table(traces)
            ).model_dump()
        for counts in per_file.values():
            counts["tools"] = sorted(counts["tools"])
            counts["ignored"] = dict(counts["ignored"])
            counts["unrecognized"] = dict(counts["unrecognized"])
        return {
            "part": part,
            "files": per_file,
            "quarantined": quarantined,
            "ids": sorted(seen),
            "duplicates": duplicates,
            "redacted": dict(context.redactor.counts),
        }


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------


def _stamp(uri: str) -> list[Any]:
    """Path, size and modification time of one file (for fingerprints)."""
    filesystem, path = store.resolve(uri)
    info = filesystem.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise IngestError(f"file not found: {uri}")
    return [uri, info.size, info.mtime_ns]


def _shards(
    files: list[InputFile], files_per_shard: int | None, parallelism: int = 8
) -> list[dict[str, Any]]:
    if files_per_shard is None:
        files_per_shard = max(1, min(256, math.ceil(len(files) / max(1, parallelism * 4))))
    return [
        {"index": i, "files": [f.uri for f in files[start : start + files_per_shard]]}
        for i, start in enumerate(range(0, len(files), files_per_shard))
    ]


def ingest(config: IngestConfig, executor: Executor | None = None) -> IngestResult:
    """Run the ingest stage; returns the published dataset (or the existing one when up to date).

    Raises ``IngestError`` when no input file is found, or in strict mode when any record was
    quarantined (then nothing is published).
    """
    executor = executor or LocalExecutor()
    get_format(config.format)  # fail early on an unknown format
    files = discover(config.sources, config.format, config.reader)
    if not files:
        raise IngestError(f"no {config.format} files found under: {', '.join(config.sources)}")
    inputs = [f.stamp() for f in files]
    if config.reader.catalog:
        inputs.append(["catalog", *_stamp(config.reader.catalog)])
    run = StageRun.start(STAGE, config.out, config.config_hash(), inputs, list(config.sources))
    earlier = run.existing(force=config.force)
    if earlier is not None:
        quarantined_before = earlier.dataset.manifest.quarantine.total
        if config.strict and quarantined_before:
            raise IngestError(
                f"--strict: the existing dataset {config.out} was built with {quarantined_before} "
                "quarantined records; fix the input or rebuild without --strict"
            )
        return IngestResult(earlier.dataset, skipped=True, stats=earlier.stats)

    token = run.token
    shards = _shards(files, config.files_per_shard)
    reader = ShardReader(config.format, config.reader, config.out, token)
    results = executor.map_shards(reader, shards, f"ingest {config.format}")

    parts = [store.PartInfo.model_validate(r["part"]) for r in results if r["part"]]
    quarantined = [q for r in results for q in r["quarantined"]]
    if config.strict and quarantined:
        store.discard(config.out, parts)
        first = "; ".join(f"{q['source']}:{q['line']}: {q['reason']}" for q in quarantined[:5])
        raise IngestError(f"--strict: {len(quarantined)} bad records, nothing published. First: {first}")

    id_counts = Counter(i for r in results for i in r["ids"])
    cross_shard_duplicates = sum(n - 1 for n in id_counts.values() if n > 1)
    summary = _summary(files, results)
    redacted: Counter[str] = Counter()
    for r in results:
        redacted.update(r["redacted"])
    result = run.publish(
        parts,
        {
            "format": config.format,
            "files": len(files),
            "summary": summary,
            "duplicates_dropped": sum(r["duplicates"] for r in results),
            "duplicate_ids_across_parts": cross_shard_duplicates,
            "secrets_redacted": dict(sorted(redacted.items())),
            # off with --no-redact: then no count above means nothing was looked for
            "redact": config.reader.redact,
            "executor": executor.name,
        },
        quarantined=quarantined,
    )
    return IngestResult(result.dataset, skipped=False, stats=result.stats)


def _summary(files: list[InputFile], results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per source: files, traces, distinct tools called, quarantined records, lines left
    out by kind (``ignored``: on purpose; ``unrecognized``: valid JSON of no known shape) and the
    files that gave no trace at all (``files_without_traces``, up to ten named)."""
    source_of = {f.uri: f.source for f in files}
    rows: dict[str, dict[str, Any]] = {}
    tools: dict[str, set[str]] = {}
    for result in results:
        for uri, counts in result["files"].items():
            source = source_of.get(uri, uri)
            row = rows.setdefault(
                source,
                {
                    "source": source,
                    "files": 0,
                    "traces": 0,
                    "tools": 0,
                    "quarantined": 0,
                    "ignored": Counter(),
                    "unrecognized": Counter(),
                    "files_without_traces": 0,
                    "empty_files": [],
                },
            )
            row["files"] += 1
            row["traces"] += counts["traces"]
            row["quarantined"] += counts["quarantined"]
            row["ignored"].update(counts.get("ignored", {}))
            row["unrecognized"].update(counts.get("unrecognized", {}))
            if not counts["traces"]:
                row["files_without_traces"] += 1
                if len(row["empty_files"]) < 10:
                    row["empty_files"].append(uri)
            tools.setdefault(source, set()).update(counts["tools"])
    for source, row in rows.items():
        row["tools"] = len(tools[source])
        row["ignored"] = dict(sorted(row["ignored"].items()))
        row["unrecognized"] = dict(sorted(row["unrecognized"].items()))
    return list(rows.values())
