"""``tooldistill run``: the stages that exist, in order, from one config, into one run folder.

Each stage is skipped when its output is up to date (see ``store.up_to_date``).
"""

from __future__ import annotations

from dataclasses import dataclass

from tooldistill import store
from tooldistill.config import PipelineConfig
from tooldistill.executor import Executor, make_executor
from tooldistill.ingest import IngestConfig, IngestResult, ingest


@dataclass
class RunResult:
    run_dir: str
    ingest: IngestResult


def executor_for(config: PipelineConfig) -> Executor:
    return make_executor(config.ray.executor, address=config.ray.address, num_cpus=config.ray.num_cpus)


def run_pipeline(
    config: PipelineConfig, run_dir: str | None = None, executor: Executor | None = None
) -> RunResult:
    run_dir = run_dir or config.run_dir
    executor = executor or executor_for(config)
    section = config.ingest
    traces = ingest(
        IngestConfig(
            sources=section.sources,
            format=section.format,
            out=store.join(run_dir, "traces"),
            reader=section.reader,
            strict=section.strict,
        ),
        executor,
    )
    return RunResult(run_dir=run_dir, ingest=traces)
