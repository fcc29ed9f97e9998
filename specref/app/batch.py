"""Batches: the edits of a JSON-lines job file, resumable, also under torchrun.

A job is its content: its identity (a hash of its settings, its input files' bytes and the model it runs on) names
its default folder and decides whether an earlier run can be reused, so editing the job file reruns exactly the
new or changed jobs. results.csv lists exactly the jobs of the current file, kept current as jobs finish.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from model import StableDiffusion

from .folders import RECORD, OutputError, check_folder, output_files, remove_stale, write_file
from .jobs import Runtime, content_hash, make_job, split_job
from .outputs import model_record
from .study import Run, StudyResult, execute, fail, row, write_csv

RUNTIME_KEYS = ("model", "dtype", "device", "quiet", "save_tensors", "out", "overwrite", "prediction_type")
RESERVED = ("results.csv", RECORD)


def read_jobs(path: str | Path, runtime: Runtime) -> list[Run]:
    """The jobs of a JSON-lines file as runs; a bad line becomes a failed run with its error."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"job file {path} {'is a folder' if path.is_dir() else 'does not exist'}: give a JSON-lines "
                         "file, one job object per line")
    runs: list[Run] = []
    seen: dict[str, int] = {}
    lines = path.read_text(encoding="utf-8-sig").splitlines()  # utf-8-sig: a byte-order mark is not part of line 1
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        run = Run(f"line-{n}", None, labels={"line": str(n)})
        try:
            job = json.loads(line)
            if not isinstance(job, dict):
                raise ValueError("a job line must be a JSON object")
            bad = [k for k in job if k.strip().lstrip("-").replace("-", "_") in RUNTIME_KEYS]
            if bad:
                raise ValueError(f"{bad[0]!r} is set for the whole batch (a flag of the batch command), not per job")
            given, inputs = split_job(job)
            run.job = make_job(given, inputs, base=path.parent)
            run.identity = content_hash([run.job, runtime.model, runtime.dtype, runtime.device])
            run.name = run.job.name or f"job-{run.identity}"
            if run.name in RESERVED or run.name.startswith(".") or "/" in run.name or "\\" in run.name:
                raise ValueError(f"job name {run.name!r} is not a folder name this batch can use")
            if run.name in seen:
                raise ValueError(f"job folder {run.name!r} is also line {seen[run.name]}'s: give each job its own "
                                 "\"name\" (or remove the duplicate)")
            seen[run.name] = n
        except (ValueError, TypeError) as e:
            run.status, run.error = "failed", f"{type(e).__name__}: {e}"
        runs.append(run)
    return runs


def check_batch_folder(out: Path, jobs: str | Path) -> None:
    """A batch folder must be new or empty, or a previous batch folder (which resumes); never the job file's own
    folder or one that holds it."""
    jobs = Path(jobs).resolve()
    if out.resolve() == jobs.parent or out.resolve() in jobs.parents:
        raise OutputError(f"--out {out} holds the job file {jobs}: write the batch elsewhere")
    mark = {}
    if (out / RECORD).is_file():
        try:
            mark = json.loads((out / RECORD).read_text()).get("specref", {})
        except (OSError, ValueError, AttributeError):
            mark = {}
    legacy = out.is_dir() and not (out / RECORD).exists() and (out / "results.csv").is_file()
    if not (isinstance(mark, dict) and mark.get("command") == "batch") and not legacy:
        check_folder(out, [jobs])


def _reuse(run: Run, folder: Path) -> None:
    """A job whose folder exists: reused if it holds this very job's output; rewritten if it holds an earlier
    version's (a specref output); else the job fails and the folder is left alone."""
    if output_files(folder) is None:
        fail(run, f"{folder} exists and is not an output of specref; it is not touched")
        return
    try:
        record = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        record = {}
    if record.get("study", {}).get("identity") == run.identity:
        run.status, run.record = "resumed", record
        run.inversion = record.get("study", {}).get("inversion")


