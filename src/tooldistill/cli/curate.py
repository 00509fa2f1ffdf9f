"""``tooldistill curate embed|semdedup|car|split|all``: the curation stages on the command line.

Each command builds a stage config from its flags, runs it, and prints what happened (skipped when
up to date) and the funnel: traces in, duplicates, kept, selected, and the split sizes.  A flag that
stands for a stage config field takes its default from that config (``EmbedConfig``, ``TextView``,
``SemDedupConfig``, ``CarConfig``, ``SplitConfig``, ``QualityConfig``).  Errors the user can act on
exit with status 2 (``CurateError`` is a ``ValueError``, one of the CLI's user errors).

Each command holds the run lock of its ``--out`` folder while it writes (``common.writing``): a
second command on the same folder, or one inside a folder a ``tooldistill run`` is using, stops
with an error that names the holder.
"""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from tooldistill import store
from tooldistill.cli.common import console, executor_options, model_default, options, say, writing
from tooldistill.curate.car import CarConfig
from tooldistill.curate.embed import EmbedConfig
from tooldistill.curate.quality import QualityConfig
from tooldistill.curate.semdedup import SemDedupConfig
from tooldistill.curate.split import SplitConfig
from tooldistill.curate.text import TextView


def _runner(executor: str, ray_address: str | None) -> Any:
    from tooldistill.curate.runner import make_runner

    return make_runner(executor, address=ray_address)


_io = options(
    click.option("--dataset", required=True, help="Input traces dataset (folder or s3://)."),
    click.option("--out", required=True, help="Output dataset (folder or s3://)."),
    click.option("--force", is_flag=True, help="Rebuild even when the output is up to date."),
)
_executor = executor_options("Ray Data actor pool / Ray tasks")
_embedding = options(
    click.option(
        "--model", default=None, help="Local sentence-transformers folder (default: all-MiniLM-L6-v2)."
    ),
    click.option(
        "--batch-size",
        default=model_default(EmbedConfig, "batch_size"),
        show_default=True,
        help="Texts per forward pass.",
    ),
    click.option("--concurrency", type=int, default=None, help="Embedding actors (default: per CPU or GPU)."),
    click.option(
        "--num-gpus", type=float, default=None, help="GPUs per actor (default: 1 if the cluster has GPUs)."
    ),
    click.option(
        "--cpus-per-actor",
        type=float,
        default=model_default(EmbedConfig, "cpus_per_actor"),
        show_default=True,
        help="CPUs per actor.",
    ),
    click.option("--rows-per-shard", type=int, default=None, help="Rows per task and output part."),
    click.option(
        "--request",
        type=click.Choice(["last_user", "first_user", "all_user", "none"]),
        default=model_default(TextView, "request"),
        show_default=True,
        help="Which user messages go into the text view.",
    ),
    click.option(
        "--calls",
        type=click.Choice(["full", "names", "none"]),
        default=model_default(TextView, "calls"),
        show_default=True,
        help="How the chosen calls go into the text view.",
    ),
    click.option("--system", is_flag=True, help="Put the system prompt into the text view."),
    click.option("--tool-names", is_flag=True, help="Put the offered tools' names into the text view."),
    click.option("--tool-schemas", is_flag=True, help="Put the offered tools' schemas into the text view."),
    click.option(
        "--on-empty",
        type=click.Choice(["error", "drop"]),
        default=model_default(EmbedConfig, "on_empty"),
        show_default=True,
        help="A trace with an empty text view: fail, or leave it out.",
    ),
)
_quality = click.option(
    "--quality-weights",
    default=",".join(
        f"{name}={weight:g}" for name, weight in model_default(QualityConfig, "weights").items()
    ),
    show_default=True,
    help="Quality scorers and weights, NAME=WEIGHT,...",
)


def _seed(model: type[Any]) -> Any:
    """``--seed`` with the default of ``model`` (the stage the command runs; ``all``: SemDeDup's)."""
    return click.option(
        "--seed",
        default=model_default(model, "seed"),
        show_default=True,
        help="Seed for k-means, random rank and split.",
    )


