"""Every edit setting, declared once (docs/spec.md §7).

Each field of `EditConfig` carries its `Setting`: help, section, group, how its text is parsed, its range. The
command-line flags, the batch job keys, the sweep's `--vary`, `validate` and the `--help` text all derive from it.
Names the published method uses (thres, self_replace_steps, ...) are kept as published.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field
from typing import Any, Literal

from . import values as v
from .values import Steps
from .words import find_word

# §4.3: the cross-attention blocks Local Blend and mask_t read: the latent/4 level (16² maps at 512²).
BLEND_BLOCKS = (4, 5, 7, 8, 9)
# The built-in defaults of the settings a model may set (§7, §8.4), used when neither a flag, a preset nor the
# model's specref.json sets them.
BUILT_IN = {"map_blocks": BLEND_BLOCKS, "thres": 0.5, "interp": "bilinear"}
SR_STEPS_AT_50 = (4, 50)  # §4.4's default SR steps for 50 steps; scaled to other step counts as the presets are
PROMPTS, P2P, BLEND = "inputs and prompts", "Prompt-to-Prompt (§4.1)", "Local Blend (§4.3)"
SR, REFS, SAMPLING = "SR-attn: the reference (§4.4)", "references (§8)", "sampling (§2-§3)"


# ---- the table -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Setting:
    """How one EditConfig field is given and checked (docs/spec.md §7)."""

    help: str
    section: str
    group: str
    parse: Callable[[str], Any] = str
    metavar: str = "TEXT"
    choices: tuple = ()
    check: Callable[[Any], str | None] | None = None
    by_model: bool = False            # None means: the model's specref.json (§8.4), else the built-in default
    aliases: tuple[str, ...] = ()     # earlier names, still accepted


def setting(default: Any, help: str, section: str, group: str, **kw: Any) -> Any:
    """A dataclass field with its Setting."""
    return field(default=default, metadata={"setting": Setting(help, section, group, **kw)})


@dataclass(frozen=True)
class EditConfig:
    """Every setting of one edit (docs/spec.md §7); step ranges are step indices [start, end) of `steps`."""

    source_prompt: str = setting(MISSING, "prompt that describes the source image", "§1", PROMPTS)
    target_prompt: str = setting(MISSING, "the source prompt with the edit's words changed", "§1", PROMPTS)
    reference_prompt: str = setting("", "prompt the reference is inverted with (the presets use '')", "§3", PROMPTS)
    mode: Literal["replace", "refine"] = setting(
        "refine", "replace: same word count, words swapped; refine: any prompts, tokens aligned", "§4.1", P2P,
        choices=("replace", "refine"))
    cross_replace_steps: Steps | dict = setting(
        0.8, "fraction of the steps (or 'a,b') in which the target's cross-attention is the source's, edited",
        "§4.1", P2P, parse=v.fraction_or_pair, metavar="F", check=v.fraction)
    self_replace_steps: Steps = setting(
        0.5, "fraction of the steps (or 'a,b') in which the target takes the source's self-attention (layers "
        "<= latent/2 side): higher keeps more of the source's layout", "§4.1", P2P, parse=v.fraction_or_pair,
        metavar="F", check=v.fraction)
    reweight: tuple[tuple[str, float], ...] = setting(
        (), "target words and factors that scale their attention, e.g. 'vase=2'", "§4.1", P2P, parse=v.reweight,
        metavar="WORD=F", check=v.factors)
    blend_words: tuple[tuple[str, ...], tuple[str, ...]] | None = setting(
        None, "'source words;target words' whose attention is the region Local Blend lets change, e.g. "
        "'cat;tiger'; outside it the source is kept", "§4.3", BLEND, parse=v.word_pair, metavar="SRC;TGT")
    substruct_words: tuple[tuple[str, ...], tuple[str, ...]] | None = setting(
        None, "'source words;target words' taken out of the blend region", "§4.3", BLEND, parse=v.word_pair,
        metavar="SRC;TGT")
    blend_th: tuple[float, float] = setting(
        (0.3, 0.3), "Local Blend's thresholds 'th0,th1' of the blend and substruct maps", "§4.3", BLEND,
        parse=v.float_pair, metavar="T0,T1", check=v.thresholds)
    start_blend: float = setting(0.2, "fraction of the steps before Local Blend starts", "§4.3", BLEND, parse=float,
                                 metavar="F", check=v.fraction)
    map_blocks: tuple[int, ...] | None = setting(
        None, "cross-attention blocks (one map size) whose maps Local Blend and mask_t read, e.g. '4,5,7,8,9' or "
        "'13-16' [the model's, else 4,5,7,8,9]", "§4.3", BLEND, parse=v.blocks, metavar="BLOCKS", check=v.block_list,
        by_model=True)
    target_words: tuple[str, ...] = setting(
        (), "comma-separated target-prompt words whose cross-attention is the edit region mask_t", "§4.4", SR,
        parse=v.words, metavar="WORDS")
    thres: float | None = setting(
        None, "threshold of the resized mask_s and of the min-max normalised mask_t: lower grows the edit region "
        "[the model's, else 0.5]", "§4.4", SR, parse=float, metavar="F", check=v.unit_interval, by_model=True)
    sr_steps: tuple[int, int] | None = setting(
        None, "editing steps 'start-end' (end excluded) with SR-attn [4-50, scaled to --steps]", "§4.4", SR,
        parse=v.int_pair, metavar="A-B", check=v.index_pair)
    sr_layers: tuple[int, int] = setting((10, 16), "self-attention block indices 'start-end' (end excluded) with "
                                         "SR-attn", "§4.4", SR, parse=v.int_pair, metavar="A-B", check=v.index_pair)
    masks: Literal["both", "s", "t", "none"] = setting(
        "both", "which of mask_s, mask_t SR-attn uses (the ablations)", "§4.4", SR, choices=("both", "s", "t", "none"))
    interp: Literal["nearest", "bilinear"] | None = setting(
        None, "how masks and maps are resized to a layer [the model's, else bilinear]", "§4.4", SR,
        choices=("nearest", "bilinear"), by_model=True)
    use_reference: bool = setting(True, "false: the Prompt-to-Prompt baseline (no SR-attn; --no-reference)", "§4.4",
                                  SR, parse=v.boolean, metavar="BOOL")
    feature_dtype: str | None = setting(None, "dtype of the kept reference K/V [the model's]", "§3", SR,
                                        choices=("float32", "float16", "bfloat16", "float64"))
    auto_mask_words: tuple[str, ...] = setting(
        (), "words of --reference-prompt whose cross-attention during the inversion is an 'auto' mask_s (changes the "
        "reference's inverted K/V, as any reference prompt does)", "§8.3", REFS, parse=v.words, metavar="WORDS",
        aliases=("reference_words",))
    auto_mask_thres: float = setting(0.5, "threshold of the min-max normalised map of an 'auto' mask_s: lower grows "
                                     "it", "§8.3", REFS, parse=float, metavar="F", check=v.unit_interval,
                                     aliases=("reference_thres",))
    steps: int = setting(50, "DDIM steps N of inversion and edit", "§2.4", SAMPLING, parse=int, metavar="N",
                         check=v.step_count)
    guidance: float = setting(7.5, "classifier-free guidance scale of the edit", "§2.5", SAMPLING, parse=float,
                              metavar="F", check=v.at_least_zero)
    inversion_guidance: float = setting(1.0, "guidance of the inversion; 1 = conditional only", "§3", SAMPLING,
                                        parse=float, metavar="F", check=v.at_least_zero)
    size: int | None = setting(None, "working long side in pixels, a multiple of 64 [the model's native size]",
                               "§3", SAMPLING, parse=int, metavar="PX", check=v.image_size, by_model=True)

    def replace(self, **changes: Any) -> "EditConfig":
        """A copy with some settings changed (earlier names accepted)."""
        return dataclasses.replace(self, **{ALIASES.get(k, k): v for k, v in changes.items()})

    def __getattr__(self, name: str) -> Any:  # earlier names read as the new ones (only called for missing names)
        if name in ALIASES:
            return getattr(self, ALIASES[name])
        raise AttributeError(f"EditConfig has no setting {name!r}")


SETTINGS: dict[str, Setting] = {f.name: f.metadata["setting"] for f in dataclasses.fields(EditConfig)}
ALIASES: dict[str, str] = {a: name for name, s in SETTINGS.items() for a in s.aliases}
_init = EditConfig.__init__


def _init_with_aliases(self: EditConfig, *args: Any, **kw: Any) -> None:
    """EditConfig(reference_thres=...) keeps working: earlier names map to the new ones."""
    _init(self, *args, **{ALIASES.get(k, k): v for k, v in kw.items()})


EditConfig.__init__ = _init_with_aliases  # type: ignore[method-assign]


def canonical(name: str) -> str:
    """'--self-replace-steps', 'self-replace-steps', 'self_replace_steps' or an alias -> 'self_replace_steps'."""
    attr = name.strip().lstrip("-").replace("-", "_")
    return ALIASES.get(attr, attr)


def flag(name: str) -> str:
    """'self_replace_steps' -> '--self-replace-steps'."""
    return "--" + name.replace("_", "-")


def as_text(value: Any) -> str:
    """A JSON value in a flag's text form: [4, 50] -> '4,50'; [["cat"], ["tiger"]] -> 'cat;tiger'; {w: f} -> 'w=f'."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, (list, tuple)) for v in value):
            return ";".join(",".join(map(str, v)) for v in value)
        return ",".join(map(str, value))
    return str(value)


