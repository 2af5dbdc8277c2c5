"""The ``promptseg`` console command.

``promptseg predict --model models/lora --prompt "segment wall crack" IMAGE_OR_DIR... --out DIR``
writes ``<out>/<stem>__<prompt-slug>.png`` ({0, 255} masks at each image's own size) and, with
``--overlay``, ``<stem>__<prompt-slug>_overlay.png`` (the mask in red over the image, alpha 0.5).

``--engine onnx`` runs the ONNX export of the model (``promptseg export --model models/lora`` writes it to
``models/lora/onnx/``) in onnxruntime on the CPU with ``--threads`` intra-op threads; the default engine is
PyTorch. Both engines share the preprocessing and ``postprocess_probabilities``.

The threshold, open/close, flip TTA, prompt ensemble and tiling come from the recipe evaluation scored
with (``metrics/eval/<rung>.json``, ``<dataset>.recipe``: promptseg.infer.recipe); a flag overrides one field
and the output says so. ``--measure`` also measures the masks (promptseg.serve.measure).

``promptseg measure MASK_OR_DIR... [--kind crack|joint] [--mm-per-px X]`` writes measurements.json/.csv and
``<stem>_measured.png`` next to the masks. ``promptseg app --model models/<rung>`` serves a Gradio page
(promptseg.serve.app) on 127.0.0.1.

Exit codes: 0 at least one mask written; 1 none written (every image skipped) or writing stopped on an
error; 2 usage errors (unknown path, empty prompt, missing or unreadable model directory, a corrupt weights
file, no ONNX export for ``--engine onnx``, an ``--out`` folder that cannot be written, bad option values).
Every image is decoded and checked once (``promptseg.images.read_image``): a truncated, empty or undecodable
file is skipped and named with the reason. ``--out`` is checked for writing before the model is loaded; one
predict at a time writes there (``.promptseg-predict.lock``), and one whose masks come from another model or
prompt (``.promptseg-predict.json``) is refused unless ``--overwrite``; ``--measure`` merges measurements.json/.csv
with an earlier run's (this run's masks replace their own entries).

``promptseg export --model models/lora [--out models/lora/onnx]`` writes ``model.onnx``, its metadata
(image size, mean/std, per-image standardisation, the model card) and the tokenizer files. Exit codes:
0 written; 2 missing or unreadable model folder; 1 the export failed or does not reproduce the PyTorch logits.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path

import cv2
import numpy as np
import yaml
from tqdm import tqdm
from transformers.utils import logging as hf_logging

from promptseg.images import (
    DEFAULT_MAX_IMAGE_PIXELS,
    IMAGE_SUFFIXES,
    TOO_LARGE,
    ImageReadError,
    overlay_image,
    read_rgb,
)
from promptseg.infer.engines import ENGINES, EngineLoadError, load_segmenter
from promptseg.infer.onnx_engine import (
    META_FILENAME,
    ONNX_FILENAME,
    ExportCheck,
    ExportMismatchError,
    OnnxEngineError,
    export_model_dir,
)
from promptseg.infer.recipe import (
    Recipe,
    RecipeError,
    check_scored_model,
    copy_recipes,
    load_recipe,
    override,
    recipe_file,
    recipe_prompts,
)
from promptseg.infer.segmenter import Segmenter
from promptseg.modeling.clipseg import ModelSourceError
from promptseg.paths import MODEL_CARD, broken_link_reason, eval_json, mask_name, write_json
from promptseg.serve.app import launch, load_app_model
from promptseg.serve.measure import JOINT_LABEL_NOTE, NO_SCALE_NOTE, MeasureSettings, measure_files, measure_kind

__all__ = ["main", "build_parser", "expand_inputs"]

EXIT_OK, EXIT_NOTHING_WRITTEN, EXIT_USAGE = 0, 1, 2


def _err(message: str) -> None:
    print(f"promptseg: {message}", file=sys.stderr)


# --------------------------------------------------------------------------- inputs
@dataclass
class Inputs:
    images: list[Path]  # candidate image files, in order, no duplicates
    skipped: list[tuple[Path, str]]  # files inside folders that are not images (by suffix)
    any_folder: bool


def expand_inputs(paths: list[Path]) -> Inputs:
    """Files as given; folders expanded (not recursively) to their image files, sorted by name.

    Files inside a folder whose suffix is not an image suffix (``promptseg.images.IMAGE_SUFFIXES``) are
    returned in ``skipped``; hidden files and sub-folders are ignored. The same file named twice is kept once.
    Raises ``FileNotFoundError`` naming the first path that does not exist.
    """

    images, skipped, seen, any_folder = [], [], set(), False
    for path in paths:
        if not path.exists():
            link = broken_link_reason(path)
            raise FileNotFoundError(f"{path} {link}" if link else f"no such file or folder: {path}")
        if path.is_dir():
            any_folder = True
            for child in sorted(path.iterdir()):
                link = None if child.name.startswith(".") else broken_link_reason(child)
                if link and not child.exists():
                    skipped.append((child, link))
                    continue
                if child.name.startswith(".") or not child.is_file():
                    continue
                if child.suffix.lower() not in IMAGE_SUFFIXES:
                    skipped.append((child, f"not an image file (suffix {child.suffix or 'none'!r})"))
                    continue
                key = child.resolve()
                if key not in seen:
                    seen.add(key)
                    images.append(child)
        else:
            key = path.resolve()
            if key not in seen:
                seen.add(key)
                images.append(path)
    return Inputs(images, skipped, any_folder)


# --------------------------------------------------------------------------- outputs
def _write_png(path: Path, image: np.ndarray, *, rgb: bool = False) -> None:
    """Encode in memory and write with Python, so that a failure says why (OSError with its reason)."""

    data = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if rgb else image
    ok, encoded = cv2.imencode(".png", data)
    if not ok:
        raise OSError(f"could not encode {path} as PNG")
    Path(path).write_bytes(encoded.tobytes())


def _unwritable_reason(folder: Path) -> str | None:
    """None if a file can be created in ``folder`` (created if missing), else why not."""

    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".promptseg-write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


# --------------------------------------------------------------------------- predict
def _quiet_transformers() -> None:
    """No weight-loading bars or backend notices from transformers: the user sees our messages only."""
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is outside [0, 1]")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def cmd_predict(args: argparse.Namespace) -> int:
    """`promptseg predict`: check the inputs and the output folder, load the engine, resolve the recipe, run."""
    prompt = (args.prompt or "").strip()
    if not prompt:
        _err('give a non-empty --prompt (e.g. --prompt "segment wall crack")')
        return EXIT_USAGE
    try:
        inputs = expand_inputs([Path(p) for p in args.inputs])
    except FileNotFoundError as exc:
        _err(str(exc))
        return EXIT_USAGE
    model_dir = Path(args.model)
    if not model_dir.is_dir():
        _err(
            f"model folder {model_dir} not found: train it first (`dvc repro train`) or pass --model with a "
            "folder written by save_pretrained (e.g. models/lora)"
        )
        return EXIT_USAGE
    out_dir = Path(args.out)
    why = _unwritable_reason(out_dir)  # before the model is loaded
    if why is not None:
        _err(f"cannot write to the output folder {out_dir}: {why}; pass --out with a folder you can write to")
        return EXIT_USAGE
    why = _lock_out(out_dir)  # one predict at a time per folder
    if why is not None:
        _err(why)
        return EXIT_USAGE
    try:
        why = _claim_out(out_dir, model_dir, prompt, args.overwrite)
        if why is not None:
            _err(why)
            return EXIT_USAGE
        return _load_and_predict(args, inputs, model_dir, out_dir, prompt)
    finally:
        (out_dir / PREDICT_LOCK).unlink(missing_ok=True)


PREDICT_LOCK = ".promptseg-predict.lock"  # in --out while a predict writes there: the writer's pid
PREDICT_MANIFEST = ".promptseg-predict.json"  # in --out: the model folder and prompt its masks come from


def _lock_out(out_dir: Path) -> str | None:
    """Take ``<out>/.promptseg-predict.lock`` (created exclusively, holding this pid); the reason if another
    running predict holds it. A lock whose process is gone (killed) is taken over."""
    lock = out_dir / PREDICT_LOCK
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and _alive(pid):
                return (
                    f"another promptseg predict (pid {pid}) is writing into {out_dir}; wait for it to finish or "
                    f"pass another --out (a stale lock: delete {lock})"
                )
            lock.unlink(missing_ok=True)  # its writer is gone
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{os.getpid()}\n")
        return None
    return f"cannot take the lock {lock}; delete it if no predict is running"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _claim_out(out_dir: Path, model_dir: Path, prompt: str, overwrite: bool) -> str | None:
    """Refuse (the reason) an ``--out`` that holds masks of another model or prompt, or of unknown origin,
    unless ``overwrite``; then record this run's model and prompt in ``<out>/.promptseg-predict.json``."""
    manifest = out_dir / PREDICT_MANIFEST
    mine = {"model": str(model_dir.resolve()), "prompt": prompt}
    masks = [p for p in out_dir.glob("*__*.png") if not p.stem.endswith(("_overlay", "_measured"))]
    try:
        theirs = json.loads(manifest.read_text()) if manifest.is_file() else None
    except (OSError, ValueError):
        theirs = None
    same = isinstance(theirs, dict) and all(theirs.get(k) == v for k, v in mine.items())
    if masks and not same and not overwrite:
        origin = (
            f"of model {theirs.get('model')} with prompt {theirs.get('prompt')!r}"
            if isinstance(theirs, dict)
            else f"of unknown origin (no {PREDICT_MANIFEST})"
        )
        return (
            f"{out_dir} already holds {len(masks)} masks {origin}; writing those of {model_dir} with prompt "
            f"{prompt!r} beside them would mix two runs: pass another --out, or --overwrite to write there anyway"
        )
    write_json(manifest, mine)
    return None


