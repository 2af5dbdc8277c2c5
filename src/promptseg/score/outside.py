"""Score a trained model on real photos OUTSIDE its training sample, leak-checked (issue 30).

``python -m promptseg.score.outside --model models/<rung> --dataset drywall --export DIR --exclude DIR
[--exclude DIR ...] --out metrics/outside/<rung>_<dataset>.json``

1. The outside export (``--export``) is read with :func:`promptseg.ingest.exports.read_export` and every
   ``--exclude`` export (the exports the sample was made from) likewise, with the masks stage's settings of the
   dataset (``params.yaml``: ``data.<dataset>.empty_polygon``, ``data.max_image_pixels``, ``masks``); their
   problems are counted by kind and named in the JSON.
2. Leak check: the outside and the excluded images are grouped together exactly as the masks stage groups an
   export (:func:`promptseg.ingest.splits.plan_splits`: name group, and the dhash + detail-thumbnail test with
   ``masks.near_duplicates``). An outside image is dropped when its group holds any excluded image: ``by name``
   (its source photo's name is in an excluded export), ``by hash`` (a near-duplicate of an excluded image) or
   ``by group`` (neither directly, but it is a copy of an outside image that is: the same photo by name, or a
   near-duplicate). Every drop is named with the excluded (or outside) image it matched. The kept images keep
   their group: their source photo.
3. The model is loaded with :func:`promptseg.infer.engines.load_segmenter`; its recipe is the one evaluation
   recorded (``metrics/eval/<rung>.json`` or ``--eval-metrics``; an ONNX export's ``recipe.json``), read with
   :func:`promptseg.infer.recipe.load_recipe` as ``promptseg predict`` reads it, and checked against the weights
   (:func:`promptseg.infer.recipe.check_scored_model`). A model without one is refused: no threshold is decided
   here.
4. Every kept image (decoded and its labels rendered with the masks stage's rules: a bad image is skipped,
   counted and named) is scored with EVERY prompt of the dataset (``data.<dataset>.prompts``) as evaluation
   scores one (single-prompt masks at the recipe's threshold and open/close; the prompt ensemble too where the
   recipe says so), with the project's per-image IoU/Dice (``eval.empty_score``; boundary F1 and clDice for
   cracks). Per prompt and over all prompts: the mean over images, and the mean over SOURCE PHOTOS (each photo's
   images averaged first, so that the copies of one photo weigh as one).

Exit codes: 0 written; 2 bad input (a missing or unreadable folder, no image left after the exclusion or after
decoding, a model folder that cannot be loaded or has no recipe, bad params), one message naming the path and
the fix.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from promptseg.images import ImageReadError, read_rgb
from promptseg.infer.engines import ENGINES, EngineLoadError, load_segmenter
from promptseg.infer.recipe import Recipe, RecipeError, check_scored_model, load_recipe, recipe_file
from promptseg.infer.segmenter import Segmenter
from promptseg.ingest.exports import (
    IMAGE_SKIP_KINDS,
    ExportError,
    ExportReadResult,
    ImageRecord,
    Problem,
    read_export,
)
from promptseg.ingest.masks import check_size, render_with_problems
from promptseg.ingest.splits import plan_splits
from promptseg.metrics import image_scores, summarise_image_scores
from promptseg.params import DATASETS, THIN_STRUCTURE_DATASETS, ParamsError, load_params
from promptseg.paths import MODEL_CARD, eval_json, write_json
from promptseg.settings import OutsideSettings, outside_settings

__all__ = ["LeakCheck", "OutsideError", "leak_check", "main", "resolve_recipe", "score_outside"]

EXIT_OK, EXIT_USAGE = 0, 2
PROG = "promptseg.score.outside"
# The torch engine's encoding cache: it holds one chunk's image half (recipe.batch_size images) while every prompt
# runs over it (HED-VGG16 at 320 px keeps ~50 MB per image). Speed only: results are the same without it.
ENCODING_CACHE_BYTES = 2 * 2**30


class OutsideError(Exception):
    """Bad input: the message names the path and the fix (exit 2)."""


# ------------------------------------------------------------------------------------------ the leak check
@dataclass
class LeakCheck:
    """Which outside records are kept, their source photos, and what was dropped and why."""

    kept: list[int]  # indices into the outside records, in order
    photos: list[str]  # per kept record: its source photo (the group key: name group joined with near-duplicates)
    dropped: list[dict]  # {"image", "by": name | hash | group, "match"}, in record order
    excluded_images: int
    excluded_unhashed: int  # excluded images that could not be decoded: checked by name only
    max_distance: int
    min_correlation: float

    def summary(self, listed: int) -> dict:
        by = collections.Counter(d["by"] for d in self.dropped)
        return {
            "outside_images": listed,
            "excluded_images": self.excluded_images,
            "excluded_unhashed": self.excluded_unhashed,
            "dhash_max_distance": self.max_distance,
            "min_correlation": self.min_correlation,
            "dropped": len(self.dropped),
            "dropped_by_name": by["name"],
            "dropped_by_hash": by["hash"],
            "dropped_by_group": by["group"],
            "kept": len(self.kept),
            "kept_source_photos": len(set(self.photos)),
            "dropped_images": self.dropped,
        }


def _label(path: Path, roots: list[Path]) -> str:
    """``path`` relative to the export root that holds it, prefixed with that root's name (for messages)."""
    for root in roots:
        try:
            return f"{root.name}/{Path(path).relative_to(root).as_posix()}"
        except ValueError:
            continue
    return str(path)