def parse_value(name: str, value: Any) -> Any:
    """A setting's value from its text (a flag, a --vary value) or a JSON value (a job line): parsed and checked."""
    name = canonical(name)
    if name not in SETTINGS:
        raise ValueError(f"unknown setting {name!r} (settings: {', '.join(SETTINGS)})")
    s = SETTINGS[name]
    if name == "cross_replace_steps" and isinstance(value, dict):
        parsed: Any = {str(k): (tuple(v) if isinstance(v, list) else v) for k, v in value.items()}
    else:
        try:
            parsed = s.parse(value if isinstance(value, str) else as_text(value))
        except (ValueError, TypeError) as e:
            raise ValueError(f"{flag(name)} {as_text(value)!r}: {e}") from None
    problem = _problem(name, parsed)
    if problem:
        raise ValueError(f"{flag(name)} {problem}, got {as_text(value)!r}")
    return parsed


def _problem(name: str, value: Any) -> str | None:
    s = SETTINGS[name]
    if value is None:
        return None
    if s.choices and value not in s.choices:
        return f"must be one of {', '.join(s.choices)}"
    return s.check(value) if s.check else None


def validate(cfg: EditConfig) -> None:
    """Check every setting and how they fit together, with no model: a one-line error naming the setting."""
    for name in SETTINGS:
        problem = _problem(name, getattr(cfg, name))
        if problem:
            raise ValueError(f"{flag(name)} {problem}, got {as_text(getattr(cfg, name))!r}")
    if cfg.sr_steps is not None and cfg.use_reference and cfg.sr_steps[1] > cfg.steps:
        raise ValueError(f"--sr-steps {cfg.sr_steps[0]}-{cfg.sr_steps[1]} end after the last of {cfg.steps} steps "
                         f"(need 0 <= start < end <= {cfg.steps})")
    for prompt, which, ws in words_to_check(cfg):
        for w in ws:
            try:
                find_word(prompt, w)
            except ValueError as e:
                raise ValueError(f"{which}: {e}") from None


