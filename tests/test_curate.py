"""Curation: text view, embedding (in-process and Ray Data), SemDeDup against an exact all-pairs
implementation, quality scorers, CaR, split, stages (resume, decisions, bad input) and the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner

from tooldistill import store
from tooldistill.cli import main
from tooldistill.curate.car import CarConfig, car_select, run_car
from tooldistill.curate.chain import run_chain
from tooldistill.curate.common import CurateError, decisions_of
from tooldistill.curate.embed import EmbedConfig, Embedder, embed, embedding_array, resolve_model
from tooldistill.curate.kmeans import gpu_available, spherical_kmeans
from tooldistill.curate.quality import SCORERS, QualityConfig, register_scorer, score
from tooldistill.curate.registry import StageContext
from tooldistill.curate.runner import LocalRunner, RayRunner
from tooldistill.curate.semdedup import SemDedupConfig, boundary_groups, run_semdedup, semdedup
from tooldistill.curate.split import SplitConfig, assign_splits, run_split
from tooldistill.curate.text import TextView, text_of
from tooldistill.schema import Message, ToolCall, ToolSpec, Trace, trace_to_row, traces_to_table

WEATHER = ToolSpec(
    name="get_weather",
    description="Weather for a city",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["C", "F"]}},
        "required": ["city"],
    },
)
SEARCH = ToolSpec(
    name="search",
    parameters={"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
)
CITIES = ["Paris", "Lima", "Oslo", "Cairo", "Tokyo", "Quito", "Perth", "Dakar", "Hanoi", "Bern"]
TOPICS = ["train times", "museum hours", "vegan bakeries", "bike rental", "tax forms", "chess openings"]


def trace(request: str, calls: list[ToolCall], source_id: str, **extra: Any) -> Trace:
    return Trace(
        source_id=source_id,
        source="test",
        messages=[Message(role="system", content="You are helpful."), Message(role="user", content=request)],
        tools=[WEATHER, SEARCH],
        reference_calls=calls,
        **extra,
    ).with_id()


def sample_traces(n_unique: int = 40, n_copies: int = 8) -> list[Trace]:
    """Distinct requests plus ``n_copies`` exact re-asks of earlier ones (same text, other source id)."""
    traces = []
    for i in range(n_unique):
        if i % 2:
            city = CITIES[i % len(CITIES)]
            traces.append(
                trace(
                    f"What's the weather in {city} on day {i}?",
                    [ToolCall(name="get_weather", arguments={"city": city})],
                    f"u{i}",
                )
            )
        else:
            topic = TOPICS[i % len(TOPICS)]
            traces.append(
                trace(
                    f"Find {topic} near stop {i}",
                    [ToolCall(name="search", arguments={"query": f"{topic} {i}"})],
                    f"u{i}",
                )
            )
    for j in range(n_copies):
        original = traces[j * 3]
        traces.append(original.model_copy(update={"source_id": f"copy{j}", "id": ""}).with_id())
    return traces


def write_dataset(
    uri: str, traces: list[Trace], vectors: np.ndarray | None = None, parts: int = 2
) -> store.Dataset:
    """A published traces dataset in ``parts`` parts, with an ``embedding`` column when given."""
    table = traces_to_table(traces)
    if vectors is not None:
        table = table.append_column("embedding", embedding_array(vectors))
    token = store.new_token()
    size = -(-table.num_rows // parts) if table.num_rows else 1
    infos = [
        store.write_part(uri, token, i, table.slice(start, size))
        for i, start in enumerate(range(0, table.num_rows, size))
    ]
    manifest = store.Manifest(
        kind="traces", stage="test", rows=table.num_rows, parts=infos, config_hash="t", fingerprint=token
    )
    return store.Dataset(uri, store.publish(uri, token=token, manifest=manifest))


# ---------------------------------------------------------------------------------------------
# Planted-duplicate vectors and the exact all-pairs reference
# ---------------------------------------------------------------------------------------------


def planted(n_base: int, d: int, seed: int, topics: int = 12, spread: float = 0.6) -> np.ndarray:
    """Base points around well-separated topic centres, then near-duplicates of some of them at
    similarities spread over about 0.85-1.0 (and a few exact copies), in shuffled order."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((topics, d)) * 3
    base = centres[rng.integers(0, topics, n_base)] + spread * rng.standard_normal((n_base, d))
    picks = rng.integers(0, n_base, n_base // 3)
    # noise of r times the base's norm: similarity about 1 / sqrt(1 + r^2), from 1.0 down to ~0.86
    r = rng.uniform(0.0, 0.6, (len(picks), 1))
    direction = rng.standard_normal((len(picks), d))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    copies = base[picks] + r * np.linalg.norm(base[picks], axis=1, keepdims=True) * direction
    exact = base[rng.integers(0, n_base, 5)]
    x = np.vstack([base, copies, exact]).astype(np.float32)
    return x[rng.permutation(len(x))]


def exact_all_pairs(
    x: np.ndarray,
    priority: np.ndarray,
    eps: float,
    labels: np.ndarray | None = None,
    halo: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reference semantics, written out plainly: rank every row (priority high first, then
    row index), take the full similarity matrix, and drop a row when its similarity to any row
    ranked before it (in a cluster or boundary group they share, when labels and the boundary
    memberships ``(rows, groups)`` are given) exceeds 1 - eps."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    n = len(x)
    order = np.lexsort((np.arange(n), -priority))
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n)
    sims = x.astype(np.float64) @ x.astype(np.float64).T
    before = position[None, :] < position[:, None]  # column ranked before row
    if labels is not None:
        share = labels[None, :] == labels[:, None]
        if halo is not None and len(halo[0]):
            member = np.zeros((n, int(halo[1].max()) + 1), dtype=np.int64)
            member[halo[0], halo[1]] = 1
            share |= (member @ member.T) > 0
        before &= share
    sims = np.where(before, sims, -np.inf)
    max_sim = sims.max(axis=1)
    # for each row, a bool row of the members ranked before it whose similarity is the maximum
    nearest = np.isclose(sims, max_sim[:, None], rtol=0, atol=1e-6) & np.isfinite(max_sim)[:, None]
    return max_sim > 1 - eps, max_sim, nearest


def _priority(rule: str, result: Any, quality: np.ndarray, ids: list[str]) -> np.ndarray:
    from tooldistill.curate.common import hash_order

    if rule == "quality":
        return quality
    if rule == "centroid":
        return -result.centroid_sim.astype(np.float64)
    return hash_order(ids, 0)


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return planted(900, 32, seed=3)


def _assert_same(result: Any, dropped: np.ndarray, max_sim: np.ndarray, nearest: np.ndarray) -> None:
    assert np.array_equal(~result.kept, dropped)
    finite = np.isfinite(max_sim)
    assert np.array_equal(np.isfinite(result.max_sim), finite)
    assert np.allclose(result.max_sim[finite], max_sim[finite], atol=1e-5)
    # duplicate_of names a higher-ranked member with the maximal similarity (ties: any of them)
    rows = np.flatnonzero(dropped)
    assert np.all(nearest[rows, result.duplicate_of[rows]])
    assert np.all(result.duplicate_of[~dropped] == -1)


@pytest.mark.parametrize("rule", ["quality", "centroid", "random"])
def test_semdedup_k1_equals_exact_all_pairs(vectors: np.ndarray, rule: str) -> None:
    n = len(vectors)
    ids = [f"t{i:05d}" for i in range(n)]
    quality = np.random.default_rng(1).random(n)
    removed = []
    for eps in (0.005, 0.02, 0.05, 0.1, 0.15):
        result = semdedup(vectors, eps=eps, k=1, rank=rule, quality=quality, ids=ids, block_rows=128)  # type: ignore[arg-type]
        dropped, max_sim, nearest = exact_all_pairs(vectors, _priority(rule, result, quality, ids), eps)
        _assert_same(result, dropped, max_sim, nearest)
        removed.append(int(dropped.sum()))
    # the planted data makes every ε matter, so the test is sensitive to the threshold
    assert removed == sorted(removed) and len(set(removed)) == len(removed) and removed[0] > 0


@pytest.mark.parametrize("rule", ["quality", "centroid", "random"])
@pytest.mark.parametrize("halo", [0.0, 0.3])
def test_semdedup_within_clusters_equals_exact_restricted_to_clusters(
    vectors: np.ndarray, rule: str, halo: float
) -> None:
    """With many clusters and small blocks (oversized clusters split over several work items), the
    result equals the exact computation over pairs that share a cluster (own or halo)."""
    n = len(vectors)
    ids = [f"t{i:05d}" for i in range(n)]
    quality = np.random.default_rng(2).random(n)
    for eps in (0.02, 0.1):
        result = semdedup(
            vectors,
            eps=eps,
            k=7,
            rank=rule,
            quality=quality,
            ids=ids,
            block_rows=32,
            target_pairs=4096,
            halo=halo,  # type: ignore[arg-type]
        )
        assert result.timings["work_items"] > 7
        assert (len(result.halo_rows) > 0) == (halo > 0)
        dropped, max_sim, nearest = exact_all_pairs(
            vectors,
            _priority(rule, result, quality, ids),
            eps,
            labels=result.labels,
            halo=(result.halo_rows, result.halo_groups),
        )
        _assert_same(result, dropped, max_sim, nearest)


def test_semdedup_with_clusters_matches_global_exact_on_planted_data(vectors: np.ndarray) -> None:
    """Near-duplicates land in the same cluster, so clustering loses nothing here."""
    n = len(vectors)
    ids = [f"t{i:05d}" for i in range(n)]
    quality = np.random.default_rng(4).random(n)
    for eps in (0.01, 0.05):
        for halo in (0.0, 0.03):
            result = semdedup(vectors, eps=eps, k=6, rank="quality", quality=quality, ids=ids, halo=halo)
            dropped, _, _ = exact_all_pairs(vectors, quality, eps)
            assert np.array_equal(~result.kept, dropped)


def test_boundary_groups_pair_rows_near_a_boundary_from_both_sides() -> None:
    labels = np.array([0, 0, 1, 1, 2, 0])
    nearest = np.array([[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 1, 0], [0, 1, 2]])
    sims = np.array(
        [
            [0.9, 0.89, 0.5],  # joins 0|1
            [0.9, 0.80, 0.2],  # too far from both
            [0.7, 0.68, 0.67],  # joins 0|1 and 1|2
            [0.7, 0.40, 0.3],
            [0.6, 0.59, 0.1],  # joins 1|2
            [0.9, 0.5, 0.88],  # near 2 (its third-nearest): 0|2 has one side only, dropped
        ],
        dtype=np.float32,
    )
    rows, groups, pairs = boundary_groups(labels, nearest, sims, 0.03, 3)
    assert pairs.tolist() == [[0, 1], [1, 2]]
    assert sorted(zip(rows.tolist(), groups.tolist(), strict=True)) == [(0, 0), (2, 0), (2, 1), (4, 1)]
    assert [len(a) for a in boundary_groups(labels, nearest, sims, 0.0, 3)] == [0, 0, 0]
    one = boundary_groups(labels, nearest[:, :2], sims[:, :2], 0.03, 3)  # second-nearest only
    assert sorted(zip(one[0].tolist(), one[1].tolist(), strict=True)) == [(0, 0), (2, 0)]


def test_semdedup_halo_catches_a_pair_across_a_cluster_boundary() -> None:
    """Two tight clusters and a near-duplicate pair on either side of the boundary between them:
    without the halo the pair is never compared; with it, one of the two is dropped."""
    rng = np.random.default_rng(5)
    d = 16
    a, b = np.eye(d)[0], np.eye(d)[1]
    x = np.vstack(
        [
            a + 0.01 * rng.standard_normal((40, d)),
            b + 0.01 * rng.standard_normal((40, d)),
            a + b + 0.06 * a,  # similarity 0.998 to the next, ~0.04 closer to a than to b
            a + b + 0.06 * b,
        ]
    ).astype(np.float32)
    ids = [f"t{i:03d}" for i in range(len(x))]
    paper = semdedup(x, eps=0.01, k=2, rank="random", ids=ids, halo=0.0)
    assert paper.labels[80] != paper.labels[81] and paper.kept[80] and paper.kept[81]
    halo = semdedup(x, eps=0.01, k=2, rank="random", ids=ids, halo=0.05)
    assert {80, 81} <= set(halo.halo_rows.tolist()) and halo.halo_row_count < 10
    assert halo.kept[80] != halo.kept[81]
    assert np.array_equal(halo.kept[:80], paper.kept[:80])


def test_semdedup_keep_rules_choose_the_survivor() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 16)).astype(np.float32)
    x[10] = x[3]  # an exact copy
    ids = [f"t{i:03d}" for i in range(50)]
    quality = np.full(50, 0.5)
    quality[10] = 0.9
    result = semdedup(x, eps=0.01, k=1, rank="quality", quality=quality, ids=ids)
    assert result.kept[10] and not result.kept[3] and result.duplicate_of[3] == 10
    tie = semdedup(x, eps=0.01, k=1, rank="quality", quality=np.full(50, 0.5), ids=ids)
    assert tie.kept[3] and not tie.kept[10]  # equal quality: the smaller id survives
    assert tie.removal_rates() == {"0.01": 0.02, "0.02": 0.02, "0.05": 0.02, "0.1": 0.02}