def _load_and_predict(args: argparse.Namespace, inputs: Inputs, model_dir: Path, out_dir: Path, prompt: str) -> int:
    """Load the engine, resolve the recipe and write the masks (``--out`` already checked and locked)."""
    _quiet_transformers()  # no weight-loading bars or backend notices
    try:
        engine = load_segmenter(model_dir, args.engine, threads=args.threads)
    except EngineLoadError as exc:
        _err(str(exc))
        return EXIT_USAGE
    if engine.stale:
        _err(f"warning: {engine.stale}")
    if engine.engine == "onnx":
        print(f"engine onnx: {engine.export_dir} (onnxruntime, {engine.threads} threads)")

    try:
        args.recipe, args.run_prompt, threshold = _resolve_recipe(args, engine, model_dir, prompt)
    except RecipeError as exc:  # a field out of range, or a file scored on other weights (which says the fix)
        text = str(exc)
        _err(
            text
            if "re-run" in text
            else f"{text}; re-run `dvc repro evaluate` or pass --eval-metrics with a valid file"
        )
        return EXIT_USAGE
    return _predict_all(engine, prompt, inputs, out_dir, threshold, args)


def _resolve_recipe(args: argparse.Namespace, engine: Segmenter, model_dir: Path, prompt: str):
    """The recipe evaluation recorded for the prompt's dataset, with the flags' overrides; prints where each
    part came from. Returns (recipe, the prompt or ensemble list to run, threshold)."""
    rung = str(engine.card.get("rung") or model_dir.name)
    eval_path = Path(args.eval_metrics) if args.eval_metrics else eval_json(rung)
    eval_path = recipe_file(eval_path, engine.export_dir)
    recipe, dataset, recipe_why = load_recipe(engine.card, prompt, rung, eval_path)
    for note in check_scored_model(eval_path, model_dir, rung, getattr(args, "warn_recipe_mismatch", False)):
        print(note)
    recipe, changed = override(recipe, **recipe_overrides(args))
    run_prompt, threshold = recipe_prompts(recipe, engine.card, prompt, dataset)
    how = "given with --threshold" if args.threshold is not None else recipe_why
    if isinstance(run_prompt, list) and recipe.ensemble_threshold is not None:
        how = f"the ensemble threshold chosen on val, {recipe_why}"
    print(f"threshold {threshold:g}: {how}")
    print(f"recipe: {recipe.describe()}" + (f"; from {recipe_why}" if how != recipe_why else ""))
    if changed:
        print(f"overridden by flags: {', '.join(changed)}")
    if isinstance(run_prompt, list):
        print(f"prompt ensemble: logits averaged over {', '.join(repr(p) for p in run_prompt)}")
    return recipe, run_prompt, threshold