def words_to_check(cfg: EditConfig) -> list[tuple[str, str, tuple[str, ...]]]:
    """(prompt, setting, words) of every setting that names words of a prompt (§4.2: a missing word is an error)."""
    out = [(cfg.target_prompt, "--reweight", tuple(w for w, _ in cfg.reweight))]
    if cfg.use_reference and cfg.masks in ("both", "t"):
        out.append((cfg.target_prompt, "--target-words", cfg.target_words))
    for name in ("blend_words", "substruct_words"):
        pair = getattr(cfg, name)
        if pair is not None:
            out += [(cfg.source_prompt, flag(name) + " (source)", pair[0]),
                    (cfg.target_prompt, flag(name) + " (target)", pair[1])]
    if isinstance(cfg.cross_replace_steps, dict):
        out.append((cfg.target_prompt, "--cross-replace-steps", tuple(k for k in cfg.cross_replace_steps
                                                                      if k != "default_")))
    return [(p, which, ws) for p, which, ws in out if ws]


def complete(cfg: EditConfig, model_defaults: Mapping[str, Any]) -> tuple[EditConfig, dict[str, str]]:
    """Fill the settings left as None: from the model (`model_defaults`: its specref.json and native size, §8.4),
    else the built-in default (SR steps scaled to the step count). Returns the config and where each came from."""
    filled, sources = {}, {}
    for name, s in SETTINGS.items():
        if getattr(cfg, name) is not None or not (s.by_model or name == "sr_steps"):
            continue
        if s.by_model and model_defaults.get(name) is not None:
            value = model_defaults[name]
            filled[name], sources[name] = tuple(value) if isinstance(value, list) else value, "model"
        elif name in BUILT_IN:
            filled[name], sources[name] = BUILT_IN[name], "default"
        elif name == "sr_steps":
            filled[name], sources[name] = scaled(SR_STEPS_AT_50, cfg.steps), "default"
    return (cfg.replace(**filled) if filled else cfg), sources


def scaled(steps_at_50: tuple[int, int], steps: int) -> tuple[int, int]:
    """A step range given for 50 steps, for `steps` steps: round(v * N / 50) (§6)."""
    return tuple(round(v * steps / 50) for v in steps_at_50)  # type: ignore[return-value]