def leak_check(
    outside: list[ImageRecord],
    excluded: list[ImageRecord],
    *,
    max_distance: int,
    min_correlation: float,
    roots: list[Path] = (),
    workers: int | None = None,
) -> LeakCheck:
    """Group ``outside`` and ``excluded`` together as the masks stage groups an export (name groups joined with
    near-duplicates, :func:`promptseg.ingest.splits.plan_splits`) and drop every outside record whose group holds
    an excluded one (see the module docstring: by name, by hash, by group). ``roots``: the export folders, for
    the names in ``dropped``."""
    records = [*outside, *excluded]
    plan = plan_splits(
        records, strategy="as_exported", max_distance=max_distance, min_correlation=min_correlation, workers=workers
    )
    n, roots = len(outside), [Path(r) for r in roots]
    name = [_label(r.image_path, roots) for r in records]
    first_by_name: dict[str, int] = {}
    for j in range(n, len(records)):
        first_by_name.setdefault(plan.name_groups[j], j)
    excluded_groups = {plan.groups[j] for j in range(n, len(records))}
    closest: dict[int, tuple[int, int]] = {}  # outside i -> (excluded j, distance) of its nearest excluded copy
    for i, j, d in plan.pairs:  # i < j, so an outside-excluded pair has i < n <= j
        if i < n <= j and (i not in closest or d < closest[i][1]):
            closest[i] = (j, d)
    reasons: dict[int, dict] = {}
    for i in range(n):
        if plan.name_groups[i] in first_by_name:
            j = first_by_name[plan.name_groups[i]]
            reasons[i] = {"image": name[i], "by": "name", "match": f"source photo '{plan.name_groups[i]}': {name[j]}"}
        elif i in closest:
            j, d = closest[i]
            reasons[i] = {"image": name[i], "by": "hash", "match": f"near-duplicate (dhash distance {d}) of {name[j]}"}
    for i in range(n):
        if i not in reasons and plan.groups[i] in excluded_groups:
            k = next(k for k in sorted(reasons) if plan.groups[k] == plan.groups[i])
            reasons[i] = {
                "image": name[i],
                "by": "group",
                "match": f"a copy (same photo or near-duplicate) of {name[k]}, dropped by {reasons[k]['by']}",
            }
    kept = [i for i in range(n) if i not in reasons]
    return LeakCheck(
        kept=kept,
        photos=[plan.groups[i] for i in kept],
        dropped=[reasons[i] for i in sorted(reasons)],
        excluded_images=len(excluded),
        excluded_unhashed=sum(1 for h in plan.hashes[n:] if h is None),
        max_distance=int(max_distance),
        min_correlation=float(min_correlation),
    )


