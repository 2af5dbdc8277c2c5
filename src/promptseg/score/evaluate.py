"""Score a trained rung: threshold chosen on val, every image scored with EVERY prompt of its dataset.

Per dataset:
1. val probabilities for each prompt -> one-pass threshold sweep (raw ``probs > t``, before morphology)
   -> the threshold with the best mean per-image Dice over val images x prompts. Test is never used.
2. val and test masks at that threshold (+ open/close) -> per prompt: mIoU and mean Dice over images
   (both-empty image scores 1.0), micro IoU/Dice from summed counts, and for cracks boundary F1
   (2 px) and clDice. Masks are written to ``<predictions>/<dataset>/<split>/<stem>__<prompt>.png``.
3. Prompt switching: the same images with every prompt of the OTHER dataset should light nothing;
   ``cross_prompt_lit`` is the mean fraction of pixels lit (lower is better), next to ``in_prompt_lit``.
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
6. Where the export has TRUE object masks (the synthetic drywall export's tape bands, beside the box
   labels), the same masks are also scored against them (``vs_true_masks``).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from promptseg.images import list_split, read_rgb
from promptseg.infer.native import predict_probabilities_native, supports_native_resolution
from promptseg.infer.recipe import recipe_from_eval_config
from promptseg.infer.tiling import predict_probabilities_tiled
from promptseg.infer.torch_engine import EncodingCache, TrainedModel, postprocess_probabilities, predict_probabilities
from promptseg.metrics import (
    boundary_f1,
    choose_threshold,
    cl_dice,
    confusion_counts,
    iou_dice_from_counts,
    lit_fraction,
    threshold_sweep_counts,
)
from promptseg.params import MISSING_TEST_POLICIES, NO_TEST_SPLIT_NOTE, THIN_STRUCTURE_DATASETS  # noqa: F401 (re-exported)
from promptseg.paths import (  # noqa: F401 (prompt_slug re-exported)
    eval_json,
    figure_png,
    mask_name,
    per_image_csv,
    prompt_slug,
    sweep_csv,
    worst_png,
)
from promptseg.settings import EvalSettings, InferSettings, evaluate_settings


@dataclass(frozen=True)
class EvalConfig:
    """What evaluation reads, from ``params.yaml: infer`` and ``eval`` (:meth:`from_settings`); no defaults here."""

    thresholds: list[float]
    morphology: bool
    kernel_size: int
    batch_size: int
    boundary_tolerance_px: int
    empty_score: float
    figure_images: int
    unrelated_prompts: list[str]
    paraphrases: dict[str, list[str]]
    hflip_tta: bool  # average the logits of the image and its mirror (every prediction)
    prompt_ensemble: bool  # also score the logit average over the dataset's prompts ("ensemble")
    tiled: dict[str, bool]  # dataset -> sliding-window inference (promptseg.infer.tiling)
    tile_upscale: float
    tile_overlap: float
    measure_inference_options: bool  # options_val (extra val passes)
    native_resolution: dict[str, bool]  # dataset -> U-Net on the whole photo at its own size (promptseg.infer.native)
    missing_test_split: str  # a dataset without test: report_val | error (module docstring, 5.)
    worst_images: int  # the k lowest-Dice images of the reported split per dataset in a gallery (worst_images_figure)

    @classmethod
    def from_settings(cls, infer: InferSettings, ev: EvalSettings) -> EvalConfig:
        return cls(
            thresholds=list(infer.threshold_grid),
            morphology=infer.morphology.enabled,
            kernel_size=infer.morphology.kernel,
            batch_size=infer.batch_size,
            boundary_tolerance_px=ev.boundary_tolerance_px,
            empty_score=ev.empty_score,
            figure_images=ev.figure_images,
            unrelated_prompts=list(ev.unrelated_prompts),
            paraphrases={d: list(p) for d, p in ev.paraphrases.items()},
            hflip_tta=infer.hflip_tta,
            prompt_ensemble=infer.prompt_ensemble,
            tiled=dict(infer.tiled),
            tile_upscale=infer.tiling.upscale,
            tile_overlap=infer.tiling.overlap,
            measure_inference_options=ev.measure_inference_options,
            native_resolution=dict(infer.native_resolution),
            missing_test_split=ev.missing_test_split,
            worst_images=ev.worst_images,
        )

    @classmethod
    def for_scoring(cls, *, empty_score: float, boundary_tolerance_px: int) -> EvalConfig:
        """Only what :func:`score_masks` reads (the report's no-learning baselines); nothing is predicted."""
        return cls(
            thresholds=[],
            morphology=False,
            kernel_size=0,
            batch_size=0,
            boundary_tolerance_px=boundary_tolerance_px,
            empty_score=empty_score,
            figure_images=0,
            unrelated_prompts=[],
            paraphrases={},
            hflip_tta=False,
            prompt_ensemble=False,
            tiled={},
            tile_upscale=0.0,
            tile_overlap=0.0,
            measure_inference_options=False,
            native_resolution={},
            missing_test_split="report_val",
            worst_images=0,
        )


@dataclass
class SplitData:
    stems: list[str]
    images: list[np.ndarray]  # RGB uint8, own size
    truths: list[np.ndarray]  # bool, own size: the rendered labels (filled boxes for box-labelled data)
    true_masks: list[np.ndarray] | None = None  # bool: the TRUE object pixels where the export has them (synthetic)


def load_split(processed_root: Path, dataset: str, split: str) -> SplitData:
    """Images and label masks of a processed split, plus ``true_masks/<stem>.png`` when every image has one
    (the synthetic export's tape bands: used by evaluation only, never by training)."""
    pairs = list_split(processed_root, dataset, split)
    images, truths = [], []
    for image_path, mask_path in pairs:
        images.append(read_rgb(image_path))
        truths.append(cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE) > 0)
    true_paths = [
        Path(processed_root) / dataset / split / "true_masks" / f"{mask_path.stem}.png" for _, mask_path in pairs
    ]
    true_masks = None
    if pairs and all(path.exists() for path in true_paths):
        true_masks = [cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) > 0 for path in true_paths]
    return SplitData([p.stem for p, _ in pairs], images, truths, true_masks)


