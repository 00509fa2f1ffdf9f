"""Ray job entrypoint: deploy the student (a serve profile) on the cluster and keep it up.

    ray job submit --runtime-env ray_jobs/runtime_env.yaml -- python ray_jobs/serve.py --config configs/serve/gpt-oss-20b.yaml --detach

Takes the same arguments as ``tooldistill serve``.
"""

from _entry import run

if __name__ == "__main__":
    run(["serve"], "serve.py")
