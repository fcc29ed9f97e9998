"""Studies: parameter sweeps that invert once per stage-1 setting, and resumable batches (also under torchrun).

Runs are grouped by `stage1_key(config)` and the identities (contents) of their source and reference; each group
is inverted once, keeping the reference K/V for the union of its runs' SR layers x steps, then every run of the
group is a stage 2 (`edit_stage`) on that inversion: the same prepare/invert/edit_stage calls as `edit`.
Every run's folder is written by the CLI's `write_run`, so it is exactly what `edit` writes.
"""
from __future__ import annotations

import argparse
import copy
import csv
import datetime
import hashlib
import itertools
import json
import math
import os
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from model import StableDiffusion

from .cli import CHOICES, EDIT_FLAGS, build_parser, edit_inputs, input_paths, write_run
from .config import PRESETS, EditConfig
from .images import load_image
from .metrics import MARGIN, PeakMemory
from .outputs import RECORD, OutputError, check_folder, output_files, record_mark, remove_stale, staged_folder
from .pipeline import edit_stage, invert, prepare, stage1_key
from .references import Reference

INPUTS = ("source", "reference", "reference_mask", "source_mask")  # per-run input files (vary/job keys)
METRIC_COLUMNS = ("psnr_outside", "ssim_outside", "region_area", "region", "peak_memory_bytes")
TIMING_COLUMNS = ("invert", "edit", "decode", "total")


@dataclass
class Run:
    """One edit of a study: its settings, inputs and output-record flags (what `edit` would get)."""

    name: str
    args: argparse.Namespace            # source, reference_mask, source_mask, preset, runtime flags (for run.json)
    config: EditConfig | None = None
    reference: object = None            # as given to `prepare` (None: the P2P baseline)
    labels: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    status: str = "pending"             # done | resumed | failed
    inversion: int | None = None        # which inversion of the study it used
    record: dict = field(default_factory=dict)  # run.json of a finished run


@dataclass
class StudyResult:
    """What a sweep or a batch did: its runs, how many inversions it ran, and where it wrote."""

    runs: list[Run]
    inversions: int
    out: Path

    @property
    def failed(self) -> list[Run]:
        """The runs that failed, with their errors."""
        return [r for r in self.runs if r.status == "failed"]


# ---- flag values ------------------------------------------------------------------------------------------------
def attr_name(name: str) -> str:
    """'--self-replace-steps', 'self-replace-steps' or 'self_replace_steps' -> 'self_replace_steps'."""
    return name.strip().lstrip("-").replace("-", "_")


def parse_flag(name: str, value: object) -> object:
    """A value of edit flag `name` (or an input / preset) parsed as the `edit` command parses it.

    Strings go through the flag's parser; JSON values (numbers, lists) are first written as the flag's text.
    """
    attr, flag = attr_name(name), "--" + attr_name(name).replace("_", "-")
    if attr in INPUTS:
        if isinstance(value, (list, tuple)):
            return [str(v) for v in value]  # several references (issue 19): passed through
        return None if value is None else str(value)
    if attr == "preset":
        if value not in PRESETS:
            raise ValueError(f"unknown preset {value!r}; choose from {sorted(PRESETS)}")
        return value
    if attr in ("no_reference",):
        if not isinstance(value, bool):
            raise ValueError(f"{attr} must be true or false, got {value!r}")
        return value
    if attr == "overwrite":
        raise ValueError("overwrite is set for the whole batch (a flag of the batch command), not per job")
    if attr == "metrics_margin":
        return int(value)
    if flag not in EDIT_FLAGS:
        raise ValueError(f"unknown edit flag {name!r} (edit flags: {', '.join(f[2:] for f in EDIT_FLAGS)})")
    field_name, kind = EDIT_FLAGS[flag][:2]
    text = value if isinstance(value, str) else _as_text(value)
    try:
        parsed = kind(text)
    except (ValueError, TypeError, argparse.ArgumentTypeError) as e:
        raise ValueError(f"bad value {value!r} for {flag}: {e}") from None
    if field_name in CHOICES and parsed not in CHOICES[field_name]:
        raise ValueError(f"bad value {value!r} for {flag}: choose from {CHOICES[field_name]}")
    return parsed


def _as_text(value: object) -> str:
    """A JSON value in the flag's text form: [4, 50] -> '4,50'; [["cat"], ["tiger"]] -> 'cat;tiger'; {w: f} -> 'w=f'."""
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, (list, tuple)) for v in value):
            return ";".join(",".join(map(str, v)) for v in value)
        return ",".join(map(str, value))
    return str(value)


