"""Ray job entrypoint: a Ray Tune sweep of optimize-and-evaluate runs over a search space.

    ray job submit --runtime-env ray_jobs/runtime_env.yaml -- python ray_jobs/sweep.py --config configs/sweep/cpu-smollm2.yaml

Takes the same arguments as ``tooldistill sweep``.
"""

from _entry import run

if __name__ == "__main__":
    run(["sweep"], "sweep.py")
