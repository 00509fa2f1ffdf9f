"""Ray job entrypoint: render a run folder's report (Markdown and HTML with plots).

    ray job submit --runtime-env ray_jobs/runtime_env.yaml -- python ray_jobs/report.py runs/demo

Takes the same arguments as ``tooldistill report``.
"""

from _entry import run

if __name__ == "__main__":
    run(["report"], "report.py")