def split_values(text: str) -> list[str]:
    """'0.3,0.5' -> ['0.3', '0.5']; with a '|' anywhere, '|' separates: '4,5,7|13,14,15' -> ['4,5,7', '13,14,15']."""
    return [v.strip() for v in text.split("|" if "|" in text else ",")]


def parse_vary(items: Sequence[str]) -> dict[str, list[str]]:
    """--vary NAME=V1,V2 ... -> {attr: [texts]} (checked by parsing each value)."""
    vary: dict[str, list[str]] = {}
    for item in items:
        name, eq, values = item.partition("=")
        if not eq or not values.strip():
            raise ValueError(f"--vary needs NAME=V1,V2,..., got {item!r}")
        attr = attr_name(name)
        if attr in vary:
            raise ValueError(f"--vary {name} is given twice")
        vary[attr] = split_values(values)
        for v in vary[attr]:
            parse_flag(attr, v)
    return vary


# ---- the engine ---------------------------------------------------------------------------------------------------
def identity(item: object) -> object:
    """What makes two inputs the same for stage 1: a file's contents, an image's pixels (lists: each)."""
    if item is None:
        return None
    if isinstance(item, (list, tuple)):
        return tuple(identity(i) for i in item)
    if isinstance(item, Image.Image):
        return ("image", item.mode, item.size, hashlib.sha256(item.tobytes()).hexdigest())
    if isinstance(item, Reference):  # its image, its mask ("auto" is stage 1's business), its prompt
        mask = item.mask if isinstance(item.mask, str) and item.auto else identity(
            Image.fromarray(item.mask) if isinstance(item.mask, np.ndarray) else item.mask)
        return ("reference", identity(item.image), mask, item.words, item.prompt, item.mask_words)
    path = Path(item)
    if path.is_file():
        return ("file", hashlib.sha256(path.read_bytes()).hexdigest())
    return ("missing", str(item))  # prepare reports it


def _references(run: Run) -> list[Reference]:
    """A run's references ([] for the P2P baseline)."""
    return list(run.reference or []) if run.config.use_reference else []


def reference_list(args: argparse.Namespace) -> list[Reference] | None:
    """args.reference (paths, images or References, one or a list) with args.reference_mask, as References."""
    from .cli import references_from_args

    if args.reference is None or getattr(args, "no_reference", False):
        return None
    if isinstance(args.reference, (list, tuple)) and all(isinstance(r, Reference) for r in args.reference):
        return list(args.reference)
    if isinstance(args.reference, Reference):
        return [args.reference]
    return references_from_args(args)


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if not isinstance(e, SystemExit) else str(e).removeprefix("error: ")


def execute(sd: StableDiffusion, runs: list[Run], out: Path, progress: bool = True,
            on_done: Callable[[Run], None] | None = None, bar: tqdm | None = None) -> int:
    """Run every pending run: one inversion per stage-1 group, then each run's stage 2, written as `edit` writes it.

    A run's error is recorded on it and the others go on. Returns the number of inversions.
    """
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        if run.status != "pending":
            continue
        try:
            refs = _references(run)
            key = (stage1_key(run.config, refs), identity(run.args.source), identity(refs))
        except Exception as e:  # noqa: BLE001 - an unreadable input fails this run only
            _fail(run, e, bar, on_done)
            continue
        groups.setdefault(key, []).append(run)
    inversions = 0
    for group in groups.values():
        # the reference K/V of the union of the group's SR layers x steps (extra K/V are only read by those runs)
        blocks = {b for r in group for b in range(*r.config.sr_layers)}
        steps = {i for r in group for i in range(*r.config.sr_steps)}
        inv = None
        for run in group:
            t0 = time.perf_counter()
            try:
                with PeakMemory(run.args.device) as peak:
                    src_img = load_image(run.args.source, "source")
                    refs = _references(run)
                    cfg, prep = prepare(sd, src_img, refs or None, run.config)
                    if inv is None:
                        inv = invert(sd, prep, cfg, blocks, steps, progress)
                        inversions += 1
                    result = edit_stage(sd, prep, inv, cfg, progress)
                result.timings["total"] = time.perf_counter() - t0  # this run's share: prepare (+ inversion) + stage 2
                run.inversion = inversions - 1
                extra = {"study": {"name": run.name, "labels": run.labels, "inversion": run.inversion,
                                   "inversion_shared_by": len(group)}}
                folder = write_run(out / run.name, run.args, result, src_img, refs, peak.peak, extra)
                run.record, run.status = json.loads((folder / "run.json").read_text()), "done"
            except Exception as e:  # noqa: BLE001 - a bad job fails alone (Ctrl-C / SystemExit still stop all)
                _fail(run, e, bar, on_done)
                continue
            if bar is not None:
                bar.update()
            if on_done is not None:
                on_done(run)
    return inversions


