"""What sweeps and batches share: runs grouped by what stage 1 depends on, each group inverted once, each run a
stage 2 on that inversion (the same prepare / invert / edit_stage calls as `edit`), written by the one output
writer; the records stay in memory for results.csv."""
from __future__ import annotations

import csv
import math
import os
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from model import StableDiffusion

from ..inputs import model_defaults, prepare, read_inputs
from ..pipeline import edit_stage, invert, stage1_key
from ..settings import complete
from .jobs import EditJob, Runtime, content_hash
from .metrics import PeakMemory
from .outputs import write_edit

METRIC_COLUMNS = ("psnr_outside", "ssim_outside", "region_area", "region", "peak_memory_bytes")
TIMING_COLUMNS = ("invert", "edit", "decode", "total")


@dataclass
class Run:
    """One edit of a study and what became of it."""

    name: str
    job: EditJob | None                 # None: the job could not be read (see error)
    labels: dict[str, str] = field(default_factory=dict)
    status: str = "pending"             # pending | done | resumed | failed
    error: str | None = None
    inversion: int | None = None        # which inversion of the study it used
    record: dict = field(default_factory=dict)  # its run.json
    identity: str = ""                  # content hash of what decides its result (batch resume)


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


def error_text(e: BaseException) -> str:
    """An exception as one line for results.csv."""
    return f"{type(e).__name__}: {e}"


def fail(run: Run, e: BaseException | str, on_done: Callable[[Run], None] | None = None) -> None:
    """Mark a run failed (its error kept); the others go on."""
    run.status, run.error = "failed", e if isinstance(e, str) else error_text(e)
    if os.environ.get("SPECREF_TRACEBACK") and not isinstance(e, str):
        traceback.print_exception(e)
    if on_done is not None:
        on_done(run)


def execute(sd: StableDiffusion, runs: list[Run], out: Path, runtime: Runtime, model: dict,
            on_done: Callable[[Run], None] | None = None, bar: tqdm | None = None) -> int:
    """Run every pending run: one inversion per stage-1 group, then each run's stage 2, written as `edit` writes it.
    A run's error is recorded on it and the others go on. Returns the number of inversions."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        if run.status != "pending":
            continue
        refs = list(run.job.references) if run.job.config.use_reference else []
        try:
            key = (stage1_key(run.job.config, refs), content_hash([run.job.source, refs]))
        except Exception as e:  # noqa: BLE001 - an unreadable input fails this run only
            fail(run, e, on_done)
            continue
        groups.setdefault(key, []).append(run)
    inversions = 0
    for group in groups.values():
        # the reference K/V of the union of the group's SR layers x steps (extra K/V are only read by those runs)
        resolved = [complete(r.job.config, model_defaults(sd))[0] for r in group]
        blocks = {b for c in resolved for b in range(*c.sr_layers)}
        steps = {i for c in resolved for i in range(*c.sr_steps)}
        inv = None
        for run in group:
            t0, job = time.perf_counter(), run.job
            try:
                with PeakMemory(runtime.device) as peak:
                    inputs = read_inputs(job.source, list(job.references) if job.config.use_reference else None)
                    cfg, prep = prepare(sd, inputs, None, job.config)
                    if inv is None:
                        inv = invert(sd, prep, cfg, blocks, steps, progress=False)
                        inversions += 1
                    result = edit_stage(sd, prep, inv, cfg, progress=False)
                result.timings["total"] = time.perf_counter() - t0  # this run's share: prepare (+ inversion) + stage 2
                run.inversion = inversions - 1
                extra = {"study": {"name": run.name, "labels": run.labels, "inversion": run.inversion,
                                   "inversion_shared_by": len(group), "identity": run.identity}}
                _, run.record = write_edit(out / run.name, job, result, runtime, model, peak.peak, extra)
                run.status = "done"
            except Exception as e:  # noqa: BLE001 - a bad job fails alone (Ctrl-C still stops all)
                fail(run, e, on_done)
                continue
            finally:
                if bar is not None:
                    bar.update()
            if on_done is not None:
                on_done(run)
    return inversions


def row(run: Run, names: Sequence[str] = ()) -> dict:
    """A results.csv row: the run, its varied values, metrics and timings (from its record, in memory)."""
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
