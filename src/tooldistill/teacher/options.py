"""What a capture or a judge run asks of Claude, and where it reads and writes.

``ClaudeOptions`` (how requests reach Claude) and ``CaptureOptions`` (what a capture asks for) are
the pipeline config's ``teacher.capture`` section; ``ClaudeSettings`` and ``CaptureConfig`` add the
output (and the input) to them.  They live apart from ``capture`` (which re-exports them) so that
the config loads without the Anthropic SDK, which ``capture`` imports; ``capture`` imports this
module, never the other way round.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from tooldistill.layout import TeacherLayout
from tooldistill.schema import content_hash
from tooldistill.teacher.pricing import Price


class ClaudeOptions(BaseModel):
    """How requests reach Claude and what is kept of its answers: shared by capture and judge."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    batch: bool = False
    concurrency: int = Field(default=8, ge=1)
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    retries: int = Field(default=6, ge=0)
    retry_base_s: float = 0.5
    retry_cap_s: float = 30.0
    timeout_s: float = 120.0
    poll_s: float = 10.0
    poll_max_s: float = 120.0
    resubmits: int = 3
    batch_max_requests: int = Field(default=100_000, ge=1, le=100_000)
    batch_max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    prices: dict[str, Price] | None = None
    api_key_env: str = "ANTHROPIC_API_KEY"
    #: replace secrets in what Claude wrote before it is stored (``--no-redact`` turns it off)
    redact: bool = True
    #: the request cache (default: ``<out>/requests``); share one between runs to never pay twice
    cache: str | None = None
    #: only the first N rows of the input
    limit: int | None = None
    force: bool = False


class CaptureOptions(ClaudeOptions):
    """A capture's options: ``CaptureConfig`` without ``dataset`` and ``out``."""

    samples: int = Field(default=1, ge=1, le=64)
    max_tokens: int = Field(default=1024, ge=1)
    #: None leaves the model's default (recent models take no sampling parameters)
    temperature: float | None = None
    system_prompt: str | None = None
    #: cache_control on the last tool and the system prompt
    prompt_caching: bool = True

    def config(self, *, dataset: str, out: str) -> CaptureConfig:
        """The capture's config: these options on ``dataset``, written to ``out``."""
        return CaptureConfig.model_validate({**dict(self), "dataset": dataset, "out": out})


class ClaudeSettings(ClaudeOptions):
    """How requests reach Claude (``ClaudeOptions``) and where the answers go: shared by capture
    and judge."""

    #: the output dataset
    out: str

    @property
    def cache_uri(self) -> str:
        return self.cache or TeacherLayout(self.out).requests


class CaptureConfig(CaptureOptions, ClaudeSettings):
    """A capture: its options (``CaptureOptions``) on ``dataset``, written to ``out``."""

    dataset: str

    def config_hash(self) -> str:
        """What decides the answers (not how they are fetched: batch or not, concurrency, ...)."""
        return content_hash(
            {
                "model": self.model,
                "samples": self.samples,
                "max_tokens": self.max_tokens,
                "temperature": self.temperature,
                "system": self.system_prompt,
                "prompt_caching": self.prompt_caching,
                "limit": self.limit,
                "redact": self.redact,
            },
            16,
        )
