"""Reading a run folder: cached JSON files and store datasets by relative name, from one or more
roots, and what a file that is there but cannot be used says (``Unreadable``).

Every relative name comes from ``LAYOUT`` (``tooldistill.layout``), so the report reads the same
paths the stages write.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from tooldistill import store
from tooldistill.layout import RunLayout, manifest
from tooldistill.report.sections.format import natural

#: The run folder's paths, relative to it: what ``RunFolder`` takes.
LAYOUT = RunLayout.relative()


class Unreadable(Exception):
    """A file of the run folder is there but cannot be used; ``str`` says which and why."""

    def __init__(self, what: str, why: str) -> None:
        super().__init__(f"{what} could not be read: {why}")
        self.what = what
        self.why = why


class RunFolder:
    """Cached reads of a run folder by relative path, from one or more roots (local paths or
    ``s3://`` URIs, read through ``tooldistill.store``); the first root that has a file wins.

    A pipeline run into ``s3://`` keeps its plain files (``run.json``, ``optimize/``) in a local
    staging folder while it runs and its datasets in the bucket: the roots are then the staging
    folder and the bucket's run folder.

    The cache only remembers what a file held, so the order in which sections read does not
    change what any of them gets.
    """

    def __init__(self, roots: Sequence[str]) -> None:
        self.roots = list(roots)
        self._json: dict[tuple[str, str], Any] = {}

    def _info(self, root: str, rel: str) -> pafs.FileInfo | None:
        try:
            filesystem, path = store.resolve(store.join(root, rel))
            return filesystem.get_file_info(path)
        except (OSError, store.StoreError):
            return None

    def has(self, rel: str) -> bool:
        return any(
            (info := self._info(root, rel)) is not None and info.type != pafs.FileType.NotFound
            for root in self.roots
        )

    def children(self, rel: str) -> list[str]:
        """Names of the sub-folders of ``rel`` in any root, in natural order."""
        names: set[str] = set()
        for root in self.roots:
            try:
                filesystem, path = store.resolve(store.join(root, rel))
                infos = filesystem.get_file_info(pafs.FileSelector(path, allow_not_found=True))
            except (OSError, store.StoreError):
                continue
            names.update(i.base_name for i in infos if i.type == pafs.FileType.Directory)
        return sorted(names, key=natural)

    def json(self, rel: str, shape: type = dict) -> Any:
        """The parsed file; None when it does not exist; ``Unreadable`` when it cannot be parsed
        or is not a ``shape`` (dict or list)."""
        key = (rel, shape.__name__)
        if key not in self._json:
            self._json[key] = self._load(rel, shape)
        found = self._json[key]
        if isinstance(found, Unreadable):
            raise found
        return found

    def _load(self, rel: str, shape: type) -> Any:
        for root in self.roots:
            info = self._info(root, rel)
            if info is None or info.type == pafs.FileType.NotFound:
                continue
            try:
                value = json.loads(store.read_file(store.join(root, rel)).decode("utf-8"))
            except (store.StoreError, UnicodeDecodeError, ValueError) as error:
                return Unreadable(rel, f"{type(error).__name__}: {error}")
            if not isinstance(value, shape):
                return Unreadable(rel, f"expected a JSON {shape.__name__}, found {type(value).__name__}")
            return value
        return None

    def try_json(self, rel: str, problems: list[str], shape: type = dict) -> Any:
        """Like ``json`` but an unreadable file is added to ``problems`` and gives None."""
        try:
            return self.json(rel, shape)
        except Unreadable as error:
            problems.append(str(error))
            return None

    def dataset(self, rel: str) -> store.Dataset | None:
        """The store dataset at ``rel``; None without a manifest; ``Unreadable`` for a bad one."""
        for root in self.roots:
            found = open_dataset(store.join(root, rel), rel)
            if found is not None:
                return found
        return None


def open_dataset(uri: str, label: str) -> store.Dataset | None:
    """The dataset at ``uri`` (local or ``s3://``); None when there is none."""
    try:
        found = store.read_manifest(uri)
    except store.StoreError as error:
        raise Unreadable(manifest(label), str(error)) from None
    return store.Dataset(uri, found) if found is not None else None


def read_columns(dataset: store.Dataset, columns: Sequence[str], label: str) -> pa.Table | None:
    """Only ``columns`` of every part; None when the dataset lacks one of them."""
    filesystem, paths = dataset.part_paths()
    try:
        if paths and not set(columns) <= set(pq.read_schema(paths[0], filesystem=filesystem).names):
            return None
        tables = [pq.read_table(p, filesystem=filesystem, columns=list(columns)) for p in paths]
    except (OSError, pa.ArrowException) as error:
        raise Unreadable(label, f"{type(error).__name__}: {error}") from None
    if not tables:
        return pa.table({c: pa.array([], pa.null()) for c in columns})
    return pa.concat_tables(tables)


def config_dataset(run: RunFolder, uri: Any, fallback: str) -> tuple[store.Dataset | None, str | None]:
    """A dataset the optimize config names (local or s3://), else the run folder's ``fallback``
    (the folder was moved, or the named path is not reachable from here); and what went wrong."""
    problem = None
    if isinstance(uri, str) and uri:
        try:
            found = open_dataset(uri, uri)
        except Unreadable as error:
            found, problem = None, str(error)
        if found is not None:
            return found, None
    try:
        found = run.dataset(fallback)
    except Unreadable as error:
        return None, str(error)
    if found is None:
        problem = problem or f"neither {uri or '(not named)'} nor {fallback} is a dataset here"
    return found, None if found is not None else problem


def dataset_rows(run: RunFolder, uri: Any, fallback: str) -> int | None:
    found, _ = config_dataset(run, uri, fallback)
    return found.manifest.rows if found is not None else None
