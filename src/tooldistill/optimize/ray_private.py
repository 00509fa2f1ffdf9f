"""The one place tooldistill reaches into private Ray names: how many idle trial actors Tune keeps.

GEPA's candidate evaluations are trials of one long-lived Tune experiment with
``reuse_actors=True`` (``tune_eval.TuneEvaluator``).  Between two GEPA steps (the reflection calls
come between them) no trial is pending, and Tune then keeps **one** idle trial actor: its
controller's cache is ``_ObjectCache(may_keep_one=True)``, which keeps as many idle actors as
there are trials waiting for one, or one when none waits.  The other actors stop, and the next
step's trials queue for the one actor kept or wait for fresh ones (a fresh actor imports
``ray.tune``: about 1.6 s of CPU).  Measured on the 2-core build machine, 4 trials per step with
an idle second between steps: 0.2 s a step with the actors kept, 1.3 to 5.5 s with Tune's cache
(the trials ran one after another on the one actor kept).

No public API says how many idle actors to keep (``TuneConfig.reuse_actors`` is a bool, and no
``TUNE_*`` variable reaches the cache), and no public hook hands over the controller.  So
:class:`KeepIdleActors` uses two private names of Ray Tune:

- ``ray.tune.utils.object_cache._ObjectCache``, subclassed (:func:`warm_cache_class`): the first
  time the cache sees a resource shape it raises the wanted count of that shape by ``floor``
  (``increase_max(key, by)``), so ``cache_object(key, obj)`` keeps up to ``floor`` idle actors
  beyond what waiting trials want, and ``flush_cached_objects`` leaves them;
- ``ray.tune.execution.tune_controller._ObjectCache``, the name ``TuneController.__init__`` builds
  its cache from: swapped for the subclass from just before ``Tuner.fit`` until Tune calls the
  callback's ``setup`` (a public ``tune.Callback`` hook, called right after the controller is
  built), so only our experiment's controller gets it.

:func:`problems` checks every one of those names and signatures.  On a Ray where one is missing
or changed, the evaluator logs a warning and runs with Tune's own cache (trials still run, slower),
and ``tests/test_tune_eval.py`` fails, naming the Ray version.
"""

from __future__ import annotations

import inspect
import logging
import threading
import uuid
from typing import Any

from ray import tune

log = logging.getLogger(__name__)

#: What each private method must accept (its parameters after ``self``, in order).
_SIGNATURES = {
    "__init__": ("may_keep_one",),
    "cache_object": ("key", "obj"),
    "increase_max": ("key", "by"),
    "flush_cached_objects": ("force_all",),
}

#: Held from ``install`` until ``release``: one swap at a time in this process.
_swap_lock = threading.Lock()
#: While swapped: the swap's token, the module and Tune's own class (guarded by ``_state_lock``).
_swapped: list[tuple[str, Any, type]] = []
_state_lock = threading.Lock()
_warned: list[bool] = []


def problems() -> list[str]:
    """What this Ray lacks of the private names the warm actor cache needs (empty: all there)."""
    try:
        from ray.tune.execution import tune_controller
        from ray.tune.utils import object_cache
    except ImportError as error:
        return [f"cannot import Tune's controller or object cache: {error}"]
    cache = getattr(object_cache, "_ObjectCache", None)
    if not isinstance(cache, type):
        return ["ray.tune.utils.object_cache._ObjectCache is gone"]
    found: list[str] = []
    if getattr(tune_controller, "_ObjectCache", None) is not cache:
        found.append("ray.tune.execution.tune_controller no longer names _ObjectCache")
    for method, wanted in _SIGNATURES.items():
        function = getattr(cache, method, None)
        if function is None:
            found.append(f"_ObjectCache.{method} is gone")
            continue
        names = tuple(list(inspect.signature(function).parameters)[1 : 1 + len(wanted)])
        if names != wanted:
            found.append(f"_ObjectCache.{method} takes {names}, not {wanted}")
    controller: Any = getattr(tune_controller, "TuneController", None)
    try:
        source = inspect.getsource(controller.__init__)
    except (AttributeError, OSError, TypeError):
        found.append("cannot read TuneController.__init__")
    else:
        if "_ObjectCache(" not in source:
            found.append("TuneController.__init__ no longer builds its actor cache from _ObjectCache")
    return found


def warm_cache_class(floor: int) -> type:
    """Tune's actor cache, keeping up to ``floor`` idle actors per resource shape besides those
    that waiting trials want."""
    from ray.tune.utils.object_cache import _ObjectCache

    class WarmActorCache(_ObjectCache):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.floored: set[Any] = set()

        def cache_object(self, key: Any, obj: Any) -> bool:
            if key not in self.floored:
                self.floored.add(key)
                self.increase_max(key, floor)
            return bool(super().cache_object(key, obj))

    return WarmActorCache


class KeepIdleActors(tune.Callback):
    """Keeps ``floor`` idle trial actors in the controller of the next Tune experiment started.

    ``install()`` before ``Tuner.fit``, with this callback in the experiment's ``RunConfig``; Tune
    calls ``setup`` once it has built the controller, which puts Tune's class back.  Call
    ``release()`` as well when ``fit`` ends (it may fail before building a controller)."""

    def __init__(self, floor: int) -> None:
        self.floor = max(1, floor)
        #: Names this callback's swap (Tune may call ``setup`` on a copy of the callback).
        self.token = uuid.uuid4().hex

    def install(self, timeout_s: float = 60.0) -> bool:
        """Swap the cache class; False, with a warning, where this Ray lacks the private names
        (trials still run, with Tune's own cache) or another swap did not end in ``timeout_s``."""
        found = problems()
        if found:
            if not _warned:
                _warned.append(True)
                log.warning(
                    "Ray Tune's private actor cache changed (%s): trial actors are not kept warm "
                    "between GEPA steps, so steps start slower",
                    "; ".join(found),
                )
            return False
        if not _swap_lock.acquire(timeout=timeout_s):
            log.warning("another Tune experiment is starting: trial actors are not kept warm")
            return False
        from ray.tune.execution import tune_controller

        with _state_lock:
            _swapped.append((self.token, tune_controller, tune_controller._ObjectCache))
            setattr(tune_controller, "_ObjectCache", warm_cache_class(self.floor))  # noqa: B010
        return True

    def setup(self, *args: Any, **info: Any) -> None:
        self.release()

    def release(self) -> None:
        """Put Tune's own cache class back if this callback's swap is in place (else a no-op);
        controllers already built keep the cache they have."""
        with _state_lock:
            if _swapped and _swapped[0][0] == self.token:
                _, module, original = _swapped.pop()
                setattr(module, "_ObjectCache", original)  # noqa: B010
                _swap_lock.release()
