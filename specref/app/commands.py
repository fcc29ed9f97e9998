"""What the commands do, on dataclasses (the command line in cli.py only parses and dispatches): load a model,
run one edit into a folder (with its trace and pictures), sample, reconstruct."""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, PngImagePlugin

import sampling
import weights
from model import StableDiffusion
from weights import precision

from ..images import load_image, psnr, to_pil, to_tensor, working_size
from ..inputs import read_inputs
from ..masks import read_mask
from ..pipeline import edit, x0_steps
from ..trace import Recorder, load_trace, save_trace
from .folders import OutputError, check_file, check_folder, record_mark, staged_folder, write_file
from .jobs import EditJob, Runtime
from .metrics import PeakMemory
from .outputs import model_record, write_edit
from .pictures import write_inspection

PNG_MARK = "specref"  # the PNG text entry that marks an image written by `sample`


def load_model(runtime: Runtime) -> tuple[StableDiffusion, dict]:
    """The model `runtime` names, and its run.json entries (model, dtype and why, device)."""
    dtype, reason = precision.resolve_dtype(runtime.dtype, runtime.device)
    name = precision.dtype_name(dtype)
    print(f"dtype {name} on {runtime.device} ({reason.split(';')[0]})")  # a slow choice: the warning says why, once
    sd = weights.load_model(runtime.model, dtype=dtype, device=runtime.device, prediction_type=runtime.prediction_type)
    return sd, model_record(sd, runtime.model or str(weights.DEFAULT_MODEL), reason)


def is_trace(path: Path) -> bool:
    """True if `path` is a trace file specref wrote (a safetensors file with its metadata)."""
    try:
        return bool(load_trace(path)[1])
    except Exception:  # noqa: BLE001 - anything unreadable is not ours
        return False


def is_sample(path: Path) -> bool:
    """True if `path` is a PNG that `sample` wrote."""
    try:
        with Image.open(path) as im:
            return PNG_MARK in getattr(im, "text", {})
    except Exception:  # noqa: BLE001 - anything unreadable is not ours
        return False


def check_edit_outputs(job: EditJob, runtime: Runtime, out: Path, trace: Path | None, inspect: Path | None) -> None:
    """The output paths of `edit` (--out, --trace, --inspect), before the model loads (folders.py)."""
    inputs = job.input_paths() + [runtime.model]
    check_folder(out, inputs, runtime.overwrite)
    for flag, path in (("--trace", trace), ("--inspect", inspect)):
        if path and (Path(path).resolve() == out.resolve() or out.resolve() in Path(path).resolve().parents):
            raise OutputError(f"{flag} {path} is inside --out {out}: put it beside the output folder")
    if trace:
        check_file(trace, inputs, runtime.overwrite, "--trace", ours=is_trace)
    if inspect:
        check_folder(inspect, inputs, runtime.overwrite, "--inspect")


def run_edit(job: EditJob, runtime: Runtime, out: Path, trace: Path | None = None,
             inspect: Path | None = None) -> Path:
    """`edit`: every check first, then the edit, then the outputs (a failure leaves no partial output)."""
    check_edit_outputs(job, runtime, out, trace, inspect)
    inputs = read_inputs(job.source, list(job.references) or None)
    if job.source_mask is not None:
        read_mask(job.source_mask, what="source mask")  # a bad --source-mask fails now, not after the edit
    sd, model = load_model(runtime)
    rec = None
    if inspect or trace:  # the Recorder only reads: the edit is the same without it
        n = job.config.steps
        rec = Recorder(sampling.ddim_for(sd, n), job.config.guidance, sr=bool(inspect),
                       x0_steps=x0_steps(n) if inspect else ())
    with PeakMemory(runtime.device) as peak:
        result = edit(sd, inputs, None, job.config, progress=runtime.progress, observer=rec)
    out, _ = write_edit(out, job, result, runtime, model, peak.peak)
    if trace:
        meta = {"settings": vars(result.config), "timesteps": rec.ddim.timesteps.tolist(), "dtype": model["dtype"],
                "model": model["model"]}
        tensors = rec.trace(result.latents["source_inverted"])
        write_file(trace, lambda p: save_trace(p, tensors, meta), runtime.overwrite, ours=is_trace)
        print(f"wrote {trace}")
    if inspect:
        images = [r.image for r in inputs.references] if result.config.use_reference else []
        c = result.config
        with staged_folder(inspect, runtime.overwrite) as tmp:
            paths = write_inspection(tmp, sd, rec, c.source_prompt, c.target_prompt, inputs.source, images)
            (tmp / "run.json").write_text(json.dumps({"specref": record_mark("inspect", [p.name for p in paths])}))
        print(f"wrote {len(paths)} pictures to {inspect}")
    return out


def run_sample(runtime: Runtime, prompt: str, out: Path, negative_prompt: str = "", steps: int = 50,
               guidance: float = 7.5, height: int | None = None, width: int | None = None, seed: int = 0) -> Path:
    """`sample`: text-to-image into a PNG (marked as specref's, so --overwrite may replace it later)."""
    check_file(out, [runtime.model], runtime.overwrite, ours=is_sample)
    sd, _ = load_model(runtime)
    lat = sampling.sample(sd, prompt, negative_prompt=negative_prompt, guidance=guidance, steps=steps,
                          height=height, width=width, seed=seed, progress=runtime.progress)
    info = PngImagePlugin.PngInfo()
    info.add_text(PNG_MARK, json.dumps({"prompt": prompt, "seed": seed, "steps": steps}))
    image = to_pil(sampling.decode(sd, lat)[0])
    return write_file(out, lambda p: image.save(p, format="PNG", pnginfo=info), runtime.overwrite, ours=is_sample)


def run_reconstruct(runtime: Runtime, image: Path, out: Path, prompt: str = "", steps: int = 50,
                    guidance: float = 1.0, size: int | None = None) -> dict:
    """`reconstruct`: invert an image and regenerate it; writes both and returns the PSNRs."""
    check_folder(out, [image, runtime.model], runtime.overwrite)
    img = load_image(image, "image")
    sd, _ = load_model(runtime)
    x = to_tensor(img, working_size(img.width, img.height, size or sd.native_size))
    z0 = sampling.encode(sd, x)
    lat = sampling.reconstruct(sd, z0, prompt, guidance=guidance, steps=steps, progress=runtime.progress)
    source, recon = to_pil(x[0]), to_pil(sampling.decode(sd, lat)[0])
    db = {"reconstruction": psnr(recon, source), "vae_only": psnr(to_pil(sampling.decode(sd, z0)[0]), source)}
    with staged_folder(out, runtime.overwrite) as tmp:
        source.save(tmp / "source.png")
        recon.save(tmp / "reconstruction.png")
        record = {"specref": record_mark("reconstruct", ["source.png", "reconstruction.png"]), "psnr_db": db,
                  "image": str(image), "prompt": prompt, "steps": steps, "guidance": guidance}
        (tmp / "run.json").write_text(json.dumps(record, indent=2))
    return db
