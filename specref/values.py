"""What a setting's text means and which values it allows (docs/spec.md §7): the parsers that turn a flag's text
(or a job line's value) into a value, and the range checks that `settings.validate` runs."""
from __future__ import annotations

import math

Steps = float | tuple[float, float]  # a fraction s of the steps (the range [0, s)) or a pair (a, b)


# ---- parsing: a setting's text (a flag's value, a --vary value, a job value) -> its value ----
def words(text: str) -> tuple[str, ...]:
    """'cat, tiger' -> ('cat', 'tiger')."""
    return tuple(w.strip() for w in text.split(",") if w.strip())


def word_pair(text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """'board,lake;mattress,bedroom' -> (source words, target words)."""
    if text.count(";") != 1:
        raise ValueError("expected 'source words;target words', e.g. 'cat;tiger'")
    a, b = text.split(";")
    return words(a), words(b)


def int_pair(text: str) -> tuple[int, int]:
    """'4-50' or '4,50' -> (4, 50)."""
    parts = text.replace("-", ",").split(",")
    if len(parts) != 2:
        raise ValueError("expected 'start-end', e.g. '4-50'")
    return int(parts[0]), int(parts[1])


def blocks(text: str) -> tuple[int, ...]:
    """'4,5,7,8,9', or a range '13-16' (end excluded)."""
    if "-" in text:
        a, b = int_pair(text)
        return tuple(range(a, b))
    return tuple(int(v) for v in text.split(","))


def float_pair(text: str) -> tuple[float, float]:
    """'0.3,0.45' -> (0.3, 0.45)."""
    parts = text.split(",")
    if len(parts) != 2:
        raise ValueError("expected two numbers 'a,b'")
    return float(parts[0]), float(parts[1])


def fraction_or_pair(text: str) -> Steps:
    """'0.8' -> 0.8 (the steps [0, 0.8)); '0.2,0.8' -> (0.2, 0.8)."""
    return float_pair(text) if "," in text else float(text)


def reweight(text: str) -> tuple[tuple[str, float], ...]:
    """'vase=2,flowers=0.5' -> (('vase', 2.0), ('flowers', 0.5))."""
    out = []
    for item in words(text):
        word, eq, factor = item.partition("=")
        if not eq:
            raise ValueError("expected WORD=FACTOR pairs, e.g. 'vase=2'")
        out.append((word.strip(), float(factor)))
    return tuple(out)


def boolean(text: str) -> bool:
    """'true' / 'false' (also 1/0, yes/no)."""
    value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(text.strip().lower())
    if value is None:
        raise ValueError("expected true or false")
    return value


# ---- range checks: a value -> what is wrong with it, or None ------------------------------------------------------
def _finite(*values: float) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)


def at_least_zero(v: float) -> str | None:
    return None if _finite(v) and v >= 0 else "must be a finite number >= 0"


def fraction(v: Steps | dict) -> str | None:
    """A fraction of the steps in [0, 1], a pair 0 <= a <= b <= 1, or (cross_replace_steps) a per-word dict."""
    if isinstance(v, dict):
        return next((p for p in map(fraction, v.values()) if p), None)
    pair = v if isinstance(v, tuple) else (0.0, v)
    ok = len(pair) == 2 and _finite(*pair) and 0 <= pair[0] <= pair[1] <= 1
    return None if ok else "must be a fraction in [0, 1] or a pair 0 <= a <= b <= 1"


def unit_interval(v: float) -> str | None:
    return None if _finite(v) and 0 < v <= 1 else "must be in (0, 1]"


def thresholds(v: tuple[float, float]) -> str | None:
    return None if len(v) == 2 and _finite(*v) and all(0 <= t < 1 for t in v) else "must be two numbers in [0, 1)"


def step_count(v: int) -> str | None:
    # 1000 steps would start at timestep 1000, past the last train timestep 999 (§2.4)
    return None if isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 999 else "must be 1 to 999"


def index_pair(v: tuple[int, int]) -> str | None:
    ok = len(v) == 2 and all(isinstance(i, int) for i in v) and 0 <= v[0] < v[1]
    return None if ok else "must be 'start-end' with 0 <= start < end"


def block_list(v: tuple[int, ...]) -> str | None:
    ok = len(v) > 0 and all(isinstance(b, int) and b >= 0 for b in v)
    return None if ok else "must be block indices >= 0"


MAX_SIZE = 4096  # a sanity bound; what the model and the memory allow is checked once the model is loaded


def image_size(v: int) -> str | None:
    ok = isinstance(v, int) and 64 <= v <= MAX_SIZE and v % 64 == 0
    return None if ok else f"must be a multiple of 64 from 64 to {MAX_SIZE}"


def factors(v: tuple[tuple[str, float], ...]) -> str | None:
    return None if all(_finite(f) for _, f in v) else "factors must be finite numbers"
