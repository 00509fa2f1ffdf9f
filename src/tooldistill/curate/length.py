"""The length stage (optional, off by default): drop the traces the student's window can never hold.

A trace whose request does not fit the student's window even after the context policy has cut
everything it may cut (old tool results, old turns: ``tooldistill.context``) is skipped by
evaluation and left out of training anyway; this stage drops it before CaR, so CaR's selection and
the split spend no room on it, and counts it (``too_long``, with every decision in
``decisions``).  Turn it on with a ``length`` section under ``curate``::

    curate:
      length:
        window: 8192
        tokenizer: ${TOOLDISTILL_MODELS:-~/.cache/tooldistill/models}/smollm2-135m-instruct
        max_tokens: 256

Counted as the student counts: the trace's own request (its messages and tools, before any learned
prompt is added) rendered by the tokenizer's chat template.  Without ``tokenizer`` the count is
the request's UTF-8 byte length, an upper bound: it may drop a trace that would have fit.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tooldistill.context import ContextPolicy, DoesNotFit, Fitter, fitter_for
from tooldistill.curate.rows import filter_rows
from tooldistill.curate.runner import LocalRunner, Runner
from tooldistill.executor import DEFAULT_RETRIES
from tooldistill.request import trace_request
from tooldistill.schema import Trace, content_hash
from tooldistill.stage import StageResult

STAGE = "curate-length"
#: The one reason this stage drops a trace.
TOO_LONG = "too_long"


class LengthOptions(BaseModel):
    """The length stage's options: ``LengthConfig`` without input and output (``curate.length``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: The student's context length in tokens (vLLM's ``max_model_len``).
    window: int = Field(ge=256)
    #: The student's tokenizer: a local model folder (``~`` and ``${VAR:-default}`` expanded, as in
    #: a serve profile's ``model_source``); None counts UTF-8 bytes.
    tokenizer: str | None = None
    #: Tokens kept free for the answer (the request's ``max_tokens``).
    max_tokens: int = Field(default=256, ge=1)
    #: As in the student's context policy (``optimize.student.context``).
    keep_recent: int = Field(default=4, ge=0)
    head_tokens: int = Field(default=96, ge=0)
    margin: int = Field(default=16, ge=0)
    #: Rows per shard (None: about eight shards per worker); CPUs per worker on Ray.
    rows_per_shard: int | None = Field(default=None, ge=1)
    cpus_per_worker: float = Field(default=1.0, gt=0)
    retries: int = Field(default=DEFAULT_RETRIES, ge=0)
    force: bool = False

    def policy(self) -> ContextPolicy:
        return ContextPolicy(
            window=self.window,
            tokenizer=self.tokenizer,
            keep_recent=self.keep_recent,
            head_tokens=self.head_tokens,
            margin=self.margin,
        )

    def config(self, *, dataset: str, out: str) -> LengthConfig:
        """The stage's config: these options on ``dataset``, written to ``out``."""
        return LengthConfig.model_validate({**dict(self), "dataset": dataset, "out": out})


class LengthConfig(LengthOptions):
    dataset: str
    out: str

    def config_hash(self) -> str:
        fields = {"dataset", "out", "force", "rows_per_shard", "cpus_per_worker", "retries"}
        return content_hash(self.model_dump(mode="json", exclude=fields), 16)


class WindowJudge:
    """Drops a trace (``too_long``) whose request does not fit after every cut the policy makes."""

    def __init__(self, policy: ContextPolicy, max_tokens: int) -> None:
        self.policy, self.max_tokens = policy, max_tokens
        self._fitter: Fitter | None = None

    def setup(self) -> None:
        self._fitter = fitter_for(self.policy)  # loads the tokenizer once per worker

    def __call__(self, trace: Trace) -> str | None:
        if self._fitter is None:
            self.setup()
        assert self._fitter is not None
        try:
            self._fitter.fit(trace_request(trace, "student", 0.0, self.max_tokens))
        except DoesNotFit:
            return TOO_LONG
        return None

    def __getstate__(self) -> dict[str, Any]:
        return {"policy": self.policy, "max_tokens": self.max_tokens, "_fitter": None}


def run_length(config: LengthConfig, runner: Runner | None = None) -> StageResult:
    """Run the length stage: the traces that fit to ``out``, every decision to ``out/decisions``."""
    if config.tokenizer is not None:
        fitter_for(config.policy())  # a tokenizer that cannot be loaded fails here, before any worker
    return filter_rows(
        STAGE,
        config.config_hash(),
        config.dataset,
        config.out,
        WindowJudge(config.policy(), config.max_tokens),
        runner or LocalRunner(),
        reasons=(TOO_LONG,),
        rows_per_shard=config.rows_per_shard,
        cpus_per_worker=config.cpus_per_worker,
        retries=config.retries,
        force=config.force,
        stats={"window": config.window, "max_tokens": config.max_tokens, "tokenizer": config.tokenizer},
    )
