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
- **S3 requests are retried** on throttling (``503 SlowDown``), other 5xx answers and dropped
  connections, with exponential backoff and jitter: pyarrow's ``AwsStandardS3RetryStrategy`` for
  datasets, botocore's ``standard`` retry mode for the boto3 clients (``s3_client``).  Both make
  ``TOOLDISTILL_S3_MAX_ATTEMPTS`` attempts per request at most (first try included; default 8).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
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


MAX_ATTEMPTS_ENV = "TOOLDISTILL_S3_MAX_ATTEMPTS"
#: Attempts per S3 request, the first included.  With the SDKs' backoff (a random wait below 1 s,
#: 2 s, 4 s, ... capped at 20 s) a request that keeps failing is given up after about a minute.
DEFAULT_MAX_ATTEMPTS = 8


def s3_max_attempts() -> int:
    """How many times one S3 request is tried at most: ``$TOOLDISTILL_S3_MAX_ATTEMPTS`` or 8."""
    raw = os.environ.get(MAX_ATTEMPTS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_ATTEMPTS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise StoreError(f"{MAX_ATTEMPTS_ENV} must be a whole number >= 1 (1: no retries), got {raw!r}")
    return value


def _s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _s3_region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


class RetryingS3FileSystem(pafs.S3FileSystem):
    """pyarrow's S3 filesystem with an explicit retry budget that survives pickling.

    pyarrow pickles an ``S3FileSystem`` without its ``retry_strategy``, so a filesystem sent to Ray
    workers (``Dataset.to_ray``) would fall back to pyarrow's default of 3 attempts there; this one
    rebuilds itself with the same options and the same number of attempts.
    """

    def __init__(self, *, max_attempts: int, **options: Any) -> None:
        super().__init__(retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=max_attempts), **options)
        self.max_attempts = max_attempts
        self.options = options

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild_s3, (self.max_attempts, self.options)


def _rebuild_s3(max_attempts: int, options: dict[str, Any]) -> RetryingS3FileSystem:
    return RetryingS3FileSystem(max_attempts=max_attempts, **options)


def s3_filesystem() -> RetryingS3FileSystem:
    """An S3 filesystem from the environment (endpoint, region and retry budget; credentials by the
    AWS chain).  Throttling, 5xx answers and dropped connections are retried with backoff.

    Opening an output stream is delayed until it is written (``allow_delayed_open``), so that a
    file smaller than one multipart part (manifests, quarantine files, most parts) is one
    ``PutObject`` instead of create/upload/complete: a third of the requests, and a write that
    fails leaves no incomplete multipart upload behind.
    """
    endpoint = _s3_endpoint()
    options: dict[str, Any] = {"region": _s3_region(), "allow_delayed_open": True}
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        options["endpoint_override"] = host or endpoint
        options["scheme"] = scheme if host else "https"
    return RetryingS3FileSystem(max_attempts=s3_max_attempts(), **options)


def s3_client() -> Any:
    """A boto3 S3 client from the same environment as ``s3_filesystem``, for the calls pyarrow has
    no API for (conditional writes); botocore's ``standard`` retries, ``s3_max_attempts`` attempts."""
    import boto3
    from botocore.config import Config

    config = Config(retries={"mode": "standard", "total_max_attempts": s3_max_attempts()})
    return boto3.client("s3", endpoint_url=_s3_endpoint(), region_name=_s3_region(), config=config)


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and the path inside it for a local path, ``file://`` or ``s3://`` URI."""
    if uri.startswith("s3://"):
        return s3_filesystem(), uri[len("s3://") :].rstrip("/")
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if "://" in uri:
        raise StoreError(f"unsupported storage scheme in {uri!r}: use a local path or s3://bucket/prefix")
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def absolute(uri: str) -> str:
    """A local path made absolute against this process's working directory (``~`` expanded);
    other URIs as they are.  What a stage hands its workers: on a cluster each node has a working
    directory of its own, so a relative path would name another folder there."""
    if "://" in uri:
        return uri
    return os.path.abspath(os.path.expanduser(uri))


def join(uri: str, name: str) -> str:
    return f"{uri.rstrip('/')}/{name}"


def _write_bytes(filesystem: pafs.FileSystem, path: str, data: bytes) -> None:
    parent = path.rsplit("/", 1)[0]
    if isinstance(filesystem, pafs.LocalFileSystem):
        filesystem.create_dir(parent, recursive=True)
    with filesystem.open_output_stream(path) as stream:
        stream.write(data)


#: How the AWS SDK reports a GET whose error answer does not fit the buffer of the range it asked
#: for, e.g. a ``503 SlowDown`` (a few hundred bytes of XML) on an object smaller than that.  It
#: classes this as a non-retryable client error, so ``_read_bytes`` retries it itself.
_OVERFLOWED_ERROR = "Failed to flush response stream"


def _read_bytes(filesystem: pafs.FileSystem, path: str) -> bytes:
    attempts = getattr(filesystem, "max_attempts", 1)  # RetryingS3FileSystem's; others: 1
    attempt = 1
    while True:
        try:
            with filesystem.open_input_stream(path) as stream:
                return bytes(stream.read())
        except OSError as error:
            if attempt >= attempts or _OVERFLOWED_ERROR not in str(error):
                raise
        time.sleep(random.uniform(0.0, min(20.0, 2.0 ** (attempt - 1))))  # as the SDK backs off
        attempt += 1


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
        try:
            _write_bytes(filesystem, f"{path}/{name}", body)
        except OSError as error:
            raise StoreError(
                f"cannot publish {uri}: writing {name} failed ({error}); readers still see the previous "
                "dataset, if any"
            ) from error
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
        raise StoreError(
            f"cannot publish {join(uri, MANIFEST)}: {error}; readers still see the previous dataset, if any"
        ) from error
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