def per_image_dice_from_counts(counts: np.ndarray, empty_score: float) -> np.ndarray:
    """counts (..., 3) tp, fp, fn -> Dice per row, ``empty_score`` where all are zero."""
    return iou_dice_from_counts(counts, empty_score)[1]


def sweep_thresholds(probs_by_prompt: dict[str, list[np.ndarray]], truths, cfg: EvalConfig):
    """Mean per-image IoU and Dice at every threshold over images x prompts; one pass per map."""
    counts = np.stack(
        [
            threshold_sweep_counts(p, t, cfg.thresholds)
            for probs in probs_by_prompt.values()
            for p, t in zip(probs, truths)
        ]
    )  # (N, T, 3)
    iou, dice = (scores.mean(axis=0) for scores in iou_dice_from_counts(counts, cfg.empty_score))
    return {t: (float(i), float(d)) for t, i, d in zip(cfg.thresholds, iou, dice)}


def image_scores(masks, truths, cfg: EvalConfig, thin: bool) -> dict[str, np.ndarray]:
    """Per image: ``counts`` (tp, fp, fn), ``iou``, ``dice``, ``pred_share`` and ``true_share`` (foreground
    fractions), and for thin structures ``boundary_f1`` and ``cl_dice``: what :func:`score_masks` averages."""
    bf1, cld, counts, pred_share, true_share = [], [], [], [], []
    for mask, truth in zip(masks, truths):
        pred = mask > 0
        counts.append(confusion_counts(pred, truth))
        pred_share.append(lit_fraction(pred))
        true_share.append(lit_fraction(truth))
        if thin:
            bf1.append(boundary_f1(pred, truth, tolerance_px=cfg.boundary_tolerance_px))
            cld.append(cl_dice(pred, truth))
    counts = np.array(counts, dtype=np.int64).reshape(-1, 3)  # (images, 3): tp, fp, fn, counted once
    ious, dices = iou_dice_from_counts(counts, cfg.empty_score)
    scores = {
        "counts": counts,
        "iou": np.asarray(ious, dtype=float),
        "dice": np.asarray(dices, dtype=float),
        "pred_share": np.array(pred_share, dtype=float),
        "true_share": np.array(true_share, dtype=float),
    }
    if thin:
        scores["boundary_f1"] = np.array(bf1, dtype=float)
        scores["cl_dice"] = np.array(cld, dtype=float)
    return scores


