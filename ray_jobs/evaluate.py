"""Ray job entrypoint: measure the student against the teacher's calls on a dataset.

    ray job submit --runtime-env ray_jobs/runtime_env.yaml -- python ray_jobs/evaluate.py s3://BUCKET/run/curate/split/test --endpoint http://HEAD:8000/v1 --model gpt-oss-20b --out s3://BUCKET/run/eval

Takes the same arguments as ``tooldistill evaluate``.
"""

from _entry import run

if __name__ == "__main__":
    run(["evaluate"], "evaluate.py")
