"""DDIM sampling and inversion for SD v1 (SPEC §2, §3)."""
from .ddim import DDIM, Schedule
from .loops import decode, guided_eps, invert, sample

__all__ = ["DDIM", "Schedule", "decode", "guided_eps", "invert", "sample"]
