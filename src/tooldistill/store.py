"""The dataset store: a dataset is a folder (local path or ``s3://bucket/prefix``) of Parquet parts
plus ``manifest.json``.

Contract:

- **Readers see only what a manifest lists.**  Parts are written under names unique to the run
  (``part-<token>-<n>.parquet``); the manifest is written last (atomically: rename on local disk,
  a single PUT on S3).  A run that dies before the manifest leaves the previous dataset intact.
- **A stage is skipped when nothing changed.**  The manifest keeps a fingerprint of the stage's
  inputs, config and code version; ``up_to_date`` compares it and checks the parts still exist.
- **S3 goes through pyarrow's S3 filesystem** with the standard AWS credential chain.  The
  endpoint comes from ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (for MinIO, moto, ...), the
  region from ``AWS_REGION``/``AWS_DEFAULT_REGION``.  Credentials are never read or written here.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from tooldistill import __version__
from tooldistill.schema import SCHEMA_VERSION, TRACE_SCHEMA, Trace, check_trace_schema, traces_from_table

if TYPE_CHECKING:
    import pandas as pd
    import ray.data

MANIFEST = "manifest.json"
SCHEMAS: dict[str, pa.Schema] = {"traces": TRACE_SCHEMA}
_PART = re.compile(r"^part-[0-9a-f]+-\d+\.parquet$")
_QUARANTINE = re.compile(r"^quarantine-[0-9a-f]+\.jsonl$")


class StoreError(RuntimeError):
    """A dataset cannot be read or written; the message says which and why."""


# ---------------------------------------------------------------------------------------------
# Filesystems
# ---------------------------------------------------------------------------------------------


def s3_filesystem() -> pafs.S3FileSystem:
    """An S3 filesystem from the environment (endpoint and region only; credentials by the AWS chain)."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    kwargs: dict[str, Any] = {"region": region}
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kwargs["endpoint_override"] = host or endpoint
        kwargs["scheme"] = scheme if host else "https"
    return pafs.S3FileSystem(**kwargs)


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and the path inside it for a local path, ``file://`` or ``s3://`` URI."""
    if uri.startswith("s3://"):
        return s3_filesystem(), uri[len("s3://") :].rstrip("/")
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if "://" in uri:
        raise StoreError(f"unsupported storage scheme in {uri!r}: use a local path or s3://bucket/prefix")
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def join(uri: str, name: str) -> str:
    return f"{uri.rstrip('/')}/{name}"


def _write_bytes(filesystem: pafs.FileSystem, path: str, data: bytes) -> None:
    parent = path.rsplit("/", 1)[0]
    if isinstance(filesystem, pafs.LocalFileSystem):
        filesystem.create_dir(parent, recursive=True)
    with filesystem.open_output_stream(path) as stream:
        stream.write(data)


def _read_bytes(filesystem: pafs.FileSystem, path: str) -> bytes:
    with filesystem.open_input_stream(path) as stream:
        return bytes(stream.read())


def read_file(uri: str) -> bytes:
    """The bytes of one file, local or ``s3://`` (same endpoint and credentials as datasets)."""
    filesystem, path = resolve(uri)
    try:
        return _read_bytes(filesystem, path)
    except OSError as error:
        raise StoreError(f"cannot read {uri}: {error}") from error


def write_file(folder: str, name: str, data: bytes) -> str:
    """Write ``folder/name`` (local or ``s3://``), creating local folders; returns its URI."""
    filesystem, path = resolve(folder)
    try:
        _write_bytes(filesystem, f"{path}/{name}", data)
    except OSError as error:
        raise StoreError(f"cannot write {join(folder, name)}: {error}") from error
    return join(folder, name)


def _exists(filesystem: pafs.FileSystem, path: str) -> bool:
    return filesystem.get_file_info(path).type == pafs.FileType.File


# ---------------------------------------------------------------------------------------------
# Manifest
# ---------------------------------------------------------------------------------------------


class PartInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    rows: int
    bytes: int
    sha256: str


class QuarantineInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    total: int = 0
    by_reason: dict[str, int] = Field(default_factory=dict)
    file: str | None = None


class Manifest(BaseModel):
    """What a published dataset holds and what made it."""

    model_config = ConfigDict(extra="allow")

    schema_version: int = SCHEMA_VERSION
    kind: str
    stage: str
    rows: int
    parts: list[PartInfo]
    config_hash: str
    fingerprint: str
    code_version: str = __version__
    parents: list[str] = Field(default_factory=list)
    quarantine: QuarantineInfo = Field(default_factory=QuarantineInfo)
    stats: dict[str, Any] = Field(default_factory=dict)
    created_at: float = Field(default_factory=time.time)


def read_manifest(uri: str) -> Manifest | None:
    """The dataset's manifest, or None when there is no published dataset at ``uri``."""
    filesystem, path = resolve(uri)
    manifest_path = f"{path}/{MANIFEST}"
    try:
        if not _exists(filesystem, manifest_path):
            return None
        raw = _read_bytes(filesystem, manifest_path)
    except OSError as error:
        raise StoreError(f"cannot read {join(uri, MANIFEST)}: {error}") from error
    try:
        return Manifest.model_validate_json(raw)
    except ValueError as error:
        raise StoreError(f"{join(uri, MANIFEST)} is not a valid manifest: {error}") from error


