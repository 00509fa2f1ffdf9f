"""Ray job entrypoint: the prompt-optimization phases (DSPy, then GEPA with candidates as Ray Tune trials).

    ray job submit --runtime-env ray_jobs/runtime_env.yaml -- python ray_jobs/optimize.py --config configs/optimize/gpt-oss-20b.yaml --phase all

Takes the same arguments as ``tooldistill optimize``.
"""

from _entry import run

if __name__ == "__main__":
    run(["optimize"], "optimize.py")
