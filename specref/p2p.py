"""Prompt-to-Prompt (docs/spec.md §4.1): the cross-attention edits Replace, Refine and Reweight, word-time alphas,
self-attention replacement, and the stored maps Local Blend and mask_t read.

The pure functions build and apply the edits (hand-checked in tests/test_p2p.py); `P2PEdit` is the stage-2 part
that applies them to the conditional target's maps, and `MapStore` keeps the maps after the edit.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from model.attention import AttnSite
from model.precision import precise_dtype
from model.tokenizer import CLIPTokenizer

from .blend import blend_start
from .settings import BLEND_BLOCKS, EditConfig
from .values import Steps
from .words import span_tokens, word_spans, word_token_indices, word_vector

SRC, TGT = 2, 3  # conditional source / target in the edit batch [u_src, u_tgt, c_src, c_tgt] (§4); TGT is last


# ---------------------------------------------------------------- Replace (§4.1, fix of §4.2)
def _chunk_tokens(tok: CLIPTokenizer, prompt: str) -> list[tuple[str, list[int]]]:
    """(space-separated word, its 1-based token positions) for each word of the prompt."""
    enc = tok.encode(prompt)
    return [(w, span_tokens(enc, s, e)) for w, s, e in word_spans(prompt, whitespace_only=True)]


def replace_mapper(tok: CLIPTokenizer, src_prompt: str, tgt_prompt: str, max_len: int = 77) -> torch.Tensor:
    """Float [max_len, max_len] token mapper M with edit = A_src @ M (§4.1)."""
    src, tgt = _chunk_tokens(tok, src_prompt), _chunk_tokens(tok, tgt_prompt)
    if len(src) != len(tgt):
        raise ValueError(
            f"Replace needs prompts with the same number of space-separated words, but the source has "
            f"{len(src)} ({src_prompt!r}) and the target {len(tgt)} ({tgt_prompt!r}); use Refine"
        )
    m = torch.zeros(max_len, max_len, dtype=torch.float64)  # float64: exact for the float64 mode, cast by P2PPlan.to
    m[0, 0] = 1.0  # <|startoftext|>
    i = j = 1
    for (ws, si), (wt, ti) in zip(src, tgt):
        if ws.lower() != wt.lower() and (not si or not ti):
            raise ValueError(f"changed word {ws!r} -> {wt!r} is past the {max_len}-token limit")
        if len(si) == len(ti):
            m[si, ti] = 1.0  # position by position (also the unchanged words)
        else:
            for t in ti:
                m[si, t] = 1.0 / len(ti)
        i, j = i + len(si), j + len(ti)
    while i < max_len and j < max_len:  # <|endoftext|> and padding: i -> j (§4.2 fix)
        m[i, j] = 1.0
        i, j = i + 1, j + 1
    return m


def edit_replace(a_src: torch.Tensor, mapper: torch.Tensor) -> torch.Tensor:
    """Replace edit: A_src [..., P, 77] @ M [77, 77]."""
    return a_src @ mapper.to(a_src.dtype)


# ---------------------------------------------------------------- Refine (§4.1)
LEFT, UP, DIAG, STOP = 1, 2, 3, 4


def global_align(x: Sequence[int], y: Sequence[int]) -> np.ndarray:
    """Needleman-Wunsch traceback [len(x)+1, len(y)+1] (match +1, mismatch -1, gap 0; ties: left, up, diag)."""
    gap, match, mismatch = 0, 1, -1
    score = np.zeros((len(x) + 1, len(y) + 1), dtype=np.int64)
    score[0, 1:] = np.arange(1, len(y) + 1) * gap
    score[1:, 0] = np.arange(1, len(x) + 1) * gap
    trace = np.zeros_like(score)
    trace[0, 1:], trace[1:, 0], trace[0, 0] = LEFT, UP, STOP
    for i in range(1, len(x) + 1):
        for j in range(1, len(y) + 1):
            left, up = score[i, j - 1] + gap, score[i - 1, j] + gap
            diag = score[i - 1, j - 1] + (match if x[i - 1] == y[j - 1] else mismatch)
            best = max(left, up, diag)
            score[i, j] = best
            trace[i, j] = LEFT if best == left else UP if best == up else DIAG
    return trace


def align_mapper(x: Sequence[int], y: Sequence[int], max_len: int = 77) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists (with bos/eos, unpadded) -> (mapper Long [max_len], alphas Float [max_len]) for the target."""
    trace = global_align(x, y)
    pairs: list[int] = []  # source index per target token, -1 = new token
    i, j = len(x), len(y)
    while i > 0 or j > 0:
        code = trace[i, j]
        if code == DIAG:
            i, j = i - 1, j - 1
            pairs.append(i)
        elif code == LEFT:
            j -= 1
            pairs.append(-1)
        elif code == UP:
            i -= 1
        else:
            break
    pairs.reverse()
    mapper = torch.arange(max_len, dtype=torch.long)  # after the target's eos: same position, alpha 1
    alphas = torch.ones(max_len, dtype=torch.float64)
    mapper[: len(pairs)] = torch.tensor(pairs, dtype=torch.long)
    alphas[: len(pairs)] = (mapper[: len(pairs)] != -1).double()
    return mapper, alphas


