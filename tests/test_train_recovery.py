"""Ray Train as the finetune phase runs it: checkpoints reported to Ray Train on the run's storage
(the phase's ``ray`` folder, or S3), the adapter and the figures taken from the result's
checkpoint, a lost worker restarted by Ray Train, and a rerun that goes on from the newest
checkpoint.  Tiny trainings of the packaged SmolLM2-135M: short rows, LoRA on the top layer's
attention, a few steps."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tooldistill.finetune.train import (
    LoraSettings,
    TrainError,
    TrainSettings,
    placement_line,
    ray_storage,
    run_name,
    run_sft,
    train,
    undeclared,
)

pytest.importorskip("trl", reason="weight distillation needs trl and peft (the cpu extra)")

#: Two data-parallel-sized steps a save: 4 rows, batch 1.
SETTINGS = TrainSettings(
    epochs=1.5, learning_rate=1e-3, batch_size=1, max_length=64, save_steps=2, warmup_ratio=0.0,
    top_layers=1, lora=LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=("q_proj", "v_proj")),
)  # fmt: skip
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


@pytest.fixture(scope="module")
def base() -> Path:
    from tooldistill.serve.models import prepare

    return prepare("smollm2")[0]


def phase_folder(tmp_path: Path, n: int = 4) -> Path:
    folder = tmp_path / "phase"
    folder.mkdir()
    rows = [
        {"prompt": f"<|im_start|>user\nWeather in Paris{i}?<|im_end|>\n<|im_start|>assistant\n",
         "completion": f'<tool_call>\n{{"name": "weather_current", "arguments": {{"city": "Paris{i}"}}}}\n</tool_call><|im_end|>'}
        for i in range(n)
    ]  # fmt: skip
    (folder / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def checkpoints(run: Path) -> list[Path]:
    return sorted(p for p in run.glob("checkpoint_*") if p.is_dir())


def test_storage_run_name_retries_and_the_placement_line(tmp_path: Path, s3_server: str) -> None:
    from tooldistill.store import RetryingS3FileSystem

    path, filesystem = ray_storage("s3://bucket/runs/r1/optimize/ft/ray")
    assert path == "bucket/runs/r1/optimize/ft/ray" and isinstance(filesystem, RetryingS3FileSystem)
    assert ray_storage(str(tmp_path / "ray")) == (str(tmp_path / "ray"), None)
    with pytest.raises(TrainError, match="unsupported storage scheme"):
        ray_storage("gs://bucket/x")
    # a lost worker is retried by default; a negative count is refused when the config is read
    assert TrainSettings().max_failures >= 1
    with pytest.raises(ValueError, match="max_failures"):
        TrainSettings.model_validate({"max_failures": -1})
    rows = [{"prompt": "a", "completion": "b"}]
    name = run_name("some/model", rows, SETTINGS)
    # more retries do not change the run (a rerun with them goes on from its checkpoints); other
    # examples or settings are another run
    assert run_name("some/model", rows, SETTINGS.model_copy(update={"max_failures": 5})) == name
    assert run_name("some/model", [*rows, *rows], SETTINGS) != name
    assert run_name("some/model", rows, SETTINGS.model_copy(update={"epochs": 2.0})) != name
    # where the workers run does not change what they train; an empty placement is not written
    placed = TrainSettings.model_validate({**SETTINGS.model_dump(), "resources_per_worker": {"trainer": 1}})
    assert run_name("some/model", rows, placed) == name
    assert "resources_per_worker" not in SETTINGS.model_dump()
    assert placed.model_dump()["resources_per_worker"] == {"trainer": 1}
    # a resource no node declares (a typo, or a node type not up yet) is said before the wait
    assert undeclared({"trainer": 1}, {"CPU": 2.0, "trainer": 2.0}) == []
    assert undeclared({"trainer": 1, "trainr": 1}, {"CPU": 2.0, "trainer": 0.5}) == ["trainer", "trainr"]
    # a rerun of a finished training goes on from its last checkpoint: nothing left to train (the
    # trainer itself would train one step past the end), nothing loaded
    done = tmp_path / "checkpoint-6"
    done.mkdir()
    (done / "trainer_state.json").write_text(json.dumps({"global_step": 6, "max_steps": 6}))
    config = {"settings": SETTINGS.model_dump(mode="json"), "folder": str(tmp_path / "nowhere"),
              "base_model": str(tmp_path / "no-model"), "resume_from": str(done)}  # fmt: skip
    run_sft(config)
    assert not (tmp_path / "nowhere").exists()
    placement = [
        {"rank": 0, "node": "10.0.0.5"},
        {"rank": 1, "node": "10.0.0.5"},
        {"rank": 2, "node": "10.0.0.6"},
    ]
    assert placement_line(placement, "nccl", gpu=True) == (
        "training on 3 workers (GPU, nccl): node 10.0.0.5 ×2, node 10.0.0.6 ×1"
    )
    assert (
        placement_line(placement[:1], "gloo", gpu=False)
        == "training on 1 worker (CPU, gloo): node 10.0.0.5 ×1"
    )
    # two nodes behind one address (containers, the loopback test cluster): told apart by node id
    shared = [{"rank": 0, "node": "127.0.0.1", "node_id": "aaaa1111" * 7},
              {"rank": 1, "node": "127.0.0.1", "node_id": "bbbb2222" * 7}]  # fmt: skip
    assert placement_line(shared, "gloo", gpu=False) == (
        "training on 2 workers (CPU, gloo): node 127.0.0.1 (aaaa1111) ×1, node 127.0.0.1 (bbbb2222) ×1"
    )


@pytest.mark.usefixtures("ray_cluster")
def test_a_lost_worker_is_restarted_by_ray_train_and_goes_on_from_its_checkpoint(
    base: Path, tmp_path: Path
) -> None:
    """The worker kills itself once, right after Ray Train registered its checkpoint of step 2;
    Ray Train starts a new worker (``max_failures``), which goes on from step 2 to the end.  The
    checkpoints are on the phase's ``ray`` folder, and the adapter is the last one's."""
    from transformers import TrainerCallback

    folder = phase_folder(tmp_path)
    marker = tmp_path / "killed-once"

    class KillOnce(TrainerCallback):  # type: ignore[misc]
        def on_save(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            import os

            import ray.train

            if state.global_step == 2 and not marker.exists():
                ray.train.get_all_reported_checkpoints()  # Ray Train has registered step 2
                marker.write_text("killed\n")
                os._exit(1)

    lines: list[str] = []
    steps: list[dict[str, Any]] = []
    result = train(str(base), folder, SETTINGS.model_copy(update={"max_failures": 1}), say=steps.append,
                   threads=1, note=lines.append, callbacks=[KillOnce()])  # fmt: skip
    assert marker.exists()  # the worker was lost once
    assert result.steps == 6 and result.resumed_from_step == 2 and result.resumes == [2]
    # the step count went on from the checkpoint: no step before 3 was trained a second time
    logged = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in logged if "step" in e] == [1, 2, 3, 4, 5, 6]
    assert [e["step"] for e in result.log] == [1, 2, 3, 4, 5, 6]
    assert result.final_loss == result.log[-1]["loss"] and result.tokens > 0
    # one line per worker group that started (the restarted one says it again)
    assert lines and all(
        re.fullmatch(r"training on 1 worker \(CPU, gloo\): node \S+ ×1", line) for line in lines
    )
    assert result.placement and result.placement[0]["rank"] == 0
    # Ray Train's storage is the phase's ray folder; the newest checkpoint is kept, whole
    (run,) = (folder / "ray").iterdir()
    assert run.name.startswith("finetune-")
    (last,) = checkpoints(run)
    assert last.name == "checkpoint_000006" and Path(result.checkpoint or "") == last
    state = json.loads((last / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    assert {"optimizer.pt", "scheduler.pt", "rng_state.pth", *ADAPTER_FILES} <= {
        p.name for p in last.iterdir()
    }
    # the adapter is the checkpoint's, without the training state
    adapter = {p.name for p in result.adapter.iterdir()}
    assert set(ADAPTER_FILES) <= adapter and not adapter & {
        "optimizer.pt",
        "trainer_state.json",
        "rng_state.pth",
    }
    for name in ADAPTER_FILES:
        assert (result.adapter / name).read_bytes() == (last / name).read_bytes()


@pytest.mark.usefixtures("ray_cluster")
def test_a_rerun_after_an_interrupted_training_goes_on_from_the_newest_checkpoint_on_s3(
    base: Path, tmp_path: Path, bucket: str
) -> None:
    """Two data-parallel workers (gloo) checkpoint to S3; the training fails after its checkpoint of
    step 2 (no retries), and the same call again goes on from step 2.  Every rank's RNG state is
    in the checkpoint; the adapter is downloaded from it."""
    import boto3
    from transformers import TrainerCallback

    folder = phase_folder(tmp_path)
    storage = f"s3://{bucket}/runs/r1/optimize/ft/ray"
    # 2 workers: 2 steps an epoch
    settings = SETTINGS.model_copy(update={"workers": 2, "epochs": 3.0, "max_failures": 0})

    class FailAtStep2(TrainerCallback):  # type: ignore[misc]
        def on_save(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            import ray.train

            if state.global_step == 2:
                ray.train.get_all_reported_checkpoints()
                raise RuntimeError("interrupted at step 2")

    lines: list[str] = []
    with pytest.raises(TrainError, match="interrupted at step 2"):
        train(str(base), folder, settings, threads=2, storage=storage, note=lines.append,
              callbacks=[FailAtStep2()])  # fmt: skip
    result = train(str(base), folder, settings, threads=2, storage=storage, note=lines.append)
    assert result.steps == 6 and result.resumed_from_step == 2 and result.resumes == [2]
    assert [e["step"] for e in result.log] == [1, 2, 3, 4, 5, 6]
    assert lines and all(
        re.fullmatch(r"training on 2 workers \(CPU, gloo\): node \S+ ×2", line) for line in lines
    )
    assert [w["rank"] for w in result.placement] == [0, 1]
    assert not (folder / "ray").exists()  # nothing of Ray Train's on the phase folder
    s3 = boto3.client("s3")
    keys = [
        o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="runs/r1/optimize/ft/ray/")["Contents"]
    ]
    last = {k.rsplit("/", 1)[1] for k in keys if "/checkpoint_000006/" in k}
    assert {
        "rng_state_0.pth",
        "rng_state_1.pth",
        "optimizer.pt",
        "trainer_state.json",
        *ADAPTER_FILES,
    } <= last
    assert not [k for k in keys if "/checkpoint_000002/" in k]  # the newest one is kept
    (prefix,) = {k.split("/checkpoint_000006/")[0] for k in keys if "/checkpoint_000006/" in k}
    for name in ADAPTER_FILES:
        body = s3.get_object(Bucket=bucket, Key=f"{prefix}/checkpoint_000006/{name}")["Body"].read()
        assert (result.adapter / name).read_bytes() == body