def run_batch(sd: StableDiffusion | Callable[[], StableDiffusion], jobs: str | Path, out: str | Path = "out/batch", *,
              rank: int = 0, world: int = 1, progress: bool = True, runtime: Runtime | dict | None = None,
              model: dict | None = None, on_done: Callable[[Run], None] | None = None,
              barrier: Callable[[], None] | None = None) -> StudyResult:
    """Run this rank's share of a job file (jobs i with i % world == rank), reusing finished ones; rank 0 merges
    every rank's rows into results.csv (after `barrier`). `sd` may be a function that loads the model (then it is
    loaded only when a job needs it)."""
    out = Path(out)
    rt = runtime if isinstance(runtime, Runtime) else Runtime(**(runtime or {}))
    rt = dataclasses.replace(rt, overwrite=True, progress=False)  # a job's own earlier output may be replaced
    check_batch_folder(out, jobs)  # every rank, before any writes: they all see the same folder
    if world > 1 and barrier is not None:
        barrier()
    if rank == 0 or barrier is None:  # one rank sets the folder up; the others wait for it (they would race)
        out.mkdir(parents=True, exist_ok=True)
        if not (out / RECORD).exists():  # written whole, then renamed: another rank never reads half of it
            mark = json.dumps({"specref": {"command": "batch", "jobs": str(jobs)}}, indent=1)
            write_file(out / RECORD, lambda p: p.write_text(mark))
        remove_stale(out)  # a killed run's temporary folders (only ones specref made)
    if world > 1 and barrier is not None:
        barrier()
    all_runs = read_jobs(jobs, rt)
    mine = all_runs[rank::world]  # a deterministic split: job i goes to rank i % world
    for run in mine:
        if run.status == "pending" and (out / run.name).exists():
            _reuse(run, out / run.name)
    part = out / ("results.csv" if world == 1 else f"results.rank{rank}.csv")
    index = {id(r): i for i, r in enumerate(all_runs)}

    def save() -> None:  # results current after every job (Ctrl-C keeps what finished)
        write_csv(part, [({"job": index[id(r)]} if world > 1 else {}) | row(r, ["line"]) for r in mine])

    def done(run: Run) -> None:
        save()
        if on_done is not None:
            on_done(run)

    save()
    pending = [r for r in mine if r.status == "pending"]
    bar = tqdm(total=len(mine), initial=len(mine) - len(pending), desc=f"batch{f' rank {rank}' if world > 1 else ''}",
               unit="job", disable=not progress, position=rank if world > 1 else None)
    inversions = 0
    if pending:
        loaded = sd if isinstance(sd, StableDiffusion) else None
        info = model or {}
        if loaded is None:
            loaded, info = sd()
        info = info or model_record(loaded, rt.model)
        inversions = execute(loaded, pending, out, rt, info, on_done=done, bar=bar)
    bar.close()
    save()
    if barrier is not None:
        barrier()
    if rank == 0 and world > 1:
        merge_results(out, world)
    return StudyResult(mine, inversions, out)


def merge_results(out: Path, world: int) -> None:
    """results.csv: every rank's rows in job-file order (each job once)."""
    import csv

    rows = []
    for r in range(world):
        with (out / f"results.rank{r}.csv").open(newline="") as f:
            rows += list(csv.DictReader(f))
    rows.sort(key=lambda d: int(d["job"]))
    write_csv(out / "results.csv", [{k: v for k, v in d.items() if k != "job"} for d in rows])
    for r in range(world):
        (out / f"results.rank{r}.csv").unlink()


def batch_command(load: Callable[[], tuple[StableDiffusion, dict]], jobs: Path, out: Path, runtime: Runtime) -> int:
    """`batch`: one process, or one rank of torchrun (WORLD_SIZE/RANK/LOCAL_RANK set); exit code = failed jobs."""
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    dist = None
    if world > 1:
        import torch.distributed as dist

        if torch.cuda.is_available() and str(runtime.device).startswith("cuda"):  # one GPU per process on its node
            runtime = dataclasses.replace(runtime, device=f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
            torch.cuda.set_device(runtime.device)
        # a rank that finishes early waits at the barrier for the others: allow long batches (default 30 min)
        dist.init_process_group("nccl" if runtime.device.startswith("cuda") else "gloo",
                                timeout=datetime.timedelta(days=7))
    try:
        res = run_batch(load, jobs, out, rank=rank, world=world, progress=runtime.progress, runtime=runtime,
                        barrier=dist.barrier if dist else None)
        if dist:
            dist.barrier()  # results.csv is merged before any rank exits
    finally:
        if dist and dist.is_initialized():
            dist.destroy_process_group()
    failed = [r for r in res.runs if r.status == "failed"]
    for r in failed:
        print(f"job {r.name} (line {r.labels.get('line')}) failed: {r.error}")
    reused = [r.name for r in res.runs if r.status == "resumed"]
    print(f"wrote {out}{f' (rank {rank})' if world > 1 else ''}: {len(res.runs)} jobs, {len(failed)} failed, "
          f"{len(reused)} reused from an earlier run ({', '.join(reused) or 'none'})")
    return min(len(failed), 255)

