"""Which dtype the numerically sensitive parts run in, for a model in a given dtype."""
from __future__ import annotations

import torch


def precise_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for a float64 model (the verification mode: nothing drops to float32), else float32.

    Latents, the DDIM update, the timestep embedding, P2P edits, masks and maps run in this dtype:
    in bf16/fp16 their rounding would accumulate over the steps; in float64 nothing is rounded
    to float32 on the way, so two implementations can be compared to ~1e-9 (§5).
    """
    return torch.float64 if dtype == torch.float64 else torch.float32
