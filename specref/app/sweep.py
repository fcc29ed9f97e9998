"""Parameter sweeps: one edit per combination of varied values, one model load, one inversion per stage-1 setting;
a folder per run, results.csv and a labelled contact sheet, written as one output folder (folders.py)."""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from model import StableDiffusion

from ..images import load_image
from ..inputs import read_inputs
from ..masks import read_mask
from ..references import Reference, as_references
from ..settings import EditConfig, canonical, parse_value
from .folders import RECORD, check_folder, record_mark, staged_folder
from .jobs import INPUT_KEYS, EditJob, Runtime, make_job
from .metrics import MARGIN
from .outputs import model_record
from .study import Run, StudyResult, error_text, execute, row, write_csv


def split_values(text: str) -> list[str]:
    """'0.3,0.5' -> ['0.3', '0.5']; with a '|' anywhere, '|' separates: '4,5,7|13,14,15' -> ['4,5,7', '13,14,15']."""
    return [v.strip() for v in text.split("|" if "|" in text else ",")]


def parse_input(name: str, value: Any) -> Any:
    """A varied input key's value: paths as given, the baseline switch as a bool, the margin as an int."""
    if name == "no_reference":
        return value if isinstance(value, bool) else parse_value("use_reference", value) is False
    if name == "metrics_margin":
        return int(value)
    return value


def parse_vary(items: Sequence[str]) -> dict[str, list[str]]:
    """--vary NAME=V1,V2 ... -> {name: [texts]} (each value checked by parsing it)."""
    vary: dict[str, list[str]] = {}
    for item in items:
        name, eq, values = item.partition("=")
        if not eq or not values.strip():
            raise ValueError(f"--vary needs NAME=V1,V2,..., got {item!r}")
        key = name.strip().lstrip("-").replace("-", "_")
        key = key if key in INPUT_KEYS else canonical(key)
        if key in vary:
            raise ValueError(f"--vary {name} is given twice")
        if key in ("name", "for"):
            raise ValueError(f"--vary {name}: not a value to sweep")
        vary[key] = split_values(values)
        for v in vary[key]:
            parse_input(key, v) if key in INPUT_KEYS else parse_value(key, v)
    return vary


def combinations(vary: dict[str, Sequence], zipped: bool = False) -> list[dict[str, Any]]:
    """The product of the value lists (or, zipped, their pairs) as {name: value} dicts."""
    names = list(vary)
    if zipped:
        lengths = {len(v) for v in vary.values()}
        if len(lengths) > 1:
            raise ValueError(f"--zip needs --vary lists of one length, got {[len(v) for v in vary.values()]}")
        return [dict(zip(names, vals)) for vals in zip(*vary.values())]
    return [dict(zip(names, vals)) for vals in itertools.product(*vary.values())]


def _label(v: Any) -> str:
    if isinstance(v, tuple) and len(v) == 2 and all(isinstance(i, int) for i in v):
        return f"{v[0]}-{v[1]}"
    return str(v)


def run_name(n: int, labels: dict[str, str]) -> str:
    """A run's folder name: its number and varied values, safe for a file system."""
    name = f"{n:03d}_" + "_".join(f"{k}={v}" for k, v in labels.items())
    return "".join(c if c.isalnum() or c in "=.,-_" else "-" for c in name)[:120]


def flag_runs(given: dict, inputs: dict, vary: dict[str, list[str]], zipped: bool) -> list[Run]:
    """The runs of a sweep from command-line values: each combination resolved as `edit` resolves its flags."""
    runs = []
    for n, combo in enumerate(combinations(vary, zipped)):
        labels = {k: str(v) for k, v in combo.items()}
        run = Run(run_name(n, labels), None, labels)
        try:
            over = {k: parse_value(k, v) for k, v in combo.items() if k not in INPUT_KEYS}
            ins = {k: parse_input(k, v) for k, v in combo.items() if k in INPUT_KEYS}
            run.job = make_job({**given, **over}, {**inputs, **ins})
        except ValueError as e:
            run.status, run.error = "failed", error_text(e)
        runs.append(run)
    return runs


def sweep(sd: StableDiffusion, source: Any, reference: Any, config: EditConfig, vary: dict[str, Sequence], *,
          zip: bool = False, reference_mask: Any = None, source_mask: Any = None, out: str | Path = "out/sweep",
          metrics_margin: int = MARGIN, progress: bool = True, runtime: Runtime | dict | None = None,
          overwrite: bool = False) -> StudyResult:
    """One edit per combination of `vary` values ({setting or input name: values; strings are parsed as the flag's
    text}) on the base `config`; one inversion per stage-1 group. Writes a folder per run, sheet.png and
    results.csv under `out`, which must be new or empty, or (with `overwrite`) a previous sweep (folders.py)."""
    refs = tuple(as_references(reference, reference_mask))
    base = EditJob(source, refs, config, source_mask=source_mask, metrics_margin=metrics_margin)
    runs = []
    vary = {(k if k.lstrip("-").replace("-", "_") in INPUT_KEYS else canonical(k)): list(v) for k, v in vary.items()}
    for n, combo in enumerate(combinations(vary, zip)):
        labels = {k: v if isinstance(v, str) else _label(v) for k, v in combo.items()}
        run = Run(run_name(n, labels), None, labels)
        try:
            settings = {k: parse_value(k, v) if isinstance(v, str) else v for k, v in combo.items()
                        if k not in INPUT_KEYS}
            job = dataclasses.replace(base, config=config.replace(**settings))
            for k, v in combo.items():
                if k == "reference":
                    job = dataclasses.replace(job, references=tuple(as_references(v, reference_mask)))
                elif k in ("source", "source_mask", "metrics_margin"):
                    job = dataclasses.replace(job, **{k: parse_input(k, v)})
                elif k in INPUT_KEYS:
                    raise ValueError(f"vary {k} through the command line")
            run.job = job
        except (ValueError, TypeError) as e:
            run.status, run.error = "failed", error_text(e)
        runs.append(run)
    rt = runtime if isinstance(runtime, Runtime) else Runtime(**{"overwrite": overwrite, **(runtime or {})})
    rt = dataclasses.replace(rt, progress=progress)
    return run_sweep(sd, runs, list(vary), zip, Path(out), rt, model_record(sd, rt.model))


