"""dtype selection: `auto` by device and CPU capability (probe mocked), the bf16 warning, run.json."""
from __future__ import annotations

import json
import warnings

import pytest
import torch

import weights
from weights import precision
from weights.precision import resolve_dtype

AVX2_CPUINFO = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\n" \
               "model name\t: AMD EPYC 7B13\n" \
               "flags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu avx2\n"
SPR_CPUINFO = "model name\t: Intel(R) Xeon(R) Platinum 8481C\nflags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"


@pytest.fixture
def cpuinfo(monkeypatch):
    """Set the text /proc/cpuinfo reads as; the per-process caches are cleared around the test."""
    def use(text: str) -> None:
        monkeypatch.setattr(precision, "_cpuinfo", lambda: text)
        for f in (precision.cpu_flags, precision.cpu_name, precision.cpu_bf16_native):
            f.cache_clear()
    yield use
    for f in (precision.cpu_flags, precision.cpu_name, precision.cpu_bf16_native):
        f.cache_clear()


def test_cpu_flags_decide_native_bf16(cpuinfo):
    cpuinfo(AVX2_CPUINFO)
    assert not precision.cpu_bf16_native()
    assert precision.cpu_name() == "AMD EPYC 7B13 (family 25, model 1)"
    assert "AVX2" in precision.cpu_capability() and "no native bf16" in precision.cpu_capability()
    cpuinfo(SPR_CPUINFO)
    assert precision.cpu_bf16_native() and "amx_bf16" in precision.cpu_capability()
    cpuinfo("")  # not Linux / unreadable: not native, so auto stays float32
    assert not precision.cpu_bf16_native() and resolve_dtype("auto", "cpu")[0] == torch.float32


def test_probe_is_cached_per_process(monkeypatch):
    calls = []
    precision.cpu_flags.cache_clear(), precision.cpu_bf16_native.cache_clear()
    monkeypatch.setattr(precision, "_cpuinfo", lambda: calls.append(1) or SPR_CPUINFO)
    try:
        assert all(precision.cpu_bf16_native() for _ in range(5)) and len(calls) == 1
    finally:
        precision.cpu_flags.cache_clear(), precision.cpu_bf16_native.cache_clear()


@pytest.mark.parametrize("native", [False, True])
def test_auto_never_picks_a_dtype_slower_than_float32(monkeypatch, native):
    monkeypatch.setattr(precision, "cpu_bf16_native", lambda: native)
    dtype, why = resolve_dtype("auto", "cpu")
    # bf16 only where the CPU computes it natively (1.75x faster there); float32 otherwise (bf16 is ~140x slower)
    assert dtype == (torch.bfloat16 if native else torch.float32)
    assert why.startswith("auto: CPU has" + ("" if native else " no") + " native bf16")
    assert resolve_dtype("auto", "cuda") == (torch.float16, "auto: CUDA device")
    assert resolve_dtype("auto", torch.device("cuda", 1))[0] == torch.float16


def test_names_defaults_and_errors(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_native", lambda: False)
    assert resolve_dtype(None, "cpu")[0] == torch.float32 and resolve_dtype(None, "cuda")[0] == torch.float16
    for name, dt in (("float32", torch.float32), ("float16", torch.float16), ("float64", torch.float64),
                     ("bfloat16", torch.bfloat16)):
        assert resolve_dtype(name, "cpu")[0] == dt and resolve_dtype(dt, "cpu")[0] == dt
        assert precision.dtype_name(dt) == name
    with pytest.raises(ValueError, match="dtype must be one of auto, float32"):
        resolve_dtype("half", "cpu")
    with pytest.raises(ValueError, match="dtype must be a torch.dtype"):
        resolve_dtype(3, "cpu")


@pytest.mark.parametrize("native", [False, True])
def test_explicit_bf16_warns_only_without_native_support(monkeypatch, native):
    monkeypatch.setattr(precision, "cpu_bf16_native", lambda: native)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        precision.warn_slow(torch.bfloat16, "cpu")
        precision.warn_slow(torch.float32, "cpu")
        precision.warn_slow(torch.bfloat16, "cuda")
    msgs = [str(x.message) for x in w]
    if native:
        assert msgs == []
    else:
        assert len(msgs) == 1 and "~140x slower" in msgs[0] and "GFLOP/s" in msgs[0]
        assert "slow here" in resolve_dtype("bfloat16", "cpu")[1]


def test_load_model_accepts_names_and_auto(tiny_diffusers_dir, monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_native", lambda: False)
    assert weights.load_model(str(tiny_diffusers_dir), dtype="auto").dtype == torch.float32
    assert weights.load_model(str(tiny_diffusers_dir), dtype="float16").dtype == torch.float16
    with pytest.warns(UserWarning, match="without native bf16"):
        assert weights.load_model(str(tiny_diffusers_dir), dtype=torch.bfloat16).dtype == torch.bfloat16


def test_cli_says_what_was_chosen_and_why(tiny_diffusers_dir, tmp_path, monkeypatch, capsys):
    from test_cli import args_for
    from tiny import write_inputs

    from specref.app.cli import main

    monkeypatch.setattr(precision, "cpu_bf16_native", lambda: False)
    write_inputs(tmp_path, (64, 64))
    out = tmp_path / "o"
    argv = args_for(tmp_path, tiny_diffusers_dir, out, "--dtype", "auto")
    assert main(argv) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["dtype"] == "float32" and run["dtype_reason"].startswith("auto: CPU has no native bf16")
    assert "dtype float32 on cpu (auto: CPU has no native bf16" in capsys.readouterr().out
