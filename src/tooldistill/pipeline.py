"""``tooldistill run``: every stage from one config, in order, into one run folder.

Stages, in order (``STAGES``)::

    ingest → teacher → embed → semdedup → car → split → student → baseline → optimize → report

Run folder (local path or ``s3://``)::

    RUN/traces/                      ingested traces (quarantined records beside them)
    RUN/teacher/                     Claude's sampled answers per trace + summary.json (teacher: claude)
    RUN/curate/embedded|deduped|curated|split/{train,val,test}   curation datasets (+ decisions/)
    RUN/curate/funnel.json           the data funnel in numbers
    RUN/student.json                 the endpoint used, replicas, serving time and GPU hours
    RUN/optimize/                    baseline.json, phaseN/ (prompt, program, GEPA state, Tune trials,
                                     test evaluation), best/prompt.json (the exported prompt), summary.json
    RUN/report/report.md|html        the report, with its plots
    RUN/run.json, RUN/run.log        what each stage did this time (ran, skipped, disabled) and how long
    RUN/.lock                        while a run is using the folder: its pid, host, start and command

Each dataset stage is skipped when its output manifest matches its inputs and config (the stage's own
fingerprint).  The student is started only when the baseline or a phase has work to do, and stopped
when the run ends.  Optimization files are written by GEPA and Ray Tune as plain files, so for an
``s3://`` run folder they are written to a local staging folder and copied to the run folder after
each stage (and copied back at the start, so a run resumes from another machine).
"""

from __future__ import annotations

import json
import os
import platform
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tooldistill import __version__, runlock, store
from tooldistill.config import PipelineConfig, StudentSection
from tooldistill.executor import Executor, make_executor
from tooldistill.ingest import IngestConfig, IngestResult, ingest
from tooldistill.redact import Redactor
from tooldistill.report.mask import mask
from tooldistill.schema import content_hash

STAGES = (
    "ingest",
    "teacher",
    "embed",
    "semdedup",
    "car",
    "split",
    "student",
    "baseline",
    "optimize",
    "report",
)

Say = Callable[[str], None]


class PipelineError(RuntimeError):
    """The run cannot go on; the message names the stage and what to do."""


@dataclass
class StageRecord:
    stage: str
    status: str  # ran | skipped | disabled | failed | not selected
    elapsed_s: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "status": self.status,
            "elapsed_s": self.elapsed_s,
            "detail": self.detail,
        }


@dataclass
class RunResult:
    run_dir: str
    stages: list[StageRecord]
    ingest: IngestResult | None = None
    report: str | None = None
    optimize: dict[str, Any] | None = None

    def stage(self, name: str) -> StageRecord | None:
        return next((s for s in self.stages if s.stage == name), None)


def executor_for(config: PipelineConfig) -> Executor:
    return make_executor(config.ray.executor, address=config.ray.address, num_cpus=config.ray.num_cpus)


def redact_text(text: str) -> str:
    return str(Redactor().text(text))


def is_remote(uri: str) -> bool:
    return "://" in uri


def staging_dir(run_dir: str) -> Path:
    """Where the plain-file part of a run lives while it runs: the run folder itself when local."""
    if not is_remote(run_dir):
        return Path(run_dir)
    home = Path(os.environ.get("TOOLDISTILL_CACHE", Path.home() / ".cache" / "tooldistill"))
    return home / "runs" / content_hash(run_dir, 16)


def _copy_tree(source: str, destination: str) -> None:
    import pyarrow.fs as pafs

    src_fs, src_path = store.resolve(source)
    info = src_fs.get_file_info(src_path)
    if info.type == pafs.FileType.NotFound:
        return
    dst_fs, dst_path = store.resolve(destination)
    if not is_remote(destination):
        Path(dst_path).mkdir(parents=True, exist_ok=True)
    pafs.copy_files(src_path, dst_path, source_filesystem=src_fs, destination_filesystem=dst_fs)


def _copy_file(source: str, destination_folder: str, name: str) -> None:
    try:
        data = store.read_file(source)
    except store.StoreError:
        return
    store.write_file(destination_folder, name, data)


# ---------------------------------------------------------------------------------------------
# the run log


