"""SpecRef: reference-conditioned real-image editing on SD v1 (see SPEC.md)."""
from .config import PRESETS, EditConfig, Preset
from .pipeline import EditResult, edit
from .references import Reference
from .study import run_batch, sweep

__all__ = ["edit", "EditConfig", "EditResult", "Preset", "PRESETS", "Reference", "run_batch", "sweep"]