def score_masks(masks, truths, cfg: EvalConfig, thin: bool, per_image: dict | None = None) -> dict:
    """Per-image mean IoU/Dice (+ boundary F1, clDice for thin structures) and micro IoU/Dice.

    ``per_image`` (a dict) receives :func:`image_scores`, the numbers the means are made of."""
    each = image_scores(masks, truths, cfg, thin)
    if per_image is not None:
        per_image.update(each)
    micro_iou, micro_dice = iou_dice_from_counts(each["counts"].sum(axis=0), cfg.empty_score)
    scores = {
        "miou": float(np.mean(each["iou"])),
        "dice": float(np.mean(each["dice"])),
        "micro_iou": float(micro_iou),
        "micro_dice": float(micro_dice),
        "images": len(masks),
    }
    if thin:
        scores["boundary_f1"] = float(np.mean(each["boundary_f1"]))
        scores["cl_dice"] = float(np.mean(each["cl_dice"]))
    return scores


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


def eval_config_from_params(params: dict) -> EvalConfig:
    """The evaluation settings from ``params.yaml``'s ``infer`` and ``eval`` sections (validated)."""
    settings = evaluate_settings(params)
    return EvalConfig.from_settings(settings.infer, settings.eval)


class _Predictor:
    """Probabilities for every image of a split with one prompt, the way ``cfg`` says for ``dataset``
    (native resolution, tiled, or the plain resized forward), advancing the split's progress bar."""

    def __init__(self, trained: TrainedModel, dataset: str, cfg: EvalConfig):
        self.trained, self.dataset, self.cfg = trained, dataset, cfg
        self.bars: dict[int, tqdm] = {}  # id(split data) -> its progress bar (images done over every prompt pass)

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
        """``prompt``: a string, or a list (the ensemble); ``hflip``/``tiled`` default to ``cfg``'s choice."""
        cfg, trained = self.cfg, self.trained
        hflip = cfg.hflip_tta if hflip is None else hflip
        tiled = cfg.tiled.get(self.dataset, False) if tiled is None else tiled
        bar = self.bars.get(id(data))
        if bar is not None:
            bar.set_postfix_str(
                ("ensemble" if isinstance(prompt, list) else repr(prompt))
                + (" +hflip" if hflip else "")
                + (" tiled" if tiled else "")
            )
        prompts = [prompt] * len(data.images)
        if cfg.native_resolution.get(self.dataset, False) and supports_native_resolution(trained):  # before tiling
            probs = predict_probabilities_native(
                trained, data.images, prompts, batch_size=cfg.batch_size, hflip_tta=hflip
            )
        elif tiled:
            probs = predict_probabilities_tiled(
                trained,
                data.images,
                prompts,
                upscale=cfg.tile_upscale,
                overlap=cfg.tile_overlap,
                batch_size=cfg.batch_size,
                hflip_tta=hflip,
            )
        else:
            probs = predict_probabilities(trained, data.images, prompts, batch_size=cfg.batch_size, hflip_tta=hflip)
        if bar is not None:
            bar.update(len(data.images))
        return probs


def _post(probs, threshold: float, cfg: EvalConfig) -> list[np.ndarray]:
    return [
        postprocess_probabilities(p, threshold, morphology=cfg.morphology, kernel_size=cfg.kernel_size) for p in probs
    ]


def _load_eval_splits(processed_root: Path, dataset: str, cfg: EvalConfig) -> dict[str, SplitData]:
    """val and test (those with images); no val, or no test under ``eval.missing_test_split: error``, raise."""
    splits = {split: load_split(processed_root, dataset, split) for split in ("val", "test")}
    splits = {s: d for s, d in splits.items() if d.images}
    if "val" not in splits:
        raise ValueError(
            f"{dataset}: no validation images under {processed_root}/{dataset}/val; "
            "the threshold must be chosen on validation."
        )
    if "test" not in splits and cfg.missing_test_split == "error":
        raise ValueError(
            f"{dataset}: no test images under {processed_root}/{dataset}/test (the export has no test "
            f"split). Fix: set data.{dataset}.split: grouped to set a test split aside, or "
            "eval.missing_test_split: report_val to report val, labelled as optimistic."
        )
    return splits