class RunLog:
    """``run.json`` (rewritten after every stage) and ``run.log`` (appended) in the staging folder."""

    def __init__(self, config: PipelineConfig, run_dir: str, workdir: Path, say: Say) -> None:
        self.config, self.run_dir, self.workdir, self.say = config, run_dir, workdir, say
        self.records: list[StageRecord] = []
        self.started = time.time()
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "run.log"
        self.line(
            f"run {config.name} → {run_dir} (tooldistill {__version__}, python {platform.python_version()})"
        )

    def line(self, text: str) -> None:
        text = redact_text(text)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with self.log_path.open("a", encoding="utf-8") as handle:
            handle.write(f"{stamp} {text}\n")

    def record(self, record: StageRecord) -> None:
        self.records.append(record)
        self.line(
            f"{record.stage}: {record.status} in {record.elapsed_s:.1f} s {json.dumps(record.detail, default=str)}"
        )
        self.write()

    def write(self, finished: bool = False) -> None:
        value = {
            "name": self.config.name,
            "run_dir": self.run_dir,
            "tooldistill": __version__,
            "config": mask(self.config.model_dump(mode="json")),
            "stages": [r.to_json() for r in self.records],
            "started": self.started,
            "finished": time.time() if finished else None,
        }
        path = self.workdir / "run.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(value, indent=2, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, path)

    @contextmanager
    def stage(self, name: str) -> Iterator[StageRecord]:
        record = StageRecord(name, "ran")
        self.say(f"[bold]{name}[/] …")
        started = time.perf_counter()
        try:
            yield record
        except BaseException as error:
            record.status = "failed"
            record.detail["error"] = redact_text(f"{type(error).__name__}: {error}")
            record.elapsed_s = round(time.perf_counter() - started, 2)
            self.line("".join(traceback.format_exception(error)).rstrip())
            self.record(record)
            raise
        record.elapsed_s = round(time.perf_counter() - started, 2)
        self.record(record)
        note = f" ({record.detail['note']})" if "note" in record.detail else ""
        self.say(f"[bold]{name}[/]: {record.status} in {record.elapsed_s:.1f} s{note}")


# ---------------------------------------------------------------------------------------------
# the student


@dataclass
class Student:
    endpoint: str
    model: str
    api_key_env: str | None
    stop: Callable[[], None] = lambda: None
    info: dict[str, Any] = field(default_factory=dict)
    #: The model folder the profile serves (a finetune phase trains on it), when known.
    base_folder: Path | None = None
    #: The served window in tokens (the profile's ``max_model_len``), when the profile says.
    window: int | None = None
    #: The cloud folder the replicas load LoRA adapters from (the profile's ``lora_config``), if any.
    lora_store: str | None = None

    def context(self, given: dict[str, Any] | None) -> dict[str, Any]:
        """The context policy for this student: the config's, with the window and the tokenizer
        filled from the served profile where the config leaves them out."""
        policy = dict(given or {})
        if policy.get("window") is None and self.window is not None:
            policy["window"] = self.window
        if policy.get("tokenizer") is None and self.base_folder is not None:
            policy["tokenizer"] = str(self.base_folder)
        return policy


