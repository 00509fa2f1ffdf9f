"""Ray job entrypoint: the whole pipeline from one config.

    ray job submit --runtime-env ray_jobs/runtime_env.yaml -- \
        python ray_jobs/pipeline.py configs/gpt-oss-20b-aws.yaml --out s3://BUCKET/runs/gpt-oss-20b

or ``tooldistill submit configs/gpt-oss-20b-aws.yaml --out ...``, which adds the git sha to the
submission id and follows the logs.  Takes the same arguments as ``tooldistill run``.
"""

from _entry import run

if __name__ == "__main__":
    run(["run"], "pipeline.py")