def evaluate_dataset(
    trained: TrainedModel,
    processed_root: Path,
    dataset: str,
    prompts: list[str],
    other_prompts: list[str],
    cfg: EvalConfig,
    predictions_dir: Path | None,
    per_image: list[dict] | None = None,
) -> tuple[dict, dict]:
    """Scores of one dataset (see the module docstring) and its threshold sweep {t: (miou, dice)}.

    ``per_image`` (a list) receives one row per (split, image, prompt) (:func:`per_image_rows`)."""
    thin = dataset in THIN_STRUCTURE_DATASETS
    splits = _load_eval_splits(processed_root, dataset, cfg)
    predict = _Predictor(trained, dataset, cfg)
    predict.open_bars(splits, prompts, other_prompts)
    result, sweep, val_probs = choose_threshold_on_val(predict, splits, dataset, prompts, cfg, trained)
    threshold = result["threshold"]
    for split, data in splits.items():
        given = val_probs if split == "val" else {}  # val's probabilities are already there
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
            "cross_prompt_lit": prompt_switching(predict, data, other_prompts, threshold, cfg),
        }
        if vs_true:  # the same masks against the true object pixels (e.g. the tape band inside each box)
            entry["vs_true_masks"] = {"prompts": vs_true, "all_prompts": _mean_of(list(vs_true.values()))}
        if cfg.prompt_ensemble:
            entry["ensemble"] = score_masks(
                _post(predict(data, list(prompts)), result["ensemble_threshold"], cfg), data.truths, cfg, thin
            )
        if cfg.unrelated_prompts:
            entry["unrelated_prompt_lit"] = prompt_switching(predict, data, cfg.unrelated_prompts, threshold, cfg)
        paraphrases = cfg.paraphrases.get(dataset, [])
        if paraphrases:
            entry["paraphrases"] = {
                p: score_masks(_post(predict(data, p), threshold, cfg), data.truths, cfg, thin) for p in paraphrases
            }
        result[split] = entry
    predict.close_bars()
    return result, sweep


def choose_threshold_on_val(
    predict: _Predictor, splits: dict[str, SplitData], dataset: str, prompts: list[str], cfg: EvalConfig, trained
) -> tuple[dict, dict, dict]:
    """The threshold with the best mean val Dice (and the ensemble's), the reported split, the options measured
    on val and the recipe: (result so far, the val sweep, val probabilities per prompt)."""
    val = splits["val"]
    val_probs = {prompt: predict(val, prompt) for prompt in prompts}
    sweep = sweep_thresholds(val_probs, val.truths, cfg)
    threshold = choose_threshold({t: dice for t, (_, dice) in sweep.items()})
    result: dict = {"threshold": threshold, "threshold_chosen_on": "val"}
    if "test" in splits:
        result["reported_split"] = "test"
    else:  # eval.missing_test_split: report_val
        result.update(reported_split="val", reported_split_note=NO_TEST_SPLIT_NOTE)
    if cfg.measure_inference_options:
        result["options_val"] = inference_options_on_val(predict, val, prompts, cfg)
    if cfg.prompt_ensemble:
        ensemble_sweep = sweep_thresholds({"ensemble": predict(val, list(prompts))}, val.truths, cfg)
        result["ensemble_threshold"] = choose_threshold({t: dice for t, (_, dice) in ensemble_sweep.items()})
    result["recipe"] = recipe_from_eval_config(
        cfg, dataset, threshold, result.get("ensemble_threshold"), precision=getattr(trained, "precision", "fp32")
    )
    return result, sweep, val_probs


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
        masks = _post(probs, threshold, cfg)
        each: dict = {}
        per_prompt[prompt] = score_masks(masks, data.truths, cfg, thin, per_image=each)
        if per_image is not None:
            per_image[prompt] = each
        if data.true_masks is not None:
            vs_true[prompt] = score_masks(masks, data.true_masks, cfg, thin)
        in_lit += [lit_fraction(m > 0) for m in masks]
        if write_to is not None:
            _write_masks(write_to, data.stems, prompt, masks)
    return per_prompt, in_lit, vs_true


def prompt_switching(predict: _Predictor, data: SplitData, prompts: list[str], threshold: float, cfg: EvalConfig):
    """Mean fraction of pixels lit over the images of ``data`` with prompts that should light nothing (NaN if none)."""
    lit = [lit_fraction(m > 0) for prompt in prompts for m in _post(predict(data, prompt), threshold, cfg)]
    return float(np.mean(lit)) if lit else float("nan")