class _PredictAbort(Exception):
    """The recipe cannot run on this engine; the message was printed."""


def _predict_all(engine, prompt: str, inputs: Inputs, out_dir: Path, threshold: float, args: argparse.Namespace) -> int:
    max_pixels = getattr(args, "max_image_pixels", None) or DEFAULT_MAX_IMAGE_PIXELS
    writer = _MaskWriter(engine, prompt, out_dir, threshold, args, inputs)
    for path, why in inputs.skipped:
        writer.skip(path, why)
    used_names: dict[str, Path] = {}
    try:
        for path in inputs.images:
            stem = path.stem
            if stem in used_names:
                writer.skip(path, f"its output name {mask_name(stem, prompt)} is already taken by {used_names[stem]}")
                writer.progress.update(1)
                continue
            if writer.write_error:
                break
            try:
                image = read_rgb(path, max_pixels)
            except ImageReadError as exc:
                writer.skip(path, exc.reason if exc.kind == TOO_LARGE else f"not a readable image ({exc.reason})")
                writer.progress.update(1)
                continue
            used_names[stem] = path
            writer.add(path, stem, image)
        writer.flush()
    except _PredictAbort:
        return EXIT_USAGE
    return writer.finish()


class _MaskWriter:
    """Predicts the masks of ``promptseg predict`` a batch at a time and writes them (and overlays), counting
    what is written and skipped; the first write error stops it."""

    def __init__(self, engine, prompt: str, out_dir: Path, threshold: float, args: argparse.Namespace, inputs):
        self.engine, self.prompt, self.out_dir, self.threshold, self.args = engine, prompt, out_dir, threshold, args
        self.written, self.skipped = 0, 0
        self.write_error: list[str] = []
        self.batch: list[tuple[Path, str, np.ndarray]] = []
        self.measured: list[tuple[Path, np.ndarray]] = []
        self.progress = tqdm(
            total=len(inputs.images),
            unit="image",
            disable=not inputs.any_folder or args.quiet,
            file=sys.stderr,
            desc="predict",
        )

    def skip(self, path: Path, why: str) -> None:
        self.skipped += 1
        self.progress.write(f"skipped {path}: {why}", file=sys.stderr)

    def add(self, path: Path, stem: str, image: np.ndarray) -> None:
        self.batch.append((path, stem, image))
        if len(self.batch) >= self.args.recipe.batch_size:
            self.flush()

    def flush(self) -> None:
        """Predict and write the batch; raises :class:`_PredictAbort` when the recipe cannot run."""
        args, out_dir, prompt = self.args, self.out_dir, self.prompt
        if not self.batch or self.write_error:
            return
        try:
            masks = self.engine.masks(
                [im for _, _, im in self.batch], args.run_prompt, args.recipe, threshold=self.threshold
            )
        except ValueError as exc:  # e.g. a native-resolution recipe on the ONNX engine
            _err(str(exc))
            raise _PredictAbort() from None
        for (path, stem, image), mask in zip(self.batch, masks):
            try:
                _write_png(out_dir / mask_name(stem, prompt), mask)
                if getattr(args, "measure", False):
                    self.measured.append((out_dir / mask_name(stem, prompt), image))
                if args.overlay:
                    _write_png(out_dir / mask_name(stem, prompt, "_overlay"), overlay_image(image, mask), rgb=True)
            except OSError as exc:  # the folder was checked: a full disk or a folder gone; stop here
                self.write_error.append(f"cannot write the mask of {path}: {exc}; stopped after {self.written} masks")
                break
            self.written += 1
        self.progress.update(len(self.batch))
        self.batch.clear()

    def finish(self) -> int:
        """Close the progress bar, say what was written (and measure it with ``--measure``); the exit code."""
        self.progress.close()
        if self.write_error:
            _err(self.write_error[0])
            return EXIT_NOTHING_WRITTEN
        print(f"{self.written} masks written, {self.skipped} skipped -> {self.out_dir}")
        if self.measured:
            kind = measure_kind(self.engine.card, self.prompt)
            _run_measure([p for p, _ in self.measured], kind, self.args, {p.stem: im for p, im in self.measured})
        return EXIT_OK if self.written else EXIT_NOTHING_WRITTEN


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="promptseg",
        description="Text-prompted segmentation of wall cracks and drywall joints with a trained CLIPSeg rung.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_predict_command(sub)
    _add_measure_command(sub)
    _add_app_command(sub)
    _add_export_command(sub)
    return parser