def _fail(run: Run, e: BaseException, bar: tqdm | None, on_done: Callable[[Run], None] | None) -> None:
    run.status, run.error = "failed", _error(e)
    if os.environ.get("SPECREF_TRACEBACK"):
        traceback.print_exc()
    if bar is not None:
        bar.update()
    if on_done is not None:
        on_done(run)


def row(run: Run, names: Sequence[str] = ()) -> dict:
    """A results.csv row: the run, its varied values, metrics and timings (from its run.json)."""
    m, t = run.record.get("metrics", {}), run.record.get("timings_s", {})
    r = {"run": run.name, "status": run.status, "error": run.error or ""}
    r.update({n: run.labels.get(n, "") for n in names})
    r.update({k: _cell(m.get(k)) for k in METRIC_COLUMNS})
    r.update({f"{k}_s": _cell(t.get(k)) for k in TIMING_COLUMNS})
    r["inversion"] = "" if run.inversion is None else run.inversion
    r["out"] = run.name if run.status in ("done", "resumed") else ""
    return r


def _cell(v: object) -> object:
    if isinstance(v, float):
        return "inf" if math.isinf(v) else ("" if math.isnan(v) else f"{v:.6g}")
    return "" if v is None else v


def write_csv(path: Path, rows: list[dict]) -> None:
    """Write rows (dicts with the same keys) to a CSV, via a temporary file renamed into place."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["run"])
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


# ---- sweep --------------------------------------------------------------------------------------------------------
def combinations(vary: dict[str, Sequence], zipped: bool = False) -> list[dict[str, object]]:
    """The product of the value lists (or, zipped, their pairs) as {name: value} dicts."""
    names = list(vary)
    if zipped:
        lengths = {len(v) for v in vary.values()}
        if len(lengths) > 1:
            raise ValueError(f"--zip needs --vary lists of one length, got {[len(v) for v in vary.values()]}")
        return [dict(zip(names, vals)) for vals in zip(*vary.values())]
    return [dict(zip(names, vals)) for vals in itertools.product(*vary.values())]


def _label(v: object) -> str:
    if isinstance(v, tuple) and len(v) == 2 and all(isinstance(i, int) for i in v):
        return f"{v[0]}-{v[1]}"
    return str(v)


def _runtime(sd: StableDiffusion, runtime: dict | None) -> argparse.Namespace:
    """The run.json record of the model and outputs (the CLI passes its own flags)."""
    d = {"model": sd.source or None, "dtype": str(sd.dtype).removeprefix("torch."), "device": str(sd.device),
         "save_tensors": False, "quiet": False}
    return argparse.Namespace(**{**d, **(runtime or {})})


def sweep(sd: StableDiffusion, source: object, reference: object, config: EditConfig | Callable[[dict], EditConfig],
          vary: dict[str, Sequence], *, zip: bool = False, reference_mask: object = None, source_mask: object = None,
          out: str | Path = "out/sweep", metrics_margin: int = MARGIN, progress: bool = True,
          runtime: dict | argparse.Namespace | None = None, preset: str | None = None,
          overwrite: bool = False) -> StudyResult:
    """One edit per combination of `vary` values ({flag or field name: values; strings are parsed as the flag's
    text}); one inversion per stage-1 group. Writes a folder per run, sheet.png and results.csv under `out`.

    `config` is the base EditConfig, or a function of the combination's {field: value} that returns one (the CLI's:
    preset + flags). `out` must be new or empty, or (with `overwrite`) a previous sweep (specref/outputs.py).
    """
    out = Path(out)
    rt = runtime if isinstance(runtime, argparse.Namespace) else _runtime(sd, runtime)
    vary = {attr_name(k): list(v) for k, v in vary.items()}
    parsed = {k: [parse_flag(k, v) if isinstance(v, str) else v for v in vals] for k, vals in vary.items()}
    labels = {k: [v if isinstance(v, str) else _label(v) for v in vals] for k, vals in vary.items()}
    combos = combinations({k: list(range(len(v))) for k, v in parsed.items()}, zip)
    base = {"source": source, "reference": reference, "reference_mask": reference_mask, "source_mask": source_mask,
            "preset": preset, "metrics_margin": metrics_margin}
    runs = []
    for n, combo in enumerate(combos):
        over = {k: parsed[k][i] for k, i in combo.items()}
        lab = {k: labels[k][i] for k, i in combo.items()}
        name = f"{n:03d}_" + "_".join(f"{k}={v}" for k, v in lab.items())
        name = "".join(c if c.isalnum() or c in "=.,-_" else "-" for c in name)[:120]
        args = copy.copy(rt)
        for k, v in {**base, **{k: v for k, v in over.items() if k in base}}.items():
            setattr(args, k, v)
        run = Run(name, args, labels=lab)
        try:
            run.reference = reference_list(args)
            fields = {k: v for k, v in over.items() if k not in base}
            if callable(config):
                run.config = config(over)
            elif "preset" in over or "no_reference" in over:
                raise ValueError("vary preset / no-reference through the CLI (a base EditConfig has no preset)")
            else:
                run.config = config.replace(**fields)
        except (ValueError, TypeError, SystemExit) as e:
            run.status, run.error = "failed", _error(e)
        runs.append(run)
    check_folder(out, [source, *(reference if isinstance(reference, (list, tuple)) else [reference]),
                       reference_mask, source_mask], overwrite)
    with staged_folder(out, overwrite) as tmp:
        bar = tqdm(total=len(runs), desc="sweep", unit="run", disable=not progress)
        inversions = execute(sd, runs, tmp, progress=False, bar=bar)
        bar.close()
        write_csv(tmp / "results.csv", [row(r, list(vary)) for r in runs])
        contact_sheet(runs, list(vary), labels, combos, zip, source, reference, tmp).save(tmp / "sheet.png")
        files = [p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file() and not p.name.startswith(".")]
        (tmp / RECORD).write_text(json.dumps({"specref": record_mark("sweep", files)}, indent=1))
    return StudyResult(runs, inversions, out)


def contact_sheet(runs: list[Run], names: list[str], labels: dict[str, list[str]], combos: list[dict], zipped: bool,
                  source: object, reference: object, out: Path, tile: int = 160) -> Image.Image:
    """The sweep's edits in a labelled grid: rows = all varied values but the last, columns = the last (zipped or
    one name: one row); source and reference at the left."""
    grid = len(names) >= 2 and not zipped
    cols = len(labels[names[-1]]) if grid else len(runs)
    nrows = math.ceil(len(runs) / cols) if runs else 1
    head, side, pad = 28, tile + 8, 4
    left = side + (150 if grid else 0)
    sheet = Image.new("RGB", (left + cols * (tile + pad), head + max(nrows, 2) * (tile + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    fit = lambda im: im.convert("RGB").resize((tile, tile))  # noqa: E731
    for i, (img, label) in enumerate(((source, "source"), (reference, "reference"))):
        try:
            first = img[0] if isinstance(img, (list, tuple)) else img
            first = first.image if isinstance(first, Reference) else first
            if first is not None:
                sheet.paste(fit(load_image(first, label)), (0, head + i * (tile + pad)))
                draw.text((2, head + i * (tile + pad) + 2), label, fill="red")
        except ValueError:
            pass
    for j in range(cols):
        text = f"{names[-1]}={labels[names[-1]][j]}" if grid else "\n".join(
            f"{k}={runs[j].labels.get(k, '')}" for k in names) if j < len(runs) else ""
        draw.text((left + j * (tile + pad) + 2, 2), text[:60], fill="black")
    for n, run in enumerate(runs):
        r, c = divmod(n, cols)
        x, y = left + c * (tile + pad), head + r * (tile + pad)
        if grid and c == 0:
            draw.text((side + 2, y + tile // 2), "\n".join(f"{k}={run.labels[k]}" for k in names[:-1])[:120], fill="black")
        edit_png = out / run.name / "edit.png"
        if run.status in ("done", "resumed") and edit_png.is_file():
            sheet.paste(fit(Image.open(edit_png)), (x, y))
        else:
            draw.rectangle((x, y, x + tile - 1, y + tile - 1), fill=(220, 220, 220))
            draw.text((x + 4, y + 4), "failed:\n" + "\n".join((run.error or "")[i:i + 24] for i in range(0, 96, 24)),
                      fill="red")
    return sheet


def run_sweep_command(args: argparse.Namespace) -> int:
    """`sweep`: parse --vary with the edit flags' parsers, load the model once, run `sweep`; exit code = failures."""
    from .cli import load

    vary = parse_vary(args.vary)
    edit_inputs(args)  # the base flags must make an edit (prompts or preset, a reference or --no-reference)
    check_folder(args.out, input_paths(args), args.overwrite)

    def config(over: dict) -> EditConfig:
        ns = copy.copy(args)
        for k, v in over.items():
            setattr(ns, k, v)
        return edit_inputs(ns)[0]

    sd = load(args)
    res = sweep(sd, args.source, None if args.no_reference else args.reference, config, vary, zip=args.zip,
                reference_mask=args.reference_mask, source_mask=args.source_mask, out=args.out,
                metrics_margin=args.metrics_margin, progress=not args.quiet, runtime=args, preset=args.preset,
                overwrite=args.overwrite)
    for r in res.failed:
        print(f"run {r.name} failed: {r.error}")
    print(f"wrote {res.out} ({len(res.runs)} runs, {res.inversions} inversion(s), {len(res.failed)} failed)")
    return min(len(res.failed), 255)