def _unpadded(tok: CLIPTokenizer, prompt: str) -> list[int]:
    """Token ids with <|startoftext|> and <|endoftext|>, without padding."""
    enc = tok.encode(prompt)
    return enc.ids[: len(enc.spans) + 2]


def refine_mapper(tok: CLIPTokenizer, src_prompt: str, tgt_prompt: str,
                  max_len: int = 77) -> tuple[torch.Tensor, torch.Tensor]:
    """Refine's (mapper, alphas) from the global alignment of the two prompts' tokens (§4.1)."""
    return align_mapper(_unpadded(tok, src_prompt), _unpadded(tok, tgt_prompt), max_len)


def edit_refine(a_src: torch.Tensor, a_tgt: torch.Tensor, mapper: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """Refine edit: A_src[..., mapper] * alphas + A_tgt * (1 - alphas); new tokens (-1) take A_tgt."""
    return a_src[..., mapper.clamp(min=0)] * alphas + a_tgt * (1 - alphas)


# ---------------------------------------------------------------- Reweight and word-time alphas
def reweight_equalizer(tok: CLIPTokenizer, prompt: str, words: Sequence[str], factors: Sequence[float],
                       max_len: int = 77) -> torch.Tensor:
    """Float [max_len]: ones, except `factors[k]` at the token columns of `words[k]` (one factor = all words)."""
    if len(factors) == 1:
        factors = list(factors) * len(words)
    if len(factors) != len(words):
        raise ValueError(f"reweight needs one factor per word or a single factor: {list(words)} vs {list(factors)}")
    eq = torch.ones(max_len, dtype=torch.float64)
    for w, f in zip(words, factors):
        eq[word_token_indices(tok, prompt, w)] = float(f)
    return eq


def _bounds(steps: Steps) -> tuple[float, float]:
    """A float s means (0, s)."""
    if isinstance(steps, (int, float)):
        return 0.0, float(steps)
    s0, s1 = steps
    return float(s0), float(s1)


def cross_replace_alpha(tok: CLIPTokenizer, tgt_prompt: str, num_steps: int, cross_replace_steps: Steps | dict,
                        max_len: int = 77) -> torch.Tensor:
    """Float [N+1, max_len]: rows [int(s0*(N+1)), int(s1*(N+1))) are 1; dict: "default_" then per-word ranges."""
    spec = dict(cross_replace_steps) if isinstance(cross_replace_steps, dict) else {"default_": cross_replace_steps}
    rows = num_steps + 1
    alpha = torch.zeros(rows, max_len, dtype=torch.float64)  # 0/1; cast to the model's precise dtype by P2PPlan.to

    def fill(steps: Steps, cols: list[int] | slice) -> None:
        s0, s1 = _bounds(steps)
        start, end = int(s0 * rows), int(s1 * rows)
        alpha[:, cols] = 0.0
        alpha[start:end, cols] = 1.0

    fill(spec.pop("default_", (0.0, 1.0)), slice(None))
    for word, steps in spec.items():
        fill(steps, word_token_indices(tok, tgt_prompt, word))
    return alpha


def self_replace_range(self_replace_steps: Steps, num_steps: int) -> tuple[int, int]:
    """Steps [start, end) where the target's self-attention is replaced: (int(N*s0), int(N*s1))."""
    s0, s1 = _bounds(self_replace_steps)
    return int(num_steps * s0), int(num_steps * s1)


def edit_cross(
    a_src: torch.Tensor,
    a_tgt: torch.Tensor,
    alpha_row: torch.Tensor,
    replace: torch.Tensor | None = None,
    refine: tuple[torch.Tensor, torch.Tensor] | None = None,
    equalizer: torch.Tensor | None = None,
) -> torch.Tensor:
    """A_tgt' = edit(A_src, A_tgt) * alpha + A_tgt * (1 - alpha); edit = Replace|Refine|identity, then Reweight."""
    if replace is not None and refine is not None:
        raise ValueError("choose Replace or Refine, not both")
    if replace is not None:
        edited = edit_replace(a_src, replace)
    elif refine is not None:
        edited = edit_refine(a_src, a_tgt, *refine)
    else:
        edited = a_src
    if equalizer is not None:
        edited = edited * equalizer
    return edited * alpha_row + a_tgt * (1 - alpha_row)


# ---------------------------------------------------------------- the stage-2 part (§4.1)
@dataclass
class P2PPlan:
    """Prompt-to-Prompt settings resolved to tensors (§4.1, §4.3)."""

    alpha: Tensor                                   # [N+1, 77] word-time weights of the cross-attention edit
    self_range: tuple[int, int]                     # steps where the target takes the source's self-attention
    replace: Tensor | None = None                   # Replace mapper [77, 77]
    refine: tuple[Tensor, Tensor] | None = None     # Refine (mapper, alphas)
    equalizer: Tensor | None = None                 # Reweight factors [77]
    blend_words: Tensor | None = None               # [2, 77] 0/1, Local Blend words per prompt
    substruct_words: Tensor | None = None           # [2, 77] 0/1
    blend_th: tuple[float, float] = (0.3, 0.3)
    blend_start: int = 10                           # first step index that blends
    map_blocks: tuple[int, ...] = BLEND_BLOCKS      # cross-attention layers whose maps are stored (one map size)

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> "P2PPlan":
        """Move every tensor to `device`; float tensors to `dtype` (the model's precise dtype)."""
        def move(t: object) -> object:
            if not isinstance(t, Tensor):
                return t
            return t.to(device, dtype) if t.is_floating_point() else t.to(device)

        for f in ("alpha", "replace", "equalizer", "blend_words", "substruct_words"):
            setattr(self, f, move(getattr(self, f)))
        if self.refine is not None:
            self.refine = (move(self.refine[0]), move(self.refine[1]))
        return self


def p2p_plan(cfg: EditConfig, tok: CLIPTokenizer) -> P2PPlan:
    """Resolve the P2P settings to tensors (§4.1, §4.3); bad words raise here, before any work."""
    src, tgt = cfg.source_prompt, cfg.target_prompt
    plan = P2PPlan(alpha=cross_replace_alpha(tok, tgt, cfg.steps, cfg.cross_replace_steps),
                   self_range=self_replace_range(cfg.self_replace_steps, cfg.steps),
                   blend_th=tuple(cfg.blend_th), blend_start=blend_start(cfg.steps, cfg.start_blend),
                   map_blocks=tuple(cfg.map_blocks))
    if cfg.mode == "replace":
        plan.replace = replace_mapper(tok, src, tgt)
    else:
        plan.refine = refine_mapper(tok, src, tgt)
    if cfg.reweight:
        plan.equalizer = reweight_equalizer(tok, tgt, [w for w, _ in cfg.reweight], [f for _, f in cfg.reweight])
    for name in ("blend_words", "substruct_words"):
        words = getattr(cfg, name)
        if words is not None:
            setattr(plan, name, torch.stack([word_vector(tok, src, words[0]), word_vector(tok, tgt, words[1])]))
    for w in cfg.target_words:
        word_token_indices(tok, tgt, w)
    return plan


class P2PEdit:
    """Edits the conditional target's attention probabilities (§4.1): its cross-attention by the word-time alpha,
    and its self-attention replaced by the source's in the self-replace steps, in layers of <= (latent/2)² pixels."""

    def __init__(self, plan: P2PPlan, latent_hw: tuple[int, int]):
        self.plan = plan
        self.max_self_pixels = (latent_hw[0] // 2) * (latent_hw[1] // 2)  # "<= 32²" at a 64² latent

    def replaces_self(self, site: AttnSite, step: int) -> bool:
        """True where the target takes the source's self-attention."""
        a, b = self.plan.self_range
        return a <= step < b and site.height * site.width <= self.max_self_pixels

    def needs_probs(self, site: AttnSite, step: int) -> bool:
        """Whether this layer's probabilities are edited at this step."""
        if site.kind == "cross":
            return bool(self.plan.alpha[step].any())
        return self.replaces_self(site, step)

    def __call__(self, site: AttnSite, step: int, probs: Tensor) -> Tensor:
        """probs [4, heads, Nq, Nk] of the batch [u_src, u_tgt, c_src, c_tgt]; only c_tgt changes."""
        if site.kind == "self":
            probs[TGT] = probs[SRC]  # the target takes the source's self-attention
            return probs
        p, dt = self.plan, precise_dtype(probs.dtype)  # the edit runs in float32 (as the published code) or float64
        edited = edit_cross(probs[SRC].to(dt), probs[TGT].to(dt), p.alpha[step], p.replace, p.refine, p.equalizer)
        probs[TGT] = edited.to(probs.dtype)
        return probs


class MapStore:
    """The map blocks' cross-attention of the conditional source and target after the P2P edit (§4.1), heads
    averaged, summed over layers and steps: what Local Blend (§4.3) and mask_t (§4.4) read."""

    def __init__(self, map_blocks: tuple[int, ...]):
        self.map_blocks = tuple(map_blocks)
        self.sum: Tensor | None = None  # [2, h, w, 77]

    def wants(self, site: AttnSite) -> bool:
        """True for the cross-attention layers whose maps are stored."""
        return site.kind == "cross" and site.block in self.map_blocks

    def add(self, site: AttnSite, probs: Tensor) -> None:
        """Add a map block's edited probabilities [4, heads, h*w, 77] to the sums."""
        maps = probs[SRC:].to(precise_dtype(probs.dtype)).mean(1).reshape(2, site.height, site.width, -1)
        self.sum = maps if self.sum is None else self.sum + maps