def _add_predict_command(sub) -> None:
    """``promptseg predict``: images and a prompt in, masks out (the recipe's options as flags)."""
    p = sub.add_parser(
        "predict",
        help="write masks for images given a text prompt",
        description="Write <out>/<stem>__<prompt-slug>.png masks ({0,255}, the image's own size).",
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or folders of images")
    p.add_argument("--model", required=True, help="a trained model folder, e.g. models/lora")
    p.add_argument("--prompt", required=True, help='the text prompt, e.g. "segment wall crack"')
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--overlay", action="store_true", help="also write <stem>__<slug>_overlay.png (mask in red)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into an --out that holds masks of another model or prompt (refused without it)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--engine",
        choices=ENGINES,
        default="torch",
        help="torch (default): PyTorch; onnx: the model's ONNX export (`promptseg export`) in onnxruntime",
    )
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="CPU threads for inference (onnx: intra-op threads; torch: torch.set_num_threads); "
        "default: all cores of this machine",
    )
    p.add_argument(
        "--measure",
        action="store_true",
        help="also measure the masks (promptseg measure): measurements.json/.csv and <stem>__<slug>_measured.png",
    )
    p.add_argument(
        "--max-image-pixels",
        type=_positive_int,
        default=None,
        help="skip images whose header says width x height is larger, before decoding them "
        "(default: data.max_image_pixels, 100000000)",
    )
    _add_recipe_flags(p)
    _add_scale_args(p)
    p.set_defaults(func=cmd_predict)