# ---- batch --------------------------------------------------------------------------------------------------------
def read_jobs(path: str | Path, runtime: argparse.Namespace) -> list[Run]:
    """The jobs of a JSON-lines file as runs; a bad line becomes a failed run with its error."""
    path = Path(path)
    defaults = build_parser().parse_args(["edit", "--source", "-"])  # every edit flag at its default
    runs, names = [], set()
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        args = copy.copy(defaults)
        for k in ("model", "dtype", "device", "quiet", "save_tensors"):
            setattr(args, k, getattr(runtime, k))
        run = Run(f"job-{n:04d}", args, labels={"line": str(n)})
        try:
            job = json.loads(line)
            if not isinstance(job, dict):
                raise ValueError("a job line must be a JSON object")
            run.name = str(job.pop("name", run.name))
            if not run.name or run.name.startswith(".") or "/" in run.name or run.name in names:
                raise ValueError(f"bad or duplicate job name {run.name!r}")
            if "source" not in job:
                raise ValueError("the job has no source")
            for key, value in job.items():
                attr = attr_name(key)
                if attr in ("model", "dtype", "device", "quiet", "save_tensors", "out", "overwrite"):
                    raise ValueError(f"{key!r} is set for the whole batch (a flag of the batch command), not per job")
                value = parse_flag(attr, value)
                if attr in INPUTS and value is not None:
                    value = [str(path.parent / v) for v in value] if isinstance(value, list) else str(path.parent / value)
                setattr(args, attr, value)
            run.config, run.reference = edit_inputs(args)
        except (ValueError, TypeError, SystemExit, json.JSONDecodeError) as e:
            run.status, run.error = "failed", _error(e)
        names.add(run.name)
        runs.append(run)
    return runs


