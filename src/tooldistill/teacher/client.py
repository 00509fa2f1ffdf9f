"""Sending requests to Claude: the Messages API with workers, the Message Batches API with polling.

Both paths take a list of ``Job``s (one request each, content-addressed by ``key``) and hand every
answer to ``on_answer`` as soon as it arrives; the caller writes it to the request cache before it
counts as done.  The SDK's own retries are switched off (``max_retries=0``) so that every retry
goes through one policy here: ``retry-after`` honoured, the pause shared by all workers, full
jitter otherwise, and a clear failure record once the retries are spent.
"""

from __future__ import annotations

import asyncio
import inspect
import random
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import anthropic

from tooldistill.teacher.limits import RETRYABLE_STATUS, RateLimiter, backoff, retry_after
from tooldistill.teacher.request import params_size

#: Message Batches API limits: requests per batch and bytes per batch.
BATCH_MAX_REQUESTS = 100_000
BATCH_MAX_BYTES = 256 * 1024 * 1024
#: Batch result types worth sending again (an ``errored`` result is retried unless it is the
#: request's own fault, ``invalid_request_error``).
RESUBMIT = {"expired", "canceled", "errored"}


@dataclass(frozen=True)
class Job:
    key: str
    trace_id: str
    sample: int
    params: dict[str, Any]
    #: requests that share a prompt-cache prefix (tools + system)
    prefix: str = ""

    def tokens(self) -> int:
        """A rough input-token estimate for the client-side limiter (4 bytes a token)."""
        return max(1, params_size(self.params) // 4)


@dataclass
class Answer:
    job: Job
    message: dict[str, Any]
    latency_s: float
    attempts: int
    mode: str


@dataclass
class Failure:
    job: Job
    reason: str
    attempts: int
    #: the request itself is at fault (a 4xx other than rate limits): retrying will not help
    permanent: bool


@dataclass
class RetryPolicy:
    retries: int = 6
    base_s: float = 0.5
    cap_s: float = 30.0


@dataclass
class SendStats:
    sent: int = 0
    retries: int = 0
    by_status: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def as_dict(self) -> dict[str, Any]:
        return {"http_requests": self.sent, "retries": self.retries, "retried_on": dict(self.by_status)}


class PermanentError(Exception):
    def __init__(self, reason: str, attempts: int, permanent: bool) -> None:
        super().__init__(reason)
        self.reason, self.attempts, self.permanent = reason, attempts, permanent


def make_client(timeout_s: float, api_key_env: str = "ANTHROPIC_API_KEY") -> anthropic.AsyncAnthropic:
    """An async client that reaches ``ANTHROPIC_BASE_URL`` when set, with SDK retries off."""
    import os

    key = os.environ.get(api_key_env)
    if not key:
        raise ValueError(
            f"no Anthropic API key: set {api_key_env} (for the local test server any value works)"
        )
    return anthropic.AsyncAnthropic(api_key=key, max_retries=0, timeout=timeout_s)


class Caller:
    """One API call with the retry policy and the shared limiter."""

    def __init__(self, limiter: RateLimiter, policy: RetryPolicy, rng: random.Random | None = None) -> None:
        self.limiter = limiter
        self.policy = policy
        self.stats = SendStats()
        self.rng = rng or random.Random()

    async def call(self, fn: Callable[[], Awaitable[Any]], tokens: int = 1) -> tuple[Any, int]:
        """(result, attempts) of ``fn``, retried on rate limits, overload, 5xx and dropped
        connections; raises ``PermanentError`` when retrying will not or did not help."""
        last = ""
        for attempt in range(1, self.policy.retries + 2):
            await self.limiter.acquire(tokens)
            self.stats.sent += 1
            wait: float | None = None
            try:
                result = await fn()
                headers = getattr(result, "headers", None)
                if headers is not None:
                    self.limiter.observe(headers)
                return result, attempt
            except anthropic.APIStatusError as error:
                headers = error.response.headers
                self.limiter.observe(headers)
                last = f"HTTP {error.status_code}: {_short(error)}"
                if error.status_code not in RETRYABLE_STATUS:
                    raise PermanentError(last, attempt, permanent=True) from None
                self.stats.by_status[str(error.status_code)] += 1
                wait = retry_after(headers)
                if wait is not None and error.status_code == 429:
                    self.limiter.pause(wait)
            except anthropic.APIConnectionError as error:
                kind = "timeout" if isinstance(error, anthropic.APITimeoutError) else "connection"
                self.stats.by_status[kind] += 1
                last = f"{kind} error: {error}"
            if attempt <= self.policy.retries:
                self.stats.retries += 1
                if wait is None:
                    wait = backoff(attempt, self.policy.base_s, self.policy.cap_s, self.rng)
                await asyncio.sleep(wait)
        raise PermanentError(f"gave up after {self.policy.retries + 1} attempts: {last}", attempt, False)


def _short(error: anthropic.APIStatusError) -> str:
    body = error.body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return f"{body['error'].get('type')}: {str(body['error'].get('message'))[:200]}"
    return str(error)[:200]


_CREATE_PARAMS: frozenset[str] | None = None


def split_params(
    client: anthropic.AsyncAnthropic, params: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(params the installed SDK's ``messages.create`` names, the rest sent as ``extra_body``).

    SDK releases drop parameters the newest models no longer take (2.x has no ``temperature``);
    the API still accepts them for the models that do, so they travel in the body as given."""
    global _CREATE_PARAMS
    if _CREATE_PARAMS is None:
        _CREATE_PARAMS = frozenset(inspect.signature(client.messages.create).parameters)
    known = {k: v for k, v in params.items() if k in _CREATE_PARAMS}
    return known, {k: v for k, v in params.items() if k not in _CREATE_PARAMS}


def warm_first(jobs: Sequence[Job]) -> tuple[list[Job], dict[str, list[Job]]]:
    """(first job of each prompt-cache prefix, the rest by prefix).

    Sending one request per prefix before its siblings lets the cache be written once and read by
    the rest, instead of every concurrent first wave paying for its own cache write."""
    firsts: list[Job] = []
    rest: dict[str, list[Job]] = defaultdict(list)
    seen: set[str] = set()
    for job in jobs:
        if job.prefix and job.prefix not in seen:
            seen.add(job.prefix)
            firsts.append(job)
        elif job.prefix:
            rest[job.prefix].append(job)
        else:
            firsts.append(job)
    return firsts, rest


async def run_messages(
    client: anthropic.AsyncAnthropic,
    jobs: Sequence[Job],
    caller: Caller,
    concurrency: int,
    on_answer: Callable[[Answer], Awaitable[None]],
    on_failure: Callable[[Failure], Awaitable[None]],
    warm_cache: bool = True,
) -> None:
    """Send every job through the Messages API with ``concurrency`` workers."""
    if not jobs:
        return
    queue: asyncio.Queue[Job | None] = asyncio.Queue()
    firsts, rest = warm_first(jobs) if warm_cache else (list(jobs), {})
    for job in firsts:
        queue.put_nowait(job)
    outstanding = len(jobs)
    workers = max(1, min(concurrency, len(jobs)))
    done = asyncio.Event()

    async def finished(job: Job) -> None:
        nonlocal outstanding
        for sibling in rest.pop(job.prefix, []) if job.prefix else []:
            queue.put_nowait(sibling)
        outstanding -= 1
        if outstanding == 0:
            done.set()
            for _ in range(workers):
                queue.put_nowait(None)

    async def send(job: Job) -> None:
        started = time.perf_counter()

        known, extra = split_params(client, job.params)

        async def request() -> Any:
            return await client.messages.with_raw_response.create(
                **known, extra_body=extra or None, extra_headers={"x-tooldistill-request": job.key}
            )

        try:
            raw, attempts = await caller.call(request, job.tokens())
            message = (await raw.parse()).model_dump(mode="json", exclude_none=True)
        except PermanentError as error:
            await on_failure(Failure(job, error.reason, error.attempts, error.permanent))
            return
        await on_answer(Answer(job, message, time.perf_counter() - started, attempts, "messages"))

    async def worker() -> None:
        while (job := await queue.get()) is not None:
            try:
                await send(job)
            finally:
                await finished(job)

    tasks = [asyncio.create_task(worker()) for _ in range(workers)]
    try:
        await done.wait()
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()


async def _collect(
    client: anthropic.AsyncAnthropic,
    caller: Caller,
    state: dict[str, Any],
    by_key: dict[str, Job],
    counts: dict[str, int],
    settings: BatchSettings,
    on_answer: Callable[[Answer], Awaitable[None]],
    on_failure: Callable[[Failure], Awaitable[None]],
) -> list[Job]:
    """Hand every result of an ended batch on; returns the jobs to resubmit."""
    retry: list[Job] = []
    started = float(state.get("submitted_at", time.time()))
    results, _ = await caller.call(lambda: client.messages.batches.results(state["id"]))
    async for item in results:
        key = item.custom_id
        trace_id, sample = state["jobs"].get(key, [None, None])
        job = by_key.get(key) or (
            Job(key=key, trace_id=trace_id, sample=sample, params={}) if trace_id is not None else None
        )
        if job is None:
            continue
        kind = item.result.type
        counts[kind] += 1
        if kind == "succeeded":
            message = item.result.message.model_dump(mode="json", exclude_none=True)
            await on_answer(Answer(job, message, time.time() - started, state["round"] + 1, "batch"))
            continue
        reason, permanent = kind, False
        if kind == "errored":
            error = getattr(item.result.error, "error", None)
            error_type = getattr(error, "type", "error")
            reason = f"errored: {error_type}: {getattr(error, 'message', '')}"[:300]
            permanent = error_type == "invalid_request_error"
        if permanent or state["round"] >= settings.resubmits or not job.params:
            await on_failure(Failure(job, f"batch result {reason}", state["round"] + 1, permanent))
        else:
            retry.append(job)
    return retry


def chunk_batches(
    jobs: Iterable[Job], max_requests: int = BATCH_MAX_REQUESTS, max_bytes: int = BATCH_MAX_BYTES
) -> Iterator[list[Job]]:
    """Jobs in batches within the API's limits (request count and body size)."""
    batch: list[Job] = []
    size = 0
    for job in jobs:
        # each request also carries its custom_id and JSON framing
        job_size = params_size(job.params) + len(job.key) + 64
        if job_size > max_bytes:
            raise ValueError(
                f"request {job.key} alone is {job_size} bytes, over the batch limit of {max_bytes}"
            )
        if batch and (len(batch) >= max_requests or size + job_size > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(job)
        size += job_size
    if batch:
        yield batch


@dataclass
class BatchSettings:
    poll_s: float = 10.0
    poll_max_s: float = 120.0
    resubmits: int = 3
    max_requests: int = BATCH_MAX_REQUESTS
    max_bytes: int = BATCH_MAX_BYTES


async def run_batches(
    client: anthropic.AsyncAnthropic,
    jobs: Sequence[Job],
    caller: Caller,
    settings: BatchSettings,
    open_batches: list[dict[str, Any]],
    save_batch: Callable[[dict[str, Any]], None],
    drop_batch: Callable[[str], None],
    on_answer: Callable[[Answer], Awaitable[None]],
    on_failure: Callable[[Failure], Awaitable[None]],
    on_event: Callable[[str], None] = lambda _: None,
) -> dict[str, int]:
    """Send ``jobs`` as Message Batches and collect every result.

    ``open_batches`` are batches an earlier run submitted (their state as saved by ``save_batch``):
    they are polled, not sent again.  Expired, canceled and errored requests are resubmitted in a
    new batch up to ``settings.resubmits`` times, then reported through ``on_failure``."""
    by_key = {job.key: job for job in jobs}
    counts: dict[str, int] = defaultdict(int)

    async def submit(batch: list[Job], round_: int) -> dict[str, Any]:
        requests: list[Any] = [{"custom_id": job.key, "params": job.params} for job in batch]
        created, _ = await caller.call(lambda: client.messages.batches.create(requests=requests))
        state = {
            "id": created.id,
            "round": round_,
            "submitted_at": time.time(),
            "jobs": {job.key: [job.trace_id, job.sample] for job in batch},
        }
        save_batch(state)  # before anything else: a killed run must find this batch again
        counts["batches"] += 1
        on_event(f"submitted batch {created.id} ({len(batch)} requests, round {round_})")
        return state

    pending: list[dict[str, Any]] = list(open_batches)
    in_open = {key for state in pending for key in state["jobs"]}
    fresh = [job for job in jobs if job.key not in in_open]
    for batch in chunk_batches(fresh, settings.max_requests, settings.max_bytes):
        pending.append(await submit(batch, 0))

    delay = settings.poll_s
    while pending:
        still: list[dict[str, Any]] = []
        retry_by_round: dict[int, list[Job]] = defaultdict(list)
        for state in pending:
            batch_id: str = state["id"]
            batch, _ = await caller.call(lambda b=batch_id: client.messages.batches.retrieve(b))  # type: ignore[misc]
            if batch.processing_status != "ended":
                still.append(state)
                continue
            retry = await _collect(client, caller, state, by_key, counts, settings, on_answer, on_failure)
            # a rerun that collects an ended batch again must not resubmit what an earlier
            # collection already resubmitted
            elsewhere = {key for other in pending + still if other is not state for key in other["jobs"]}
            retry_by_round[state["round"] + 1].extend(job for job in retry if job.key not in elsewhere)
            if not retry_by_round[state["round"] + 1]:
                drop_batch(state["id"])
                continue
            # resubmissions from every batch that ended in this pass go out together
            state["collected"] = True
        for round_, retry in sorted(retry_by_round.items()):
            if retry:
                counts["resubmitted"] += len(retry)
                for batch_jobs in chunk_batches(retry, settings.max_requests, settings.max_bytes):
                    still.append(await submit(batch_jobs, round_))
        for state in pending:
            if state.get("collected"):
                drop_batch(state["id"])
        pending = still
        if pending:
            await asyncio.sleep(delay)
            delay = min(settings.poll_max_s, delay * 1.5)
    return dict(counts)
