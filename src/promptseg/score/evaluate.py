"""Score a trained rung: threshold chosen on val, every image scored with EVERY prompt of its dataset.

Per dataset:
1. val probabilities for each prompt -> one-pass threshold sweep (raw ``probs > t``, before morphology)
   -> the threshold with the best mean per-image Dice over val images x prompts. Test is never used.
2. val and test masks at that threshold (+ open/close) -> per prompt: mIoU and mean Dice over images
   (both-empty image scores 1.0), micro IoU/Dice from summed counts, and for cracks boundary F1
   (2 px) and clDice. Masks are written to ``<predictions>/<dataset>/<split>/<stem>__<prompt>.png``.
3. Prompt switching: the same images with every prompt of the OTHER dataset should light nothing;
   ``cross_prompt_lit`` is the mean fraction of pixels lit (lower is better), next to ``in_prompt_lit``. Each
   prompt is masked with its own dataset's recipe (threshold, mask shape), as ``promptseg predict`` masks it, so
   every dataset's recipe is chosen on val first (:func:`choose_dataset_recipe`), then every dataset is scored.
   Unrelated prompts (``eval.unrelated_prompts``) give ``unrelated_prompt_lit``; paraphrases never
   used in training (``eval.paraphrases``) get Dice like the training prompts.
4. Inference options measured on val only (``options_val``): the best-threshold val Dice of single prompts,
   the prompt ensemble (logits averaged over the dataset's prompts) and horizontal-flip TTA, alone and
   together, and sliding-window (tiled) inference, so the defaults in ``params.yaml: infer`` can follow
   the numbers.
5. A dataset whose export has no test split (the official drywall exports: train and valid only, kept by
   ``data.<dataset>.split: as_exported``) follows ``eval.missing_test_split``: ``report_val`` scores val with
   the val threshold and labels it (``reported_split: val`` and :data:`NO_TEST_SPLIT_NOTE` in the JSON, the
   figure and the report); ``error`` stops with a message naming the fix. With a test split,
   ``reported_split`` is ``test``.
6. Mask shape (``infer.mask_shape``): a dataset's masks may be filled to the bounding boxes of their regions,
   the shape of box labels (drywall), whole (``boxes``) or one box per horizontal and vertical strip (``strips``:
   joints are labelled one box per joint). ``choose_on_val`` decides per rung on val (:func:`choose_mask_shape`);
   the choice (``mask_shape``, ``mask_shape_val``) and its threshold go into the recipe that every caller follows.
7. Where the export has TRUE object masks (the synthetic drywall export's tape bands, beside the box
   labels), the same masks are also scored against them (``vs_true_masks``).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from promptseg.images import SplitData, load_split
from promptseg.infer.recipe import FALLBACK_THRESHOLD, Recipe
from promptseg.infer.segmenter import Segmenter
from promptseg.metrics import (
    choose_threshold,
    iou_dice_from_counts,
    lit_fraction,
    score_masks,
    threshold_sweep_counts,
)
from promptseg.params import NO_TEST_SPLIT_NOTE, THIN_STRUCTURE_DATASETS
from promptseg.paths import (
    MODEL_CARD,
    eval_json,
    figure_png,
    mask_name,
    per_image_csv,
    sweep_csv,
    worst_png,
    write_json,
)
from promptseg.score.figures import message_figure
from promptseg.settings import BOX_SHAPES, EvalSettings, InferSettings, evaluate_settings


@dataclass(frozen=True)
class EvalConfig:
    """What evaluation reads: ``params.yaml: infer`` (the recipe, :meth:`recipe`; the threshold grid) and ``eval``."""

    infer: InferSettings
    eval: EvalSettings

    @classmethod
    def from_params(cls, params: dict) -> EvalConfig:
        """From ``params.yaml``'s ``infer`` and ``eval`` sections (validated)."""
        settings = evaluate_settings(params)
        return cls(settings.infer, settings.eval)

    def recipe(
        self, dataset: str, threshold: float = FALLBACK_THRESHOLD, ensemble_threshold=None, shape: str | None = None
    ) -> Recipe:
        """The recipe ``dataset`` is predicted with (promptseg.infer.recipe.Recipe.from_settings)."""
        return Recipe.from_settings(self.infer, dataset, threshold, ensemble_threshold, shape)

    def score(self, masks, truths, thin: bool, per_image: dict | None = None) -> dict:
        """``promptseg.metrics.score_masks`` with ``eval.empty_score`` and ``eval.boundary_tolerance_px``."""
        return score_masks(
            masks,
            truths,
            empty_score=self.eval.empty_score,
            tolerance_px=self.eval.boundary_tolerance_px,
            thin=thin,
            per_image=per_image,
        )


