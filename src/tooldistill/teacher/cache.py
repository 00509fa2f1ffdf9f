"""The request cache: every answer Claude gave, stored by the content address of its request.

A paid answer is written here (durably: fsync and an atomic rename on a local disk, one object PUT
on S3) before it counts as done, so a run that is killed loses at most the requests in flight, and
a rerun sends only what is not here yet.  One JSON file per request, under a two-character fan-out
folder: ``<cache>/ab/ab12...-0.json``.  Batch state (submitted batch ids and their requests) lives
beside it under ``<cache>/batches/`` so a restarted batch run polls its batches instead of paying
for them again.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any

import pyarrow.fs as pafs

from tooldistill import store


class RequestCache:
    def __init__(self, uri: str) -> None:
        self.uri = uri.rstrip("/")
        self.filesystem, self.path = store.resolve(self.uri)
        self.local = isinstance(self.filesystem, pafs.LocalFileSystem)

    # -- answers -----------------------------------------------------------------------------

    def _path(self, key: str) -> str:
        return f"{self.path}/{key[:2]}/{key}.json"

    def done_keys(self) -> set[str]:
        """Keys of every stored answer (one listing, not one request per key)."""
        try:
            infos = self.filesystem.get_file_info(
                pafs.FileSelector(self.path, recursive=True, allow_not_found=True)
            )
        except OSError as error:
            raise store.StoreError(f"cannot list the request cache {self.uri}: {error}") from error
        return {
            info.base_name[: -len(".json")]
            for info in infos
            if info.type == pafs.FileType.File
            and info.base_name.endswith(".json")
            and "/batches/" not in info.path
        }

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            with self.filesystem.open_input_stream(self._path(key)) as stream:
                return json.loads(stream.read().decode("utf-8"))
        except FileNotFoundError:
            return None
        except OSError as error:
            if self.filesystem.get_file_info(self._path(key)).type == pafs.FileType.NotFound:
                return None
            raise store.StoreError(f"cannot read cached answer {key}: {error}") from error

    def put(self, key: str, record: dict[str, Any]) -> None:
        self._write(self._path(key), json.dumps(record, ensure_ascii=False).encode("utf-8"))

    def _write(self, path: str, data: bytes) -> None:
        try:
            if self.local:
                folder = os.path.dirname(path)
                os.makedirs(folder, exist_ok=True)
                temporary = f"{path}.{os.getpid()}.tmp"
                with open(temporary, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temporary, path)
            else:
                with self.filesystem.open_output_stream(path) as stream:
                    stream.write(data)
        except OSError as error:
            raise store.StoreError(f"cannot write to the request cache {self.uri}: {error}") from error

    # -- batch state ---------------------------------------------------------------------------

    def save_batch(self, state: dict[str, Any]) -> None:
        self._write(f"{self.path}/batches/{state['id']}.json", json.dumps(state).encode("utf-8"))

    def drop_batch(self, batch_id: str) -> None:
        with contextlib.suppress(OSError):
            self.filesystem.delete_file(f"{self.path}/batches/{batch_id}.json")

    def open_batches(self) -> Iterator[dict[str, Any]]:
        """Batches submitted by an earlier run whose results were not all collected."""
        try:
            infos = self.filesystem.get_file_info(
                pafs.FileSelector(f"{self.path}/batches", allow_not_found=True)
            )
        except OSError:
            return
        for info in sorted(infos, key=lambda i: i.path):
            if info.type == pafs.FileType.File and info.base_name.endswith(".json"):
                with self.filesystem.open_input_stream(info.path) as stream:
                    yield json.loads(stream.read().decode("utf-8"))
