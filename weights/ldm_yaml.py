"""The LDM inference yaml beside a single file (`v2-inference(-v).yaml`): a small reader and the few keys used.

§9.5. No pyyaml at run time: the reader takes the block YAML these configs are written in (nested mappings,
`- item` lists, `[a, b]` flow lists, plain or quoted scalars, `#` comments) and refuses anything else.
Which yaml belongs to an SD 2 file: `<stem>.yaml` beside it (the convention of the LDM tools); else the standard
name `v2-inference-v.yaml` or `v2-inference.yaml` in its folder when exactly one of them is there (both: neither
is read, and a printed line says so). SD 1 files read no yaml (they load as they always have).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import UnsupportedCheckpoint

STANDARD_NAMES = ("v2-inference-v.yaml", "v2-inference.yaml")  # Stability AI's SD 2 inference configs
# LDM's `parameterization` -> our prediction type (LDM's default is "eps"); "x0" models are not supported.
PARAMETERIZATION = {"eps": "epsilon", "v": "v_prediction"}
_INT = re.compile(r"^[-+]?\d+$")
_FLOAT = re.compile(r"^[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?$")


class YamlError(ValueError):
    """The text is not in the YAML subset read here."""


def _strip_comment(line: str) -> str:
    """The line without a `#` comment (a `#` at the start or after a space, outside quotes)."""
    quote = None
    for i, c in enumerate(line):
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i].rstrip()
    return line.rstrip()


def scalar(text: str):
    """A plain, quoted or flow-list scalar: int, float, bool, None, str or list of those."""
    text = text.strip()
    if text[:1] in "'\"":
        if len(text) < 2 or text[-1] != text[0]:
            raise YamlError(f"unterminated string {text!r}")
        return text[1:-1]
    if text.startswith("["):
        if not text.endswith("]"):
            raise YamlError(f"unsupported flow list {text!r}")
        inner = text[1:-1].strip()
        return [scalar(p) for p in inner.split(",")] if inner else []
    if text == "{}":
        return {}
    if text[:1] in "{|>&*!":
        raise YamlError(f"unsupported YAML value {text!r}")
    if text in ("true", "True", "TRUE"):
        return True
    if text in ("false", "False", "FALSE"):
        return False
    if text in ("null", "Null", "NULL", "~", ""):
        return None
    if _INT.match(text):
        return int(text)
    if _FLOAT.match(text):
        return float(text)
    return text


def parse_yaml(text: str) -> dict:
    """Parse the block-YAML subset of LDM configs into dicts, lists and scalars."""
    lines = []
    for n, raw in enumerate(text.splitlines(), 1):
        if "\t" in raw[: len(raw) - len(raw.lstrip())]:
            raise YamlError(f"line {n}: tab indentation")
        body = _strip_comment(raw)
        if body.strip() and body.strip() not in ("---", "..."):
            lines.append((len(body) - len(body.lstrip()), body.strip(), n))
    if not lines:
        return {}
    value, i = _block(lines, 0, lines[0][0])
    if i != len(lines):
        raise YamlError(f"line {lines[i][2]}: unexpected indentation")
    if not isinstance(value, dict):
        raise YamlError("the top level is not a mapping")
    return value


def _block(lines: list, i: int, indent: int) -> tuple[object, int]:
    if lines[i][1].startswith("- ") or lines[i][1] == "-":
        return _list(lines, i, indent)
    return _mapping(lines, i, indent)


def _split_key(body: str, n: int) -> tuple[str, str]:
    m = re.match(r"""^("[^"]*"|'[^']*'|[^'"\s:][^:]*?)\s*:(\s+(.*))?$""", body)
    if not m:
        raise YamlError(f"line {n}: expected `key: value`, got {body!r}")
    key = m.group(1)
    return (key[1:-1] if key[:1] in "'\"" else key), (m.group(3) or "")


def _mapping(lines: list, i: int, indent: int) -> tuple[dict, int]:
    out: dict = {}
    while i < len(lines) and lines[i][0] == indent and not lines[i][1].startswith("- "):
        key, rest = _split_key(lines[i][1], lines[i][2])
        i += 1
        if rest:
            out[key] = scalar(rest)
        elif i < len(lines) and (lines[i][0] > indent or (lines[i][0] == indent and lines[i][1].startswith("- "))):
            out[key], i = _block(lines, i, lines[i][0])
        else:
            out[key] = None
    if i < len(lines) and lines[i][0] > indent:
        raise YamlError(f"line {lines[i][2]}: unexpected indentation")
    return out, i


def _list(lines: list, i: int, indent: int) -> tuple[list, int]:
    out: list = []
    while i < len(lines) and lines[i][0] == indent and (lines[i][1].startswith("- ") or lines[i][1] == "-"):
        rest, n = lines[i][1][1:].strip(), lines[i][2]
        if not rest:
            i += 1
            if i >= len(lines) or lines[i][0] <= indent:
                out.append(None)
                continue
            value, i = _block(lines, i, lines[i][0])
        elif re.match(r"""^("[^"]*"|'[^']*'|[^'"\s:\[{][^:]*?)\s*:(\s|$)""", rest):
            # `- key: value` opens a mapping whose keys sit at the column after "- "
            col = indent + len(lines[i][1]) - len(rest)
            value, i = _mapping([*lines[:i], (col, rest, n), *lines[i + 1:]], i, col)
        else:
            value, i = scalar(rest), i + 1
        out.append(value)
    return out, i


@dataclass(frozen=True)
class LDMConfig:
    """What this project reads from an LDM inference yaml (§9.5); None where the yaml does not say."""

    path: Path
    prediction_type: str  # model.params.parameterization: "v" -> v_prediction, "eps" or absent -> epsilon
    num_heads: int | None  # model.params.unet_config.params.num_heads (-1 or absent: not set)
    num_head_channels: int | None  # ...num_head_channels (-1 or absent: not set); wins over num_heads, as in LDM
    scale_factor: float | None  # model.params.scale_factor, the latent scaling factor

    def heads(self, channels: int) -> int | None:
        """Heads of a transformer block of `channels` channels, as LDM's UNetModel derives them; None: not set."""
        if self.num_head_channels:
            if channels % self.num_head_channels:
                raise UnsupportedCheckpoint(f"{self.path.name}: num_head_channels {self.num_head_channels} does not "
                                            f"divide the UNet's {channels} channels")
            return channels // self.num_head_channels
        return self.num_heads