# ------------------------------------------------------------------------------------------------ the recipe
def resolve_recipe(
    segmenter: Segmenter, model_dir: Path, dataset: str, eval_metrics: Path | None = None, warn_only: bool = False
) -> tuple[Recipe, Path, str, list[str]]:
    """(recipe, the file it came from, where it came from, notes): the recipe evaluation recorded for ``dataset``,
    found as ``promptseg predict`` finds it (``eval_metrics``, else ``metrics/eval/<rung>.json``, else an ONNX
    export's ``recipe.json``) and read with :func:`promptseg.infer.recipe.load_recipe`. :class:`OutsideError`
    when the model has none: no threshold is decided here."""
    card = segmenter.card if isinstance(segmenter.card, dict) else {}
    rung = str(card.get("rung") or model_dir.name)
    prompts = card.get("prompts") if isinstance(card.get("prompts"), dict) else {}
    trained = prompts.get(dataset)
    if not isinstance(trained, list) or not trained:
        raise OutsideError(
            f"{model_dir / MODEL_CARD} lists no {dataset} prompts (it has: {', '.join(prompts) or 'none'}): the "
            f"model was not trained on {dataset}, so evaluation recorded no recipe for it; pass a model trained on it"
        )
    eval_path = recipe_file(Path(eval_metrics) if eval_metrics else eval_json(rung), segmenter.export_dir)
    how = f"evaluate the rung first (`dvc repro evaluate@{rung}`) or pass --eval-metrics with its evaluation JSON"
    if not eval_path.is_file():
        raise OutsideError(f"no recipe for {model_dir}: {eval_path} not found; {how}")
    try:
        entry = json.loads(eval_path.read_text()).get(dataset)
    except (OSError, ValueError, AttributeError) as exc:
        raise OutsideError(f"cannot read the recipe in {eval_path} ({type(exc).__name__}: {exc}); {how}") from None
    if not isinstance(entry, dict) or "threshold" not in entry or not isinstance(entry.get("recipe"), dict):
        raise OutsideError(
            f"{eval_path} records no recipe for {dataset} (a threshold and its recipe, as evaluation writes them); "
            f"{how}"
        )
    try:
        recipe, found, why = load_recipe(card, trained[0], rung, eval_path)
        notes = check_scored_model(eval_path, model_dir, rung, warn_only)
    except RecipeError as exc:
        raise OutsideError(str(exc)) from None
    if found != dataset:  # the card's first prompt also belongs to another dataset
        raise OutsideError(
            f"{model_dir / MODEL_CARD}: prompt {trained[0]!r} resolves to dataset {found!r}, not {dataset}"
        )
    return recipe, eval_path, why, notes


# ---------------------------------------------------------------------------------------------------- scoring
def _load_chunk(records, photos, min_box_side_px, max_pixels, skipped, problems, roots):
    """(names, photos, RGB images, truth masks) of the records that decode and render (masks stage rules); the
    others are counted in ``skipped`` and named in ``problems`` (which also counts and names the render notes:
    clipped or degenerate boxes, a size that differs from the annotation's)."""
    names, kept_photos, images, truths = [], [], [], []
    for rec, photo in zip(records, photos):
        path = Path(rec.image_path)
        per_image: collections.Counter = collections.Counter()
        try:
            image = read_rgb(path, max_pixels)
        except ImageReadError as exc:
            skipped[exc.kind] += 1
            problems.append(Problem(f"{path}: {exc.reason}; it is skipped", kind=exc.kind, file=path, split=rec.split))
            continue
        h, w = image.shape[:2]
        check_size(rec, path, rec.split, h, w, per_image, problems)
        mask = render_with_problems(rec, path, rec.split, h, w, min_box_side_px, per_image, problems)
        for kind, count in per_image.items():
            skipped[kind] += count
        if mask is None:  # every shape drew nothing: skipped, not scored as a negative (as the masks stage does)
            continue
        names.append(_label(path, roots))
        kept_photos.append(photo)
        images.append(image)
        truths.append(mask > 0)
    return names, kept_photos, images, truths