def sweep_thresholds(probs_by_prompt: dict[str, list[np.ndarray]], truths, cfg: EvalConfig):
    """Mean per-image IoU and Dice at every threshold over images x prompts; one pass per map."""
    grid = list(cfg.infer.threshold_grid)
    counts = np.stack(
        [threshold_sweep_counts(p, t, grid) for probs in probs_by_prompt.values() for p, t in zip(probs, truths)]
    )  # (N, T, 3)
    iou, dice = (scores.mean(axis=0) for scores in iou_dice_from_counts(counts, cfg.eval.empty_score))
    return {t: (float(i), float(d)) for t, i, d in zip(grid, iou, dice)}


PER_IMAGE_COLUMNS = [
    "dataset",
    "split",
    "reported",
    "stem",
    "prompt",
    "iou",
    "dice",
    "pred_share",
    "true_share",
    "boundary_f1",
    "cl_dice",
]


def per_image_rows(dataset: str, split: str, reported: bool, stems, prompt: str, each: dict) -> list[dict]:
    """Rows of ``metrics/eval/per_image/<rung>.csv`` for one prompt on one split (``each``: image_scores)."""
    thin = "boundary_f1" in each
    return [
        {
            "dataset": dataset,
            "split": split,
            "reported": int(reported),
            "stem": stem,
            "prompt": prompt,
            "iou": float(each["iou"][i]),
            "dice": float(each["dice"][i]),
            "pred_share": float(each["pred_share"][i]),
            "true_share": float(each["true_share"][i]),
            "boundary_f1": float(each["boundary_f1"][i]) if thin else "",
            "cl_dice": float(each["cl_dice"][i]) if thin else "",
        }
        for i, stem in enumerate(stems)
    ]


def write_per_image_csv(path: Path, rows: list[dict]) -> None:
    """``rows`` (:func:`per_image_rows`) as CSV with :data:`PER_IMAGE_COLUMNS`; no rows: the header alone."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=PER_IMAGE_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def _mean_of(prompt_scores: list[dict]) -> dict:
    keys = [k for k in prompt_scores[0] if k != "images"]
    return {k: float(np.mean([s[k] for s in prompt_scores])) for k in keys}


def _write_masks(folder: Path, stems, prompt: str, masks) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for stem, mask in zip(stems, masks):
        cv2.imwrite(str(folder / mask_name(stem, prompt)), mask)


class _Predictor:
    """Probabilities for every image of a split with one prompt, with ``dataset``'s recipe (``hflip``/``tiled``
    overridden for the options measured on val), advancing the split's progress bar."""

    def __init__(self, segmenter: Segmenter, dataset: str, cfg: EvalConfig, held: list | None = None):
        self.segmenter, self.dataset, self.cfg = segmenter, dataset, cfg
        self.recipe = cfg.recipe(dataset)  # its threshold is not used here: probabilities only
        self.bars: dict[int, tqdm] = {}  # id(split data) -> its progress bar (images done over every prompt pass)
        # [the split whose encodings the segmenter may hold] (held: ids get reused), shared by every predictor
        # over one segmenter: the datasets' predictors take turns (promptseg.score.evaluate.evaluate_rung)
        self._held = [None] if held is None else held

    def open_bars(self, splits: dict[str, SplitData], prompts, other_prompts) -> None:
        for split, data in splits.items():
            self.bars[id(data)] = tqdm(
                total=len(data.images) * _passes(split, prompts, other_prompts, self.dataset, self.cfg),
                desc=f"evaluate {self.dataset} {split}",
                unit="img",
                disable=None,
            )

    def close_bars(self) -> None:
        for bar in self.bars.values():
            bar.close()

    def __call__(self, data: SplitData, prompt, *, hflip: bool | None = None, tiled: bool | None = None):
        """``prompt``: a string, or a list (the ensemble); ``hflip``/``tiled`` default to the recipe's."""
        recipe = replace(
            self.recipe,
            hflip_tta=self.recipe.hflip_tta if hflip is None else hflip,
            tiled=self.recipe.tiled if tiled is None else tiled,
        )
        bar = self.bars.get(id(data))
        if bar is not None:
            bar.set_postfix_str(
                ("ensemble" if isinstance(prompt, list) else repr(prompt))
                + (" +hflip" if recipe.hflip_tta else "")
                + (" tiled" if recipe.tiled else "")
            )
        if data is not self._held[0]:  # a new split: its images' encodings replace the last split's
            self.segmenter.forget_encodings()
            self._held[0] = data
        probs = self.segmenter.probabilities(data.images, [prompt] * len(data.images), recipe)
        if bar is not None:
            bar.update(len(data.images))
        return probs


