"""What every entrypoint in ``ray_jobs/`` does: run one ``tooldistill`` command inside a Ray job.

Under ``ray job submit`` the driver runs on the cluster with ``RAY_ADDRESS`` set, so every stage
connects to that cluster instead of starting its own Ray.
"""

from __future__ import annotations

import sys


def run(command: list[str], script: str) -> None:
    from tooldistill.cli import main

    main([*command, *sys.argv[1:]], prog_name=f"ray_jobs/{script}")
