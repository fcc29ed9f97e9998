"""CLIP's byte-level BPE tokenizer (§2), built on the `tokenizers` package.

Same pipeline as OpenAI CLIP: NFC, collapse whitespace, lower-case, split with CLIP's regex,
byte-level BPE with '</w>' word ends, then <|startoftext|> ... <|endoftext|> padded to 77.
SD 1 pads with <|endoftext|>; SD 2 pads with "!" (id 0), the convention of its OpenCLIP tokenizer (§9.2):
the pad token is read from a tokenizer folder's configs.
Each token also carries its character span in the prompt (§4.2 needs word -> tokens).
"""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

# OpenAI CLIP's vocabulary (MIT licence, see model/data/NOTICE).
BUNDLED_VOCAB = Path(__file__).parent / "data" / "bpe_simple_vocab_16e6.txt.gz"
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# §9.2: SD 2's released tokenizer pads with "!" (id 0), as open_clip.tokenize (SD 2's training) pads with 0.
# A "!" in a prompt stays text ("!</w>", "!!</w>", ...) as in open_clip; transformers' CLIPTokenizer instead splits
# its pad token out of the text as a special token (id 0), a known difference from open_clip not copied here.
SD2_PAD = "!"
# CLIP's split pattern (text is lower-cased first, so case-insensitivity is moot).
_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _vocab_from_bpe_file(path: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges exactly as OpenAI CLIP's SimpleTokenizer builds them."""
    lines = gzip.open(path, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges] + [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}, merges


@dataclass(frozen=True)
class Encoding:
    """One prompt's token ids (length 77) and each real token's (start, end) character span."""

    ids: list[int]
    spans: list[tuple[int, int]]  # spans[k] belongs to ids[k + 1] (after <|startoftext|>)
    truncated: bool


class CLIPTokenizer:
    """Callable: list of prompts -> LongTensor [B, max_length]."""

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], max_length: int = 77,
                 pad_token: str = EOS):
        bpe = models.BPE(vocab=vocab, merges=merges, unk_token=EOS, end_of_word_suffix="</w>", fuse_unk=False)
        tok = Tokenizer(bpe)
        tok.normalizer = normalizers.Sequence(
            [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
        )
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(_PATTERN), behavior="removed", invert=True),
             pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
        self._tok = tok
        self.max_length = max_length
        self.bos_id, self.eos_id = vocab[BOS], vocab[EOS]
        if pad_token not in vocab:
            raise ValueError(f"pad token {pad_token!r} is not in the vocabulary")
        self.pad_token, self.pad_id = pad_token, vocab[pad_token]
        self.vocab_size = len(vocab)

    @classmethod
    def bundled(cls, pad_token: str = EOS) -> "CLIPTokenizer":
        """The tokenizer from the bundled CLIP vocabulary (pad_token "!" for SD 2, §9.2)."""
        return cls(*_vocab_from_bpe_file(BUNDLED_VOCAB), pad_token=pad_token)

    @classmethod
    def from_folder(cls, folder: str | Path) -> "CLIPTokenizer":
        """A diffusers/transformers `tokenizer/` folder (vocab.json + merges.txt)."""
        folder = Path(folder)
        vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        lines = (folder / "merges.txt").read_text(encoding="utf-8").split("\n")
        merges = [tuple(m.split()) for m in lines if m and not m.startswith("#version")]
        max_length = 77
        cfg = folder / "tokenizer_config.json"
        if cfg.exists():
            max_length = min(int(json.loads(cfg.read_text()).get("model_max_length", 77)), 77)
        return cls(vocab, merges, max_length, pad_token_of(folder))

    def encode(self, prompt: str) -> Encoding:
        """Token ids padded with the pad token to max_length, plus character spans."""
        enc = self._tok.encode(prompt, add_special_tokens=False)
        ids, spans = list(enc.ids), list(enc.offsets)
        room = self.max_length - 2
        truncated = len(ids) > room
        ids, spans = ids[:room], spans[:room]
        full = [self.bos_id] + ids + [self.eos_id]
        full += [self.pad_id] * (self.max_length - len(full))
        return Encoding(full, [tuple(s) for s in spans], truncated)

    def __call__(self, prompts: list[str] | str) -> torch.LongTensor:
        """Prompts -> LongTensor [B, max_length]."""
        if isinstance(prompts, str):
            prompts = [prompts]
        return torch.tensor([self.encode(p).ids for p in prompts], dtype=torch.long)


def pad_token_of(folder: str | Path) -> str:
    """The pad token a transformers tokenizer folder names (tokenizer_config.json, then special_tokens_map.json);
    <|endoftext|> when neither does (SD 1's convention)."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = Path(folder) / name
        pad = json.loads(path.read_text(encoding="utf-8")).get("pad_token") if path.exists() else None
        if isinstance(pad, dict):  # an AddedToken written out: {"content": "!", "lstrip": false, ...}
            pad = pad.get("content")
        if pad:
            return pad
    return EOS