def _post(probs, threshold: float, recipe: Recipe) -> list[np.ndarray]:
    return [recipe.mask(p, threshold) for p in probs]


def _load_eval_splits(processed_root: Path, dataset: str, cfg: EvalConfig) -> dict[str, SplitData]:
    """val and test (those with images); no val, or no test under ``eval.missing_test_split: error``, raise."""
    splits = {split: load_split(processed_root, dataset, split) for split in ("val", "test")}
    splits = {s: d for s, d in splits.items() if d.images}
    if "val" not in splits:
        raise ValueError(
            f"{dataset}: no validation images under {processed_root}/{dataset}/val; "
            "the threshold must be chosen on validation."
        )
    if "test" not in splits and cfg.eval.missing_test_split == "error":
        raise ValueError(
            f"{dataset}: no test images under {processed_root}/{dataset}/test (the export has no test "
            f"split). Fix: set data.{dataset}.split: grouped to set a test split aside, or "
            "eval.missing_test_split: report_val to report val, labelled as optimistic."
        )
    return splits


@dataclass
class _ValChoice:
    """One dataset's recipe chosen on val (:func:`choose_dataset_recipe`), and what scoring it needs next."""

    splits: dict[str, SplitData]
    predict: _Predictor  # its recipe: the chosen one (threshold, mask shape)
    result: dict  # the dataset's JSON block so far (threshold, mask shape, recipe, ...)
    sweep: dict  # the val threshold sweep {t: (miou, dice)}
    val_probs: dict  # prompt -> the val probabilities, reused when the val split is scored


def choose_dataset_recipe(
    segmenter: Segmenter,
    processed_root: Path,
    dataset: str,
    prompts: list[str],
    other_prompts,
    cfg: EvalConfig,
    held: list | None = None,
) -> _ValChoice:
    """Phase 1 of :func:`evaluate_rung` for one dataset: its splits, and its recipe chosen on val (``held``: the
    split whose encodings ``segmenter`` holds, shared with the other datasets' predictors)."""
    splits = _load_eval_splits(processed_root, dataset, cfg)
    predict = _Predictor(segmenter, dataset, cfg, held)
    predict.open_bars(splits, prompts, other_prompts)
    result, sweep, val_probs = choose_threshold_on_val(predict, splits, dataset, prompts, cfg)
    predict.recipe = Recipe.from_dict(result["recipe"])  # the recipe it chose: every mask below follows it
    return _ValChoice(splits, predict, result, sweep, val_probs)


