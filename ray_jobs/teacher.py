"""Ray job entrypoint: ask Claude for answers to every trace (Messages or Message Batches API).

    ray job submit --runtime-env ray_jobs/runtime_env.yaml -- python ray_jobs/teacher.py s3://BUCKET/run/traces --model claude-sonnet-4-5 --samples 3 --batch --out s3://BUCKET/run/teacher

Takes the same arguments as ``tooldistill teacher capture``.
"""

from _entry import run

if __name__ == "__main__":
    run(["teacher", "capture"], "teacher.py")
