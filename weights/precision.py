"""Which dtype to run a model in: names, `auto`, and whether this CPU computes bfloat16 natively.

    dtype, reason = resolve_dtype("auto", "cpu")   # (torch.float32, "auto: CPU AMD EPYC has no native bf16 ...")
"""
from __future__ import annotations

import functools
import platform
import warnings
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
NAMES = ("auto", *DTYPES)
# /proc/cpuinfo flags of native bf16 matmul: AVX-512 BF16 (dot products) or AMX (tile matmul).
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# Measured (docs/bench.md): a 1024² matmul on an AVX2-only AMD EPYC (Zen 3, 2 cores, torch 2.13.0) runs at 118 GFLOP/s
# in float32 and 0.85 GFLOP/s in bfloat16 (no native bf16 kernel: ~140x slower); 2048²: 77 vs 0.2 GFLOP/s.
SLOWDOWN = ("a 1024² matmul measured 0.85 GFLOP/s in bfloat16 vs 118 in float32 (~140x slower) on an "
            "AVX2-only AMD EPYC (Zen 3)")
# float16 likewise: native only with AVX-512 FP16 or AMX-FP16. Measured: a 512² matmul, 1 thread, AMD EPYC (family 23,
# model 1, AVX2): 1.2 GFLOP/s in float16 vs 33 in float32 (~28x slower; bfloat16 1.6).
FP16_FLAGS = ("avx512_fp16", "amx_fp16")
SLOWDOWN_FP16 = ("a 512² matmul measured 1.2 GFLOP/s in float16 vs 33 in float32 (~28x slower) on an AVX2-only "
                 "AMD EPYC (family 23, model 1, 1 thread)")


def _cpuinfo() -> str:
    """The text of /proc/cpuinfo, or '' where there is none (not Linux, or unreadable)."""
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


def _field(text: str, key: str) -> str:
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == key:
            return value.strip()
    return ""


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset[str]:
    """The first CPU's feature flags from /proc/cpuinfo (empty where unknown)."""
    return frozenset(_field(_cpuinfo(), "flags").split())


@functools.lru_cache(maxsize=None)
def cpu_name() -> str:
    """The CPU model as the OS names it, e.g. 'AMD EPYC 7B13' (platform's guess where /proc/cpuinfo is missing)."""
    text = _cpuinfo()
    name = _field(text, "model name") or platform.processor() or platform.machine() or "unknown CPU"
    family, model = _field(text, "cpu family"), _field(text, "model")
    return f"{name} (family {family}, model {model})" if family and model else name


@functools.lru_cache(maxsize=None)
def cpu_bf16_native() -> bool:
    """True if the CPU has native bfloat16 matmul (AVX-512 BF16 or AMX); unknown counts as no. Cached per process."""
    return any(f in cpu_flags() for f in BF16_FLAGS)


def cpu_capability() -> str:
    """One line for titles and logs: the CPU name and whether it has native bf16."""
    have = [f for f in BF16_FLAGS if f in cpu_flags()]
    simd = "AVX-512" if "avx512f" in cpu_flags() else "AVX2" if "avx2" in cpu_flags() else "no AVX2/AVX-512 flags seen"
    bf16 = f"native bf16 ({', '.join(have)})" if have else "no native bf16 (no avx512_bf16 / amx_bf16)"
    return f"{cpu_name()}, {simd}, {bf16}"


def _device_type(device: str | torch.device) -> str:
    return torch.device(device).type


def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device = "cpu") -> tuple[torch.dtype, str]:
    """A dtype name ('auto', 'float32', ...), a torch.dtype, or None (the default) -> (torch.dtype, why).

    auto: float16 on CUDA; bfloat16 on a CPU with native bf16; float32 otherwise. None: float16 on CUDA, float32
    on CPU (bit-reproducible runs). An explicit bfloat16 on a CPU without native bf16 is allowed (warn_slow warns).
    """
    kind = _device_type(device)
    if dtype is None:
        if kind == "cuda":
            return torch.float16, "default on CUDA"
        return torch.float32, ("default on CPU (bit-reproducible; --dtype auto picks bfloat16 where the CPU has it "
                               "natively)")
    if isinstance(dtype, str):
        if dtype == "auto":
            return _auto(kind)
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(NAMES)}, got {dtype!r}")
        dtype = DTYPES[dtype]
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype must be a torch.dtype or one of {', '.join(NAMES)}, got {dtype!r}")
    if _slow(dtype, kind):
        short = "bf16" if dtype == torch.bfloat16 else "fp16"
        return dtype, f"explicit; slow here: no native {short} ({cpu_capability()})"
    return dtype, "explicit"


def _slow(dtype: torch.dtype, kind: str) -> bool:
    if kind != "cpu":
        return False
    if dtype == torch.float16:
        return not any(f in cpu_flags() for f in FP16_FLAGS)
    return dtype == torch.bfloat16 and not cpu_bf16_native()


def warn_slow(dtype: torch.dtype, device: str | torch.device = "cpu") -> None:
    """Warn (not refuse) when bfloat16 or float16 is asked for on a CPU that has no native support for it: it runs
    far slower than float32."""
    if not _slow(dtype, _device_type(device)):
        return
    name, short, measured = (("bfloat16", "bf16", SLOWDOWN) if dtype == torch.bfloat16
                             else ("float16", "fp16", SLOWDOWN_FP16))
    warnings.warn(f"{name} on a CPU without native {short} support ({cpu_capability()}) is very slow: {measured}. "
                  "Use float32, or --dtype auto.", stacklevel=3)


def _auto(kind: str) -> tuple[torch.dtype, str]:
    if kind == "cuda":
        return torch.float16, "auto: CUDA device"
    if kind == "cpu":
        if cpu_bf16_native():
            return torch.bfloat16, f"auto: CPU has native bf16 ({cpu_capability()})"
        return torch.float32, f"auto: CPU has no native bf16 ({cpu_capability()})"
    return torch.float32, f"auto: {kind} device, float32 is the safe choice"


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> 'bfloat16'."""
    return str(dtype).removeprefix("torch.")
