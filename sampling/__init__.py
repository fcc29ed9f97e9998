"""DDIM sampling and inversion for SD v1 (SPEC §2, §3)."""
from .ddim import DDIM, Schedule
from .loops import batch_eps, decode, encode, guide, guided_eps, invert, reconstruct, sample

__all__ = ["DDIM", "Schedule", "batch_eps", "decode", "encode", "guide", "guided_eps", "invert", "reconstruct",
           "sample"]