def _embed_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": kwargs["model"],
        "batch_size": kwargs["batch_size"],
        "concurrency": kwargs["concurrency"],
        "num_gpus": kwargs["num_gpus"],
        "cpus_per_actor": kwargs["cpus_per_actor"],
        "rows_per_shard": kwargs["rows_per_shard"],
        "on_empty": kwargs["on_empty"],
        "view": TextView(
            request=kwargs["request"],
            calls=kwargs["calls"],
            system=kwargs["system"],
            tool_names=kwargs["tool_names"],
            tool_schemas=kwargs["tool_schemas"],
        ),
    }


def _embedded(
    dataset: str, out: str, force: bool, executor: str, ray_address: str | None, kwargs: dict[str, Any]
) -> tuple[Any, str]:
    """The runner, and DATASET's embedded traces: DATASET itself when it has embeddings, else
    OUT/embedded, made with the ``_embedding`` flags in ``kwargs``."""
    from tooldistill.curate.embed import ensure_embedded

    runner = _runner(executor, ray_address)
    config = EmbedConfig(
        dataset=dataset, out=store.join(out, "embedded"), force=force, **_embed_options(kwargs)
    )
    return runner, ensure_embedded(config, runner).uri


def _quality_config(text: str) -> QualityConfig:
    from tooldistill.curate.quality import parse_weights

    return QualityConfig(weights=parse_weights(text))


def _title(stage: str, uri: str, skipped: bool) -> str:
    return f"{stage} → {uri}" + (" (up to date, skipped)" if skipped else "")


def _print_funnel(title: str, rows: list[tuple[str, Any]]) -> None:
    console.print(title, highlight=False, soft_wrap=True)
    table = Table()
    table.add_column("step")
    table.add_column("traces", justify="right")
    for name, value in rows:
        table.add_row(name, str(value))
    console.print(table)


def _print_rates(stats: dict[str, Any]) -> None:
    rates = ", ".join(f"ε={eps}: {rate:.1%}" for eps, rate in stats["removal_rates"].items())
    say(f"removal rate by ε: {rates}")


def _semdedup(name: str) -> Any:
    return model_default(SemDedupConfig, name)


def _car(name: str) -> Any:
    return model_default(CarConfig, name)


_RANKS = click.Choice(["quality", "centroid", "random"])


@click.group("curate")
def curate() -> None:
    """Curate traces: embed, SemDeDup, CaR selection, train/val/test split."""


@curate.command("embed")
@_io
@_embedding
@_executor
def embed_command(
    dataset: str, out: str, force: bool, executor: str, ray_address: str | None, **kwargs: Any
) -> None:
    """Embed a text view of every trace (sentence-transformers; Ray Data actor pool)."""
    from tooldistill.curate.embed import embed

    with writing(out):
        config = EmbedConfig(dataset=dataset, out=out, force=force, **_embed_options(kwargs))
        result = embed(config, _runner(executor, ray_address))
        stats = result.stats
        _print_funnel(
            _title("embed", result.uri, result.skipped),
            [
                ("in", stats["in"]),
                ("empty views dropped", stats["empty_dropped"]),
                ("embedded", stats["embedded"]),
            ],
        )
        if not result.skipped:
            say(
                f"model {stats['model']} (dim {stats['dim']}), {stats['workers']} {stats['executor']} workers, "
                f"{stats['traces_per_s']} traces/s"
            )


@curate.command("semdedup")
@_io
@click.option(
    "--eps", default=_semdedup("eps"), show_default=True, help="Drop above cosine similarity 1 - eps."
)
@click.option("--k", type=int, default=None, help="Clusters (default: N // cluster-size, at least 1).")
@click.option(
    "--cluster-size",
    default=_semdedup("cluster_size"),
    show_default=True,
    help="Traces per cluster for the default k.",
)
@click.option(
    "--halo",
    default=_semdedup("halo"),
    show_default=True,
    help="Boundary halo (cosine margin); 0: the paper's algorithm.",
)
@click.option(
    "--rank",
    type=_RANKS,
    default=_semdedup("rank"),
    show_default=True,
    help="Which copy survives: highest quality, farthest from the centroid (paper), random.",
)
@_quality
@_seed(SemDedupConfig)
@_embedding
@_executor
def semdedup_command(
    dataset: str,
    out: str,
    force: bool,
    eps: float,
    k: int | None,
    cluster_size: int,
    halo: float,
    rank: str,
    quality_weights: str,
    seed: int,
    executor: str,
    ray_address: str | None,
    **kwargs: Any,
) -> None:
    """Drop near-duplicate traces (embedding first, into OUT/embedded, when DATASET has none)."""
    from tooldistill.curate.semdedup import run_semdedup

    with writing(out):
        runner, embedded = _embedded(dataset, out, force, executor, ray_address, kwargs)
        config = SemDedupConfig(
            dataset=embedded,
            out=out,
            eps=eps,
            k=k,
            cluster_size=cluster_size,
            halo=halo,
            rank=rank,  # type: ignore[arg-type]
            quality=_quality_config(quality_weights),
            seed=seed,
            force=force,
        )
        result = run_semdedup(config, runner)
        stats = result.stats
        _print_funnel(
            _title(f"semdedup ε={eps}", result.dataset.uri, result.skipped),
            [("in", stats["in"]), ("duplicates", stats["duplicates"]), ("kept", stats["kept"])],
        )
        _print_rates(stats)