def test_semdedup_ray_tasks_equal_in_process(ray_cluster: None, vectors: np.ndarray) -> None:
    ids = [f"t{i:05d}" for i in range(len(vectors))]
    kwargs: dict[str, Any] = {
        "eps": 0.05,
        "k": 5,
        "rank": "random",
        "ids": ids,
        "block_rows": 64,
        "target_pairs": 8192,
    }
    local = semdedup(vectors, runner=LocalRunner(show_progress=False), **kwargs)
    remote = semdedup(vectors, runner=RayRunner(show_progress=False), **kwargs)
    assert np.array_equal(local.labels, remote.labels)
    assert np.array_equal(local.kept, remote.kept)
    assert np.array_equal(local.nearest, remote.nearest)
    assert np.allclose(local.max_sim, remote.max_sim, atol=1e-6)


def test_semdedup_bad_input() -> None:
    x = np.random.default_rng(0).standard_normal((20, 8)).astype(np.float32)
    with pytest.raises(CurateError, match="k=21 clusters is more than the 20 traces"):
        semdedup(x, eps=0.05, k=21, rank="random")
    bad = x.copy()
    bad[4, 2] = np.nan
    with pytest.raises(CurateError, match="1 embeddings contain NaN.*first: a4"):
        semdedup(bad, eps=0.05, rank="random", ids=[f"{c}{i}" for i, c in enumerate("ab" * 10)])
    zero = x.copy()
    zero[0] = 0
    with pytest.raises(CurateError, match="all zeros"):
        semdedup(zero, eps=0.05, rank="random")
    with pytest.raises(CurateError, match="non-empty"):
        semdedup(np.zeros((0, 8), dtype=np.float32), eps=0.05, rank="random")
    with pytest.raises(CurateError, match="eps must be in"):
        semdedup(x, eps=0.0, rank="random")
    with pytest.raises(CurateError, match="needs one quality score"):
        semdedup(x, eps=0.05, rank="quality")


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="faiss has no GPU support or sees no GPU")
def test_faiss_gpu_kmeans_and_assignment_agree_with_cpu(vectors: np.ndarray) -> None:
    from tooldistill.curate.kmeans import assign, normalize

    x = normalize(vectors)
    centroids = spherical_kmeans(x, 6, gpu=True)
    gpu_labels, gpu_sims = assign(x, centroids, gpu=True, nearest=2)
    cpu_labels, cpu_sims = assign(x, centroids, gpu=False, nearest=2)
    assert np.mean(gpu_labels == cpu_labels) > 0.999
    assert np.allclose(gpu_sims, cpu_sims, atol=1e-4)
    gpu = semdedup(vectors, eps=0.05, k=6, rank="random", gpu=True)
    cpu = semdedup(vectors, eps=0.05, k=6, rank="random", gpu=False)
    assert abs(gpu.removal_rate(0.05) - cpu.removal_rate(0.05)) < 0.01