def fingerprint(stage: str, config_hash: str, inputs: Any) -> str:
    """Hash of what decides a stage's output: its name, config, inputs and the code version."""
    payload = json.dumps(
        {
            "stage": stage,
            "config": config_hash,
            "inputs": inputs,
            "code": __version__,
            "schema": SCHEMA_VERSION,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def up_to_date(uri: str, expected_fingerprint: str) -> Manifest | None:
    """The manifest when the dataset at ``uri`` was made from the same inputs and config and all of
    its parts are still there with their recorded sizes; otherwise None."""
    try:
        manifest = read_manifest(uri)
    except StoreError:
        return None
    if manifest is None or manifest.fingerprint != expected_fingerprint:
        return None
    filesystem, path = resolve(uri)
    infos = filesystem.get_file_info([f"{path}/{part.name}" for part in manifest.parts])
    if any(
        info.type != pafs.FileType.File or info.size != part.bytes
        for info, part in zip(infos, manifest.parts, strict=True)
    ):
        return None
    return manifest


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def new_token() -> str:
    return f"{int(time.time()):x}{secrets.token_hex(4)}"


def write_part(uri: str, token: str, index: int, table: pa.Table) -> PartInfo:
    """Write one Parquet part of a dataset being built (not visible until ``publish``)."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    data = buffer.getvalue()
    name = f"part-{token}-{index:05d}.parquet"
    filesystem, path = resolve(uri)
    try:
        _write_bytes(filesystem, f"{path}/{name}", data)
    except OSError as error:
        raise StoreError(f"cannot write {join(uri, name)}: {error}") from error
    return PartInfo(name=name, rows=table.num_rows, bytes=len(data), sha256=hashlib.sha256(data).hexdigest())


def reason_kind(reason: str) -> str:
    """A quarantine reason without its details, for counting (``malformed JSON``, ...)."""
    head = re.split(r"[:(']", reason, maxsplit=1)[0]
    return re.sub(r"(?<![\w-])\d+\b", "N", head).strip() or reason


def publish(
    uri: str,
    *,
    token: str,
    manifest: Manifest,
    quarantined: Iterable[dict[str, Any]] = (),
) -> Manifest:
    """Make a dataset visible: write its quarantine file, then the manifest, then drop stale parts.

    ``manifest.quarantine`` is filled in from ``quarantined``.  Raises ``StoreError`` when the
    manifest cannot be written; the previous dataset, if any, then stays as it was.
    """
    filesystem, path = resolve(uri)
    records = list(quarantined)
    if records:
        name = f"quarantine-{token}.jsonl"
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
        _write_bytes(filesystem, f"{path}/{name}", body)
        by_reason: dict[str, int] = {}
        for record in records:
            kind = reason_kind(str(record.get("reason", "")))
            by_reason[kind] = by_reason.get(kind, 0) + 1
        manifest.quarantine = QuarantineInfo(total=len(records), by_reason=by_reason, file=name)
    else:
        manifest.quarantine = QuarantineInfo()
    body = manifest.model_dump_json(indent=2).encode("utf-8")
    try:
        if isinstance(filesystem, pafs.LocalFileSystem):
            temporary = f"{path}/.{MANIFEST}.{token}.tmp"
            _write_bytes(filesystem, temporary, body)
            filesystem.move(temporary, f"{path}/{MANIFEST}")
        else:
            _write_bytes(filesystem, f"{path}/{MANIFEST}", body)
    except OSError as error:
        raise StoreError(f"cannot publish {join(uri, MANIFEST)}: {error}") from error
    _drop_stale(filesystem, path, manifest)
    return manifest


def discard(uri: str, parts: Iterable[PartInfo]) -> None:
    """Delete parts written by a run that will not be published."""
    filesystem, path = resolve(uri)
    for part in parts:
        with contextlib.suppress(OSError):
            filesystem.delete_file(f"{path}/{part.name}")


def _drop_stale(filesystem: pafs.FileSystem, path: str, manifest: Manifest) -> None:
    keep = {p.name for p in manifest.parts} | {manifest.quarantine.file}
    try:
        infos = filesystem.get_file_info(pafs.FileSelector(path, recursive=False))
    except OSError:
        return
    for info in infos:
        name = info.base_name
        if name not in keep and (_PART.match(name) or _QUARANTINE.match(name)):
            with contextlib.suppress(OSError):
                filesystem.delete_file(info.path)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dataset:
    """A published dataset: its URI and manifest, with ways to read it."""

    uri: str
    manifest: Manifest

    @classmethod
    def open(cls, uri: str) -> Dataset:
        manifest = read_manifest(uri)
        if manifest is None:
            raise StoreError(f"no dataset at {uri} (no {MANIFEST}); run the stage that makes it first")
        return cls(uri, manifest)

    def part_paths(self) -> tuple[pafs.FileSystem, list[str]]:
        filesystem, path = resolve(self.uri)
        return filesystem, [f"{path}/{part.name}" for part in self.manifest.parts]

    def schema(self) -> pa.Schema:
        return SCHEMAS.get(self.manifest.kind, pa.schema([]))

    def to_arrow(self) -> pa.Table:
        filesystem, paths = self.part_paths()
        if not paths:
            return self.schema().empty_table()
        try:
            tables = [pq.read_table(p, filesystem=filesystem) for p in paths]
        except OSError as error:
            raise StoreError(f"cannot read a part of {self.uri}: {error}") from error
        table = pa.concat_tables(tables)
        if self.manifest.kind == "traces":
            check_trace_schema(table.schema)
        return table

    def to_pandas(self) -> pd.DataFrame:
        return self.to_arrow().to_pandas()

    def to_traces(self) -> list[Trace]:
        return traces_from_table(self.to_arrow())

    def quarantined(self) -> list[dict[str, Any]]:
        if not self.manifest.quarantine.file:
            return []
        filesystem, path = resolve(self.uri)
        raw = _read_bytes(filesystem, f"{path}/{self.manifest.quarantine.file}")
        return [json.loads(line) for line in raw.decode("utf-8").splitlines() if line.strip()]

    def to_ray(self) -> ray.data.Dataset:
        """The dataset as a Ray Data dataset (reads the listed parts in parallel)."""
        import ray.data

        filesystem, paths = self.part_paths()
        if not paths:
            return ray.data.from_arrow(self.schema().empty_table())
        return ray.data.read_parquet(paths, filesystem=filesystem)