_FLAG_TYPES = {"probability": "_probability", "positive_int": "_positive_int", "positive_float": "_positive_float"}


def _add_recipe_flags(p: argparse.ArgumentParser) -> None:
    """One flag per field of :class:`promptseg.infer.recipe.Recipe` (its metadata: help, flag name, kind),
    overriding that field of the evaluated recipe; default None: the recipe's. Booleans get ``--x/--no-x``.
    Also ``--warn-recipe-mismatch``: use a recipe file scored on other weights, with a warning."""
    p.add_argument(
        "--warn-recipe-mismatch",
        action="store_true",
        help="use a recipe file scored on other weights or another rung (refused without it), with a warning",
    )
    for f in fields(Recipe):
        meta = f.metadata
        if not meta.get("help"):
            continue
        flag = meta.get("flag") or "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            kwargs = {"action": argparse.BooleanOptionalAction}
        elif "choices" in meta:
            kwargs = {"choices": meta["choices"]}
        else:
            kwargs = {"type": globals()[_FLAG_TYPES[meta["kind"]]]}
        p.add_argument(flag, dest=f.name, default=None, help=f"{meta['help']} (default: the recipe's)", **kwargs)
    p.add_argument(
        "--eval-metrics",
        default=None,
        help="the eval JSON to read the recipe from (default: metrics/eval/<rung>.json)",
    )