class ServeHost:
    """Serves a fine-tuned student (``finetune.phase.StudentHost``) with the same profile,
    application and port: a merged folder in place of the base, or an adapter beside it."""

    def __init__(
        self, section: StudentSection, student: Student, say: Say, run_dir: str | None = None
    ) -> None:
        self.section, self.student, self.say, self.run_dir = section, student, say, run_dir

    def base_model(self) -> Path:
        if self.student.base_folder is None:
            raise PipelineError("a finetune phase needs the student's model folder (a local model_source)")
        return self.student.base_folder

    def dtype(self) -> str:
        engine = self.student.info.get("cpu_engine") or {}
        return str(engine.get("dtype") or "bfloat16")

    def serve(self, folder: Path, name: str) -> tuple[str, str]:

        if self.student.model == name:
            return self.student.endpoint, name
        self.say(f"serving the fine-tuned student {name} from {folder} (replaces {self.student.model})")
        self._restart({"model": name, "folder": str(folder)}, model_source=str(folder), model_id=name)
        self.student.model = name
        return self.student.endpoint, name

    def _restart(self, record: dict[str, Any], **overrides: Any) -> None:
        """Redeploy the section's profile with ``overrides`` (``runner.start``'s), on the same port."""
        from tooldistill.serve import runner

        assert self.section.serve is not None
        started = time.time()
        served = runner.start(
            self.section.serve,
            port=self.section.port,
            replicas=self.section.replicas,
            api_key_env=self.section.api_key_env,
            wait_timeout_s=self.section.wait_timeout_s,
            **overrides,
        )
        self.student.endpoint, self.student.lora_store = served.base_url, served.lora_store
        self.student.info.setdefault("served", []).append(
            {**record, "ready_after_s": round(time.time() - started, 1)}
        )

    def adapter_store(self, configured: str | None) -> str:
        from tooldistill.serve.runner import LORA_SCHEMES

        store_uri = configured or self.student.lora_store
        if store_uri is None and self.run_dir is not None and is_remote(self.run_dir):
            store_uri = store.join(self.run_dir, "adapters")
        if store_uri is None:
            raise PipelineError(
                "serve_as: adapter needs a cloud folder the replicas load adapters from: set the "
                "phase's finetune.adapter_store (s3://bucket/prefix), a run_dir on S3, or a "
                "lora_config in the serving profile; or use serve_as: merged"
            )
        if not store_uri.startswith(LORA_SCHEMES):
            raise PipelineError(
                f"finetune.adapter_store {store_uri!r}: Ray Serve LLM loads adapters from "
                f"{', '.join(LORA_SCHEMES)} only"
            )
        return store_uri.rstrip("/")

    def serve_adapter(self, store_uri: str, name: str, max_rank: int) -> tuple[str, str]:
        """Serve ``<store_uri>/<name>`` as ``<base>:<name>``: by the running replicas when they
        already load adapters from that folder, else after a restart of the profile with LoRA on
        (the base model, its name, and ``lora_config`` pointing at the folder)."""
        from tooldistill.serve import runner

        base = self.student.info.get("base_model") or self.student.model
        model = f"{base}:{name}"
        if self.student.lora_store != store_uri.rstrip("/"):
            self.say(f"restarting the student with LoRA adapters from {store_uri}")
            self._restart(
                {"model": base, "lora_store": store_uri},
                model_id=base,
                lora_store=store_uri,
                max_lora_rank=max_rank,
            )
        self.say(f"serving the fine-tuned student as {model} (adapter {store_uri}/{name})")
        runner.wait_for_models(
            self.student.endpoint.removesuffix("/v1"),
            [model],
            os.environ.get(self.section.api_key_env) if self.section.api_key_env else None,
            self.section.wait_timeout_s,
        )
        self.student.model = model
        self.student.info.setdefault("served", []).append({"model": model, "adapter": f"{store_uri}/{name}"})
        return self.student.endpoint, model


def _gpus_per_replica(profile: dict[str, Any]) -> float:
    args = (profile.get("applications") or [{}])[0].get("args") or {}
    total = 0.0
    for llm in args.get("llm_configs") or []:
        bundles = (llm.get("placement_group_config") or {}).get("bundles") or []
        total += sum(float(b.get("GPU", 0)) for b in bundles)
    return total


def start_student(section: StudentSection, say: Say) -> Student:
    """Start the profile on the run's Ray cluster (or check the given endpoint)."""
    from tooldistill.evaluate import EndpointError, _Client

    if section.endpoint is not None:
        assert section.model is not None
        key = os.environ.get(section.api_key_env) if section.api_key_env else None
        try:
            _Client(section.endpoint, 10.0, 1, key).check()
        except EndpointError as error:
            raise PipelineError(f"student endpoint {section.endpoint} is not answering: {error}") from None
        return Student(section.endpoint, section.model, section.api_key_env, info={"kind": "endpoint"})
    from tooldistill.serve import runner

    assert section.serve is not None
    profile = runner.load_profile(section.serve)
    engine = runner.cpu_engine(profile)
    if engine is not None:
        threads = max(engine["threads"].values(), default=1)
        say(f"student on CPU: {engine['dtype']} ({engine['reason']}); {threads} engine threads per replica")
    folder: Path | None = None
    if section.prepare:
        from tooldistill.serve.models import prepare

        # the weights are written in the dtype the engine will run
        folder, built = prepare(section.prepare, dtype=engine["dtype"] if engine else None)
        say(f"student model {section.prepare}: {'prepared' if built else 'ready'} in {folder}")
    say(f"starting the student from {section.serve} (first start loads the model; minutes on CPU)")
    started = time.time()
    served = runner.start(
        section.serve,
        port=section.port,
        replicas=section.replicas,
        api_key_env=section.api_key_env,
        wait_timeout_s=section.wait_timeout_s,
    )
    model = section.model or served.models[0]
    replicas = section.replicas or _replicas(profile)
    base_folder = folder if section.prepare else _local_source(profile)
    info = {
        "kind": "serve",
        "profile": section.serve,
        "replicas": replicas,
        "gpus_per_replica": _gpus_per_replica(profile),
        **({"cpu_engine": served.cpu_engine} if served.cpu_engine else {}),
        "ready_after_s": round(time.time() - started, 1),
        "started": started,
    }
    info["base_model"] = model
    return Student(
        served.base_url,
        model,
        section.api_key_env,
        served.stop,
        info,
        base_folder,
        _window(profile),
        served.lora_store,
    )