def run_sweep(sd: StableDiffusion, runs: list[Run], names: list[str], zipped: bool, out: Path, runtime: Runtime,
              model: dict) -> StudyResult:
    """Run a sweep's runs into `out` (checked, then written as one folder renamed into place)."""
    jobs = [r.job for r in runs if r.job is not None]
    check_folder(out, [p for j in jobs for p in j.input_paths()], runtime.overwrite)
    with staged_folder(out, runtime.overwrite) as tmp:
        bar = tqdm(total=len(runs), desc="sweep", unit="run", disable=not runtime.progress)
        inversions = execute(sd, runs, tmp, dataclasses.replace(runtime, progress=False), model, bar=bar)
        bar.close()
        write_csv(tmp / "results.csv", [row(r, names) for r in runs])
        contact_sheet(runs, names, zipped, tmp).save(tmp / "sheet.png")
        files = [p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file() and not p.name.startswith(".")]
        (tmp / RECORD).write_text(json.dumps({"specref": record_mark("sweep", files)}, indent=1))
    return StudyResult(runs, inversions, out)


def sweep_command(load: Callable[[], tuple[StableDiffusion, dict]], given: dict, inputs: dict, vary: list[str],
                  zipped: bool, out: Path, runtime: Runtime) -> int:
    """`sweep`: every check before the model loads, then the runs; exit code = failed runs."""
    base = make_job(given, inputs)  # the base flags make an edit, on readable inputs
    read_inputs(base.source, list(base.references) or None)
    if base.source_mask is not None:
        read_mask(base.source_mask, what="source mask")
    runs = flag_runs(given, inputs, parse_vary(vary), zipped)
    check_folder(out, [p for r in runs if r.job for p in r.job.input_paths()], runtime.overwrite)
    sd, model = load()
    res = run_sweep(sd, runs, list(runs[0].labels) if runs else [], zipped, out, runtime, model)
    for r in res.failed:
        print(f"run {r.name} failed: {r.error}")
    print(f"wrote {res.out} ({len(res.runs)} runs, {res.inversions} inversion(s), {len(res.failed)} failed)")
    return min(len(res.failed), 255)


def contact_sheet(runs: list[Run], names: list[str], zipped: bool, out: Path, tile: int = 160) -> Image.Image:
    """The sweep's edits in a labelled grid: rows = all varied values but the last, columns = the last (zipped or
    one name: one row); the first run's source and reference at the left."""
    values = {n: list(dict.fromkeys(r.labels.get(n, "") for r in runs)) for n in names}
    grid = len(names) >= 2 and not zipped
    cols = max(1, len(values[names[-1]]) if grid else len(runs))
    nrows = math.ceil(len(runs) / cols) if runs else 1
    head, side, pad = 28, tile + 8, 4
    left = side + (150 if grid else 0)
    sheet = Image.new("RGB", (left + cols * (tile + pad), head + max(nrows, 2) * (tile + pad)), "white")
    draw = ImageDraw.Draw(sheet)

    def fit(im: Image.Image) -> Image.Image:
        return im.convert("RGB").resize((tile, tile))

    first = next((r.job for r in runs if r.job is not None), None)
    pictures = [] if first is None else [(first.source, "source")] + [
        (r.image, "reference") for r in first.references[:1] if isinstance(r, Reference)]
    for i, (img, label) in enumerate(pictures):
        try:
            sheet.paste(fit(load_image(img, label)), (0, head + i * (tile + pad)))
            draw.text((2, head + i * (tile + pad) + 2), label, fill="red")
        except ValueError:
            pass
    for j in range(cols):
        text = f"{names[-1]}={values[names[-1]][j]}" if grid else "\n".join(
            f"{k}={runs[j].labels.get(k, '')}" for k in names) if j < len(runs) else ""
        draw.text((left + j * (tile + pad) + 2, 2), text[:60], fill="black")
    for n, run in enumerate(runs):
        r, c = divmod(n, cols)
        x, y = left + c * (tile + pad), head + r * (tile + pad)
        if grid and c == 0:
            draw.text((side + 2, y + tile // 2), "\n".join(f"{k}={run.labels[k]}" for k in names[:-1])[:120],
                      fill="black")
        edit_png = out / run.name / "edit.png"
        if run.status == "done" and edit_png.is_file():
            sheet.paste(fit(Image.open(edit_png)), (x, y))
        else:
            draw.rectangle((x, y, x + tile - 1, y + tile - 1), fill=(220, 220, 220))
            draw.text((x + 4, y + 4), "failed:\n" + "\n".join((run.error or "")[i:i + 24] for i in range(0, 96, 24)),
                      fill="red")
    return sheet