def recipe_overrides(args: argparse.Namespace) -> dict:
    """The recipe fields given as flags (None: not given)."""
    return {f.name: getattr(args, f.name, None) for f in fields(Recipe) if f.metadata.get("help")}


def _add_measure_command(sub) -> None:
    """``promptseg measure``: length, width and category of each component of mask PNGs."""
    m = sub.add_parser(
        "measure",
        help="measure cracks / drywall joints in masks (length, width, BRE 251 category)",
        description="Per connected component: length along the pruned skeleton, mean and max width, "
        "orientation, area (promptseg.serve.measure). Writes measurements.json, measurements.csv "
        "and <stem>_measured.png next to the masks.",
    )
    m.add_argument("inputs", nargs="+", metavar="MASK_OR_DIR", help="mask PNGs ({0,255}) and/or folders of them")
    m.add_argument("--kind", choices=("crack", "joint"), default="crack", help="what the masks show (default crack)")
    _add_scale_args(m)
    m.add_argument(
        "--images",
        default=None,
        help="folder of the photos, to draw the overlays on them (matched by the mask's stem before '__')",
    )
    m.add_argument(
        "--params",
        default="params.yaml",
        help="params.yaml with a measure: section (default: ./params.yaml if present, else the built-in defaults)",
    )
    m.set_defaults(func=cmd_measure)


def _add_app_command(sub) -> None:
    """``promptseg app``: the Gradio page."""
    a = sub.add_parser(
        "app",
        help="a web page (Gradio) to segment and measure photos with a trained model",
        description="Upload a photo or pick a test image, prompt, threshold slider (starts at the "
        "recipe's), overlay, mask, measurements; download the mask and the measurements.",
    )
    a.add_argument("--model", required=True, help="a trained model folder, e.g. models/unet")
    a.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    a.add_argument("--port", type=_positive_int, default=7860, help="port (default 7860)")
    a.add_argument(
        "--engine",
        choices=("auto", *ENGINES),
        default="auto",
        help="auto (default): the ONNX export where one exists, else PyTorch",
    )
    a.add_argument("--eval-metrics", default=None, help="the recipe file (default: metrics/eval/<rung>.json)")
    a.add_argument(
        "--warn-recipe-mismatch",
        action="store_true",
        help="use a recipe file scored on other weights or another rung (refused without it), with a warning",
    )
    a.add_argument(
        "--images",
        default=None,
        help="folder of images offered as test images (default: data/processed/<dataset>/test/images)",
    )
    a.add_argument("--threads", type=_positive_int, default=None, help="CPU threads for inference")
    a.set_defaults(func=cmd_app)


def _add_export_command(sub) -> None:
    """``promptseg export``: a trained model as ONNX."""
    e = sub.add_parser(
        "export",
        help="write a trained model as ONNX for `predict --engine onnx`",
        description="Write <out>/model.onnx (logits for pixel_values, input_ids, attention_mask; "
        "dynamic batch and token length), its metadata and the tokenizer files.",
    )
    e.add_argument("--model", required=True, help="a trained model folder, e.g. models/lora")
    e.add_argument("--out", default=None, help="output folder (default: <model>/onnx)")
    e.add_argument("--opset", type=_positive_int, default=17, help="ONNX opset (default 17)")
    e.add_argument(
        "--eval-metrics",
        default=None,
        help="the recipe file to copy beside the export (default: metrics/eval/<rung>.json)",
    )
    e.add_argument(
        "--no-check",
        action="store_true",
        help="skip running the export once in onnxruntime against the PyTorch forward",
    )
    e.set_defaults(func=cmd_export)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{value} must be a positive finite number")
    return value


