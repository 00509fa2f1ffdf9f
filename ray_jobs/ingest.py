"""Ray job entrypoint for the ingest stage.

    ray job submit --runtime-env ray_jobs/runtime_env.yaml -- \
        python ray_jobs/ingest.py SOURCE... --format FORMAT --out s3://bucket/datasets/traces

Takes the same arguments as ``tooldistill ingest``.  Under ``ray job submit`` the driver runs on
the cluster, ``RAY_ADDRESS`` is set, and the shards are read by the cluster's workers.
"""

import sys

from tooldistill.cli import main

if __name__ == "__main__":
    main(["ingest", "--executor", "ray", *sys.argv[1:]], prog_name="ray_jobs/ingest.py")
