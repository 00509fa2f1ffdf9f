"""One way to start or join Ray for every part of tooldistill.

The pipeline, the curate executor, the student's Ray Serve deployment, Ray Train fine-tuning and
the Ray Tune evaluators all call :func:`ensure_ray`; the first call in a process decides the
cluster (an address from the run config or ``RAY_ADDRESS``, else a local instance with the
configured CPUs), and later calls join it unchanged.  Ray's own lines (its INFO log, the workers'
output forwarded to the driver) go to the run's ``run.log`` under ``tooldistill run``
(``console.chatter_to``), to the console with ``tooldistill --verbose`` (``TOOLDISTILL_VERBOSE``),
and are left out elsewhere (tests, library use): Ray's session logs still hold them.
"""

from __future__ import annotations

import logging
import os
from typing import Any

#: Set to a non-empty value (``tooldistill --verbose`` does) to let Ray talk on the console.
VERBOSE_ENV = "TOOLDISTILL_VERBOSE"


def verbose() -> bool:
    return bool(os.environ.get(VERBOSE_ENV))


def quiet() -> None:
    """Keep Ray's chatter off the console: its C++ core (driver, raylet and workers) logs errors
    only, and the INFO lines of Ray's Python loggers (Ray Data's execution plans, Serve's and
    Train's start-up lines) are not shown; Ray Data still writes them to ``ray-data.log``."""
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
    for name in ("ray", "ray.data", "ray.serve", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)


#: The run config's cluster (``configure``), used by a first call that names none.
_configured: dict[str, Any] = {}


def configure(address: str | None = None, num_cpus: int | None = None) -> None:
    """Say which cluster this process uses (the run config's ``ray`` section) without starting
    it: whichever part of the run needs Ray first (ingest, curation, the student, a Tune trial)
    starts or joins that one."""
    _configured.update(address=address, num_cpus=num_cpus)


def ensure_ray(address: str | None = None, num_cpus: int | None = None, **extra: Any) -> None:
    """Start or join Ray once per process; a second call (with any arguments) is a no-op.

    Without arguments: the cluster given to ``configure``, else ``RAY_ADDRESS``, else a local one."""
    import ray

    if ray.is_initialized():
        return
    address = address or _configured.get("address")
    num_cpus = num_cpus or _configured.get("num_cpus")
    from tooldistill.console import chatter_log

    # Ray's lines are wanted where someone reads them: the console with --verbose, or the run's
    # log while ``tooldistill run`` sends the libraries' output there; else nowhere.
    keep = verbose() or chatter_log() is not None
    if not keep:
        quiet()
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": keep,
        "logging_level": logging.INFO if keep else logging.WARNING,
        "ignore_reinit_error": True,
    }
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        kwargs["address"] = address
    elif num_cpus:
        kwargs["num_cpus"] = num_cpus
    kwargs.update(extra)
    ray.init(**kwargs)
