"""The CPU student's speed settings: the dtype chosen from the CPU's flags, the engine's threads
from the cores, and an evaluation against a student slower than its timeout (no retry storm).

The slow student is the stand-in OpenAI server of ``optimize.testing`` with a latency longer than
the client's timeout; it counts every request it receives, so a resend would show.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from tooldistill.evaluate import EvaluateConfig, StudentTooSlow, evaluate
from tooldistill.optimize.student import Prompt, StudentSettings, run_batch
from tooldistill.optimize.testing import StudentServer, make_traces, write_traces
from tooldistill.serve.app import ServeConfigError, resolve_cpu_engine
from tooldistill.serve.cpu import choose_dtype
from tooldistill.serve.runner import load_profile

AMD_AVX2 = {"architecture": "x86_64", "cpu_name": "AMD EPYC", "avx2": True, "avx512_f": False,
            "avx512_bf16": False, "amx_bf16": False}  # fmt: skip
SAPPHIRE = {"architecture": "x86_64", "cpu_name": "Intel Xeon", "avx2": True, "avx512_f": True,
            "avx512_bf16": True, "amx_bf16": True}  # fmt: skip
ZEN4 = {"architecture": "x86_64", "cpu_name": "AMD EPYC 9004", "avx2": True, "avx512_f": True,
        "avx512_bf16": True, "amx_bf16": False}  # fmt: skip
GRAVITON3 = {"architecture": "aarch64", "cpu_name": "Neoverse-V1", "bf16": True}
GRAVITON2 = {"architecture": "aarch64", "cpu_name": "Neoverse-N1", "bf16": False}


@pytest.mark.parametrize(
    ("caps", "dtype"),
    [(AMD_AVX2, "float32"), (SAPPHIRE, "bfloat16"), (ZEN4, "bfloat16"), (GRAVITON3, "bfloat16"),
     (GRAVITON2, "float32")],
)  # fmt: skip
def test_dtype_follows_native_bf16(caps: dict[str, object], dtype: str) -> None:
    choice = choose_dtype(None, caps, env={})
    assert choice.dtype == dtype
    assert not choice.pinned
    assert ("no native" in choice.reason) == (dtype == "float32")
    assert choice.cpu == caps["cpu_name"]


def test_pinned_dtype_wins_and_says_when_it_is_slow() -> None:
    pinned = choose_dtype("bfloat16", AMD_AVX2, env={})
    assert pinned.dtype == "bfloat16" and pinned.pinned
    assert "pinned" in pinned.reason and "slow here" in pinned.reason
    assert choose_dtype("float32", SAPPHIRE, env={}).dtype == "float32"
    assert choose_dtype("auto", SAPPHIRE, env={}).dtype == "bfloat16"
    with pytest.raises(ValueError, match="choose one of"):
        choose_dtype("float16", SAPPHIRE, env={})


def test_a_onednn_isa_cap_below_bf16_means_float32() -> None:
    capped = choose_dtype(None, SAPPHIRE, env={"ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert capped.dtype == "float32" and "ONEDNN_MAX_CPU_ISA=AVX2" in capped.reason
    assert choose_dtype(None, SAPPHIRE, env={"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}).dtype == "bfloat16"


def test_cpu_profile_resolves_dtype_and_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    from tooldistill.serve import app, cpu

    profile = load_profile("configs/serve/cpu-smollm2.yaml")
    args = profile["applications"][0]["args"]
    assert args["cpu_engine"] == {"dtype": "auto", "threads": "auto"}
    monkeypatch.setattr(cpu, "capabilities", lambda: dict(AMD_AVX2))
    monkeypatch.setattr(cpu, "usable_cores", lambda: 4)
    monkeypatch.setattr(app, "_replicas", app._replicas)  # the real one: num_replicas from the profile
    resolved = resolve_cpu_engine(args)
    llm = resolved["llm_configs"][0]
    assert llm["engine_kwargs"]["dtype"] == "float32"
    assert llm["runtime_env"]["env_vars"]["OMP_NUM_THREADS"] == "4"  # one replica: every core
    assert resolved["cpu_engine_resolved"]["dtype"] == "float32"
    assert resolve_cpu_engine(resolved) is resolved  # resolved once
    # two replicas share the cores
    two = copy.deepcopy(args)
    two["llm_configs"][0]["deployment_config"]["num_replicas"] = 2
    assert resolve_cpu_engine(two)["llm_configs"][0]["runtime_env"]["env_vars"]["OMP_NUM_THREADS"] == "2"
    # a pinned dtype and thread count are kept; nonsense is a config error
    pinned = {**copy.deepcopy(args), "cpu_engine": {"dtype": "bfloat16", "threads": 1}}
    out = resolve_cpu_engine(pinned)["llm_configs"][0]
    assert out["engine_kwargs"]["dtype"] == "bfloat16"
    assert out["runtime_env"]["env_vars"]["OMP_NUM_THREADS"] == "1"
    with pytest.raises(ServeConfigError, match="threads"):
        resolve_cpu_engine({**args, "cpu_engine": {"threads": 0}})
    with pytest.raises(ServeConfigError, match="choose one of"):
        resolve_cpu_engine({**args, "cpu_engine": {"dtype": "int8"}})
    # the GPU profile has no cpu_engine and is left alone
    gpu = yaml.safe_load(Path("configs/serve/gpt-oss-20b.yaml").read_text())["applications"][0]["args"]
    assert resolve_cpu_engine(gpu) == gpu


def test_a_timed_out_request_is_never_sent_again_and_the_evaluation_stops(tmp_path: Path) -> None:
    traces = make_traces(12)
    data = write_traces(str(tmp_path / "traces"), traces)
    with StudentServer(latency_s=1.5) as server:
        config = EvaluateConfig(
            dataset=data,
            endpoint=server.url,
            model="student",
            out=str(tmp_path / "eval"),
            concurrency=2,
            timeout_s=0.4,
            retries=3,
            max_timeouts=3,
        )
        with pytest.raises(StudentTooSlow) as caught:
            evaluate(config, show_progress=False)
        message = str(caught.value)
        # each timed-out request went out once; after the third, nothing more was sent
        assert server.requests <= config.max_timeouts + config.concurrency - 1
        assert "too slow" in message and "3 requests got no answer within 0.4 s" in message
        assert "answered no request" in message  # the throughput it saw: none
        assert "not sent again" in message


def test_the_optimizer_stops_too_with_the_measured_throughput() -> None:
    traces = make_traces(10)
    settings = StudentSettings(model="student", timeout_s=0.5, retries=2, max_timeouts=2, concurrency=1)
    with StudentServer(latency_s=0.05) as fast:
        # a fast student answers everything: its figures are measured, nothing trips
        ok = run_batch(traces[:4], Prompt(""), settings.model_copy(update={"endpoint": fast.url}))
        assert all(o.error is None for o in ok) and fast.requests == 4
    with StudentServer(latency_s=1.2) as slow:
        with pytest.raises(StudentTooSlow, match="2 requests got no answer within 0.5 s"):
            run_batch(traces, Prompt(""), settings.model_copy(update={"endpoint": slow.url}))
        assert slow.requests == 2  # sent once each, the rest never sent
