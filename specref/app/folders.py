"""The output rule: a run never deletes or overwrites anything the user made, and never writes onto its inputs.

- An output folder (`edit --out`, `--inspect`, a sweep, `reconstruct --out`) must be new or empty, or a previous
  output of this tool: a folder whose `run.json` says so and that holds only the files that run wrote. A previous
  output is replaced only with `--overwrite` (`demo` replaces its own previous output); anything else is refused.
- An output file (`--trace`, `sample --out`) must be new; with `--overwrite`, a previous output file of this tool
  (recognised by the mark it carries) may be replaced.
- No output may be, or hold, an input file.
- Folders are written under a temporary name beside the target (`.specref-tmp-*`, with a mark file inside) and
  renamed into place when complete; a failed run removes its temporary folder and nothing else.
- Every check runs before the model loads.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

TMP_PREFIX = ".specref-tmp-"
TMP_MARK = ".specref-partial"   # inside every temporary folder: only folders that hold it are ever cleaned up
RECORD = "run.json"             # an output folder's record; its "specref" entry marks it as this tool's output
# Files an output folder of an older release holds (its run.json has no "specref" entry listing them).
LEGACY_FILES = ("edit.png", "reconstruction.png", "mask_s", "mask_t", "summary.png", "region.png", "run.json",
                "tensors.safetensors", "source.png", "sheet.png", "results.csv")


class OutputError(ValueError):
    """An output path that would delete, overwrite or write onto something the user made."""


def umask() -> int:
    """The process's file-creation mask (read without changing it for long)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def chmod_tree(folder: Path) -> None:
    """Give a folder written through a private temporary name the permissions the user's umask asks for."""
    mask = umask()
    for root, dirs, files in os.walk(folder):
        os.chmod(root, 0o777 & ~mask)
        for name in files:
            os.chmod(Path(root) / name, 0o666 & ~mask)


def _resolved(path: str | Path) -> Path:
    return Path(path).expanduser().resolve()


def _inputs_inside(target: Path, inputs: Iterable[str | Path | None]) -> list[str]:
    """The input paths that are `target` or lie inside it."""
    t = _resolved(target)
    hits = []
    for p in inputs:
        if p is None or not isinstance(p, (str, Path)) or str(p) in ("", "-"):
            continue
        q = _resolved(p)
        if q == t or t in q.parents:
            hits.append(str(p))
    return hits


def output_files(folder: Path) -> list[str] | None:
    """The files a previous output folder of this tool holds by its record (None: not such a folder)."""
    try:
        record = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    mark = record.get("specref")
    if isinstance(mark, dict) and isinstance(mark.get("files"), list):
        return [str(f) for f in mark["files"]] + [RECORD]
    if "settings" in record and "versions" in record:  # an older release's edit output
        return [p.name for p in folder.iterdir() if p.name.startswith(LEGACY_FILES)]
    return None


def _not_ours(folder: Path, files: list[str]) -> list[str]:
    """What a folder holds besides the listed files (recursively, as names relative to it)."""
    keep = set(files)
    extra = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() or p.is_symlink():
            if rel not in keep:
                extra.append(rel)
        elif p.is_dir() and not any(f.startswith(rel + "/") for f in keep):
            extra.append(rel + "/")
    return extra


def _check_parent(path: Path, flag: str) -> None:
    """The nearest existing ancestor must be a writable folder (so the output can be created)."""
    parent = _resolved(path).parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"{flag} {path}: {parent} is a file, not a folder")
    try:  # the one sure test (root passes os.access, /proc refuses anyway): make and remove an empty folder there
        os.rmdir(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}probe-", dir=parent))
    except OSError as e:
        raise OutputError(f"{flag} {path}: cannot write in {parent} ({e.strerror or e})") from None


def check_folder(out: str | Path, inputs: Iterable[str | Path | None] = (), overwrite: bool = False,
                 flag: str = "--out") -> None:
    """Refuse an output folder that is not new, empty, or (with `overwrite`) a previous output of this tool."""
    out = Path(out)
    hits = _inputs_inside(out, inputs)
    if hits:
        raise OutputError(f"{flag} {out} holds the input {hits[0]}: write the output elsewhere")
    if out.exists() or out.is_symlink():
        if not out.is_dir() or out.is_symlink():
            raise OutputError(f"{flag} {out} exists and is not a folder: give a new folder")
        if not any(out.iterdir()):
            _check_parent(out / "x", flag)
            return
        files = output_files(out)
        if files is None:
            raise OutputError(f"{flag} {out} is a folder that is not empty and not an output of specref; nothing "
                              "in it is touched: give a new or empty folder")
        extra = _not_ours(out, files)
        if extra:
            raise OutputError(f"{flag} {out} is a previous output of specref but also holds {', '.join(extra[:3])}"
                              f"{' ...' if len(extra) > 3 else ''}, which that run did not write; nothing is touched")
        if not overwrite:
            raise OutputError(f"{flag} {out} holds a previous output of specref: pass --overwrite to replace it, "
                              "or give a new folder")
    _check_parent(out, flag)


def check_file(path: str | Path, inputs: Iterable[str | Path | None] = (), overwrite: bool = False,
               flag: str = "--out", ours=None) -> None:
    """Refuse an output file that exists, unless `overwrite` and `ours(path)` says this tool wrote it."""
    path = Path(path)
    if _inputs_inside(path, inputs):
        raise OutputError(f"{flag} {path} is an input of this run: write the output elsewhere")
    if path.exists() or path.is_symlink():
        if path.is_dir():
            raise OutputError(f"{flag} {path} is a folder; give a file name")
        if not overwrite:
            raise OutputError(f"{flag} {path} exists: pass --overwrite to replace it, or give a new name")
        if ours is not None and not ours(path):
            raise OutputError(f"{flag} {path} exists and was not written by specref; it is not replaced")
    _check_parent(path, flag)


def record_mark(command: str, files: Iterable[str]) -> dict:
    """The "specref" entry of a run.json: which command wrote the folder and the files it holds."""
    return {"command": command, "files": sorted(set(files) - {RECORD})}


def _new_temp(out: Path) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{out.name[:40]}-", dir=out.parent))
    (tmp / TMP_MARK).write_text("a folder being written by specref; removed when the run ends\n")
    return tmp


@contextlib.contextmanager
def staged_folder(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Write an output folder: yields a temporary folder beside `out`, renamed into place when the block ends
    without an error (replacing a previous output only with `overwrite`, checked again); removed on an error."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp(out)
    try:
        yield tmp
        (tmp / TMP_MARK).unlink()
        chmod_tree(tmp)
        check_folder(out, overwrite=overwrite)  # again: the folder may have changed during the run
        old = None
        if out.exists():
            if any(out.iterdir()):
                old = out.with_name(f"{TMP_PREFIX}old-{uuid.uuid4().hex[:8]}")
                out.rename(old)
            else:
                out.rmdir()
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old)  # the previous output, checked above to hold only its own files
    except BaseException:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale(folder: Path) -> None:
    """Remove temporary folders that a killed run of this tool left in `folder` (only ones holding the mark)."""
    for p in folder.glob(f"{TMP_PREFIX}*"):
        if p.is_dir() and (p / TMP_MARK).is_file():
            shutil.rmtree(p, ignore_errors=True)


def write_file(path: str | Path, write, overwrite: bool = False, ours=None) -> Path:
    """Write one output file through a temporary name in its folder, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f"{TMP_PREFIX}", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask())
        check_file(path, overwrite=overwrite, ours=ours)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