def _summarise(parts: list[dict], photos: list[str], empty_score: float) -> dict:
    """The means over images (:func:`promptseg.metrics.summarise_image_scores`) and over source photos."""
    each = {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}
    out = summarise_image_scores(each, empty_score=empty_score)
    by_photo: dict[str, list[int]] = {}
    for i, photo in enumerate(photos):
        by_photo.setdefault(photo, []).append(i)
    out["photo_miou"] = float(np.mean([np.mean(each["iou"][rows]) for rows in by_photo.values()]))
    out["photo_dice"] = float(np.mean([np.mean(each["dice"][rows]) for rows in by_photo.values()]))
    out["photos"] = len(by_photo)
    return out


def score_outside(
    segmenter: Segmenter,
    records: list[ImageRecord],
    photos: list[str],
    prompts: list[str],
    recipe: Recipe,
    *,
    thin: bool,
    empty_score: float,
    tolerance_px: int,
    min_box_side_px: float,
    max_pixels: int | None = None,
    roots: list[Path] = (),
) -> dict:
    """Every record (decoded, its labels rendered) scored with every prompt as evaluation scores one: per prompt,
    over all prompts (mean of the prompts' figures), the prompt ensemble where the recipe has it, the per-image
    rows, what was skipped (``skipped``: a kind of :data:`promptseg.ingest.exports.IMAGE_SKIP_KINDS`) and the
    render counts, each named in ``problems``. Images are processed ``recipe.batch_size`` at a time, every prompt over each
    chunk (the torch engine encodes each image once)."""
    roots = [Path(r) for r in roots]
    skipped: collections.Counter = collections.Counter()
    problems: list[Problem] = []
    parts: dict[str, list[dict]] = {p: [] for p in prompts}
    ensemble_parts: list[dict] = []
    names: list[str] = []
    scored_photos: list[str] = []
    step = max(1, int(recipe.batch_size))
    for start in range(0, len(records), step):
        chunk_names, chunk_photos, images, truths = _load_chunk(
            records[start : start + step], photos[start : start + step], min_box_side_px, max_pixels, skipped,
            problems, roots,
        )  # fmt: skip
        if not images:
            continue
        names += chunk_names
        scored_photos += chunk_photos
        for prompt in prompts:  # single-prompt masks at the recipe's threshold, as evaluation's per-prompt scores
            masks = segmenter.masks(images, prompt, recipe)
            parts[prompt].append(
                image_scores(masks, truths, empty_score=empty_score, tolerance_px=tolerance_px, thin=thin)
            )
        if recipe.prompt_ensemble:
            t = recipe.ensemble_threshold if recipe.ensemble_threshold is not None else recipe.threshold
            masks = segmenter.masks(images, list(prompts), recipe, threshold=t)
            ensemble_parts.append(
                image_scores(masks, truths, empty_score=empty_score, tolerance_px=tolerance_px, thin=thin)
            )
    result: dict = {
        "images": len(names),
        "skipped": {k: int(v) for k, v in sorted(skipped.items()) if v and k in IMAGE_SKIP_KINDS},
        "render_counts": {k: int(v) for k, v in sorted(skipped.items()) if v and k not in IMAGE_SKIP_KINDS},
        "problems": [str(p) for p in problems],
    }
    if not names:
        return result
    per_prompt = {p: _summarise(parts[p], scored_photos, empty_score) for p in prompts}
    result["source_photos"] = len(set(scored_photos))
    result["prompts"] = per_prompt
    result["all_prompts"] = {
        k: float(np.mean([s[k] for s in per_prompt.values()]))
        for k in per_prompt[prompts[0]]
        if k not in ("images", "photos")
    }
    if ensemble_parts:
        result["ensemble"] = _summarise(ensemble_parts, scored_photos, empty_score)
    rows = []
    for prompt in prompts:
        iou = np.concatenate([p["iou"] for p in parts[prompt]])
        dice = np.concatenate([p["dice"] for p in parts[prompt]])
        rows += [
            {"image": n, "photo": ph, "prompt": prompt, "iou": float(a), "dice": float(b)}
            for n, ph, a, b in zip(names, scored_photos, iou, dice)
        ]
    result["per_image"] = rows
    return result