def _done(folder: Path) -> dict | None:
    """A finished job's run.json (folders appear only complete: written elsewhere and renamed); None if the folder
    is not an edit output of specref."""
    if output_files(folder) is None:
        return None
    try:
        record = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if "settings" in record else None


def check_batch_folder(out: Path, jobs: str | Path) -> None:
    """A batch folder must be new or empty, or a previous batch folder (which resumes); never the job file's own
    folder or one that holds it."""
    if out.is_dir() and any(out.iterdir()) and not (out / RECORD).exists() and (out / "results.csv").exists():
        return  # a batch folder of an older release: results.csv and job folders
    if out.is_dir() and (out / RECORD).exists():
        try:
            mark = json.loads((out / RECORD).read_text()).get("specref", {})
        except (OSError, ValueError, AttributeError):
            mark = {}
        if isinstance(mark, dict) and mark.get("command") == "batch":
            if Path(jobs).resolve().parent == out.resolve() or out.resolve() in Path(jobs).resolve().parents:
                raise OutputError(f"--out {out} holds the job file {jobs}: write the batch elsewhere")
            return
    check_folder(out, [jobs], flag="--out")


def run_batch(sd: StableDiffusion | Callable[[], StableDiffusion], jobs: str | Path, out: str | Path = "out/batch",
              *, rank: int = 0, world: int = 1, progress: bool = True, runtime: dict | argparse.Namespace | None = None,
              on_done: Callable[[Run], None] | None = None, barrier: Callable[[], None] | None = None) -> StudyResult:
    """Run this rank's share of a job file (jobs i with i % world == rank), skipping finished ones; rank 0 merges
    every rank's results into results.csv (after `barrier`). `sd` may be a function that loads the model (then
    it is loaded only when a job needs it)."""
    out = Path(out)
    check_batch_folder(out, jobs)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / RECORD).exists():
        (out / RECORD).write_text(json.dumps({"specref": {"command": "batch", "jobs": str(jobs)}}, indent=1))
    model = sd if isinstance(sd, StableDiffusion) else None
    if model is None and not isinstance(runtime, argparse.Namespace):
        raise ValueError("run_batch with a model loader needs runtime flags (model, dtype, device, save_tensors)")
    rt = runtime if isinstance(runtime, argparse.Namespace) else _runtime(model, runtime)
    all_runs = read_jobs(jobs, rt)
    mine = all_runs[rank::world]  # a deterministic split: job i goes to rank i % world
    remove_stale(out)  # a killed run's temporary folders (only ones specref made)
    for run in mine:
        folder = out / run.name
        if run.status != "pending" or not (folder.exists() or folder.is_symlink()):
            continue
        if (rec := _done(folder)) is not None:
            run.status, run.record = "resumed", rec
            run.inversion = rec.get("study", {}).get("inversion")
        else:
            run.status, run.error = "failed", f"{folder} exists and is not an output of specref; it is not touched"

    pending = [r for r in mine if r.status == "pending"]
    bar = tqdm(total=len(mine), initial=len(mine) - len(pending), desc=f"batch{f' rank {rank}' if world > 1 else ''}",
               unit="job", disable=not progress, position=rank if world > 1 else None)
    for r in mine:
        if r.status == "failed" and on_done is not None:
            on_done(r)
    bar.update(sum(r.status == "failed" for r in mine))
    inversions = 0
    if pending:
        model = model or sd()
        inversions = execute(model, pending, out, progress=False, on_done=on_done, bar=bar)
    bar.close()
    index = {id(r): i for i, r in enumerate(all_runs)}
    write_csv(out / f"results.rank{rank}.csv", [{"job": index[id(r)], **row(r, ["line"])} for r in mine])
    if barrier is not None:
        barrier()
    if rank == 0:
        merge_results(out, world)
    return StudyResult(mine, inversions, out)