def score_dataset(
    chosen: _ValChoice,
    dataset: str,
    prompts: list[str],
    other_recipes: dict[str, Recipe],
    cfg: EvalConfig,
    predictions_dir: Path | None,
    per_image: list[dict] | None = None,
) -> tuple[dict, dict]:
    """Phase 2 of :func:`evaluate_rung` for one dataset: its scores (see the module docstring) and its val
    threshold sweep {t: (miou, dice)}. ``other_recipes``: each other dataset's prompt -> that dataset's recipe, the
    one ``promptseg predict`` would follow for it (prompt switching).

    ``per_image`` (a list) receives one row per (split, image, prompt) (:func:`per_image_rows`)."""
    thin = dataset in THIN_STRUCTURE_DATASETS
    predict, result = chosen.predict, chosen.result
    threshold = result["threshold"]
    unrelated = {p: predict.recipe for p in cfg.eval.unrelated_prompts}  # no dataset of their own: the photo's recipe
    for split, data in chosen.splits.items():
        given = chosen.val_probs if split == "val" else {}  # val's probabilities are already there
        folder = None if predictions_dir is None else predictions_dir / dataset / split
        each_prompt: dict[str, dict] = {}  # prompt -> image_scores: the per-image numbers behind the means
        per_prompt, in_lit, vs_true = score_prompts(
            predict, data, prompts, threshold, cfg, thin, given, folder, per_image=each_prompt
        )
        if per_image is not None:
            for prompt, each in each_prompt.items():
                per_image += per_image_rows(dataset, split, split == result["reported_split"], data.stems, prompt, each)
        entry = {
            "prompts": per_prompt,
            "all_prompts": _mean_of(list(per_prompt.values())),
            "images": len(data.images),
            "in_prompt_lit": float(np.mean(in_lit)),
            "cross_prompt_lit": prompt_switching(predict, data, other_recipes),
        }
        if vs_true:  # the same masks against the true object pixels (e.g. the tape band inside each box)
            entry["vs_true_masks"] = {"prompts": vs_true, "all_prompts": _mean_of(list(vs_true.values()))}
        if cfg.infer.prompt_ensemble:
            entry["ensemble"] = cfg.score(
                _post(predict(data, list(prompts)), result["ensemble_threshold"], predict.recipe), data.truths, thin
            )
        if cfg.eval.unrelated_prompts:
            entry["unrelated_prompt_lit"] = prompt_switching(predict, data, unrelated)
        paraphrases = cfg.eval.paraphrases.get(dataset, ())
        if paraphrases:
            entry["paraphrases"] = {
                p: cfg.score(_post(predict(data, p), threshold, predict.recipe), data.truths, thin) for p in paraphrases
            }
        result[split] = entry
    predict.close_bars()
    return result, chosen.sweep


def choose_threshold_on_val(
    predict: _Predictor, splits: dict[str, SplitData], dataset: str, prompts: list[str], cfg: EvalConfig
) -> tuple[dict, dict, dict]:
    """The threshold with the best mean val Dice (and the ensemble's), the reported split, the options measured
    on val and the recipe: (result so far, the val sweep, val probabilities per prompt)."""
    val = splits["val"]
    val_probs = {prompt: predict(val, prompt) for prompt in prompts}
    sweep = sweep_thresholds(val_probs, val.truths, cfg)
    threshold = choose_threshold({t: dice for t, (_, dice) in sweep.items()})
    result: dict = {"threshold": threshold, "threshold_chosen_on": "val"}
    shape = cfg.infer.mask_shape.get(dataset, "pixels")
    if shape != "pixels":
        threshold, shape, result["mask_shape_val"] = choose_mask_shape(
            val_probs, val.truths, threshold, shape, predict.recipe, cfg
        )
        result["threshold"] = threshold
    result["mask_shape"] = shape
    if "test" in splits:
        result["reported_split"] = "test"
    else:  # eval.missing_test_split: report_val
        result.update(reported_split="val", reported_split_note=NO_TEST_SPLIT_NOTE)
    if cfg.eval.measure_inference_options:
        result["options_val"] = inference_options_on_val(predict, val, prompts, cfg)
    if cfg.infer.prompt_ensemble:
        ensemble_sweep = sweep_thresholds({"ensemble": predict(val, list(prompts))}, val.truths, cfg)
        result["ensemble_threshold"] = choose_threshold({t: dice for t, (_, dice) in ensemble_sweep.items()})
    result["recipe"] = cfg.recipe(dataset, threshold, result.get("ensemble_threshold"), shape=shape).to_dict()
    return result, sweep, val_probs