# -------------------------------------------------------------------------------------------------------- CLI
def _read(root: Path, settings: OutsideSettings, what: str) -> ExportReadResult:
    if not root.is_dir():
        raise OutsideError(
            f"{what} {root} is not a folder; pass the folder of a Roboflow export (the one holding train/ valid/ test/)"
        )
    try:
        return read_export(
            root, empty_segmentation=settings.masks.empty_polygon, max_image_pixels=settings.masks.max_image_pixels
        )
    except (ExportError, ValueError, OSError) as exc:
        raise OutsideError(f"{what}: {exc}") from None


def _problem_counts(problems) -> dict[str, int]:
    return dict(sorted(collections.Counter(getattr(p, "kind", "") or "other" for p in problems).items()))


def run(args: argparse.Namespace) -> dict:
    """The whole run (see the module docstring): the JSON written to ``args.out``; OutsideError on bad input."""
    try:
        settings = outside_settings(load_params(args.params), args.dataset)
    except (ParamsError, OSError) as exc:
        text = str(exc)
        raise OutsideError(text if text.startswith(str(args.params)) else f"{args.params}: {text}") from None
    export, excludes = Path(args.export), [Path(p) for p in args.exclude]
    read = _read(export, settings, "--export")
    excluded = [_read(p, settings, "--exclude") for p in excludes]
    if not read.records:
        raise OutsideError(
            f"--export {export} lists no usable image ({_problem_counts(read.problems)}); check the path"
        )
    model_dir = Path(args.model)
    if not model_dir.is_dir():
        raise OutsideError(
            f"model folder {model_dir} not found: train it first (`dvc repro train@<rung>`) or pass --model with a "
            "folder written by the training stage (e.g. models/hed_full)"
        )
    try:
        segmenter = load_segmenter(model_dir, args.engine, cache_bytes=ENCODING_CACHE_BYTES)
    except EngineLoadError as exc:
        raise OutsideError(str(exc)) from None
    recipe, eval_path, why, notes = resolve_recipe(
        segmenter, model_dir, args.dataset, args.eval_metrics, args.warn_recipe_mismatch
    )
    for note in notes:
        print(f"[outside] {note}")

    near = settings.masks.masks.near_duplicates
    roots = [export, *excludes]
    check = leak_check(
        read.records,
        [r for e in excluded for r in e.records],
        max_distance=near.dhash_max_distance,
        min_correlation=near.min_correlation,
        roots=roots,
    )
    leaks = check.summary(len(read.records))
    if not check.kept:
        raise OutsideError(
            f"no image of {export} is left after the exclusion: all {len(read.records)} share a source photo or "
            f"are near-duplicates of {', '.join(map(str, excludes))} ({leaks['dropped_by_name']} by name, "
            f"{leaks['dropped_by_hash']} by hash, {leaks['dropped_by_group']} by group); pass an export with "
            "photos outside the sample"
        )
    scores = score_outside(
        segmenter,
        [read.records[i] for i in check.kept],
        check.photos,
        list(settings.prompts),
        recipe,
        thin=args.dataset in THIN_STRUCTURE_DATASETS,
        empty_score=settings.eval.empty_score,
        tolerance_px=settings.eval.boundary_tolerance_px,
        min_box_side_px=settings.masks.masks.min_box_side_px,
        max_pixels=settings.masks.max_image_pixels,
        roots=roots,
    )
    if not scores["images"]:
        raise OutsideError(
            f"none of the {len(check.kept)} images of {export} kept after the exclusion could be scored "
            f"(skipped: {scores['skipped']}; first problem: {scores['problems'][:1]}); re-download the export"
        )
    photos: dict[str, list[str]] = {}
    for row in scores["per_image"]:
        if row["prompt"] == settings.prompts[0]:
            photos.setdefault(row["photo"], []).append(row["image"])
    result = {
        "model": str(model_dir),
        "rung": str(segmenter.card.get("rung") or model_dir.name),
        "engine": segmenter.engine,
        "dataset": args.dataset,
        "export": str(export),
        "excluded": [str(p) for p in excludes],
        "recipe": recipe.to_dict(),
        "recipe_from": why,
        "eval_metrics": str(eval_path),
        "read_problems": {
            "export": _problem_counts(read.problems),
            "excluded": {str(p): _problem_counts(e.problems) for p, e in zip(excludes, excluded)},
            "export_messages": [str(p) for p in read.problems],
        },
        "leak_check": leaks,
        "images": scores["images"],
        "source_photos": scores["source_photos"],
        "skipped": scores["skipped"],
        "render_counts": scores["render_counts"],
        "problems": scores["problems"],
        "prompts": scores["prompts"],
        "all_prompts": scores["all_prompts"],
        **({"ensemble": scores["ensemble"]} if "ensemble" in scores else {}),
        "photos": photos,
        "per_image": scores["per_image"],
    }
    out = Path(args.out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(out, result)
    except OSError as exc:
        raise OutsideError(f"cannot write {out} ({exc}); pass --out with a path you can write to") from None
    a = result["all_prompts"]
    print(
        f"[outside] {result['rung']} on {args.dataset}: {leaks['kept']} of {leaks['outside_images']} images of "
        f"{export} kept ({leaks['dropped_by_name']} dropped by name, {leaks['dropped_by_hash']} by hash, "
        f"{leaks['dropped_by_group']} by group), {result['images']} scored from {result['source_photos']} source "
        f"photos x {len(settings.prompts)} prompts: mIoU {a['miou']:.3f} / Dice {a['dice']:.3f}, per photo "
        f"{a['photo_miou']:.3f} / {a['photo_dice']:.3f} (threshold {recipe.threshold:g}) -> {out}"
    )
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m {PROG}", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a trained model folder, e.g. models/hed_full")
    p.add_argument("--dataset", required=True, choices=DATASETS, help="whose prompts, settings and recipe to use")
    p.add_argument("--export", required=True, help="the outside Roboflow export (COCO or YOLO folder)")
    p.add_argument(
        "--exclude", action="append", default=[], help="an export the sample was made from (repeatable): its photos "
        "and their near-duplicates are dropped from --export",
    )  # fmt: skip
    p.add_argument("--out", required=True, help="the JSON to write, e.g. metrics/outside/<rung>_<dataset>.json")
    p.add_argument(
        "--eval-metrics", default=None, help="evaluation's JSON with the recipe (default: metrics/eval/<rung>.json)"
    )
    p.add_argument("--engine", default="torch", choices=(*ENGINES, "auto"), help="torch (as evaluation) | onnx | auto")
    p.add_argument("--params", default="params.yaml", help="the params file (prompts, masks and eval settings)")
    p.add_argument(
        "--warn-recipe-mismatch", action="store_true", help="use a recipe scored on other weights (with a warning)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except OutsideError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
