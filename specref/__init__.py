"""SpecRef: reference-conditioned real-image editing on Stable Diffusion (the method: docs/spec.md)."""
from .app.batch import run_batch
from .app.sweep import sweep
from .pipeline import EditResult, edit
from .references import Reference
from .presets import PRESETS, Preset
from .settings import EditConfig

__all__ = ["edit", "EditConfig", "EditResult", "Preset", "PRESETS", "Reference", "run_batch", "sweep"]
