"""DDIM sampling and inversion for SD v1 (SPEC §2, §3)."""
from .ddim import DDIM, Schedule
from .loops import decode, encode, guided_eps, invert, reconstruct, sample

__all__ = ["DDIM", "Schedule", "decode", "encode", "guided_eps", "invert", "reconstruct", "sample"]
