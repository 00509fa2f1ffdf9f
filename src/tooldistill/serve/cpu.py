"""What the CPU under a CPU engine can do: the dtype it runs fast, and the threads it has.

vLLM's CPU platform takes bfloat16 on every x86 CPU, but only CPUs with bf16 instructions
(AVX512-BF16 or AMX on x86, the ``bf16`` feature on Arm) compute in it at speed.  Elsewhere every
bfloat16 matrix product goes through a slow emulation: on a 2-core AMD EPYC with AVX2 only it ran at
1.2 GFLOP/s against 54 GFLOP/s in float32, so a 135M student could not answer a demo's traces in
time.  :func:`choose_dtype` therefore takes bfloat16 only where the CPU has native bf16, and
float32 otherwise, unless the profile pins one.

The flags come from PyTorch's own CPU feature detection (``torch.cpu.get_capabilities``, cpuinfo),
the same that vLLM's kernels consult.  ``ONEDNN_MAX_CPU_ISA`` counts too: it caps the instruction
sets oneDNN (vLLM's CPU matrix products) may use, so a cap below bf16 makes bf16 the slow path even
on a CPU that has it (``ONEDNN_MAX_CPU_ISA=AVX2`` is how ``benchmarks/serve.py`` measures an AVX2
machine on a newer one).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

DTYPES = ("bfloat16", "float32")
#: Flags named in the record: the ones that decide, and the vector width beside them.
_SHOWN = ("avx2", "avx512_f", "avx512_bf16", "amx_bf16", "amx_tile", "bf16")
#: oneDNN ISA caps that still allow bf16 instructions (``ONEDNN_MAX_CPU_ISA``; case-insensitive).
_ONEDNN_BF16_ISAS = {"avx512_core_bf16", "avx512_core_fp16", "avx512_core_amx", "avx512_core_amx_fp16",
                     "avx10_1_512", "avx10_1_512_amx", "avx10_1_512_amx_fp16", "avx10_2_512",
                     "avx10_2_512_amx_2", "default", "all"}  # fmt: skip


class CpuDtypeError(ValueError):
    """A pinned dtype that the CPU engine cannot use."""


@dataclass(frozen=True)
class DtypeChoice:
    """The engine's dtype, why, and what was looked at."""

    dtype: str
    reason: str
    pinned: bool
    cpu: str
    flags: dict[str, bool] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        return f"student dtype {self.dtype}: {self.reason}"


def capabilities() -> dict[str, Any]:
    """PyTorch's view of this CPU (``torch.cpu.get_capabilities``), or {} without torch."""
    try:
        import torch

        return dict(torch.cpu.get_capabilities())
    except (ImportError, AttributeError, RuntimeError):
        return {}


def native_bf16(caps: Mapping[str, Any], env: Mapping[str, str] | None = None) -> tuple[bool, str]:
    """Whether bfloat16 runs at speed here, and the reason in words."""
    env = os.environ if env is None else env
    arch = str(caps.get("architecture") or platform.machine()).lower()
    if arch in ("x86_64", "amd64", "x86", "i686"):
        found = [name for name in ("avx512_bf16", "amx_bf16") if caps.get(name)]
        if not found:
            return False, "the CPU has no native bfloat16 (neither avx512_bf16 nor amx_bf16)"
        cap = (env.get("ONEDNN_MAX_CPU_ISA") or "").strip().lower()
        if cap and cap not in _ONEDNN_BF16_ISAS:
            return False, f"ONEDNN_MAX_CPU_ISA={cap.upper()} keeps oneDNN from the CPU's bf16 instructions"
        return True, f"the CPU has native bfloat16 ({', '.join(found)})"
    if arch in ("aarch64", "arm64"):
        if caps.get("bf16"):
            return True, "the CPU has native bfloat16 (Arm bf16)"
        return False, "the CPU has no native bfloat16 (no Arm bf16 feature)"
    return False, f"no known bfloat16 support on {arch or 'this architecture'}"


def choose_dtype(
    pinned: str | None = None,
    caps: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> DtypeChoice:
    """bfloat16 where the CPU computes it natively, float32 otherwise; ``pinned`` (``bfloat16`` or
    ``float32``; ``auto``/None to choose) overrides the choice."""
    caps = capabilities() if caps is None else caps
    cpu = str(caps.get("cpu_name") or platform.processor() or platform.machine())
    flags = {name: bool(caps.get(name)) for name in _SHOWN if name in caps}
    native, why = native_bf16(caps, env)
    if pinned not in (None, "", "auto"):
        if pinned not in DTYPES:
            raise CpuDtypeError(f"CPU dtype {pinned!r}: choose one of auto, {', '.join(DTYPES)}")
        slow = " (slow here: " + why + ")" if pinned == "bfloat16" and not native else ""
        return DtypeChoice(pinned, f"pinned by the profile{slow}", True, cpu, flags)
    if native:
        return DtypeChoice("bfloat16", why, False, cpu, flags)
    return DtypeChoice("float32", f"{why}; bfloat16 would be emulated, many times slower", False, cpu, flags)


def usable_cores() -> int:
    """The cores this process may run on (its affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def machine_record() -> dict[str, Any]:
    """What a benchmark result says about the machine it ran on: cores, the CPU's name and the
    flags that decide the student's speed (no path, no host name)."""
    caps = capabilities()
    return {
        "cpus": os.cpu_count(),
        "usable_cores": usable_cores(),
        "cpu": caps.get("cpu_name"),
        "flags": {k: bool(caps.get(k)) for k in ("avx2", "avx512_f", "avx512_bf16", "amx_bf16", "bf16")},
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