def choose_mask_shape(
    val_probs: dict[str, list[np.ndarray]], truths, pixel_threshold: float, shape: str, recipe: Recipe, cfg: EvalConfig
) -> tuple[float, str, dict]:
    """(threshold, shape, what was measured) for ``infer.mask_shape`` ``boxes``, ``strips`` or ``choose_on_val``.

    A box shape (``boxes``: each region of the recipe's mask filled to its bounding box; ``strips``: each horizontal
    and vertical strip boxed on its own, ``infer.strip_length``) gets its own threshold: the best mean val Dice over
    images x prompts on ``infer.threshold_grid``, scored on the finished masks (a box is not a per-pixel decision, so
    the raw one-pass sweep cannot stand in). ``choose_on_val`` keeps pixels, with the threshold the raw sweep chose
    (``pixel_threshold``), unless a box shape scores a strictly higher val Dice than the pixel masks at ANY threshold
    of the grid, both after ``recipe``'s open/close (so boxes win on shape, not on a threshold search that pixels
    did not get); of the two box shapes, strips only where they beat boxes strictly."""

    def sweep(shape: str) -> dict[float, float]:
        shaped = recipe.shaped(shape, cfg.infer.strip_length)
        out = {}
        for t in cfg.infer.threshold_grid:
            masks = [shaped.mask(p, t) for probs in val_probs.values() for p in probs]
            out[float(t)] = cfg.score(masks, list(truths) * len(val_probs), thin=False)["dice"]
        return out

    measured: dict = {}
    for box_shape in BOX_SHAPES if shape == "choose_on_val" else (shape,):
        box_sweep = sweep(box_shape)
        box_threshold = choose_threshold(box_sweep)
        measured[box_shape] = {"threshold": box_threshold, "dice": box_sweep[box_threshold], "sweep": box_sweep}
    best = max(measured, key=lambda k: (measured[k]["dice"], -BOX_SHAPES.index(k)))  # a tie: the simpler shape
    if shape != "choose_on_val":
        return measured[best]["threshold"], best, measured
    pixel_sweep = sweep("pixels")
    measured["pixels"] = {
        "threshold": pixel_threshold,
        "dice": pixel_sweep[float(pixel_threshold)],
        "best_dice": max(pixel_sweep.values()),
        "sweep": pixel_sweep,
    }
    if measured[best]["dice"] > measured["pixels"]["best_dice"]:
        return measured[best]["threshold"], best, measured
    return pixel_threshold, "pixels", measured


def keep_switching_on_val(chosen: dict[str, _ValChoice], dataset: str, prompts: list[str], cfg: EvalConfig) -> None:
    """Drop ``dataset``'s box shape (boxes or strips, chosen on val by ``choose_on_val``) where it would break prompt
    switching that its pixel masks keep.

    A prompt that lights a few specks on another dataset's photo lights a box around each once its masks are boxes.
    So on every other dataset's val split, ``dataset``'s prompts are masked both ways (the chosen box shape at its
    threshold, pixels at the pixel threshold) and their lit share is compared with what that dataset's own prompts
    light there (its chosen recipe). If the box shape reaches ``infer.boxes_switching_limit`` times that on any of
    them while pixels stay under it everywhere, the dataset goes back to pixels (threshold, recipe, the predictor's
    recipe). What was measured is recorded in the JSON block (``mask_shape_switching_val``: ``shape``, the box
    shape tested, ``<shape>_lit``, ``dropped``); test is never looked at."""
    choice = chosen[dataset]
    result = choice.result
    others = [d for d in chosen if d != dataset]
    shape = result["mask_shape"]
    if shape not in BOX_SHAPES or cfg.infer.mask_shape.get(dataset) != "choose_on_val" or not others:
        return
    limit = cfg.infer.boxes_switching_limit
    pixels = choice.predict.recipe.shaped("pixels", 0.0)
    recipes = {
        shape: choice.predict.recipe,
        "pixels": replace(pixels, threshold=result["mask_shape_val"]["pixels"]["threshold"]),
    }
    measured: dict = {}
    for other in others:
        theirs = chosen[other]
        val = theirs.splits["val"]
        own = [lit_fraction(theirs.predict.recipe.mask(p) > 0) for probs in theirs.val_probs.values() for p in probs]
        probs = [p for prompt in prompts for p in theirs.predict(val, prompt)]
        lit = {s: float(np.mean([lit_fraction(r.mask(p) > 0) for p in probs])) for s, r in recipes.items()}
        measured[other] = {"own_prompts_lit": float(np.mean(own)), **{f"{s}_lit": v for s, v in lit.items()}}

    def breaks(name: str) -> bool:
        return any(m[f"{name}_lit"] >= limit * m["own_prompts_lit"] for m in measured.values())

    dropped = breaks(shape) and not breaks("pixels")
    result["mask_shape_switching_val"] = {"limit": limit, "shape": shape, "dropped": dropped, "on": measured}
    if dropped:
        result["threshold"] = recipes["pixels"].threshold
        result["mask_shape"] = "pixels"
        result["recipe"] = {**result["recipe"], **recipes["pixels"].to_dict()}
        choice.predict.recipe = Recipe.from_dict(result["recipe"])