def _add_scale_args(parser: argparse.ArgumentParser) -> None:
    scale = parser.add_mutually_exclusive_group()
    scale.add_argument(
        "--mm-per-px",
        type=_positive_float,
        default=None,
        help="scale of the photos: lengths and widths also in mm, and the BRE Digest 251 category",
    )
    scale.add_argument(
        "--image-width-mm",
        type=_positive_float,
        default=None,
        help="the width of the wall each photo shows, in mm (scale = this / image width in px)",
    )


def _measure_settings(params_path: str | None):
    """MeasureSettings from params.yaml's measure: section (or the defaults when there is no params.yaml)."""

    path = Path(params_path or "params.yaml")
    if not path.exists():
        return MeasureSettings()

    return MeasureSettings.from_params(yaml.safe_load(path.read_text()))


def _run_measure(paths: list[Path], kind: str, args: argparse.Namespace, images: dict | None = None) -> int:

    try:
        settings = _measure_settings(getattr(args, "params", None))
    except (ValueError, TypeError, OSError) as exc:
        _err(f"cannot read the measure: settings: {exc}")
        return EXIT_USAGE
    run = measure_files(
        paths, kind=kind, mm_per_px=args.mm_per_px, image_width_mm=args.image_width_mm, settings=settings, images=images
    )
    for path, why in run.skipped:
        _err(f"skipped {path}: {why}")
    for name, result in run.results.items():
        im = result["image"]
        line = f"{name}: {im['count']} {kind}(s), total length {im['total_length_px']:.1f} px"
        if kind == "crack":
            line += f", max width {im['max_width_px']:.1f} px"
        if "total_length_mm" in im:
            line += f" ({im['total_length_mm']:.1f} mm, max width {im['max_width_mm']:.2f} mm"
            line += f", BRE 251 category {im['bre_251_category']})" if im.get("bre_251_category") is not None else ")"
        if kind == "joint":
            line += f", taped share {im['taped_share']:.3f}, {im['orientations']}"
        print(line)
    if args.mm_per_px is None and args.image_width_mm is None:
        print(f"note: {NO_SCALE_NOTE}")
    if kind == "joint":
        print(f"note: {JOINT_LABEL_NOTE}")
    folders = sorted({str(Path(p).parent) for p in run.results})
    print(
        f"{len(run.results)} masks measured, {len(run.skipped)} skipped -> measurements.json/.csv in {', '.join(folders) or '-'}"
    )
    return EXIT_OK if run.results else EXIT_NOTHING_WRITTEN


MEASURE_OWN_SUFFIXES = ("_overlay.png", "_measured.png")


