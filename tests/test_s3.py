"""S3 round trips against a moto server on 127.0.0.1, through the same code path as real S3."""

import boto3
from click.testing import CliRunner

from conftest import CLAUDE_CODE, S3_KEY_ID, S3_SECRET
from tooldistill.cli import main
from tooldistill.store import Dataset


def upload_fixtures(endpoint: str, bucket: str) -> int:
    client = boto3.client("s3", endpoint_url=endpoint)
    count = 0
    for path in sorted((CLAUDE_CODE / "projects").rglob("*.jsonl")):
        key = "logs/" + path.relative_to(CLAUDE_CODE / "projects").as_posix()
        client.upload_file(str(path), bucket, key)
        count += 1
    return count


def all_objects(endpoint: str, bucket: str) -> dict[str, bytes]:
    client = boto3.client("s3", endpoint_url=endpoint)
    listing = client.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {o["Key"]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listing}


def test_ingest_from_s3_to_s3_with_ray(ray_cluster, s3_server, bucket, tmp_path):
    assert upload_fixtures(s3_server, bucket) == 4
    out = f"s3://{bucket}/datasets/traces"
    runner = CliRunner()
    args = [
        "ingest",
        f"s3://{bucket}/logs",
        "--format",
        "claude_code",
        "--out",
        out,
        "--files-per-shard",
        "2",
    ]
    first = runner.invoke(main, args)
    assert first.exit_code == 0, first.output
    assert "9" in first.output and "quarantined" in first.output

    dataset = Dataset.open(out)
    assert dataset.manifest.rows == 9 and dataset.manifest.quarantine.total == 6
    assert all(q["source"].startswith(f"s3://{bucket}/logs/") for q in dataset.quarantined())
    frame = dataset.to_pandas()
    assert sorted(frame["source_id"])[:2] == ["msg_01AaaaTotalTest", "msg_01BbbbEdit"]
    assert sorted(r["id"] for r in dataset.to_ray().take_all()) == sorted(frame["id"])

    # the same result as a local ingest of the same files
    local = tmp_path / "local"
    assert (
        runner.invoke(
            main,
            [
                "ingest",
                str(CLAUDE_CODE / "projects"),
                "--format",
                "claude_code",
                "--out",
                str(local),
                "--executor",
                "local",
            ],
        ).exit_code
        == 0
    )
    assert sorted(Dataset.open(str(local)).to_pandas()["id"]) == sorted(frame["id"])

    again = runner.invoke(main, args)
    assert again.exit_code == 0 and "skipped" in again.output

    # no credential reaches the output or any object written
    objects = all_objects(s3_server, bucket)
    assert any(k.startswith("datasets/traces/part-") for k in objects)
    for text in [first.output, again.output, *[v.decode("utf-8", "replace") for v in objects.values()]]:
        assert S3_SECRET not in text and S3_KEY_ID not in text


def test_unreachable_bucket_is_a_clear_error(s3_server):
    result = CliRunner().invoke(
        main, ["ingest", "s3://no-such-bucket-td/logs", "--format", "jsonl", "--out", "/tmp/x"]
    )
    assert result.exit_code == 2
    assert "error:" in result.output and "Traceback" not in result.output
