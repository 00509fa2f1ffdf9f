"""Ray job entrypoint for the whole pipeline from one config.

    ray job submit --runtime-env ray_jobs/runtime_env.yaml -- \
        python ray_jobs/pipeline.py configs/demo.yaml --out runs/demo

Takes the same arguments as ``tooldistill run``.
"""

import sys

from tooldistill.cli import main

if __name__ == "__main__":
    main(["run", *sys.argv[1:]], prog_name="ray_jobs/pipeline.py")
