"""Candidate evaluations as Tune trials (``optimize.tune_eval``) and the one private Ray use behind
them (``optimize.ray_private``): the trial actors stay warm between GEPA steps.

If a Ray upgrade renames or changes what ``ray_private`` relies on, the first test fails and names
what changed; the evaluator itself then logs a warning and runs with Tune's own cache (trials still
run, a step starts slower).  The last test runs a real evaluator on the session's Ray instance.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import ray

from tooldistill.optimize import ray_private
from tooldistill.optimize.student import Prompt, StudentSettings, run_batch
from tooldistill.optimize.testing import KEY_PHRASE, StudentServer, make_traces
from tooldistill.optimize.tune_eval import TuneEvaluator, max_overlap


def test_the_private_ray_names_the_warm_actor_cache_needs_are_there() -> None:
    found = ray_private.problems()
    assert found == [], (
        f"Ray {ray.__version__} changed what optimize/ray_private.py relies on: {found}. "
        "GEPA's Tune trials still run, but their actors are no longer kept between steps."
    )


def test_tunes_own_cache_keeps_one_idle_actor_and_ours_keeps_the_floor() -> None:
    """What the private cache is for: with no trial waiting, Tune keeps one idle actor (if a Ray
    release keeps more on its own, the warm cache may be dropped)."""
    from ray.tune.utils.object_cache import _ObjectCache

    stock = _ObjectCache(may_keep_one=True)
    assert [stock.cache_object("shape", n) for n in range(3)] == [True, False, False]

    warm = ray_private.warm_cache_class(3)(may_keep_one=True)
    assert [warm.cache_object("shape", n) for n in range(4)] == [True, True, True, False]
    assert list(warm.flush_cached_objects()) == []  # the idle gap between two steps keeps all three
    warm.increase_max("shape", 2)  # two trials staged: two more may wait for them
    assert [warm.cache_object("shape", n) for n in (3, 4, 5)] == [True, True, False]
    warm.decrease_max("shape", 2)
    assert list(warm.flush_cached_objects()) == [0, 1]  # back to the floor, oldest first
    assert warm.pop_cached_object("shape") == 2
    assert sorted(warm.flush_cached_objects(force_all=True)) == [3, 4]  # the experiment's end
    assert warm.num_cached_objects == 0


def test_the_swap_lasts_until_tune_built_its_controller_and_never_happens_on_a_changed_ray(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ray.tune.execution import tune_controller
    from ray.tune.utils.object_cache import _ObjectCache

    keep = ray_private.KeepIdleActors(4)
    assert keep.install()
    assert tune_controller._ObjectCache is not _ObjectCache
    assert issubclass(tune_controller._ObjectCache, _ObjectCache)
    # a second experiment starting meanwhile runs with Tune's cache rather than wait long
    assert not ray_private.KeepIdleActors(2).install(timeout_s=0.05)
    ray_private.KeepIdleActors(2).release()  # another swap's release leaves this one alone
    assert tune_controller._ObjectCache is not _ObjectCache
    keep.setup(total_num_samples=-1)  # Tune: the controller is built
    assert tune_controller._ObjectCache is _ObjectCache
    keep.release()  # and again when fit ends: a no-op

    monkeypatch.setattr(ray_private, "problems", lambda: ["_ObjectCache is gone"])
    assert not ray_private.KeepIdleActors(4).install()
    assert tune_controller._ObjectCache is _ObjectCache


@pytest.fixture()
def slow_student() -> Iterator[StudentServer]:
    with StudentServer(latency_s=0.5) as student:
        yield student


def _trial_actor_pids() -> set[int]:
    """This process's Ray trial actors (the session's Ray instance runs under this process)."""
    import psutil

    pids = set()
    for process in psutil.Process().children(recursive=True):
        try:
            command = process.cmdline()
        except psutil.Error:
            continue
        if command and command[0].startswith("ray::ImplicitFunc"):
            pids.add(process.pid)
    return pids


def test_trial_actors_stay_warm_across_an_idle_gap_between_steps(
    tmp_path: Any, ray_cluster: None, slow_student: StudentServer
) -> None:
    """After the warm-up, a step that comes after an idle gap (GEPA's reflection) runs its trials
    side by side on the actors already up: no new actor, no queue for the one actor Tune keeps."""
    from ray.tune.execution import tune_controller
    from ray.tune.utils.object_cache import _ObjectCache

    pytest.importorskip("psutil")
    settings = StudentSettings(endpoint=slow_student.url, retries=0)
    traces = make_traces(3)
    pairs = [(Prompt(f"{KEY_PHRASE} {n}"), traces[n : n + 1]) for n in range(3)]
    with TuneEvaluator(
        settings, str(tmp_path / "tune"), max_concurrent_trials=3, requests_per_trial=1, cpus_per_trial=0.25
    ) as evaluator:
        evaluator.start()
        assert tune_controller._ObjectCache is _ObjectCache  # only our controller got the warm cache
        first = evaluator.evaluate(pairs)
        warm = _trial_actor_pids()
        assert len(warm) >= 3, f"{len(warm)} trial actors kept after a step: the warm cache is not in place"

        seen: set[int] = set()
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                seen.update(_trial_actor_pids())
                time.sleep(0.05)

        time.sleep(2.0)  # longer than a turn of Tune's loop: Tune's cache would stop all but one
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            second = evaluator.evaluate(pairs)
        finally:
            stop.set()
            watcher.join()
        step = evaluator.trials[-3:]
    assert seen - warm == set(), "the step after the gap started new trial actors"
    assert max_overlap(step) == 3, [(t.started, t.ended) for t in step]
    # the same verdicts as the same pairs asked from here (the threads executor's way)
    direct = [run_batch(list(t), p, settings) for p, t in pairs]
    assert _verdicts(first) == _verdicts(second) == _verdicts(direct)
    assert [o.score for batch in first for o in batch] == [1.0, 1.0, 1.0]


def _verdicts(batches: Any) -> list[list[dict[str, Any]]]:
    """Each outcome as recorded, less its latency."""
    return [[{k: v for k, v in o.to_json().items() if k != "latency_s"} for o in batch] for batch in batches]
