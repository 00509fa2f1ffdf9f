"""Client-side rate limiting and retries for the Anthropic API.

``RateLimiter`` is a token bucket on requests and input tokens per minute that also learns from the
API: every answer's ``anthropic-ratelimit-*`` headers say how much is left and when it refills, so
when the remaining count hits zero the limiter holds every worker until the reset time; a 429's
``retry-after`` pauses all workers, not only the one that was refused.

``backoff`` is exponential with full jitter, so many workers refused at once do not come back at
once.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

#: Statuses worth retrying: rate limited, overloaded (529), server errors, request timeout.
RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
BURST_SECONDS = 5.0


def backoff(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry ``attempt`` (1-based): uniform in [0, min(cap, base * 2**attempt))."""
    return (rng or random).uniform(0, min(cap, base * 2 ** (attempt - 1)))


def retry_after(headers: Mapping[str, str]) -> float | None:
    """The server's requested wait in seconds (``retry-after-ms`` or ``retry-after``), if any."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            try:
                when = datetime.strptime(value, "%a, %d %b %Y %H:%M:%S %Z").replace(tzinfo=UTC)
            except ValueError:
                continue
            return max(0.0, (when - datetime.now(UTC)).total_seconds())
    return None


def _seconds_until(stamp: str | None) -> float | None:
    if not stamp:
        return None
    try:
        when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


class _Bucket:
    def __init__(self, per_minute: float, clock: Callable[[], float]) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * BURST_SECONDS)
        self.level = self.capacity
        self.clock = clock
        self.stamp = clock()

    def wait_for(self, amount: float) -> float:
        now = self.clock()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now
        amount = min(amount, self.capacity)
        return 0.0 if self.level >= amount else (amount - self.level) / self.rate

    def take(self, amount: float) -> None:
        self.level -= min(amount, self.capacity)


class RateLimiter:
    """Requests and input tokens per minute, plus what the API's headers say."""

    def __init__(
        self,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        self.requests = _Bucket(requests_per_minute, clock) if requests_per_minute else None
        self.tokens = _Bucket(tokens_per_minute, clock) if tokens_per_minute else None
        self.paused_until = 0.0
        self.pauses = 0
        self.waited_s = 0.0
        self._lock = asyncio.Lock()

    def pause(self, seconds: float) -> None:
        """Hold every request for ``seconds`` from now (a 429's retry-after, an exhausted window)."""
        until = self.clock() + seconds
        if until > self.paused_until:
            self.paused_until = until
            self.pauses += 1

    def wait_for(self, tokens: int) -> float:
        """Seconds to wait before a request of ``tokens`` input tokens may go (0: it may go now)."""
        wait = max(0.0, self.paused_until - self.clock())
        if self.requests is not None:
            wait = max(wait, self.requests.wait_for(1))
        if self.tokens is not None:
            wait = max(wait, self.tokens.wait_for(tokens))
        return wait

    async def acquire(self, tokens: int) -> None:
        async with self._lock:
            while (wait := self.wait_for(tokens)) > 0:
                self.waited_s += wait
                await asyncio.sleep(wait)
            if self.requests is not None:
                self.requests.take(1)
            if self.tokens is not None:
                self.tokens.take(tokens)

    def observe(self, headers: Mapping[str, str]) -> None:
        """Learn from an answer's ``anthropic-ratelimit-*`` headers."""
        for kind in ("requests", "input-tokens", "tokens"):
            remaining = _int(headers.get(f"anthropic-ratelimit-{kind}-remaining"))
            if remaining is not None and remaining <= 0:
                seconds = _seconds_until(headers.get(f"anthropic-ratelimit-{kind}-reset"))
                if seconds:
                    self.pause(seconds)
        limit = _int(headers.get("anthropic-ratelimit-requests-limit"))
        if limit and (self.requests is None or limit / 60.0 < self.requests.rate):
            # The account's limit is lower than ours (or we had none): adopt it.
            self.requests = _Bucket(limit, self.clock)
