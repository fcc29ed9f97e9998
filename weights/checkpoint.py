"""Reading tensors from checkpoint files and filling modules strictly (every key used, every parameter set)."""
from __future__ import annotations

import pickle
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from torch import Tensor, nn


class UnsupportedCheckpoint(ValueError):
    """The file or folder is not an SD 1.x / 2.x checkpoint this project can load."""

    def __init__(self, what: str):
        super().__init__(f"unsupported checkpoint: {what}")


class StrictLoadError(ValueError):
    """Checkpoint keys and model parameters do not match one to one."""


class _IgnoredPickledObject:
    """Stand-in for harmless training-time objects in old .ckpt pickles; keeps nothing, runs nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state) -> None:
        pass


# Globals that real SD .ckpt files pickle besides tensors (e.g. sd-v1-4.ckpt's Lightning callback state).
# They are allowed for weights_only loading and either mapped to harmless numpy readers or to a stub.
_CKPT_SAFE_GLOBALS: list[tuple[Callable, str]] = [
    (_IgnoredPickledObject, "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"),
    (np._core.multiarray.scalar, "numpy.core.multiarray.scalar"),
    (np._core.multiarray.scalar, "numpy._core.multiarray.scalar"),
    (np.dtype, "numpy.dtype"),
] + [(type(np.dtype(t)), f"numpy.dtypes.{type(np.dtype(t)).__name__}")
     for t in ("float64", "float32", "int64", "int32", "bool")]


class TensorSource:
    """Lazy name -> tensor access to one file, read one tensor at a time (no second full copy)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix == ".safetensors":
            try:
                self._st = safe_open(str(self.path), framework="pt", device="cpu")
            except Exception as e:  # noqa: BLE001 - any parse failure means "not a safetensors file"
                raise UnsupportedCheckpoint(f"{self.path.name} is not a readable safetensors file ({e})") from None
            self._dict = None
            self.global_step = None
        elif suffix in (".ckpt", ".bin", ".pt", ".pth"):
            self._st = None
            self._dict, self.global_step = read_pickle_checkpoint(self.path)
        else:
            raise UnsupportedCheckpoint(f"{self.path.name}: expected .safetensors, .ckpt, .bin, .pt or .pth")

    def keys(self) -> list[str]:
        return list(self._st.keys()) if self._st is not None else list(self._dict)

    def get(self, key: str, dtype: torch.dtype | None = None) -> Tensor:
        """The tensor `key`; with `dtype`, a floating-point tensor comes converted to it (others as stored)."""
        t = self._st.get_tensor(key) if self._st is not None else self._dict[key]
        if dtype is None or not t.is_floating_point() or t.dtype == dtype:
            return t  # safetensors: a view of the mapped file, nothing read until it is used
        if self._st is None:
            return t.to(dtype)
        # Convert through a short-lived mapping of its own, so that the file's pages of this tensor are released as
        # soon as the copy exists; read through self._st they would stay resident (bf16 from fp32: 3x the bf16 bytes).
        with safe_open(str(self.path), framework="pt", device="cpu") as f:
            return f.get_tensor(key).to(dtype)

    def shape(self, key: str) -> tuple[int, ...]:
        if self._st is not None:
            return tuple(self._st.get_slice(key).get_shape())
        return tuple(self._dict[key].shape)


def load_pickle_checkpoint(path: Path) -> dict[str, Tensor]:
    """torch.load with weights_only=True (plus the allow-list above); returns the flat tensor dict."""
    return read_pickle_checkpoint(path)[0]


def read_pickle_checkpoint(path: Path) -> tuple[dict[str, Tensor], int | None]:
    """The flat tensor dict and the training `global_step` stored beside it (None if absent), weights-only."""
    kwargs = {"map_location": "cpu", "weights_only": True}
    try:
        with torch.serialization.safe_globals(_CKPT_SAFE_GLOBALS):
            try:
                obj = torch.load(path, mmap=True, **kwargs)
            except RuntimeError as e:
                if "mmap" not in str(e) and "zip" not in str(e):
                    raise
                obj = torch.load(path, **kwargs)  # legacy (non-zip) pickle files cannot be memory-mapped
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsupportedCheckpoint(f"{path.name} holds objects that weights-only loading refuses ({first})") from None
    except Exception as e:  # noqa: BLE001 - a random or truncated file
        what = f"{type(e).__name__}: {e}"
        raise UnsupportedCheckpoint(f"{path.name} is not a readable PyTorch checkpoint ({what})") from None
    step = obj.get("global_step") if isinstance(obj, dict) else None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise UnsupportedCheckpoint(f"{path.name} holds a {type(obj).__name__}, not a dict of tensors")
    step = int(step) if isinstance(step, (int, np.integer)) else None
    return {k: v for k, v in obj.items() if isinstance(v, Tensor)}, step


def fill_module(module: nn.Module, src: TensorSource, names: Mapping[str, str], what: str, dtype: torch.dtype,
                device: torch.device | str, fix: Callable[[str, Tensor], Tensor] | None = None) -> nn.Module:
    """Fill a module built on the meta device from `src` (module name -> file key), strictly: names and shapes
    must match the module's parameters and buffers one to one. `fix(name, tensor)` adapts a stored layout."""
    fix = fix or (lambda name, t: t)
    # Shapes through `fix` on meta copies: no data read, nothing copied, whatever `fix` does.
    given = {n: tuple(fix(n, src.get(k).to("meta")).shape) for n, k in names.items()}
    expected = {n: tuple(t.shape) for n, t in module.state_dict().items()}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    shapes = [f"{k}: checkpoint {given[k]} vs model {expected[k]}"
              for k in sorted(set(given) & set(expected)) if given[k] != expected[k]]
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
            if keys:
                shown = ", ".join(keys[:20]) + (f", ... ({len(keys)} in all)" if len(keys) > 20 else "")
                parts.append(f"{label}: {shown}")
        raise StrictLoadError(f"{what}: checkpoint and model do not match; " + "; ".join(parts))
    # Checked before any read; then one tensor at a time, so a conversion never holds two copies of the model.
    state = {n: fix(n, src.get(k, dtype)).to(device) for n, k in names.items()}
    module.load_state_dict(state, strict=True, assign=True)
    return module.eval().requires_grad_(False)


def note(line: str) -> str:
    """Print one line saying what loading assumed or left out (on stderr, so stdout stays the command's)."""
    print(line, file=sys.stderr)
    return line