def _passes(split: str, prompts, other_prompts, dataset: str, cfg: EvalConfig) -> int:
    """How many times :func:`evaluate_dataset` predicts every image of ``split`` (for its progress bar)."""
    n = len(prompts) + len(other_prompts) + len(cfg.unrelated_prompts) + len(cfg.paraphrases.get(dataset, []))
    if split == "test":
        return n + (1 if cfg.prompt_ensemble else 0)
    if cfg.measure_inference_options:
        n += 2 * (len(prompts) + 1) + len(prompts)
    return n + (2 if cfg.prompt_ensemble else 0)


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
    trained: TrainedModel,
    processed_root: Path,
    prompts: dict[str, list[str]],
    cfg: EvalConfig,
    predictions_dir: Path | None = None,
    encoding_cache_bytes: int = 512 * 2**20,
    per_image: list[dict] | None = None,
) -> tuple[dict, dict]:
    """Scores for every dataset plus an "overall" block, and the sweeps {dataset: {t: (miou, dice)}}.

    ``per_image`` (a list) receives the per-image rows of every dataset (:func:`write_per_image_csv` writes them).

    Each split is scored with ten or so prompts, so the images' encodings are cached
    (``promptseg.infer.torch_engine.EncodingCache``, at most ``encoding_cache_bytes``; 0 turns it off)."""
    trained.encodings = EncodingCache(max_bytes=encoding_cache_bytes)
    results, sweeps = {}, {}
    for dataset, dataset_prompts in prompts.items():
        others = [p for name, ps in prompts.items() if name != dataset for p in ps]
        results[dataset], sweeps[dataset] = evaluate_dataset(
            trained, processed_root, dataset, dataset_prompts, others, cfg, predictions_dir, per_image
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


def qualitative_figure(
    trained: TrainedModel,
    processed_root: Path,
    dataset: str,
    prompt: str,
    threshold: float,
    cfg: EvalConfig,
    out_path: Path,
    split: str = "test",
    note: str | None = None,
) -> None:
    """image | ground truth | heatmap | binary mask for the first ``cfg.figure_images`` images of a split.

    The title names the split and ``note`` (e.g. :data:`NO_TEST_SPLIT_NOTE` when val stands in for test). A split
    with no images (or ``figure_images: 0``) still gets a figure, one that says so: the file is a declared output."""
    data = load_split(processed_root, dataset, split)
    n = min(cfg.figure_images, len(data.images))
    heading = f"{dataset}, {split} split" + (f" ({note})" if note else "")
    if n == 0:
        _message_figure(
            f"{heading}: no images to show ({len(data.images)} in the split, eval.figure_images: {cfg.figure_images})",
            out_path,
        )
        return
    probs = predict_probabilities(trained, data.images[:n], [prompt] * n, batch_size=cfg.batch_size)
    rows = []
    for image, truth, prob in zip(data.images, data.truths, probs):
        mask = postprocess_probabilities(prob, threshold, morphology=cfg.morphology, kernel_size=cfg.kernel_size)
        rows.append(
            [
                (image, "image", None),
                (truth, "ground truth", "gray"),
                (prob, f"heatmap: {prompt!r}", "magma"),
                (mask, f"mask (t={threshold:g})", "gray"),
            ]
        )
    _panel_figure(rows, data.stems, heading, out_path, highlight=bool(note))


def _message_figure(text: str, out_path: Path) -> None:
    """A small figure that only says ``text`` (a declared figure with nothing to show)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(6, 1.2))
    fig.text(0.02, 0.5, text, fontsize=7, va="center", wrap=True)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=80)
    plt.close(fig)


def _panel_figure(rows, row_labels, heading: str, out_path: Path, highlight: bool = False, titles_every_row=False):
    """One figure row per entry of ``rows``, each a list of (array, title, cmap) panels; ``row_labels`` beside
    each row; ``heading`` on top (dark red when ``highlight``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(3 * cols, 3 * len(rows)), squeeze=False)
    for row, (panels, label) in enumerate(zip(rows, row_labels)):
        for col, (panel, title, cmap) in enumerate(panels):
            axes[row, col].imshow(panel, cmap=cmap, vmin=0 if cmap else None, vmax=(1 if cmap == "magma" else None))
            axes[row, col].set_title(title if (row == 0 or titles_every_row) else "", fontsize=9)
            axes[row, col].axis("off")
        axes[row, 0].set_ylabel(str(label)[:24], fontsize=7)
    fig.suptitle(heading, fontsize=10, color="darkred" if highlight else "black")
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=80)
    plt.close(fig)