@curate.command("car")
@_io
@click.option("--k", type=int, default=None, help="Clusters (default: int(sqrt(N / 2))).")
@click.option(
    "--per-cluster", default=_car("per_cluster"), show_default=True, help="Keep the top n of every cluster."
)
@click.option(
    "--top", "top_overall", default=_car("top_overall"), show_default=True, help="Keep the top m overall."
)
@_quality
@_seed(CarConfig)
@_embedding
@_executor
def car_command(
    dataset: str,
    out: str,
    force: bool,
    k: int | None,
    per_cluster: int,
    top_overall: int,
    quality_weights: str,
    seed: int,
    executor: str,
    ray_address: str | None,
    **kwargs: Any,
) -> None:
    """Select the top n traces per cluster plus the top m overall by quality (CaR)."""
    from tooldistill.curate.car import run_car

    with writing(out):
        _, embedded = _embedded(dataset, out, force, executor, ray_address, kwargs)
        config = CarConfig(
            dataset=embedded,
            out=out,
            k=k,
            per_cluster=per_cluster,
            top_overall=top_overall,
            quality=_quality_config(quality_weights),
            seed=seed,
            force=force,
        )
        result = run_car(config)
        stats = result.stats
        _print_funnel(
            _title("car", result.dataset.uri, result.skipped),
            [("in", stats["in"]), ("selected", stats["selected"])],
        )
        say(
            f"{stats['k']} clusters; mean quality {stats['quality']['mean_all']} → "
            f"{stats['quality']['mean_selected']} selected; reasons in {store.join(out, 'decisions')}"
        )