# ---------------------------------------------------------------------------------------------
# Text view and embedding
# ---------------------------------------------------------------------------------------------


def test_text_view_shows_request_and_calls_not_schemas() -> None:
    row = trace_to_row(
        trace(
            "  What's the\nweather in Paris? ",
            [ToolCall(name="get_weather", arguments={"city": "Paris", "unit": "C"})],
            "a",
        )
    )
    text = text_of(row, TextView())
    assert text == "What's the weather in Paris?\n→ get_weather(city='Paris', unit='C')"
    assert "Weather for a city" not in text and "helpful" not in text
    assert "helpful" in text_of(row, TextView(system=True))
    assert text_of(row, TextView(calls="names")).endswith("→ get_weather")
    assert "tools: get_weather, search" in text_of(row, TextView(tool_names=True))
    assert '"required"' in text_of(row, TextView(tool_schemas=True))
    no_call = trace_to_row(trace("Just say hi", [], "b"))
    assert text_of(no_call, TextView()) == "Just say hi\n→ no tool call"
    empty = trace_to_row(trace("   ", [], "c"))
    assert text_of(empty, TextView()) == ""


@pytest.fixture(scope="module")
def embedded_pair(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same small dataset embedded in this process and by a Ray Data actor pool."""
    root = tmp_path_factory.mktemp("embed")
    traces = sample_traces()
    write_dataset(str(root / "traces"), traces, parts=3)
    local = embed(
        EmbedConfig(dataset=str(root / "traces"), out=str(root / "local")), LocalRunner(show_progress=False)
    )
    remote = embed(
        EmbedConfig(dataset=str(root / "traces"), out=str(root / "ray"), rows_per_shard=10, concurrency=2),
        RayRunner(show_progress=False),
    )
    assert not local.skipped and not remote.skipped
    return {"root": root, "traces": traces, "local": local.dataset, "ray": remote.dataset}


def _by_id(dataset: store.Dataset) -> dict[str, np.ndarray]:
    table = dataset.to_arrow()
    vectors = table.column("embedding").combine_chunks().values.to_numpy().reshape(table.num_rows, -1)
    return dict(zip(table.column("id").to_pylist(), vectors, strict=True))


def test_embed_ray_data_equals_in_process_and_direct_encode(embedded_pair: dict[str, Any]) -> None:
    local, remote = _by_id(embedded_pair["local"]), _by_id(embedded_pair["ray"])
    traces = embedded_pair["traces"]
    assert set(local) == set(remote) == {t.id for t in traces}
    for trace_id in local:
        assert np.allclose(local[trace_id], remote[trace_id], atol=1e-5)
    manifest = embedded_pair["ray"].manifest
    assert (
        manifest.stats["executor"] == "ray" and manifest.stats["shards"] == 6 and manifest.stats["dim"] == 384
    )
    # the vectors are the model's own, for the text view stored beside them
    table = embedded_pair["local"].to_arrow()
    direct = Embedder(resolve_model(None)).encode(table.column("text").to_pylist()[:5])
    assert np.allclose(np.stack([local[i] for i in table.column("id").to_pylist()[:5]]), direct, atol=1e-5)
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 384)
    # every trace column survives
    assert {t.id: t for t in embedded_pair["local"].to_traces()} == {t.id: t for t in traces}


def test_embed_is_skipped_when_unchanged_and_redone_when_the_view_changes(
    embedded_pair: dict[str, Any],
) -> None:
    root = embedded_pair["root"]
    again = embed(
        EmbedConfig(dataset=str(root / "traces"), out=str(root / "local")), LocalRunner(show_progress=False)
    )
    assert again.skipped
    config = EmbedConfig(dataset=str(root / "traces"), out=str(root / "local"), view=TextView(calls="names"))
    result = embed(config, LocalRunner(show_progress=False))
    dataset = result.dataset
    assert not result.skipped and all(
        t.endswith("→ search") or t.endswith("→ get_weather")
        for t in dataset.to_arrow().column("text").to_pylist()
    )


def test_embed_bad_input(tmp_path: Path) -> None:
    runner = LocalRunner(show_progress=False)
    write_dataset(str(tmp_path / "empty"), [])
    with pytest.raises(CurateError, match="has no traces"):
        embed(EmbedConfig(dataset=str(tmp_path / "empty"), out=str(tmp_path / "o")), runner)
    write_dataset(
        str(tmp_path / "t"), [trace("hello there", [], "a"), trace("", [], "b"), trace("", [], "c")], parts=1
    )
    with pytest.raises(CurateError, match="embedding model not found: .*nowhere"):
        embed(
            EmbedConfig(
                dataset=str(tmp_path / "t"), out=str(tmp_path / "o"), model=str(tmp_path / "nowhere")
            ),
            runner,
        )
    with pytest.raises(CurateError, match="2 traces have an empty text view"):
        embed(EmbedConfig(dataset=str(tmp_path / "t"), out=str(tmp_path / "o")), runner)
    assert store.read_manifest(str(tmp_path / "o")) is None and not list((tmp_path / "o").glob("part-*"))
    dataset = embed(
        EmbedConfig(dataset=str(tmp_path / "t"), out=str(tmp_path / "o"), on_empty="drop"), runner
    ).dataset
    assert dataset.manifest.rows == 1 and dataset.manifest.stats["empty_dropped"] == 2
    with pytest.raises(CurateError, match="2 empty texts"):
        Embedder(resolve_model(None)).encode(["fine", " ", ""])


# ---------------------------------------------------------------------------------------------
# Quality, CaR, split
# ---------------------------------------------------------------------------------------------


def test_quality_scorers() -> None:
    good = ToolCall(name="get_weather", arguments={"city": "Paris"})
    other = ToolCall(name="get_weather", arguments={"city": "Rome"})
    t = trace(
        "weather?", [good], "q", teacher_samples=[[good], [good], [other]], metadata={"judge_score": 0.4}
    )
    value, parts = score(t, QualityConfig())
    assert parts == {"consistency": pytest.approx(2 / 3, abs=1e-6), "schema": 1.0, "judge": 0.4}
    assert value == pytest.approx((2 / 3 + 1.0 + 0.4) / 3)
    weighted, _ = score(t, QualityConfig(weights={"consistency": 3.0, "judge": 1.0}))
    assert weighted == pytest.approx((3 * 2 / 3 + 0.4) / 4)
    bad_args = trace("weather?", [ToolCall(name="get_weather", arguments={"unit": "K"})], "r")
    assert score(bad_args, QualityConfig())[1] == {"consistency": None, "schema": 0.0, "judge": None}
    unknown = trace("weather?", [ToolCall(name="teleport", arguments={})], "s")
    assert score(unknown, QualityConfig())[1]["schema"] == 0.0
    nothing = trace("hi", [], "u", metadata={"judge_score": 7})  # out of [0, 1]: not a judge score
    assert score(nothing, QualityConfig()) == (0.5, {"consistency": None, "schema": None, "judge": None})
    with pytest.raises(ValueError, match="unknown quality scorer"):
        QualityConfig(weights={"vibes": 1.0})

    @register_scorer("short_request")
    def short_request(trace: Trace) -> float:
        return 1.0 if len(trace.messages[-1].content) < 10 else 0.0

    try:
        assert score(t, QualityConfig(weights={"short_request": 1.0}))[0] == 1.0
    finally:
        SCORERS.pop("short_request")


def test_car_selects_top_per_cluster_and_overall() -> None:
    rng = np.random.default_rng(5)
    centres = rng.standard_normal((4, 16)) * 5
    labels_true = np.repeat(np.arange(4), 25)
    x = (centres[labels_true] + rng.standard_normal((100, 16))).astype(np.float32)
    quality = rng.random(100)
    ids = [f"t{i:03d}" for i in range(100)]
    result = car_select(x, quality, ids, k=4, per_cluster=2, top_overall=5)
    expected = set(np.argsort(-quality)[:5].tolist())
    for c in range(4):
        members = np.flatnonzero(result.labels == c)
        expected |= set(members[np.argsort(-quality[members])][:2].tolist())
    assert set(np.flatnonzero(result.selected).tolist()) == expected
    best = int(np.argmax(quality))
    assert "top 5 overall (#1 of 100)" in result.reasons[best]
    worst = int(np.argmin(quality))
    assert result.reasons[worst].startswith("left: #") and "#100 of 100 overall" in result.reasons[worst]
    assert car_select(x, quality, ids).k == int(np.sqrt(50))


def test_split_is_deterministic_stratified_and_order_free() -> None:
    rng = np.random.default_rng(0)
    ids = [f"t{i:04d}" for i in range(1000)]
    strata = [f"c{rng.integers(0, 7)}-{rng.choice(['a', 'b', 'c'])}" for _ in ids]
    which = assign_splits(ids, strata, (0.8, 0.1, 0.1), seed=1)
    shuffled = rng.permutation(1000)
    again = assign_splits([ids[i] for i in shuffled], [strata[i] for i in shuffled], (0.8, 0.1, 0.1), seed=1)
    assert np.array_equal(which[shuffled], again)
    assert np.bincount(which).tolist() == [800, 100, 100]
    for stratum in set(strata):
        members = [i for i, s in enumerate(strata) if s == stratum]
        counts = np.bincount(which[members], minlength=3)
        assert np.all(np.abs(counts - np.array([0.8, 0.1, 0.1]) * len(members)) <= 2)
    assert not np.array_equal(assign_splits(ids, strata, (0.8, 0.1, 0.1), seed=2), which)


# ---------------------------------------------------------------------------------------------
# Stages, the whole chain, the CLI
# ---------------------------------------------------------------------------------------------


@pytest.fixture()
def embedded_dataset(tmp_path: Path) -> store.Dataset:
    """Traces with planted-duplicate vectors as their embeddings (no model needed)."""
    x = planted(300, 32, seed=11)
    traces = [
        trace(
            f"request {i}",
            [
                ToolCall(
                    name="search" if i % 3 else "get_weather",
                    arguments={"query": str(i)} if i % 3 else {"city": "Oslo"},
                )
            ],
            f"s{i}",
        )
        for i in range(len(x))
    ]
    return write_dataset(str(tmp_path / "embedded"), traces, x, parts=3)


def test_semdedup_stage_writes_kept_traces_and_every_decision(
    embedded_dataset: store.Dataset, tmp_path: Path
) -> None:
    out = str(tmp_path / "deduped")
    result = run_semdedup(
        SemDedupConfig(dataset=embedded_dataset.uri, out=out, eps=0.05, rank="centroid"), show_progress=False
    )
    stats = result.stats
    decisions = decisions_of(out)
    assert decisions.num_rows == stats["in"] == embedded_dataset.manifest.rows
    assert stats["kept"] + stats["duplicates"] == stats["in"] and stats["duplicates"] > 0
    assert result.dataset.manifest.rows == stats["kept"] == sum(decisions.column("kept").to_pylist())
    assert set(stats["removal_rates"]) == {"0.01", "0.02", "0.05", "0.1"}
    assert stats["removal_rates"]["0.05"] == pytest.approx(stats["duplicates"] / stats["in"], abs=1e-6)
    kept_table = result.dataset.to_arrow()
    assert {"embedding", "dedup_cluster", "dedup_max_sim", "duplicate_of"} <= set(kept_table.column_names)
    assert set(kept_table.column("id").to_pylist()) == {r["id"] for r in decisions.to_pylist() if r["kept"]}
    dropped = [r for r in decisions.to_pylist() if not r["kept"]]
    assert all(r["duplicate_of"] and r["dedup_max_sim"] > 0.95 for r in dropped)
    # the same config on the same input is skipped; another eps is not
    assert run_semdedup(
        SemDedupConfig(dataset=embedded_dataset.uri, out=out, eps=0.05, rank="centroid"), show_progress=False
    ).skipped
    again = run_semdedup(
        SemDedupConfig(dataset=embedded_dataset.uri, out=out, eps=0.1, rank="centroid"), show_progress=False
    )
    assert not again.skipped and again.stats["duplicates"] >= stats["duplicates"]
    assert decisions_of(out).num_rows == stats["in"]
    with pytest.raises(CurateError, match="k=10000 clusters is more than"):
        run_semdedup(SemDedupConfig(dataset=embedded_dataset.uri, out=out, k=10_000), show_progress=False)


def test_stages_refuse_nan_embeddings_and_missing_embeddings(tmp_path: Path) -> None:
    x = np.ones((4, 8), dtype=np.float32)
    x[2, 0] = np.nan
    traces = [trace(f"r{i}", [], f"n{i}") for i in range(4)]
    nan = write_dataset(str(tmp_path / "nan"), traces, x, parts=1)
    with pytest.raises(CurateError, match=f"1 embeddings contain NaN.*first: {traces[2].id}"):
        run_semdedup(
            SemDedupConfig(dataset=nan.uri, out=str(tmp_path / "o"), rank="random"), show_progress=False
        )
    plain = write_dataset(str(tmp_path / "plain"), traces, parts=1)
    with pytest.raises(CurateError, match="no column 'embedding'"):
        run_car(CarConfig(dataset=plain.uri, out=str(tmp_path / "o")), show_progress=False)


def test_curate_all_chain_and_split_subsets(embedded_dataset: store.Dataset, tmp_path: Path) -> None:
    out = str(tmp_path / "run")
    options = {"car": {"per_cluster": 2, "top_overall": 5}, "split": {"fractions": (0.5, 0.25, 0.25)}}
    context = StageContext(LocalRunner(show_progress=False), show_progress=False)
    result = run_chain(embedded_dataset.uri, out, options, context)
    assert result is not None
    funnel = result.funnel
    assert result.results["embed"].uri == embedded_dataset.uri  # the input already had embeddings
    assert not (tmp_path / "run" / "embedded").exists() and "length" not in result.results  # optional, off
    assert [s["stage"] for s in funnel["stages"]] == ["embed", "semdedup", "car", "split"]
    car = funnel["stages"][2]
    assert car["in"] == funnel["kept"] and car["kept"] + car["went"]["not_selected"] == car["in"]
    assert funnel["in"] == embedded_dataset.manifest.rows == funnel["duplicates"] + funnel["kept"]
    assert funnel["selected"] == result.results["car"].dataset.manifest.rows <= funnel["kept"]
    assert funnel["train"] + funnel["val"] + funnel["test"] == funnel["selected"]
    curated = result.results["car"].dataset.to_arrow()
    assert all(r.startswith("kept: ") for r in curated.column("car_reason").to_pylist())
    reasons = decisions_of(store.join(out, "curated")).column("reason").to_pylist()
    assert (
        len(reasons) == funnel["kept"]
        and sum(r.startswith("left: ") for r in reasons) == funnel["kept"] - funnel["selected"]
    )
    ids = set()
    for name in ("train", "val", "test"):
        subset = store.Dataset.open(store.join(store.join(out, "split"), name)).to_arrow()
        assert set(subset.column("split").to_pylist()) <= {name}
        ids |= set(subset.column("id").to_pylist())
    assert ids == set(curated.column("id").to_pylist())
    again = run_chain(embedded_dataset.uri, out, options, context)
    assert again is not None and again.skipped == ["embed", "semdedup", "car", "split"]
    with pytest.raises(ValueError, match="sum to 1"):
        SplitConfig(dataset="x", out="y", fractions=(0.5, 0.5, 0.5))
    assert (
        run_split(
            SplitConfig(dataset=result.results["car"].dataset.uri, out=str(tmp_path / "s2")),
            show_progress=False,
        ).stats["cluster_column"]
        == "car_cluster"
    )


def test_cli_curate_all_embeds_first_and_reports_the_funnel(tmp_path: Path) -> None:
    write_dataset(str(tmp_path / "traces"), sample_traces(n_unique=24, n_copies=4), parts=2)
    runner = CliRunner()
    args = [
        "curate",
        "all",
        "--dataset",
        str(tmp_path / "traces"),
        "--out",
        str(tmp_path / "run"),
        "--executor",
        "local",
        "--top",
        "3",
    ]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "duplicates removed" in result.output and "selected (car)" in result.output
    deduped = json.loads((tmp_path / "run" / "deduped" / "manifest.json").read_text())
    assert deduped["stats"]["duplicates"] >= 4  # the four exact re-asks
    assert (tmp_path / "run" / "embedded" / "manifest.json").exists()
    rerun = runner.invoke(main, args)
    assert rerun.exit_code == 0 and "up to date, skipped: embed, semdedup, car, split" in rerun.output
    split = runner.invoke(
        main,
        ["curate", "split", "--dataset", str(tmp_path / "run" / "curated"), "--out", str(tmp_path / "s")],
    )
    assert split.exit_code == 0 and "train" in split.output


def test_cli_curate_user_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(
        main, ["curate", "semdedup", "--dataset", str(tmp_path / "none"), "--out", str(tmp_path / "o")]
    )
    assert missing.exit_code == 2 and "error:" in missing.output and "no dataset at" in missing.output
    x = planted(30, 8, seed=1)
    write_dataset(str(tmp_path / "e"), [trace(f"r{i}", [], f"e{i}") for i in range(len(x))], x)
    too_many = runner.invoke(
        main,
        [
            "curate",
            "semdedup",
            "--dataset",
            str(tmp_path / "e"),
            "--out",
            str(tmp_path / "o"),
            "--k",
            "500",
            "--executor",
            "local",
        ],
    )
    assert too_many.exit_code == 2 and "k=500 clusters is more than" in too_many.output
    bad_model = runner.invoke(
        main,
        [
            "curate",
            "embed",
            "--dataset",
            str(tmp_path / "e"),
            "--out",
            str(tmp_path / "o2"),
            "--model",
            str(tmp_path / "m"),
            "--executor",
            "local",
        ],
    )
    assert bad_model.exit_code == 2 and "embedding model not found" in bad_model.output


def test_a_trace_repeated_across_parts_is_curated_once(tmp_path: Path) -> None:
    """Ingest drops repeats within a shard only; curation keeps the first occurrence."""
    x = planted(40, 8, seed=2)
    traces = [trace(f"r{i}", [], f"p{i}") for i in range(len(x))]
    dataset = write_dataset(str(tmp_path / "e"), [*traces, traces[0]], np.vstack([x, x[:1]]), parts=2)
    result = run_semdedup(
        SemDedupConfig(dataset=dataset.uri, out=str(tmp_path / "d"), rank="random"), show_progress=False
    )
    assert result.stats["in"] == len(traces) and result.stats["repeated_ids_dropped"] == 1
    ids = result.dataset.to_arrow().column("id").to_pylist()
    assert len(ids) == len(set(ids)) == result.stats["kept"]
    split = run_split(SplitConfig(dataset=dataset.uri, out=str(tmp_path / "s")), show_progress=False)
    assert split.dataset.manifest.rows == len(traces)