def _window(profile: dict[str, Any]) -> int | None:
    """The profile's ``max_model_len`` (the window the engine serves), when it sets one."""
    args = (profile.get("applications") or [{}])[0].get("args") or {}
    engine = ((args.get("llm_configs") or [{}])[0].get("engine_kwargs")) or {}
    value = engine.get("max_model_len")
    return int(value) if isinstance(value, int) else None


def _local_source(profile: dict[str, Any]) -> Path | None:
    from tooldistill.serve.app import ServeConfigError, expand_path

    args = (profile.get("applications") or [{}])[0].get("args") or {}
    source = ((args.get("llm_configs") or [{}])[0].get("model_loading_config") or {}).get("model_source")
    try:
        path = Path(expand_path(str(source))) if source else None
    except ServeConfigError:
        return None
    return path if path is not None and path.is_dir() else None


def _replicas(profile: dict[str, Any]) -> int:
    args = (profile.get("applications") or [{}])[0].get("args") or {}
    llms = args.get("llm_configs") or [{}]
    scaling = llms[0].get("deployment_config", {}).get("autoscaling_config") or {}
    return int(scaling.get("min_replicas") or llms[0].get("deployment_config", {}).get("num_replicas") or 1)


# ---------------------------------------------------------------------------------------------
# the run