def merge_results(out: Path, world: int) -> None:
    """results.csv: every rank's rows in job-file order (each job once)."""
    rows = []
    for r in range(world):
        part = out / f"results.rank{r}.csv"
        with part.open(newline="") as f:
            rows += list(csv.DictReader(f))
    rows.sort(key=lambda d: int(d["job"]))
    write_csv(out / "results.csv", [{k: v for k, v in d.items() if k != "job"} for d in rows])
    for r in range(world):
        (out / f"results.rank{r}.csv").unlink()


def run_batch_command(args: argparse.Namespace) -> int:
    """`batch`: single process, or one rank of torchrun (WORLD_SIZE/RANK/LOCAL_RANK set); exit code = failures."""
    from .cli import load

    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    dist = None
    if world > 1:
        import torch.distributed as dist

        cuda = torch.cuda.is_available() and str(args.device).startswith("cuda")
        if cuda:  # one GPU per process on its node
            args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
            torch.cuda.set_device(args.device)
        # a rank that finishes early waits at the barrier for the others: allow long batches (default 30 min)
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(days=7))
    try:
        run_batch(lambda: load(args), args.jobs, args.out, rank=rank, world=world, progress=not args.quiet,
                        runtime=args, barrier=dist.barrier if dist else None)
        if dist:
            dist.barrier()  # results.csv is merged before any rank reads it or exits
        with (Path(args.out) / "results.csv").open(newline="") as f:
            rows = list(csv.DictReader(f))
    finally:
        if dist and dist.is_initialized():
            dist.destroy_process_group()
    failed = [r for r in rows if r["status"] == "failed"]
    if rank == 0:
        for r in failed:
            print(f"job {r['run']} (line {r['line']}) failed: {r['error']}")
        print(f"wrote {args.out}: {len(rows)} jobs, {len(failed)} failed, "
              f"{sum(r['status'] == 'resumed' for r in rows)} already done")
    return min(len(failed), 255)