def _fractions(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError as error:
        raise click.BadParameter(f"{text!r} is not three numbers, e.g. 0.8,0.1,0.1") from error
    if len(values) != 3:
        raise click.BadParameter(f"{text!r} is not three numbers, e.g. 0.8,0.1,0.1")
    return values  # type: ignore[return-value]


_split_fractions = click.option(
    "--fractions",
    default=",".join(f"{share:g}" for share in model_default(SplitConfig, "fractions")),
    show_default=True,
    help="Shares of train, val, test.",
)


@curate.command("split")
@_io
@_split_fractions
@_seed(SplitConfig)
def split_command(dataset: str, out: str, force: bool, fractions: str, seed: int) -> None:
    """Deterministic train/val/test split, stratified by cluster and tool (OUT/train, OUT/val, OUT/test)."""
    from tooldistill.curate.split import run_split

    with writing(out):
        config = SplitConfig(
            dataset=dataset, out=out, fractions=_fractions(fractions), seed=seed, force=force
        )
        result = run_split(config)
        stats = result.stats
        _print_funnel(
            _title("split", result.dataset.uri, result.skipped),
            [("in", stats["in"]), ("train", stats["train"]), ("val", stats["val"]), ("test", stats["test"])],
        )


@curate.command("all")
@_io
@click.option(
    "--eps", default=_semdedup("eps"), show_default=True, help="SemDeDup: drop above similarity 1 - eps."
)
@click.option("--dedup-k", type=int, default=None, help="SemDeDup clusters (default: N // cluster-size).")
@click.option(
    "--cluster-size",
    default=_semdedup("cluster_size"),
    show_default=True,
    help="SemDeDup traces per cluster.",
)
@click.option(
    "--halo",
    default=_semdedup("halo"),
    show_default=True,
    help="SemDeDup boundary halo; 0: the paper's algorithm.",
)
@click.option(
    "--rank", type=_RANKS, default=_semdedup("rank"), show_default=True, help="SemDeDup: which copy survives."
)
@click.option("--car-k", type=int, default=None, help="CaR clusters (default: int(sqrt(N / 2))).")
@click.option(
    "--per-cluster", default=_car("per_cluster"), show_default=True, help="CaR: top n of every cluster."
)
@click.option(
    "--top", "top_overall", default=_car("top_overall"), show_default=True, help="CaR: top m overall."
)
@_quality
@_split_fractions
@_seed(SemDedupConfig)
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="STAGE.FIELD=VALUE",
    help="Any stage option (a YAML value), e.g. --set length.window=8192 turns the optional length "
    "stage on; repeat for more.",
)
@_embedding
@_executor
def all_command(
    dataset: str,
    out: str,
    force: bool,
    eps: float,
    dedup_k: int | None,
    cluster_size: int,
    halo: float,
    rank: str,
    car_k: int | None,
    per_cluster: int,
    top_overall: int,
    quality_weights: str,
    fractions: str,
    seed: int,
    executor: str,
    ray_address: str | None,
    settings: tuple[str, ...],
    **kwargs: Any,
) -> None:
    """Embed, SemDeDup, CaR and split into OUT/{embedded,deduped,curated,split}."""
    from tooldistill.curate.chain import run_chain
    from tooldistill.curate.registry import StageContext

    quality = _quality_config(quality_weights)
    options: dict[str, dict[str, Any]] = {
        "embed": _embed_options(kwargs),
        "semdedup": {"eps": eps, "k": dedup_k, "cluster_size": cluster_size, "halo": halo, "rank": rank,
                     "quality": quality, "seed": seed},
        "car": {"k": car_k, "per_cluster": per_cluster, "top_overall": top_overall, "quality": quality,
                "seed": seed},
        "split": {"fractions": _fractions(fractions), "seed": seed},
    }  # fmt: skip
    for setting in settings:
        stage, field, value = _setting(setting)
        options.setdefault(stage, {})[field] = value
    with writing(out):
        chain = run_chain(dataset, out, options, StageContext(_runner(executor, ray_address)), force=force)
        assert chain is not None  # no step hook: every stage runs
        skipped = chain.skipped
        _print_funnel(
            f"curate → {out}" + (f" (up to date, skipped: {', '.join(skipped)})" if skipped else ""),
            _funnel_rows(chain.funnel),
        )
        _print_rates(chain.results["semdedup"].stats)


def _setting(text: str) -> tuple[str, str, Any]:
    """``STAGE.FIELD=VALUE`` of ``--set``: the stage (checked against the registry), the field and
    the value read as YAML."""
    import yaml

    from tooldistill.curate.registry import NAMES

    name, sep, raw = text.partition("=")
    stage, dot, field = name.partition(".")
    if not sep or not dot or not field:
        raise click.BadParameter(f"{text!r}: expected STAGE.FIELD=VALUE", param_hint="--set")
    if stage not in NAMES:
        raise click.BadParameter(
            f"{text!r}: no stage {stage!r}; stages: {', '.join(NAMES)}", param_hint="--set"
        )
    return stage, field, yaml.safe_load(raw)


def _funnel_rows(funnel: dict[str, Any]) -> list[tuple[str, Any]]:
    """The funnel's rows from its per-stage figures: what came in, what each stage kept, and each
    reason traces went."""
    from tooldistill.curate.registry import stage

    rows: list[tuple[str, Any]] = []
    for record in funnel["stages"]:
        entry = stage(record["stage"])
        if not rows:
            rows.append(("in", record["in"]))
        for went in entry.went:
            count = record["went"].get(went.key)
            if count or (went.always and count is not None):
                rows.append((f"  {went.label.lower()}", count))
        if entry.parts:
            rows.append((" / ".join(entry.parts), " / ".join(str(record.get(p)) for p in entry.parts)))
        else:
            rows.append((entry.label.lower(), record["kept"]))
    return rows


COMMANDS: tuple[click.Command, ...] = (curate,)
