"""Ray job entrypoint: a curation stage (embed, semdedup, car, split, or all) on the cluster.

    ray job submit --runtime-env ray_jobs/runtime_env.yaml -- python ray_jobs/curate.py all s3://BUCKET/run/traces --out s3://BUCKET/run/curate --executor ray

Takes the same arguments as ``tooldistill curate``.
"""

from _entry import run

if __name__ == "__main__":
    run(["curate"], "curate.py")
