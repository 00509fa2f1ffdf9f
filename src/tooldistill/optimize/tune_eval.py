"""Candidate evaluations as Ray Tune trials, several side by side.

GEPA hands us, per step, a list of (candidate, examples) pairs: the parents on their minibatches,
the proposed children on the same minibatches, the accepted children on the validation set.  Each
pair becomes **one Ray Tune trial** (``evaluate_trial``): it runs the candidate's prompt on its
examples, at most ``requests_per_trial`` student requests at a time, and reports the per-example
outcomes.  The trials of a step run at the same time, up to ``max_concurrent_trials``.

Why one long-lived Tune experiment and not one ``Tuner.fit`` per step: a Tune trial is an actor,
and a fresh actor process imports ``ray.tune`` (about 1.6 s of CPU here).  Eight of them on a
2-core machine took 12 s before the first trial started, for every step.  So one experiment runs
for the whole optimization, fed by a ``Searcher`` that suggests a trial for each queued pair
(``_JobBoard``), with ``reuse_actors=True`` (public: a finished trial's actor runs the next
trial of the same resources).  Between GEPA steps (reflection calls come between them) Tune keeps
only one idle actor, and no public setting changes that; ``ray_private.KeepIdleActors`` makes our
experiment's controller keep ``max_concurrent_trials`` of them.  It is the only use of private Ray
names in tooldistill, checked by ``ray_private.problems()`` (a Ray without them: a warning, trials
still run, only slower).  A warm-up of ``max_concurrent_trials`` trials that wait for each other
(``_Barrier``) brings every actor up once at the start.

A trial's config names its job, candidate (a hash of the prompt) and example count, which is what
Tune's loggers and callbacks (MLflow's among them) record per trial; the payload itself (settings,
prompt, traces, and the student's API key as the driver read it) waits in a named actor of the
evaluator's (``_PayloadStore``) that the trial takes it from, so no trace is copied into Tune's
experiment state or a tracking server, no key is written anywhere, and a trial on a node whose
environment lacks the key still has it.

On a cluster the trials spread over the nodes like any Tune trials (``cpus_per_trial``, or
``resources_per_trial`` for custom resources).
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
from ray import tune
from ray.tune.search import Searcher

from tooldistill.optimize.ray_private import KeepIdleActors
from tooldistill.optimize.student import (
    Outcome,
    Prompt,
    StudentSettings,
    run_batch,
    trace_from_wire,
    trace_to_wire,
)
from tooldistill.raycluster import ensure_ray
from tooldistill.schema import Trace

#: Payload stores this worker process has looked up (Tune reuses the process for later trials).
_STORES: dict[str, Any] = {}


def evaluate_trial(config: dict[str, Any]) -> None:
    """One Tune trial: one candidate prompt on its examples (or a warm-up that waits for the rest).

    The trial's config holds only what describes it (job id, candidate hash, example count), which
    is what Tune's loggers and callbacks such as MLflow's record; the prompt, settings and traces
    come from the evaluator's payload store.
    """
    started = time.time()
    name = config["store"]
    if name not in _STORES:
        _STORES[name] = ray.get_actor(name)
    payload = json.loads(ray.get(_STORES[name].take.remote(config["job"])))
    if payload.get("warmup"):
        barrier = ray.get_actor(payload["warmup"])
        ray.get(barrier.arrive.remote(), timeout=120)
        tune.report({"score": 0.0, "started": started, "ended": time.time(), "outcomes": "[]"})
        return
    settings = StudentSettings.model_validate(payload["settings"])
    prompt = Prompt.from_json(payload["prompt"])
    traces = [trace_from_wire(row) for row in payload["traces"]]
    outcomes = run_batch(
        traces, prompt, settings, concurrency=int(payload["requests"]), api_key=payload.get("api_key")
    )
    mean = sum(o.score for o in outcomes) / len(outcomes) if outcomes else 0.0
    tune.report(
        {
            "score": mean,
            "n": len(outcomes),
            "started": started,
            "ended": time.time(),
            "outcomes": json.dumps([o.to_json() for o in outcomes]),
            "node": ray.get_runtime_context().get_node_id(),
        }
    )


@ray.remote(num_cpus=0)
class _PayloadStore:
    """Each queued trial's payload until the trial takes it (a named actor of the evaluator's)."""

    def __init__(self) -> None:
        self.payloads: dict[str, str] = {}

    def put(self, payloads: dict[str, str]) -> None:
        self.payloads.update(payloads)

    def take(self, job_id: str) -> str:
        return self.payloads.pop(job_id)


@ray.remote(num_cpus=0)
class _Barrier:
    """Releases the warm-up trials once all of them have an actor."""

    def __init__(self, parties: int) -> None:
        import asyncio

        self.parties = parties
        self.arrived = 0
        self.event = asyncio.Event()

    async def arrive(self) -> None:
        self.arrived += 1
        if self.arrived >= self.parties:
            self.event.set()
        await self.event.wait()


@dataclass
class _Job:
    #: What the trial's config shows of it (Tune's loggers and callbacks record the config).
    params: dict[str, Any]
    done: threading.Event = field(default_factory=threading.Event)
    result: dict[str, Any] | None = None
    failed: bool = False


@dataclass
class _BoardState:
    pending: queue.Queue[tuple[str, _Job]] = field(default_factory=queue.Queue)
    jobs: dict[str, _Job] = field(default_factory=dict)
    by_trial: dict[str, str] = field(default_factory=dict)
    closed: bool = False


#: How long an idle searcher waits for the next job before letting Tune's loop go round.
_IDLE_WAIT_S = 30.0

#: Board state lives here, keyed by id, because Tune pickles its searcher (queues and events do not
#: pickle); a copy unpickled in this process still finds its state.
_BOARDS: dict[str, _BoardState] = {}


class _JobBoard(Searcher):
    """A Tune searcher that suggests one trial per queued (candidate, examples) job."""

    def __init__(self) -> None:
        super().__init__(metric="score", mode="max")
        self.board_id = uuid.uuid4().hex
        _BOARDS[self.board_id] = _BoardState()

    @property
    def state(self) -> _BoardState:
        return _BOARDS[self.board_id]

    def submit(self, job_id: str, params: dict[str, Any]) -> _Job:
        """Queue a trial whose payload is already in the store under ``job_id``."""
        job = _Job(params)
        self.state.jobs[job_id] = job
        self.state.pending.put((job_id, job))
        return job

    def suggest(self, trial_id: str) -> Any:
        state = _BOARDS.get(self.board_id)
        if state is None:
            return Searcher.FINISHED
        # With no trial running, Tune's controller polls an empty searcher once a second
        # (``_update_trial_queue`` sleeps 1 s per poll), which would add up to a second to every
        # GEPA step.  So when nothing runs, wait here for the next job instead; while trials run,
        # never block (the controller must keep collecting their results).
        idle = len(state.jobs) == state.pending.qsize()
        deadline = time.monotonic() + (_IDLE_WAIT_S if idle else 0.0)
        while True:
            try:
                job_id, job = state.pending.get(timeout=0.05) if idle else state.pending.get_nowait()
                break
            except queue.Empty:
                if state.closed:
                    return Searcher.FINISHED
                if time.monotonic() >= deadline:
                    return None
        state.by_trial[trial_id] = job_id
        return {"job": job_id, **job.params}

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        state = _BOARDS.get(self.board_id)
        if state is None or trial_id not in state.by_trial:
            return
        job = state.jobs.pop(state.by_trial.pop(trial_id))
        job.result, job.failed = result, error or result is None
        job.done.set()


@dataclass
class TrialRecord:
    """When one trial ran, for the record and for checking that trials overlap."""

    candidate: str
    examples: int
    started: float
    ended: float
    score: float
    #: The Ray node the trial ran on (its node id): where a cluster placed it.
    node: str | None = None


class TuneEvaluator:
    """Runs (prompt, traces) pairs as Tune trials of one long-lived experiment."""

    def __init__(
        self,
        settings: StudentSettings,
        storage_path: str,
        *,
        max_concurrent_trials: int = 8,
        requests_per_trial: int = 4,
        cpus_per_trial: float = 0.25,
        resources_per_trial: dict[str, float] | None = None,
        warm_start: bool = True,
        name: str | None = None,
        callbacks: Sequence[Any] = (),
    ) -> None:
        self.settings = settings
        self.storage_path = os.path.abspath(storage_path) if "://" not in storage_path else storage_path
        self.max_concurrent_trials = max(1, max_concurrent_trials)
        self.requests_per_trial = max(1, requests_per_trial)
        self.resources = resources_per_trial or {"cpu": cpus_per_trial}
        self.warm_start = warm_start
        #: Ray Tune callbacks (e.g. MLflow's logger) for the candidates' experiment
        self.callbacks = list(callbacks)
        self.name = name or f"candidates-{uuid.uuid4().hex[:6]}"
        self.trials: list[TrialRecord] = []
        self._board: _JobBoard | None = None
        self._store: Any = None
        self._store_name = f"tooldistill-payloads-{uuid.uuid4().hex[:8]}"
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        ensure_ray()
        # a searcher other than the default may otherwise have only one trial pending at a time
        os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", str(self.max_concurrent_trials))
        self._board = _JobBoard()
        self._store = _PayloadStore.options(name=self._store_name).remote()  # type: ignore[attr-defined]
        keep = KeepIdleActors(self.max_concurrent_trials)
        tuner = tune.Tuner(
            tune.with_resources(evaluate_trial, self.resources),
            tune_config=tune.TuneConfig(
                search_alg=self._board,
                num_samples=-1,
                max_concurrent_trials=self.max_concurrent_trials,
                reuse_actors=True,
                trial_dirname_creator=lambda trial: trial.trial_id,
            ),
            run_config=tune.RunConfig(
                storage_path=self.storage_path,
                name=self.name,
                verbose=0,
                log_to_file=False,
                callbacks=[*self.callbacks, keep],
            ),
        )

        def fit() -> None:
            try:
                tuner.fit()
            except BaseException as error:  # noqa: BLE001 - reported to the waiting caller
                self._error = error
            finally:
                keep.release()  # in case fit ended before Tune built its controller

        # the controller that ``fit`` builds keeps our actors; ``keep.setup`` undoes the swap
        keep.install()
        self._thread = threading.Thread(target=fit, name="tune-candidates", daemon=True)
        self._thread.start()
        if self.warm_start and self.max_concurrent_trials > 1:
            actor_name = f"tooldistill-warm-{uuid.uuid4().hex[:8]}"
            barrier = _Barrier.options(name=actor_name).remote(self.max_concurrent_trials)  # type: ignore[attr-defined]
            try:
                ray.get(barrier.__ray_ready__.remote())  # the actor exists before trials look it up
                warmup = json.dumps({"warmup": actor_name})
                self._wait(self._submit([(warmup, {"warmup": True})] * self.max_concurrent_trials))
            finally:
                ray.kill(barrier)

    def _submit(self, items: Sequence[tuple[str, dict[str, Any]]]) -> list[_Job]:
        """Store the payloads (one round trip), then queue one trial per item."""
        assert self._board is not None and self._store is not None
        ids = [uuid.uuid4().hex[:12] for _ in items]
        ray.get(
            self._store.put.remote({job_id: payload for job_id, (payload, _) in zip(ids, items, strict=True)})
        )
        return [
            self._board.submit(job_id, {"store": self._store_name, **params})
            for job_id, (_, params) in zip(ids, items, strict=True)
        ]

    def _wait(self, jobs: Sequence[_Job]) -> None:
        for job in jobs:
            while not job.done.wait(0.5):
                if self._thread is None or not self._thread.is_alive():
                    raise RuntimeError(f"the Tune experiment stopped: {self._error!r}")

    def evaluate(self, items: Sequence[tuple[Prompt, Sequence[Trace]]]) -> list[list[Outcome]]:
        """Outcomes per item, in order; each item runs as one trial, the items side by side."""
        if not items:
            return []
        self.start()
        assert self._board is not None
        settings = self.settings.model_dump(mode="json")
        # the student's key as this process sees it: trial workers (other nodes, or Ray workers
        # started before the variable was set) may not have it; the payload is never recorded
        api_key = os.environ.get(self.settings.api_key_env)
        jobs = self._submit(
            [
                (
                    json.dumps(
                        {
                            "settings": settings,
                            "prompt": prompt.to_json(),
                            "traces": [trace_to_wire(t) for t in traces],
                            "requests": self.requests_per_trial,
                            "api_key": api_key,
                        },
                        ensure_ascii=False,
                    ),
                    {"candidate": _short_hash(prompt.system), "examples": len(traces)},
                )
                for prompt, traces in items
            ]
        )
        self._wait(jobs)
        results: list[list[Outcome]] = []
        for (prompt, traces), job in zip(items, jobs, strict=True):
            if job.failed or job.result is None:
                reason = "trial failed (see the Tune experiment's error log)"
                results.append([Outcome(t.id, 0.0, False, reason, error=reason) for t in traces])
                continue
            outcomes = [Outcome.from_json(o) for o in json.loads(job.result["outcomes"])]
            self.trials.append(
                TrialRecord(
                    candidate=_short_hash(prompt.system),
                    examples=len(traces),
                    started=float(job.result["started"]),
                    ended=float(job.result["ended"]),
                    score=float(job.result["score"]),
                    node=job.result.get("node"),
                )
            )
            results.append(outcomes)
        return results

    def close(self) -> None:
        if self._board is not None:
            self._board.state.closed = True
        if self._thread is not None:
            self._thread.join(timeout=60)
        if self._board is not None:
            _BOARDS.pop(self._board.board_id, None)
        if self._store is not None:
            ray.kill(self._store)
        self._thread = None
        self._board = None
        self._store = None

    def __enter__(self) -> TuneEvaluator:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()


def _short_hash(text: str) -> str:
    from tooldistill.schema import content_hash

    return content_hash(text, 8)


def max_overlap(trials: Sequence[TrialRecord]) -> int:
    """The largest number of trials running at one moment."""
    events = sorted([(t.started, 1) for t in trials] + [(t.ended, -1) for t in trials])
    running = best = 0
    for _, step in events:
        running += step
        best = max(best, running)
    return best
