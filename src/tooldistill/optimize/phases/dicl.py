"""The ``dicl`` phase kind: dynamic in-context learning, the teacher's nearest examples as demos.

The phase builds a bank (``retrieval.DemoBank``) of its train traces (``train:``, ``select:`` as any
phase; set ``train`` to the split's size for all of it): each trace's request is embedded with the
run's embedding model (the one the embed stage recorded, or ``dicl.model``) and kept with its
few-shot messages, the teacher's calls.  From then on every request, in evaluation, in the phases
after it and where the student is served, is sent with the ``k`` most similar bank entries at or
above the similarity ``floor`` as demonstrations, inside the context policy.  The system text and
fixed demos of the prompt it starts from are kept; the weights are not touched.

Options (the phase's ``dicl:`` section): ``k`` (default 4), ``floor`` (default 0.3), ``model``
(a local sentence-transformers folder; default: the run's embedding model).
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tooldistill import store
from tooldistill.optimize.config import OptimizeConfig, OptimizeError, PhaseConfig
from tooldistill.optimize.phases.base import PhaseContext, PhaseKind, PhaseOutput
from tooldistill.optimize.student import Prompt, demo_messages
from tooldistill.request import trace_request
from tooldistill.retrieval import DemoBank, RetrievalError, resolve_model


class DiclOptions(BaseModel):
    """A ``dicl`` phase's own options."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Demonstrations per request, at most (each is the request and the teacher's calls: a short
    #: BFCL example is ~150-300 tokens of the student's window).
    k: int = Field(default=4, ge=1, le=32)
    #: The least cosine similarity between a request and a demonstration (MiniLM: unrelated
    #: requests score ~0-0.2, a request about the same task ~0.5 and up).
    floor: float = Field(default=0.3, ge=-1.0, le=1.0)
    #: A local sentence-transformers folder; None: the run's embedding model.
    model: str | None = None


def options(phase: PhaseConfig) -> DiclOptions:
    return DiclOptions.model_validate(phase.section("dicl") or {})


def run_embedding_model(config: OptimizeConfig) -> str | None:
    """The embedding model the run's embed stage recorded (``data.embedded``'s manifest), or None."""
    if config.data.embedded is None:
        return None
    try:
        dataset = store.Dataset.open(config.data.embedded)
    except store.StoreError as error:
        raise OptimizeError(f"cannot open the run's embeddings {config.data.embedded}: {error}") from error
    model = dataset.manifest.stats.get("model")
    return str(model) if model else None


class DiclKind(PhaseKind):
    name = "dicl"
    section = "dicl"
    needs_embeddings = True
    summary_fields = ("dicl",)

    def validate(self, phase: PhaseConfig) -> None:
        options(phase)

    def check(self, config: OptimizeConfig, phase: PhaseConfig) -> None:
        self._model(config, phase)

    def _model(self, config: OptimizeConfig, phase: PhaseConfig) -> str:
        chosen = options(phase).model or run_embedding_model(config)
        if chosen is None:
            where = (
                f"the dataset {config.data.embedded} records no embedding model"
                if config.data.embedded
                else "this run has no embeddings (data.embedded)"
            )
            raise OptimizeError(
                f"{phase.name}: a dicl phase embeds requests with the run's embedding model, but {where}; "
                "run it after the embed stage (tooldistill run) or set dicl.model to a local "
                "sentence-transformers folder"
            )
        try:
            return resolve_model(chosen)
        except RetrievalError as error:
            raise OptimizeError(f"{phase.name}: {error}") from error

    def run(self, ctx: PhaseContext) -> PhaseOutput:
        phase, settings = ctx.phase, ctx.student
        chosen = options(phase)
        model = self._model(ctx.config, phase)
        train = ctx.train
        if not train:
            raise OptimizeError(
                f"{phase.name}: a dicl phase needs train traces for its bank; the train split is empty"
            )
        ctx.progress({"phase": phase.name, "event": "start", "train": len(train)})
        started = time.perf_counter()
        requests = [
            trace_request(t, settings.model, settings.temperature, settings.max_tokens) for t in train
        ]
        try:
            bank = DemoBank.build(
                [t.id for t in train],
                requests,
                [demo_messages(t) for t in train],
                model,
                chosen.k,
                chosen.floor,
            )
        except RetrievalError as error:
            raise OptimizeError(f"{phase.name}: {error}") from error
        seconds = time.perf_counter() - started
        record: dict[str, Any] = {
            **bank.describe(),
            "left_out": len(train) - len(bank.ids),
            "seconds": round(seconds, 2),
        }
        ctx.progress({"phase": phase.name, "event": "bank", **record})
        return PhaseOutput(Prompt(ctx.start.system, ctx.start.demos, bank), record={"dicl": record})


DICL = DiclKind()
