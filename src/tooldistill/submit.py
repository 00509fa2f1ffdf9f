"""``tooldistill submit``: a pipeline run as a Ray job, through the job server of a Ray head.

It is ``ray job submit -- python ray_jobs/pipeline.py CONFIG ...`` with three additions: the
submission id carries the config's name and the git commit of the code that was shipped (``-dirty``
when the checkout has uncommitted changes), the runtime environment comes from
``ray_jobs/runtime_env.yaml``, and the job's logs are followed until it ends, the command's exit
status being the job's.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml


class SubmitError(RuntimeError):
    """The job could not be submitted or did not succeed."""


def git_revision(root: Path) -> str:
    """Short commit of ``root`` (+ ``-dirty`` when tracked files changed); ``nogit`` outside git."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()

    try:
        sha = git("rev-parse", "--short=12", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return "nogit"
    return f"{sha}-dirty" if dirty else sha


def submission_id(name: str, revision: str, now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in name)
    return f"tooldistill-{safe}-{revision}-{stamp}"


def load_runtime_env(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        value = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        raise SubmitError(f"cannot read runtime env {path}: {error}") from error
    if not isinstance(value, dict):
        raise SubmitError(f"runtime env {path} must be a YAML mapping")
    return value


def submit(
    address: str,
    config_path: str,
    run_args: Sequence[str] = (),
    *,
    name: str,
    root: Path,
    runtime_env: dict[str, Any] | None = None,
    follow: bool = True,
    write: Callable[[str], None] = print,
    timeout_s: float | None = None,
) -> tuple[str, str]:
    """Submit ``ray_jobs/pipeline.py CONFIG RUN_ARGS`` to the head at ``address``; returns
    (submission id, final status or the status when not following)."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobStatus, JobSubmissionClient

    try:
        client = JobSubmissionClient(address)
    except AuthenticationError:
        raise SubmitError(
            f"the Ray head at {address} asks for its token: export RAY_AUTH_MODE=token and make the "
            "token available (~/.ray/auth_token on the head, or RAY_AUTH_TOKEN)"
        ) from None
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise SubmitError(f"no Ray job server at {address}: {error}") from None
    job_id = submission_id(name, git_revision(root))
    entrypoint = shlex.join(["python", "ray_jobs/pipeline.py", config_path, *run_args])
    client.submit_job(entrypoint=entrypoint, submission_id=job_id, runtime_env=runtime_env or None)
    write(f"submitted {job_id}: {entrypoint}")
    if not follow:
        return job_id, str(client.get_job_status(job_id))

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            for line in lines.splitlines():
                write(line)

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    with contextlib.suppress(TimeoutError):
        asyncio.run(asyncio.wait_for(tail(), timeout=timeout_s))
    while True:  # the log stream can end a moment before the status does
        status = client.get_job_status(job_id)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            break
        if deadline is not None and time.monotonic() > deadline:
            raise SubmitError(f"job {job_id} still {status} after {timeout_s:.0f} s")
        time.sleep(1.0)
    if status != JobStatus.SUCCEEDED:
        info = client.get_job_info(job_id)
        raise SubmitError(f"job {job_id} {status}: {info.message or 'see its logs above'}")
    return job_id, str(status)
