"""The plain-file part of a run folder on S3.

GEPA, Ray Tune, Ray Train and the report write plain files to a local folder.  For an ``s3://`` run
folder that folder is a staging copy under ``$TOOLDISTILL_CACHE/runs/<hash of the URI>``: copied
back from the run folder when a run starts (so a run resumes from another machine) and copied to
it by the pipeline (the record and log after every stage, the folders after the optimize stage
and at the end).  For a local run folder the staging folder is the run folder itself.
"""

from __future__ import annotations

import os
from pathlib import Path

from tooldistill import store
from tooldistill.layout import RunLayout, parent_and_name
from tooldistill.schema import content_hash


def is_remote(uri: str) -> bool:
    return "://" in uri


def staging_dir(run_dir: str) -> Path:
    """Where the plain-file part of a run lives while it runs: the run folder itself when local."""
    if not is_remote(run_dir):
        return Path(run_dir)
    home = Path(os.environ.get("TOOLDISTILL_CACHE", Path.home() / ".cache" / "tooldistill"))
    return home / "runs" / content_hash(run_dir, 16)


def copy_tree(source: str, destination: str) -> None:
    """Copy a folder (local or remote) to another; a missing source copies nothing."""
    import pyarrow.fs as pafs

    src_fs, src_path = store.resolve(source)
    if src_fs.get_file_info(src_path).type == pafs.FileType.NotFound:
        return
    dst_fs, dst_path = store.resolve(destination)
    if not is_remote(destination):
        Path(dst_path).mkdir(parents=True, exist_ok=True)
    pafs.copy_files(src_path, dst_path, source_filesystem=src_fs, destination_filesystem=dst_fs)


def copy_file(source: str, destination_folder: str, name: str) -> None:
    try:
        data = store.read_file(source)
    except store.StoreError:
        return
    store.write_file(destination_folder, name, data)


def restore(run_dir: str, workdir: Path) -> None:
    """Bring back what an earlier run on another machine left in an ``s3://`` run folder: the
    optimize folder (phases resume from their state) and, when this machine has none, the run's
    log (this run appends to it)."""
    if not is_remote(run_dir):
        return
    remote, local = RunLayout(run_dir), RunLayout(str(workdir))
    copy_tree(remote.optimize.root, local.optimize.root)
    if not Path(local.run_log).exists():
        copy_file(remote.run_log, *parent_and_name(local.run_log))


def sync(run_dir: str, workdir: Path, *, folders: bool = True) -> None:
    """Copy the plain-file part of an ``s3://`` run to the run folder (nothing to do when local):
    the run's record, log and student record, and (``folders``) the optimize and report folders."""
    if not is_remote(run_dir):
        return
    local, remote = RunLayout(str(workdir)), RunLayout(run_dir)
    for source, destination in zip(local.plain_files, remote.plain_files, strict=True):
        copy_file(source, *parent_and_name(destination))
    if folders:
        for source, destination in zip(local.plain_folders, remote.plain_folders, strict=True):
            copy_tree(source, destination)
