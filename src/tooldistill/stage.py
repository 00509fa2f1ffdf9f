"""The stage contract: what every stage of a run returns, and the one place that decides whether
a stage's published output is up to date, is published, or is marked incomplete.

A stage's output is a dataset whose manifest carries the stage's
*fingerprint*: a hash of the stage's name, its config and what identifies its inputs.  A stage is
skipped when the output's manifest has that fingerprint; it publishes with the fingerprint when it
finished its work, and with ``<fingerprint>-incomplete`` when some of it failed (endpoint errors,
unanswered requests): an incomplete output is readable but never up to date, so the next run does
only what is missing.

A stage is a function from its typed config (``EmbedConfig``, ``CarConfig``, ``CaptureConfig``, ...:
the pipeline section's options plus ``dataset``/``out``) to a ``StageResult``; inside it,
``StageRun`` does the fingerprint, the skip and the publish, so no stage writes them again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tooldistill import store

#: The suffix of a fingerprint published by a stage that did not finish all of its work.
INCOMPLETE = "-incomplete"


class PipelineError(RuntimeError):
    """The run cannot go on; the message names the stage and what to do."""


@dataclass
class StageResult:
    """What a dataset stage returns: its dataset, whether it was up to date, whether it finished
    all of its work, and its statistics (the manifest's ``stats``)."""

    dataset: store.Dataset
    skipped: bool = False
    stats: dict[str, Any] = field(default_factory=dict)
    complete: bool = True

    @property
    def uri(self) -> str:
        return self.dataset.uri

    @property
    def rows(self) -> int:
        return self.dataset.manifest.rows


def published_fingerprint(expected: str, complete: bool) -> str:
    """What to write into the manifest: the fingerprint, or its incomplete form."""
    return expected if complete else f"{expected}{INCOMPLETE}"


def up_to_date(
    out: str, expected: str, *, also: Iterable[str] = (), force: bool = False
) -> store.Manifest | None:
    """The manifest at ``out`` when it (and every dataset named in ``also``, relative to ``out``)
    carries ``expected``: the stage can be skipped.  ``None`` means run it (``force`` always does)."""
    if force:
        return None
    manifest = store.up_to_date(out, expected)
    if manifest is None:
        return None
    for name in also:
        if store.up_to_date(store.join(out, name), expected) is None:
            return None
    return manifest


def earlier_result(out: str, manifest: store.Manifest) -> StageResult:
    """The result of a stage skipped because its output at ``out`` is up to date."""
    return StageResult(store.Dataset(out, manifest), skipped=True, stats=dict(manifest.stats))


class SummaryResult(StageResult):
    """A stage result whose manifest keeps the stage's summary (``stats["summary"]``): a teacher
    capture, a judgement, an evaluation."""

    @property
    def summary(self) -> dict[str, Any]:
        return dict(self.stats.get("summary") or {})


@dataclass
class StageRun:
    """One run of a stage into ``out``: its fingerprint, the token its parts are written under, and
    the one way every stage skips (``existing``), publishes side datasets (``publish_side``) and
    publishes its output, complete or not (``publish``)."""

    stage: str
    out: str
    config_hash: str
    fingerprint: str
    parents: list[str]
    #: The manifest kind of the output (``traces``, ``evaluation``, ``judgements``, ...).
    kind: str = "traces"
    token: str = field(default_factory=store.new_token)

    @classmethod
    def start(
        cls, stage: str, out: str, config_hash: str, inputs: Any, parents: list[str], kind: str = "traces"
    ) -> StageRun:
        return cls(
            stage, out, config_hash, store.fingerprint(stage, config_hash, inputs), list(parents), kind
        )

    def existing(self, *, also: Iterable[str] = (), force: bool = False) -> StageResult | None:
        """The earlier output when it is up to date (and so is each side dataset in ``also``)."""
        manifest = up_to_date(self.out, self.fingerprint, also=also, force=force)
        return earlier_result(self.out, manifest) if manifest is not None else None

    def manifest(
        self,
        parts: list[store.PartInfo],
        stats: dict[str, Any] | None = None,
        *,
        kind: str | None = None,
        complete: bool = True,
    ) -> store.Manifest:
        return store.Manifest(
            kind=kind or self.kind,
            stage=self.stage,
            rows=sum(p.rows for p in parts),
            parts=parts,
            config_hash=self.config_hash,
            fingerprint=published_fingerprint(self.fingerprint, complete),
            parents=self.parents,
            stats=dict(stats or {}),
        )

    def publish_side(
        self,
        name: str,
        parts: list[store.PartInfo] | None = None,
        *,
        table: Any = None,
        stats: dict[str, Any] | None = None,
        kind: str | None = None,
    ) -> store.Manifest:
        """Publish a side dataset at ``out/name`` (before the output: the output's manifest is the
        stage's commit point), from parts already written or from an Arrow ``table``."""
        where = store.join(self.out, name)
        if table is not None:
            rows_per_part = 1_000_000
            parts = [
                store.write_part(where, self.token, i, table.slice(start, rows_per_part))
                for i, start in enumerate(range(0, max(table.num_rows, 1), rows_per_part))
            ]
        assert parts is not None, "publish_side needs parts or a table"
        return store.publish(where, token=self.token, manifest=self.manifest(parts, stats, kind=kind))

    def publish(
        self,
        parts: list[store.PartInfo],
        stats: dict[str, Any],
        *,
        complete: bool = True,
        quarantined: list[dict[str, Any]] | None = None,
    ) -> StageResult:
        """Publish the stage's output; an incomplete one is readable but never up to date."""
        manifest = self.manifest(parts, stats, complete=complete)
        published = store.publish(
            self.out, token=self.token, manifest=manifest, quarantined=quarantined or ()
        )
        return StageResult(store.Dataset(self.out, published), False, dict(stats), complete)
