"""Shared fixtures: one Ray instance per test session, a moto S3 server on 127.0.0.1, fixture paths."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
CLAUDE_CODE = FIXTURES / "claude_code"

# Fake credentials for the local S3 server.  Tests check that they never reach a file or output.
S3_KEY_ID = "AKIATESTFIXTURE00001"
S3_SECRET = "tdTestSecretKeyNeverPrinted0123456789abcd"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1, reached through the standard AWS environment variables.

    Started before Ray so that Ray's worker processes inherit the same environment.
    """
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {
        k: os.environ.get(k)
        for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")
    }
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": S3_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET,
            "AWS_REGION": "us-east-1",
        }
    )
    yield endpoint
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def ray_cluster(s3_server: str) -> Iterator[None]:
    """One local Ray instance for the whole test session (2 CPUs, no dashboard)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture()
def bucket(s3_server: str) -> str:
    """A fresh, empty bucket on the local S3 server."""
    import uuid

    import boto3

    name = f"td-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def bfcl_dataset(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Every single-turn BFCL category of the installed bfcl-eval package, ingested once."""
    from tooldistill.executor import LocalExecutor
    from tooldistill.ingest import IngestConfig, ingest

    out = str(tmp_path_factory.mktemp("bfcl") / "traces")
    config = IngestConfig(sources=("bfcl",), format="bfcl", out=out, strict=True)
    return ingest(config, LocalExecutor(show_progress=False)).dataset


@pytest.fixture(scope="session")
def bfcl_traces(bfcl_dataset: Any) -> list[Any]:
    return bfcl_dataset.to_traces()