def worst_images(rows: list[dict], dataset: str, split: str, prompt: str, k: int) -> list[dict]:
    """The ``k`` per-image rows (:func:`per_image_rows`) of ``dataset``/``split``/``prompt`` with the lowest Dice
    (ties: the lower IoU, then the stem)."""
    mine = [r for r in rows if r["dataset"] == dataset and r["split"] == split and r["prompt"] == prompt]
    return sorted(mine, key=lambda r: (float(r["dice"]), float(r["iou"]), r["stem"]))[: max(int(k), 0)]


def worst_images_figure(
    processed_root: Path,
    dataset: str,
    split: str,
    prompt: str,
    rows: list[dict],
    masks_dir: Path,
    k: int,
    out_path: Path,
    note: str | None = None,
) -> list[str]:
    """image | ground truth | prediction for the ``k`` lowest-Dice images of ``split`` with ``prompt``, each row
    titled with the image's Dice and IoU. The predictions are the masks evaluation scored and wrote
    (``masks_dir/<stem>__<prompt slug>.png``); ``rows`` are its per-image rows. With nothing to show (no rows,
    ``k`` 0) the figure says why. Returns the stems shown, worst first."""
    worst = worst_images(rows, dataset, split, prompt, k)
    heading = f"{dataset}, {split} split: the {len(worst)} lowest-Dice images with {prompt!r}" + (
        f" ({note})" if note else ""
    )
    if not worst:
        scored = sum(1 for r in rows if r["dataset"] == dataset and r["split"] == split)
        _message_figure(
            f"{dataset}, {split} split: no worst-image gallery ({scored} per-image scores for this split, "
            f"eval.worst_images: {k})",
            out_path,
        )
        return []
    data = load_split(processed_root, dataset, split)
    index = {stem: i for i, stem in enumerate(data.stems)}
    panel_rows = []
    for r in worst:
        i = index[r["stem"]]
        mask_path = Path(masks_dir) / f"{r['stem']}__{prompt_slug(prompt)}.png"
        mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise FileNotFoundError(f"{mask_path}: the scored mask is missing; rerun the evaluation that wrote it")
        panel_rows.append(
            [
                (data.images[i], f"Dice {float(r['dice']):.3f}, IoU {float(r['iou']):.3f}\n{r['stem'][:30]}", None),
                (data.truths[i], "ground truth", "gray"),
                (mask, "prediction", "gray"),
            ]
        )
    _panel_figure(
        panel_rows, [r["stem"] for r in worst], heading, out_path, highlight=bool(note), titles_every_row=True
    )
    return [r["stem"] for r in worst]


# --------------------------------------------------------------------------- a rung with nothing to score
def skipped_reason(model_dir: Path) -> str | None:
    """The reason a training stage skipped this rung (``promptseg.json: summary.skipped``), else None."""
    import json

    card_path = Path(model_dir) / "promptseg.json"
    if not card_path.exists():
        return None
    return json.loads(card_path.read_text()).get("summary", {}).get("skipped")


def write_skipped_outputs(rung: str, reason: str, metrics_dir: Path, predictions_dir: Path, datasets) -> None:
    """The evaluate stage's outputs for a skipped rung: the reason, no numbers, and figures that say so."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics_dir.mkdir(parents=True, exist_ok=True)
    eval_json(rung, metrics_dir).write_text(json.dumps({"skipped": reason}, indent=2) + "\n")
    write_sweep_csv(sweep_csv(rung, metrics_dir), {})
    write_per_image_csv(per_image_csv(rung, metrics_dir), [])
    predictions_dir.mkdir(parents=True, exist_ok=True)
    (predictions_dir / "SKIPPED.txt").write_text(reason + "\n")
    for dataset in datasets:
        fig = plt.figure(figsize=(6, 1.2))
        fig.text(0.02, 0.5, f"{rung} / {dataset}: skipped\n{reason}", fontsize=7, va="center", wrap=True)
        path = figure_png(rung, dataset, metrics_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=80)
        plt.close(fig)
        _message_figure(
            f"{rung} / {dataset}: skipped, no worst-image gallery\n{reason}",
            worst_png(rung, dataset, metrics_dir),
        )