def cmd_measure(args: argparse.Namespace) -> int:
    paths: list[Path] = []
    for raw in args.inputs:
        path = Path(raw)
        if not path.exists():
            _err(f"no such file or folder: {path}")
            return EXIT_USAGE
        if path.is_dir():
            paths.extend(p for p in sorted(path.glob("*.png")) if not p.name.endswith(MEASURE_OWN_SUFFIXES))
        else:
            paths.append(path)
    if not paths:
        _err(f"no mask PNGs in {', '.join(args.inputs)}: pass the masks `promptseg predict` writes")
        return EXIT_NOTHING_WRITTEN
    images = None
    if args.images:
        folder = Path(args.images)
        if not folder.is_dir():
            _err(f"--images {folder} is not a folder")
            return EXIT_USAGE
        photos = {p.stem: p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
        images = {}
        for mask in paths:
            photo = photos.get(mask.stem.split("__")[0])
            if photo is not None:
                try:
                    images[mask.stem] = read_rgb(photo)
                except (ValueError, OSError):
                    _err(f"warning: {photo} is not a readable image; its overlay is drawn on gray")
    return _run_measure(paths, args.kind, args, images)


def cmd_app(args: argparse.Namespace) -> int:
    try:
        import gradio  # noqa: F401, PLC0415 (heavy, optional: gradio)
    except ImportError:
        _err("the app needs gradio: pip install -r requirements.txt (gradio==6.31.0)")
        return EXIT_USAGE
    _quiet_transformers()

    try:
        app = load_app_model(
            args.model,
            engine=args.engine,
            eval_path=args.eval_metrics,
            images=args.images,
            threads=args.threads,
            warn_recipe_mismatch=args.warn_recipe_mismatch,
        )
    except EngineLoadError as exc:  # its message names the folder and the fix
        _err(str(exc))
        return EXIT_USAGE
    except (FileNotFoundError, ModelSourceError, OnnxEngineError, OSError, ValueError) as exc:
        _err(f"cannot load the model from {args.model}: {exc}")
        return EXIT_USAGE
    print(
        f"promptseg app: {app.rung} ({app.engine_name} engine), recipes from {app.eval_path}; "
        f"http://{args.host}:{args.port}/  (Ctrl+C stops it)"
    )
    launch(app, host=args.host, port=args.port, block=True)
    return EXIT_OK


def _recipe_thresholds(eval_path: Path) -> dict[str, float] | None:
    """dataset -> threshold from an evaluation JSON (None when it is missing or has none: the check uses 0.5)."""
    try:
        data = json.loads(Path(eval_path).read_text())
    except (OSError, ValueError):
        return None
    found = {d: float(e["threshold"]) for d, e in data.items() if isinstance(e, dict) and "threshold" in e}
    return found or None


def cmd_export(args: argparse.Namespace) -> int:
    model_dir = Path(args.model)
    if not model_dir.is_dir():
        _err(
            f"model folder {model_dir} not found: train it first (`dvc repro train`) or pass --model with a "
            "folder written by save_pretrained (e.g. models/lora)"
        )
        return EXIT_USAGE
    _quiet_transformers()

    try:
        rung = json.loads((model_dir / MODEL_CARD).read_text()).get("rung") or model_dir.name
    except (OSError, ValueError):
        rung = model_dir.name
    eval_path = Path(args.eval_metrics) if args.eval_metrics else eval_json(rung)
    thresholds = _recipe_thresholds(eval_path)  # the check compares masks at the thresholds predict will use
    started = time.perf_counter()
    try:
        out_dir = export_model_dir(
            model_dir, args.out, opset=args.opset, check=not args.no_check, thresholds=thresholds
        )
    except ExportMismatchError as exc:
        _err(str(exc))
        return EXIT_NOTHING_WRITTEN
    except (ModelSourceError, OnnxEngineError) as exc:
        _err(f"cannot load the model from {model_dir}: {exc}")
        return EXIT_USAGE
    except (OSError, ValueError, RuntimeError) as exc:
        _err(f"the ONNX export of {model_dir} failed: {type(exc).__name__}: {exc}")
        return EXIT_NOTHING_WRITTEN
    size_mb = (out_dir / ONNX_FILENAME).stat().st_size / 1e6

    check = json.loads((out_dir / META_FILENAME).read_text()).get("check")
    if check:
        print(f"check against PyTorch: {ExportCheck.from_dict(check).summary()}")
    copied = copy_recipes(eval_path, out_dir)
    print(
        f"recipe: copied from {eval_path} to {copied}"
        if copied
        else f"recipe: none copied ({eval_path} not found or without thresholds): predict --engine onnx uses "
        "metrics/eval/<rung>.json when present, else the defaults"
    )
    print(
        f"wrote {out_dir / ONNX_FILENAME} ({size_mb:.1f} MB) in {time.perf_counter() - started:.1f} s; "
        f"run it with `promptseg predict --engine onnx --model {model_dir} ...`"
    )
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed the message
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