def score_prompts(
    predict: _Predictor,
    data: SplitData,
    prompts: list[str],
    threshold: float,
    cfg: EvalConfig,
    thin: bool,
    given_probs: dict,
    write_to: Path | None,
    per_image: dict | None = None,
) -> tuple[dict, list[float], dict]:
    """Per prompt: the masks' scores (and against the true masks where there are some), the lit fractions of
    every mask; masks written under ``write_to`` as ``<stem>__<prompt>.png`` when given; ``per_image`` (a
    dict) receives each prompt's :func:`image_scores`."""
    per_prompt, in_lit, vs_true = {}, [], {}
    for prompt in prompts:
        probs = given_probs[prompt] if prompt in given_probs else predict(data, prompt)
        masks = _post(probs, threshold, predict.recipe)
        each: dict = {}
        per_prompt[prompt] = cfg.score(masks, data.truths, thin, per_image=each)
        if per_image is not None:
            per_image[prompt] = each
        if data.true_masks is not None:
            vs_true[prompt] = cfg.score(masks, data.true_masks, thin)
        in_lit += [lit_fraction(m > 0) for m in masks]
        if write_to is not None:
            _write_masks(write_to, data.stems, prompt, masks)
    return per_prompt, in_lit, vs_true


def prompt_switching(predict: _Predictor, data: SplitData, prompt_recipes: dict[str, Recipe]):
    """Mean fraction of pixels lit over the images of ``data`` with prompts that should light nothing, each masked
    with its recipe (threshold, open/close, boxes) in ``prompt_recipes`` (NaN if none)."""
    lit = [
        lit_fraction(recipe.mask(prob) > 0)
        for prompt, recipe in prompt_recipes.items()
        for prob in predict(data, prompt)
    ]
    return float(np.mean(lit)) if lit else float("nan")


def _passes(split: str, prompts, other_prompts, dataset: str, cfg: EvalConfig) -> int:
    """How many times :func:`evaluate_dataset` predicts every image of ``split`` (for its progress bar)."""
    ev, ensemble = cfg.eval, cfg.infer.prompt_ensemble
    n = len(prompts) + len(other_prompts) + len(ev.unrelated_prompts) + len(ev.paraphrases.get(dataset, ()))
    if split == "test":
        return n + (1 if ensemble else 0)
    if ev.measure_inference_options:
        n += 2 * (len(prompts) + 1) + len(prompts)
    return n + (2 if ensemble else 0)


def inference_options_on_val(predict, val: SplitData, prompts: list[str], cfg: EvalConfig) -> dict:
    """Best-threshold val Dice (mean over images, and over prompts where several) per inference option."""

    def best_dice(probs_by_key):
        return max(d for _, d in sweep_thresholds(probs_by_key, val.truths, cfg).values())

    options = {}
    for flip in (False, True):
        suffix = "+hflip" if flip else ""
        options[f"single_prompt{suffix}"] = best_dice({p: predict(val, p, hflip=flip, tiled=False) for p in prompts})
        options[f"ensemble{suffix}"] = best_dice({"ensemble": predict(val, list(prompts), hflip=flip, tiled=False)})
    options["single_prompt+tiled"] = best_dice({p: predict(val, p, hflip=False, tiled=True) for p in prompts})
    return {k: round(float(v), 6) for k, v in options.items()}


