"""Ray job entrypoint: read teacher logs into a traces dataset (shards on the cluster's workers).

    ray job submit --runtime-env ray_jobs/runtime_env.yaml -- python ray_jobs/ingest.py SOURCE... --format FORMAT --out s3://BUCKET/run/traces

Takes the same arguments as ``tooldistill ingest``.
"""

from _entry import run

if __name__ == "__main__":
    run(["ingest", "--executor", "ray"], "ingest.py")
