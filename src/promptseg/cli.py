"""The ``promptseg`` console command.

``promptseg predict --model models/lora --prompt "segment wall crack" IMAGE_OR_DIR... --out DIR``
writes ``<out>/<stem>__<prompt-slug>.png`` ({0, 255} masks at each image's own size) and, with
``--overlay``, ``<stem>__<prompt-slug>_overlay.png`` (the mask in red over the image, alpha 0.5).

Exit codes: 0 at least one mask written; 1 none written (every image skipped); 2 usage errors
(unknown path, empty prompt, missing or unreadable model directory, bad option values).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["main", "build_parser", "default_threshold", "expand_inputs"]

EXIT_OK, EXIT_NOTHING_WRITTEN, EXIT_USAGE = 0, 1, 2
FALLBACK_THRESHOLD = 0.5
OVERLAY_COLOR_RGB = (255, 0, 0)
OVERLAY_ALPHA = 0.5


def _err(message: str) -> None:
    print(f"promptseg: {message}", file=sys.stderr)


# --------------------------------------------------------------------------- inputs
@dataclass
class Inputs:
    images: list[Path]          # candidate image files, in order, no duplicates
    skipped: list[tuple[Path, str]]  # files inside folders that are not images (by suffix)
    any_folder: bool


def expand_inputs(paths: list[Path]) -> Inputs:
    """Files as given; folders expanded (not recursively) to their image files, sorted by name.

    Files inside a folder whose suffix is not an image suffix (``promptseg.data.IMAGE_SUFFIXES``) are
    returned in ``skipped``; hidden files and sub-folders are ignored. The same file named twice is kept once.
    Raises ``FileNotFoundError`` naming the first path that does not exist.
    """
    from promptseg.data import IMAGE_SUFFIXES

    images, skipped, seen, any_folder = [], [], set(), False
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"no such file or folder: {path}")
        if path.is_dir():
            any_folder = True
            for child in sorted(path.iterdir()):
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


# --------------------------------------------------------------------------- threshold
def default_threshold(card: dict, prompt: str, variant: str, eval_path: Path) -> tuple[float, str]:
    """(threshold, why): the threshold chosen on val for the dataset whose training prompts contain ``prompt``.

    Falls back to 0.5 (and says why) when the model card lists no prompts, the prompt is not one of them,
    or ``eval_path`` is missing or has no threshold for that dataset.
    """
    prompts = card.get("prompts") if isinstance(card, dict) else None
    if not isinstance(prompts, dict) or not prompts:
        return FALLBACK_THRESHOLD, "the default, because the model folder has no promptseg.json listing its training prompts"
    dataset = next((name for name, ps in prompts.items() if isinstance(ps, list) and prompt in ps), None)
    if dataset is None:
        known = "; ".join(f"{name}: {', '.join(repr(p) for p in ps)}" for name, ps in prompts.items())
        return FALLBACK_THRESHOLD, f"the default, because {prompt!r} is not one of the model's training prompts ({known})"
    if not eval_path.exists():
        return FALLBACK_THRESHOLD, f"the default, because {eval_path} was not found (evaluate the variant {variant!r} to get a tuned threshold)"
    try:
        threshold = json.loads(eval_path.read_text())[dataset]["threshold"]
        threshold = float(threshold)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return FALLBACK_THRESHOLD, f"the default, because {eval_path} has no usable threshold for {dataset} ({type(exc).__name__}: {exc})"
    return threshold, f"chosen on val for dataset {dataset!r} ({eval_path})"


# --------------------------------------------------------------------------- outputs
def overlay_image(rgb: np.ndarray, mask: np.ndarray, *, color=OVERLAY_COLOR_RGB, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """(H, W, 3) uint8 RGB with the mask's pixels blended towards ``color`` with ``alpha``."""
    out = rgb.astype(np.float32)
    lit = mask > 0
    out[lit] = (1.0 - alpha) * out[lit] + alpha * np.asarray(color, dtype=np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _write_png(path: Path, image: np.ndarray, *, rgb: bool = False) -> None:
    import cv2

    data = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if rgb else image
    if not cv2.imwrite(str(path), data):
        raise OSError(f"could not write {path}")


# --------------------------------------------------------------------------- predict
def _quiet_transformers() -> None:
    """No weight-loading bars or backend notices from transformers: the user sees our messages only."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


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
    from promptseg.evaluate import prompt_slug

    prompt = (args.prompt or "").strip()
    if not prompt:
        _err("give a non-empty --prompt (e.g. --prompt \"segment wall crack\")")
        return EXIT_USAGE
    try:
        inputs = expand_inputs([Path(p) for p in args.inputs])
    except FileNotFoundError as exc:
        _err(str(exc))
        return EXIT_USAGE
    model_dir = Path(args.model)
    if not model_dir.is_dir():
        _err(f"model folder {model_dir} not found: train it first (`dvc repro train`) or pass --model with a "
             "folder written by save_pretrained (e.g. models/lora)")
        return EXIT_USAGE
    out_dir = Path(args.out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _err(f"cannot create the output folder {out_dir}: {exc}")
        return EXIT_USAGE

    _quiet_transformers()  # before promptseg.model imports the processor classes
    from promptseg.inference import load_trained_model
    from promptseg.model import ModelSourceError

    try:
        trained = load_trained_model(model_dir)
    except (ModelSourceError, OSError, ValueError) as exc:
        _err(f"cannot load the model from {model_dir}: {exc}")
        return EXIT_USAGE

    variant = str(trained.card.get("variant") or model_dir.name)
    if args.threshold is not None:
        threshold, why = args.threshold, "given with --threshold"
    else:
        eval_path = Path(args.eval_metrics) if args.eval_metrics else Path("metrics") / "eval" / f"{variant}.json"
        threshold, why = default_threshold(trained.card, prompt, variant, eval_path)
    print(f"threshold {threshold:g}: {why}")

    return _predict_all(trained, prompt, prompt_slug(prompt), inputs, out_dir, threshold, args)


def _predict_all(trained, prompt: str, slug: str, inputs: Inputs, out_dir: Path, threshold: float,
                 args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from promptseg.data import read_rgb
    from promptseg.inference import predict_masks

    written, skipped = 0, 0
    progress = tqdm(total=len(inputs.images), unit="image", disable=not inputs.any_folder or args.quiet,
                    file=sys.stderr, desc="predict")

    def report_skip(path: Path, why: str) -> None:
        nonlocal skipped
        skipped += 1
        progress.write(f"skipped {path}: {why}", file=sys.stderr)

    for path, why in inputs.skipped:
        report_skip(path, why)

    used_names: dict[str, Path] = {}
    batch: list[tuple[Path, str, np.ndarray]] = []

    def flush() -> None:
        nonlocal written
        if not batch:
            return
        masks = predict_masks(trained, [im for _, _, im in batch], [prompt] * len(batch), threshold=threshold,
                              morphology=not args.no_morphology, kernel_size=args.kernel_size,
                              batch_size=args.batch_size)
        for (path, stem, image), mask in zip(batch, masks):
            try:
                _write_png(out_dir / f"{stem}__{slug}.png", mask)
                if args.overlay:
                    _write_png(out_dir / f"{stem}__{slug}_overlay.png", overlay_image(image, mask), rgb=True)
            except OSError as exc:
                report_skip(path, str(exc))
                continue
            written += 1
        progress.update(len(batch))
        batch.clear()

    for path in inputs.images:
        stem = path.stem
        if stem in used_names:
            report_skip(path, f"its output name {stem}__{slug}.png is already taken by {used_names[stem]}")
            progress.update(1)
            continue
        try:
            image = read_rgb(path)
        except (ValueError, OSError):
            report_skip(path, "not a readable image")
            progress.update(1)
            continue
        used_names[stem] = path
        batch.append((path, stem, image))
        if len(batch) >= args.batch_size:
            flush()
    flush()
    progress.close()
    print(f"{written} masks written, {skipped} skipped -> {out_dir}")
    return EXIT_OK if written else EXIT_NOTHING_WRITTEN


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="promptseg", description="Text-prompted segmentation of wall cracks "
                                     "and drywall joints with a trained CLIPSeg variant.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("predict", help="write masks for images given a text prompt",
                       description="Write <out>/<stem>__<prompt-slug>.png masks ({0,255}, the image's own size).")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or folders of images")
    p.add_argument("--model", required=True, help="a trained model folder, e.g. models/lora")
    p.add_argument("--prompt", required=True, help='the text prompt, e.g. "segment wall crack"')
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--threshold", type=_probability, default=None,
                   help="probability threshold in [0, 1]; default: the one chosen on val for the prompt's dataset "
                        "(metrics/eval/<variant>.json), else 0.5")
    p.add_argument("--eval-metrics", default=None,
                   help="the eval JSON to read the default threshold from (default: metrics/eval/<variant>.json)")
    p.add_argument("--overlay", action="store_true", help="also write <stem>__<slug>_overlay.png (mask in red)")
    p.add_argument("--batch-size", type=_positive_int, default=16, help="images per forward pass (default 16)")
    p.add_argument("--no-morphology", action="store_true",
                   help="skip the 3x3 opening/closing (keeps 1-px structures)")
    p.add_argument("--kernel-size", type=_positive_int, default=3, help="opening/closing kernel side (default 3)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed the message
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