def evaluate_rung(
    segmenter: Segmenter,
    processed_root: Path,
    prompts: dict[str, list[str]],
    cfg: EvalConfig,
    predictions_dir: Path | None = None,
    per_image: list[dict] | None = None,
) -> tuple[dict, dict]:
    """Scores for every dataset plus an "overall" block, and the sweeps {dataset: {t: (miou, dice)}}.

    ``per_image`` (a list) receives the per-image rows of every dataset (:func:`write_per_image_csv` writes them).

    Each split is scored with ten or so prompts: load the segmenter with an encoding cache
    (``load_segmenter(..., cache_bytes=...)``) so each image is encoded once."""
    others = {d: [p for name, ps in prompts.items() if name != d for p in ps] for d in prompts}
    # 1. every dataset's recipe, chosen on its own val split, so that every prompt below is masked with its own;
    # in reverse, so that the first dataset's val encodings are still cached when step 2 scores it (only the
    # other datasets' val splits are encoded twice)
    held: list = [None]  # the split whose encodings the segmenter holds
    chosen = {
        d: choose_dataset_recipe(segmenter, processed_root, d, prompts[d], others[d], cfg, held)
        for d in reversed(prompts)
    }
    for dataset in prompts:  # 1b. boxes that would break prompt switching on val are not kept
        keep_switching_on_val(chosen, dataset, prompts[dataset], cfg)
    recipe_of = {p: chosen[d].predict.recipe for d, ps in prompts.items() for p in ps}
    # 2. scores, prompt switching with the other datasets' prompts under their own recipes
    results, sweeps = {}, {}
    for dataset, dataset_prompts in prompts.items():
        results[dataset], sweeps[dataset] = score_dataset(
            chosen[dataset],
            dataset,
            dataset_prompts,
            {p: recipe_of[p] for p in others[dataset]},
            cfg,
            predictions_dir,
            per_image,
        )
    overall = {}
    for split in ("val", "test"):
        present = [r[split] for r in results.values() if split in r]
        if present:
            overall[f"{split}_miou"] = float(np.mean([r["all_prompts"]["miou"] for r in present]))
            overall[f"{split}_dice"] = float(np.mean([r["all_prompts"]["dice"] for r in present]))
            overall[f"{split}_cross_prompt_lit"] = float(np.mean([r["cross_prompt_lit"] for r in present]))
    without_test = [d for d, r in results.items() if r.get("reported_split") == "val"]
    if without_test:  # the test averages cover the other datasets only
        overall["test_averages_exclude"] = ", ".join(without_test) + f" ({NO_TEST_SPLIT_NOTE}; see its val block)"
    results["overall"] = overall
    return results, sweeps


def write_sweep_csv(path: Path, sweeps: dict) -> None:
    """One row per threshold: <dataset>_val_miou and <dataset>_val_dice columns (a DVC plot)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    thresholds = sorted({t for s in sweeps.values() for t in s})
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["threshold"] + [f"{d}_val_{m}" for d in sweeps for m in ("miou", "dice")])
        for t in thresholds:
            writer.writerow([t] + [round(sweeps[d][t][k], 6) for d in sweeps for k in (0, 1)])


# --------------------------------------------------------------------------- a rung with nothing to score
def skipped_reason(model_dir: Path) -> str | None:
    """The reason a training stage skipped this rung (``promptseg.json: summary.skipped``), else None."""
    card_path = Path(model_dir) / MODEL_CARD
    if not card_path.exists():
        return None
    return json.loads(card_path.read_text()).get("summary", {}).get("skipped")


def write_skipped_outputs(rung: str, reason: str, metrics_dir: Path, predictions_dir: Path, datasets) -> None:
    """The evaluate stage's outputs for a skipped rung: the reason, no numbers, and figures that say so."""
    metrics_dir.mkdir(parents=True, exist_ok=True)
    write_json(eval_json(rung, metrics_dir), {"skipped": reason})
    write_sweep_csv(sweep_csv(rung, metrics_dir), {})
    write_per_image_csv(per_image_csv(rung, metrics_dir), [])
    predictions_dir.mkdir(parents=True, exist_ok=True)
    (predictions_dir / "SKIPPED.txt").write_text(reason + "\n")
    for dataset in datasets:
        message_figure(f"{rung} / {dataset}: skipped\n{reason}", figure_png(rung, dataset, metrics_dir))
        message_figure(
            f"{rung} / {dataset}: skipped, no worst-image gallery\n{reason}",
            worst_png(rung, dataset, metrics_dir),
        )
