"""DDIM sampling and inversion for SD 1.x / 2.x, epsilon and v-prediction (§2, §3, §9.4)."""
from .ddim import DDIM, Schedule
from .loops import batch_eps, ddim_for, decode, encode, guide, guided_eps, invert, reconstruct, sample

__all__ = ["DDIM", "Schedule", "batch_eps", "ddim_for", "decode", "encode", "guide", "guided_eps", "invert",
           "reconstruct", "sample"]