class _Run:
    def __init__(
        self,
        config: PipelineConfig,
        run_dir: str,
        executor: Executor | None,
        selected: set[str],
        say: Say,
        show_progress: bool,
    ) -> None:
        self.config, self.run_dir, self.selected, self.say = config, run_dir, selected, say
        self.show_progress = show_progress
        self.executor = executor or executor_for(config)
        self.workdir = staging_dir(run_dir)
        if is_remote(run_dir):  # resume: bring back what an earlier run left
            for name in ("optimize",):
                _copy_tree(store.join(run_dir, name), str(self.workdir / name))
        self.log = RunLog(config, run_dir, self.workdir, say)
        self.student: Student | None = None
        self.result = RunResult(run_dir=run_dir, stages=self.log.records)

    def uri(self, *names: str) -> str:
        uri = self.run_dir
        for name in names:
            uri = store.join(uri, name)
        return uri

    def skip(self, name: str, status: str, note: str) -> None:
        self.log.record(StageRecord(name, status, detail={"note": note}))
        self.say(f"[bold]{name}[/]: {status} ({note})")

    def after_until(self, stage: str) -> bool:
        """Whether ``stage`` comes after the last selected stage (``--until`` stops before it)."""
        return STAGES.index(stage) > max(STAGES.index(s) for s in self.selected)

    def require(self, uri: str, stage: str) -> store.Dataset:
        try:
            return store.Dataset.open(uri)
        except store.StoreError:
            raise PipelineError(
                f"stage {stage} has not run in {self.run_dir} (no dataset at {uri}); "
                f"run without --from, or --from {stage}"
            ) from None

    def sync(self) -> None:
        """Copy the plain-file part of an s3:// run to the run folder."""
        if not is_remote(self.run_dir):
            return
        for name in ("run.json", "run.log", "student.json"):
            _copy_file(str(self.workdir / name), self.run_dir, name)
        for name in ("optimize", "report"):
            _copy_tree(str(self.workdir / name), self.uri(name))

    # -- stages --------------------------------------------------------------------------------

    def ingest(self) -> str:
        out = self.uri("traces")
        if "ingest" not in self.selected:
            self.require(out, "ingest")
            self.skip("ingest", "not selected", "kept the earlier output")
            return out
        section = self.config.ingest
        with self.log.stage("ingest") as record:
            result = ingest(
                IngestConfig(
                    sources=section.sources,
                    format=section.format,
                    out=out,
                    reader=section.reader,
                    strict=section.strict,
                ),
                self.executor,
            )
            manifest = result.dataset.manifest
            record.status = "skipped" if result.skipped else "ran"
            record.detail = {
                "traces": manifest.rows,
                "quarantined": manifest.quarantine.total,
                "note": f"{manifest.rows} traces, {manifest.quarantine.total} quarantined",
            }
            self.result.ingest = result
        return out

    def teacher(self, traces: str) -> str:
        section = self.config.teacher
        out = self.uri("teacher")
        if section is None:
            self.skip("teacher", "disabled", "no teacher section: the traces' calls are the teacher's")
            return traces
        mode = section.resolved_mode()
        if mode == "data":
            self.skip(
                "teacher",
                "disabled",
                f"{section.key_env()} is not set: the traces' own calls are the teacher's"
                if section.mode == "auto"
                else "mode data: the traces' own calls are the teacher's",
            )
            return traces
        if self.after_until("teacher"):
            self.skip("teacher", "not selected", "--until stops before it")
            return out
        if "teacher" not in self.selected:
            self.require(out, "teacher")
            self.skip("teacher", "not selected", "kept the earlier output")
            return out
        from tooldistill.teacher.capture import CaptureConfig, capture

        with self.log.stage("teacher") as record:
            config = CaptureConfig.model_validate({**section.capture, "dataset": traces, "out": out})
            result = capture(config, show_progress=self.show_progress)
            summary = result.summary
            record.status = "skipped" if result.skipped else "ran"
            consistency = summary.get("consistency") or {}
            record.detail = {
                "model": config.model,
                "requests": summary.get("requests"),
                "cost_usd": summary.get("cost_usd"),
                "all_agree": (consistency.get("all_agree") or {}).get("rate"),
                "note": f"{len(result.failures)} failed requests" if result.failures else "all answered",
            }
            if result.failures:
                raise PipelineError(
                    f"teacher: {len(result.failures)} requests failed; run again to ask only those "
                    f"(answers so far are cached in {config.cache_uri})"
                )
        return out

    def curate(self, source: str) -> dict[str, str] | None:
        section = self.config.curate
        if section is None:
            for name in ("embed", "semdedup", "car", "split"):
                self.skip(name, "disabled", "no curate section")
            return None
        if self.after_until("embed"):
            for name in ("embed", "semdedup", "car", "split"):
                self.skip(name, "not selected", "--until stops before it")
            return None
        from tooldistill.curate.car import CarConfig, run_car
        from tooldistill.curate.pipeline import ensure_embedded, funnel
        from tooldistill.curate.runner import make_runner
        from tooldistill.curate.semdedup import SemDedupConfig, run_semdedup
        from tooldistill.curate.split import SplitConfig, run_split

        runner = make_runner(
            self.config.ray.executor, address=self.config.ray.address, num_cpus=self.config.ray.num_cpus
        )
        uris = {
            "embed": self.uri("curate", "embedded"),
            "semdedup": self.uri("curate", "deduped"),
            "car": self.uri("curate", "curated"),
            "split": self.uri("curate", "split"),
        }
        stats: dict[str, dict[str, Any]] = {}

        def stage(name: str, run: Callable[[], tuple[store.Dataset, bool, dict[str, Any]]]) -> str:
            if self.after_until(name):
                self.skip(name, "not selected", "--until stops before it")
                return uris[name]
            if name not in self.selected:
                dataset = self.require(uris[name], name)
                stats[name] = dict(dataset.manifest.stats)
                self.skip(name, "not selected", "kept the earlier output")
                return uris[name]
            with self.log.stage(name) as record:
                dataset, skipped, stage_stats = run()
                stats[name] = dict(stage_stats)
                record.status = "skipped" if skipped else "ran"
                record.detail = {"rows": dataset.manifest.rows, "note": f"{dataset.manifest.rows} traces"}
                return dataset.uri

        def embed() -> tuple[store.Dataset, bool, dict[str, Any]]:
            result = ensure_embedded(source, uris["embed"], section.embed, runner)
            return result.dataset, result.skipped, dict(result.dataset.manifest.stats)

        embedded = stage("embed", embed)

        def semdedup() -> tuple[store.Dataset, bool, dict[str, Any]]:
            config = SemDedupConfig.model_validate(
                {**section.semdedup, "dataset": embedded, "out": uris["semdedup"]}
            )
            result = run_semdedup(config, runner, self.show_progress)
            return result.dataset, result.skipped, result.stats

        deduped = stage("semdedup", semdedup)

        def car() -> tuple[store.Dataset, bool, dict[str, Any]]:
            config = CarConfig.model_validate({**section.car, "dataset": deduped, "out": uris["car"]})
            result = run_car(config, self.show_progress)
            return result.dataset, result.skipped, result.stats

        curated = stage("car", car)

        def split() -> tuple[store.Dataset, bool, dict[str, Any]]:
            config = SplitConfig.model_validate({**section.split, "dataset": curated, "out": uris["split"]})
            result = run_split(config, self.show_progress)
            return result.dataset, result.skipped, result.stats

        stage("split", split)
        if self.after_until("split"):  # the funnel needs every curate stage
            return None
        numbers = funnel(
            store.Dataset.open(embedded).manifest, stats["semdedup"], stats["car"], stats["split"]
        )
        store.write_file(self.uri("curate"), "funnel.json", json.dumps(numbers, indent=2).encode())
        return {
            "train": store.join(uris["split"], "train"),
            "val": store.join(uris["split"], "val"),
            "test": store.join(uris["split"], "test"),
            "curated": curated,
        }

    def optimize(self, data: dict[str, str] | None) -> None:
        section, student_section = self.config.optimize, self.config.student
        if self.after_until("student"):
            for name in ("student", "baseline", "optimize"):
                self.skip(name, "not selected", "--until stops before it")
            return
        if section is None or student_section is None or data is None:
            why = "no optimize section" if section is None else "no student or no curated split"
            for name in ("student", "baseline", "optimize"):
                self.skip(name, "disabled", why)
            return
        from tooldistill.optimize.run import config_from_dict

        folder = self.workdir / "optimize"
        splits = {name: store.Dataset.open(uri).manifest.fingerprint for name, uri in data.items()}
        stamp = content_hash(
            {
                "optimize": section.model_dump(mode="json"),
                "student": student_section.model_dump(mode="json"),
                "data": splits,
                "reflection_key": self._reflection_key_set(section),
            },
            16,
        )
        done = _read_json(folder / "stamp.json")
        wanted = {"student", "baseline", "optimize"} & self.selected
        if not wanted or (done and done.get("stamp") == stamp and (folder / "summary.json").exists()):
            note = "--from/--until leave them out" if not wanted else "up to date"
            for name in ("student", "baseline", "optimize"):
                self.skip(name, "skipped" if wanted else "not selected", note)
            self.result.optimize = _read_json(folder / "summary.json")
            return
        with self.log.stage("student") as record:
            self.student = start_student(student_section, self.say)
            record.detail = {
                "endpoint": self.student.endpoint,
                "model": self.student.model,
                **self.student.info,
            }
            record.detail["note"] = f"{self.student.model} at {self.student.endpoint}"
        self._write_student()
        raw = section.optimize_dict(str(folder), data)
        raw["student"] = {
            **raw["student"],
            "endpoint": self.student.endpoint,
            "model": self.student.model,
            "api_key_env": self.student.api_key_env or "OPENAI_API_KEY",
            "context": self.student.context(raw["student"].get("context")),
        }
        raw["reflection"] = self._reflection(section, raw["reflection"])
        config = config_from_dict(raw)
        from tooldistill.optimize.run import ensure_baseline, optimize, start_prompt
        from tooldistill.optimize.student import check_endpoint

        if "baseline" in self.selected:
            with self.log.stage("baseline") as record:
                check_endpoint(config.student)
                folder.mkdir(parents=True, exist_ok=True)
                baseline, skipped = ensure_baseline(config, start_prompt(config))
                test = baseline["test"]
                record.status = "skipped" if skipped else "ran"
                record.detail = {"test": test, "note": _rate_text(test)}
        if "optimize" not in self.selected:
            self.skip("optimize", "not selected", "--until stops before it")
            return
        tune_callbacks, finish_tracking = self._tracking()
        with self.log.stage("optimize") as record:

            def progress(event: dict[str, Any]) -> None:
                self.log.line(f"optimize {json.dumps(event, default=str)}")
                if event.get("event") == "iteration":
                    self.say(
                        f"  {event['phase']}: iteration {event['iteration']}, metric calls "
                        f"{event['metric_calls']}/{event['max_metric_calls']}, best val "
                        f"{event['best_val_score']:.3f}, Pareto front {event['pareto_front']}, "
                        f"reflection ${event['reflection_usd']:.4f}"
                    )
                elif event.get("event") == "examples":
                    self.say(
                        f"  {event['phase']}: {event['examples']} training examples ({event['calls']} with "
                        f"calls, {event['no_calls']} without; {event['tokens']:,} tokens), left out: "
                        f"{event['left_out'] or 'none'}"
                    )
                elif event.get("event") == "train_step":
                    step, last = int(event["step"]), int(event["max_steps"])
                    if step == 1 or step == last or step % max(1, last // 10) == 0:
                        rate, eta = event.get("tokens_per_s"), event.get("eta_s")
                        self.say(
                            f"  {event['phase']}: step {step}/{last}, loss {event['loss']:.4f}"
                            + (f", {rate:.0f} tokens/s" if rate else "")
                            + (f", ETA {eta:.0f} s" if eta is not None else "")
                        )
                elif event.get("event") in ("done", "skipped") and event.get("test"):
                    self.say(f"  {event['phase']}: {event['event']}, test {_rate_text(event['test'])}")
                elif event.get("event") == "start":
                    self.say(
                        f"  {event['phase']}: start {json.dumps({k: v for k, v in event.items() if k not in ('phase', 'event')})}"
                    )

            host = (
                ServeHost(student_section, self.student, self.say, self.run_dir)
                if student_section.serve
                else None
            )
            summary = optimize(config, progress=progress, tune_callbacks=tune_callbacks, host=host)
            self._write_student()
            record.detail = {
                "best_phase": summary["best_phase"],
                "phases": {p["phase"]: p["test"].get("rate") for p in summary["phases"]},
                "note": f"best {summary['best_phase']}: "
                + _rate_text(
                    next(p["test"] for p in summary["phases"] if p["phase"] == summary["best_phase"])
                ),
            }
            self.result.optimize = summary
            finish_tracking(summary)
        (folder / "stamp.json").write_text(json.dumps({"stamp": stamp}) + "\n")

    def _reflection_key_set(self, section: Any) -> bool:
        key_env = section.reflection.get("api_key_env") or "ANTHROPIC_API_KEY"
        return bool(os.environ.get(key_env))

    def _reflection(self, section: Any, reflection: dict[str, Any]) -> dict[str, Any]:
        """Claude when its key is set; otherwise the student itself (or an error, as configured)."""
        kind = reflection.get("kind", "anthropic")
        if kind != "anthropic" or self._reflection_key_set(section):
            return reflection
        if section.reflection_without_key == "error":
            raise PipelineError(
                f"reflection by Claude needs {reflection.get('api_key_env') or 'ANTHROPIC_API_KEY'}; "
                "set it, or set optimize.reflection_without_key: student"
            )
        assert self.student is not None
        self.say("reflection: no Claude key, so the student reflects on its own failures")
        keep = {
            k: v
            for k, v in reflection.items()
            if k in ("max_tokens", "temperature", "timeout_s", "retries", "concurrency")
        }
        return {
            **keep,
            "kind": "openai",
            "model": self.student.model,
            "endpoint": self.student.endpoint,
            "api_key_env": self.student.api_key_env,
        }

    def _tracking(self) -> tuple[list[Any], Callable[[dict[str, Any]], None]]:
        settings = self.config.tracking.mlflow
        if settings is None:
            return [], lambda _: None
        try:
            import mlflow
            from ray.air.integrations.mlflow import MLflowLoggerCallback
        except ImportError:
            raise PipelineError("tracking.mlflow needs MLflow: pip install 'tooldistill[tracking]'") from None
        callback = MLflowLoggerCallback(
            tracking_uri=settings.tracking_uri,
            experiment_name=f"{settings.experiment}-candidates",
            save_artifact=False,
        )

        def finish(summary: dict[str, Any]) -> None:
            mlflow.set_tracking_uri(settings.tracking_uri)
            mlflow.set_experiment(settings.experiment)
            with mlflow.start_run(run_name=self.config.name):
                mlflow.log_param("run_dir", self.run_dir)
                mlflow.log_param("best_phase", summary["best_phase"])
                baseline = summary["baseline"]
                if baseline.get("rate") is not None:
                    mlflow.log_metric("match_rate_baseline", baseline["rate"])
                for phase in summary["phases"]:
                    if phase["test"].get("rate") is not None:
                        mlflow.log_metric(f"match_rate_{phase['phase']}", phase["test"]["rate"])
                    if "finetune" in phase:  # the training's loss per step, tokens/s and time
                        name, row = phase["phase"], phase["finetune"]
                        record = _read_json(self.workdir / "optimize" / name / "finetune.json") or {}
                        for point in (record.get("training") or {}).get("loss_curve") or []:
                            mlflow.log_metric(f"train_loss_{name}", point["loss"], step=point["step"])
                        for key in ("tokens_per_s", "train_seconds", "final_loss"):
                            if row.get(key) is not None:
                                mlflow.log_metric(f"train_{key}_{name}", row[key])

        return [callback], finish

    def _write_student(self, stopped: float | None = None) -> None:
        if self.student is None:
            return
        info = dict(self.student.info)
        value = {"endpoint": self.student.endpoint, "model": self.student.model, **info}
        if stopped is not None and "started" in info:
            seconds = stopped - float(info["started"])
            value.update(
                stopped=stopped,
                serve_seconds=round(seconds, 1),
                gpu_hours=round(
                    seconds
                    / 3600
                    * float(info.get("replicas") or 1)
                    * float(info.get("gpus_per_replica") or 0),
                    4,
                ),
            )
        (self.workdir / "student.json").write_text(json.dumps(value, indent=2) + "\n")

    def stop_student(self) -> None:
        if self.student is None:
            return
        try:
            self.student.stop()
        finally:
            self._write_student(stopped=time.time())

    def report(self) -> None:
        if not self.config.report.enabled:
            self.skip("report", "disabled", "report.enabled is false")
            return
        if "report" not in self.selected:
            self.skip("report", "not selected", "--until stops before it")
            return
        from tooldistill.report import render_report

        with self.log.stage("report") as record:
            self.log.write(finished=True)  # every stage with work is done; the report says so
            paths = render_report(str(self.workdir), run_uri=self.run_dir)
            record.detail = {
                "markdown": str(paths.markdown),
                "html": str(paths.html),
                "note": str(paths.html),
            }
            self.result.report = (
                str(paths.html) if not is_remote(self.run_dir) else self.uri("report", Path(paths.html).name)
            )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _rate_text(summary: dict[str, Any]) -> str:
    rate = summary.get("rate")
    if rate is None:
        return "no examples"
    low, high = summary.get("ci95") or (None, None)
    interval = f" [{low:.1%}–{high:.1%}]" if low is not None else ""
    text = f"{summary.get('matched')}/{summary.get('n')} = {rate:.1%}{interval}"
    for mode, other in (summary.get("also") or {}).items():
        if other.get("rate") is not None:
            low, high = other.get("ci95") or (0.0, 0.0)
            text += f"; {mode}: {other.get('matched')}/{other.get('n')} = {other['rate']:.1%} [{low:.1%}–{high:.1%}]"
    context = summary.get("context") or {}
    if context.get("cut") or context.get("skipped"):
        text += f"; context policy: {context.get('cut', 0)} cut, {context.get('skipped', 0)} skipped"
    return text


def select_stages(start_from: str | None = None, until: str | None = None) -> set[str]:
    for name in (start_from, until):
        if name is not None and name not in STAGES:
            raise PipelineError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    first = STAGES.index(start_from) if start_from else 0
    last = STAGES.index(until) if until else len(STAGES) - 1
    if first > last:
        raise PipelineError(f"--from {start_from} comes after --until {until}")
    return set(STAGES[first : last + 1])


def run_pipeline(
    config: PipelineConfig,
    run_dir: str | None = None,
    executor: Executor | None = None,
    *,
    start_from: str | None = None,
    until: str | None = None,
    say: Say | None = None,
    show_progress: bool = True,
) -> RunResult:
    """Run the selected stages; each is skipped when its output is up to date.

    The run folder is locked for the duration (``runlock``): a second run on it stops with a
    ``PipelineError`` naming the holder."""
    run_dir = run_dir or config.run_dir
    selected = select_stages(start_from, until)
    say = say or (lambda _: None)
    try:
        lock = runlock.RunLock(run_dir, warn=say).acquire()
    except runlock.RunLockError as error:
        raise PipelineError(str(error)) from None
    try:
        run = _Run(config, run_dir, executor, selected, say, show_progress)
        try:
            traces = run.ingest()
            source = run.teacher(traces)
            data = run.curate(source)
            try:
                run.optimize(data)
            finally:
                run.stop_student()
            run.report()
        finally:
            run.log.write(finished=True)
            run.sync()
        return run.result
    finally:
        lock.release()