def _get(cfg: dict, *path: str):
    for key in path:
        cfg = cfg.get(key) if isinstance(cfg, dict) else None
    return cfg


def read_ldm_config(path: Path) -> LDMConfig:
    """Read the keys this project uses from an LDM yaml; a yaml it cannot read is an error naming it."""
    try:
        cfg = parse_yaml(Path(path).read_text(encoding="utf-8"))
    except (YamlError, UnicodeDecodeError) as e:
        raise UnsupportedCheckpoint(f"{Path(path).name} is not an LDM yaml this project can read ({e})") from None
    params = _get(cfg, "model", "params")
    if not isinstance(params, dict):
        raise UnsupportedCheckpoint(f"{Path(path).name} has no model.params: not an LDM inference yaml")
    param = params.get("parameterization", "eps")
    if param not in PARAMETERIZATION:
        raise UnsupportedCheckpoint(f"{Path(path).name}: parameterization {param!r} is not supported "
                                    "(supported: 'eps' and 'v')")
    unet = _get(params, "unet_config", "params") or {}
    positive = lambda v: v if isinstance(v, int) and v > 0 else None  # noqa: E731 - LDM uses -1 for "not set"
    scale = params.get("scale_factor")
    return LDMConfig(Path(path), PARAMETERIZATION[param], positive(unet.get("num_heads")),
                     positive(unet.get("num_head_channels")), float(scale) if scale is not None else None)


def find_ldm_config(checkpoint: Path) -> tuple[Path | None, str | None]:
    """The yaml that belongs to SD 2 file `checkpoint` (see the module doc) and a note when it was not its own
    `<stem>.yaml` or when the standard names were ambiguous."""
    own = checkpoint.with_suffix(".yaml")
    if own.is_file():
        return own, None
    found = [checkpoint.parent / n for n in STANDARD_NAMES if (checkpoint.parent / n).is_file()]
    if len(found) == 1:
        return found[0], f"{checkpoint.name}: read {found[0].name} from its folder (there is no {own.name})"
    if len(found) == 2:
        return None, (f"{checkpoint.name}: both {' and '.join(STANDARD_NAMES)} are in its folder, so neither is read "
                      f"(copy the right one to {own.name})")
    return None, None
