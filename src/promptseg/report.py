"""``metrics/report.md`` from the metrics files alone (no model), plus no-learning masks scored on the same images.

Inputs (all small JSON files written by earlier stages):

- ``metrics/data/<dataset>.json``: per split counts (images, with/without foreground, mean foreground
  fraction) and the counters of what the mask stage skipped or repaired;
- ``metrics/train/<variant>.json``: method, architecture, trainable/total parameters, seconds per epoch
  (or ``{"variant", "method", "skipped": reason}`` for a rung that was skipped);
- ``metrics/eval/<variant>.json``: per dataset the threshold chosen on val, the inference options measured on
  val (``options_val``), and per split per-prompt scores, prompt-switching lit fractions and paraphrase
  scores (see :mod:`promptseg.evaluate`); ``{"skipped": reason}`` for a skipped rung.

The no-learning baselines ("all zeros", "all ones" and, for thin structures, "darkest 5%": each image's
darkest pixels, then the models' open/close) are scored with :func:`promptseg.evaluate.score_masks` on the
processed ground truth of the same split, so a model's figures can be read against masks that need no model.

The report's core is one "ladder" table per dataset: the baselines first, then every rung of
``train.variants`` in params order.

Everything is GitHub-flavoured markdown (tables padded so they read in a terminal too), numbers to 3 decimals.
A file that is missing (a variant not yet evaluated) gives one line saying so, never an exception.

A dataset whose export has no test split (``eval.missing_test_split: report_val``; the official drywall exports)
is reported on val in every table, and the header, the table titles and the notes say so:
"no test split: threshold chosen on the same images, optimistic".
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import cv2
import numpy as np

from promptseg.data import list_split, read_rgb
from promptseg.evaluate import NO_TEST_SPLIT_NOTE, THIN_STRUCTURE_DATASETS, EvalConfig, score_masks
from promptseg.inference import postprocess_probabilities
from promptseg.metrics import lit_fraction
from promptseg.params import DATASETS

__all__ = ["trivial_baseline_scores", "darkest_pixels_mask", "darkest_name", "build_report", "write_report",
           "QUIRK_IGNORED_KEYS"]

ZEROSHOT = "zeroshot"
BASELINE_NAMES = ("all zeros", "all ones")  # the prompt-blind constant masks; "darkest N%" joins them for cracks
DEFAULT_DARKEST_SHARE = 0.05

# Counters in metrics/data/<dataset>.json that describe the data rather than something skipped or repaired.
QUIRK_IGNORED_KEYS = frozenset({
    "images", "images_listed", "with_foreground", "without_foreground", "mean_foreground_fraction",
    "images_without_labels", "annotations", "polygons", "multipart_polygons", "rle", "boxes",
    "unused_categories",  # Roboflow's supercategory entry: describes the export, nothing was skipped
})

MISSING = "n/a"
NONE = "\u2014"      # an em dash: a cell that has no meaning for this row (a baseline's parameters)
SKIPPED = "skipped"
INFER_OPTIONS = (("single prompt", "single_prompt"), ("prompt ensemble", "ensemble"),
                 ("single prompt + hflip", "single_prompt+hflip"), ("prompt ensemble + hflip", "ensemble+hflip"),
                 ("single prompt, tiled", "single_prompt+tiled"))


# --------------------------------------------------------------------------- no-learning baselines
def darkest_name(share: float) -> str:
    """``0.05`` -> ``"darkest 5%"``."""
    return f"darkest {float(share) * 100:g}%"


def darkest_pixels_mask(rgb: np.ndarray, share: float = DEFAULT_DARKEST_SHARE, *, morphology: bool = True,
                        kernel_size: int = 3) -> np.ndarray:
    """The "darkest pixels" guess at a crack: a {0, 255} uint8 mask of one (H, W, 3) RGB image.

    The pixels whose grayscale value (``cv2.COLOR_RGB2GRAY``) is at or below the image's ``share`` quantile
    (``np.quantile``, linear interpolation), then the models' post-processing
    (:func:`promptseg.inference.postprocess_probabilities` on a map that is 1.0 on those pixels, threshold 0.5:
    OPEN then CLOSE with a ``kernel_size`` square). Ties at the quantile are all kept, so a uniform image is lit
    everywhere.
    """
    if not 0.0 < float(share) < 1.0:
        raise ValueError(f"darkest share must lie in (0, 1), got {share}")
    gray = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    dark = (gray <= np.quantile(gray, float(share))).astype(np.float32)
    return postprocess_probabilities(dark, 0.5, morphology=morphology, kernel_size=kernel_size)


def _with_lit(scores: dict, masks: list[np.ndarray]) -> dict:
    """``lit``: the mean share of pixels a prompt-blind mask lights (with any prompt: its cross-prompt lit)."""
    return {**scores, "lit": float(np.mean([lit_fraction(m > 0) for m in masks]))}


def trivial_baseline_scores(processed_root: Path, dataset: str, split: str, *, empty_score: float = 1.0,
                            boundary_tolerance_px: int = 2, darkest_share: float | None = DEFAULT_DARKEST_SHARE,
                            morphology: bool = True, kernel_size: int = 3) -> dict:
    """Scores of masks that need no learning on every image of one processed split.

    Returns ``{"all zeros": scores, "all ones": scores}`` and, for thin-structure datasets (cracks) when
    ``darkest_share`` is not None, ``{darkest_name(darkest_share): scores}`` (:func:`darkest_pixels_mask` with
    ``morphology`` / ``kernel_size``, the ``infer.morphology`` the models use). ``scores`` is what
    :func:`promptseg.evaluate.score_masks` gives (``miou``, ``dice``, ``micro_iou``, ``micro_dice``, ``images``;
    for thin-structure datasets also ``boundary_f1`` and ``cl_dice``), with the same empty-mask rule (an image
    whose ground truth and prediction are both empty scores ``empty_score``), plus ``lit``, the mean share of
    pixels lit. Returns ``{}`` when the split has no images. Images are read only for the darkest baseline.
    """
    pairs = list_split(Path(processed_root), dataset, split)
    truths = []
    for _, mask_path in pairs:
        mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise ValueError(f"{mask_path}: mask missing or unreadable; rerun `dvc repro masks@{dataset}`.")
        truths.append(mask > 0)
    if not truths:
        return {}
    cfg = EvalConfig(thresholds=[], empty_score=float(empty_score), boundary_tolerance_px=int(boundary_tolerance_px))
    thin = dataset in THIN_STRUCTURE_DATASETS
    zeros = [np.zeros(t.shape, dtype=np.uint8) for t in truths]
    ones = [np.full(t.shape, 255, dtype=np.uint8) for t in truths]
    out = {"all zeros": _with_lit(score_masks(zeros, truths, cfg, thin), zeros),
           "all ones": _with_lit(score_masks(ones, truths, cfg, thin), ones)}
    if thin and darkest_share is not None:
        dark = []
        for (image_path, mask_path), truth in zip(pairs, truths):
            mask = darkest_pixels_mask(read_rgb(image_path), darkest_share, morphology=morphology,
                                       kernel_size=kernel_size)
            if mask.shape != truth.shape:
                raise ValueError(f"{image_path}: image is {mask.shape[1]}x{mask.shape[0]} px but its mask "
                                 f"{mask_path.name} is {truth.shape[1]}x{truth.shape[0]}; rerun `dvc repro masks@{dataset}`.")
            dark.append(mask)
        out[darkest_name(darkest_share)] = _with_lit(score_masks(dark, truths, cfg, thin), dark)
    return out


# --------------------------------------------------------------------------- formatting helpers
def _num(value: Any, digits: int = 3) -> str:
    if value is None or isinstance(value, bool):
        return MISSING
    try:
        x = float(value)
    except (TypeError, ValueError):
        return MISSING
    if math.isnan(x):
        return MISSING
    return f"{x:.{digits}f}"


def _int(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return MISSING
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):
        return MISSING


def _pct(fraction: Any) -> str:
    try:
        return _num(float(fraction) * 100.0)
    except (TypeError, ValueError):
        return MISSING


def _cell(text: Any) -> str:
    """One table cell: no newlines, pipes escaped."""
    return str(text).replace("\n", " ").replace("|", "\\|")


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: Sequence[str]) -> str:
    """A markdown table padded to equal column widths (``align``: "l" or "r" per column)."""
    body = [[_cell(c) for c in row] for row in rows]
    head = [_cell(h) for h in header]
    widths = [max([len(head[i]), 3] + [len(r[i]) for r in body]) for i in range(len(head))]

    def line(cells):
        padded = [c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(cells, widths, align)]
        return "| " + " | ".join(padded) + " |"

    rule = "| " + " | ".join(("-" * (w - 1) + ":") if a == "r" else "-" * w for w, a in zip(widths, align)) + " |"
    return "\n".join([line(head), rule, *(line(r) for r in body)])


def _get(d: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def _quirks(split_counts: dict) -> str:
    found = [(k, v) for k, v in sorted(split_counts.items())
             if k not in QUIRK_IGNORED_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool) and v]
    if not found:
        return "0"
    total = sum(v for _, v in found)
    return f"{_int(total)} (" + ", ".join(f"{k} {_int(v)}" for k, v in found) + ")"


def _source_description(model_source: str) -> str:
    if model_source == "small":
        return "`small` (a small CLIPSeg built from a config: random initial weights, trained here from scratch)"
    return f"`{model_source}` (pretrained CLIPSeg weights, fine-tuned here)"


# --------------------------------------------------------------------------- sections
def _scored_split(dataset: str, eval_metrics: dict[str, dict], scored_splits: dict[str, str] | None) -> str:
    """The split a dataset's tables report: ``scored_splits`` where given, else ``val`` when an evaluation says
    it reported val (``reported_split``: the export has no test split), else ``test``."""
    if scored_splits and dataset in scored_splits:
        return scored_splits[dataset]
    if any(_get(ev, dataset, "reported_split") == "val" for ev in eval_metrics.values()):
        return "val"
    return "test"


def _split_label(split: str) -> str:
    """``"test split"``, or ``"val split; no test split: ..., optimistic"`` for a dataset reported on val."""
    return "test split" if split == "test" else f"{split} split; {NO_TEST_SPLIT_NOTE}"


def _missing_test_lines(splits: dict[str, str]) -> list[str]:
    out = []
    for dataset, split in splits.items():
        if split != "test":
            out += [f"**{dataset}: reported on {split}, {NO_TEST_SPLIT_NOTE}.** Its export has no test split (the "
                    "official drywall exports have train and valid only, and "
                    f"`data.{dataset}.split: as_exported` keeps them), so with `eval.missing_test_split: report_val` "
                    f"every {dataset} table below scores the {split} images with the threshold chosen on those same "
                    f"images, and its no-learning baselines are scored on {split} too. These figures overstate what "
                    f"the model would reach on unseen images; `data.{dataset}.split: grouped` sets a test split "
                    "aside (whole source photos).", ""]
    return out


def _header(variants: list[str], model_source: str, datasets: Sequence[str]) -> list[str]:
    return [
        "# promptseg report",
        "",
        f"Model source: {_source_description(model_source)}. "
        f"Variants: {', '.join(f'`{v}`' for v in variants) if variants else 'none'}. "
        f"Datasets: {', '.join(datasets)}.",
        "",
        "Metric: IoU and Dice are computed per image over the whole 2-D mask, then averaged over images "
        "(mIoU, Dice); an image whose ground truth and prediction are both empty scores 1. "
        "Each variant's threshold is chosen on val only and then applied to test; "
        "every image is scored with every prompt of its dataset.",
        "",
    ]


def _data_section(data_metrics: dict[str, dict], datasets: Sequence[str]) -> list[str]:
    out = ["## Table 1: data", ""]
    rows, missing = [], []
    for dataset in datasets:
        counts = data_metrics.get(dataset)
        if not counts:
            missing.append(dataset)
            continue
        for split in ("train", "val", "test"):
            c = counts.get(split)
            if not isinstance(c, dict):
                continue
            rows.append([dataset, split, _int(c.get("images")), _int(c.get("with_foreground")),
                         _int(c.get("without_foreground")), _pct(c.get("mean_foreground_fraction")), _quirks(c)])
    if rows:
        out += [_table(["dataset", "split", "images", "with foreground", "without foreground", "mean foreground %",
                        "skipped/repaired"], rows, "llrrrrl"), ""]
    for dataset in datasets:  # what parsing met, per EXPORTED split (the rows above are the splits as written)
        export = (data_metrics.get(dataset) or {}).get("export")
        if isinstance(export, dict) and export:
            parsed = "; ".join(f"`{split}` {_quirks(c)}" for split, c in export.items() if isinstance(c, dict))
            out += [f"`{dataset}` export as parsed, per exported split, skipped/repaired: {parsed}.", ""]
    for dataset in missing:
        out += [f"No data summary for `{dataset}` (metrics/data/{dataset}.json is missing: run "
                f"`dvc repro masks@{dataset}`).", ""]
    return out


def _score_columns(dataset: str) -> list[tuple[str, str]]:
    cols = [("mIoU", "miou"), ("Dice", "dice")]
    if dataset in THIN_STRUCTURE_DATASETS:
        cols += [("boundary F1", "boundary_f1"), ("clDice", "cl_dice")]
    return cols


def _skipped(variant: str, train_metrics: dict[str, dict], eval_metrics: dict[str, dict]) -> str | None:
    """The reason a rung was skipped (``"skipped"`` in its eval or train file), else None."""
    for metrics in (eval_metrics, train_metrics):
        reason = _get(metrics.get(variant), "skipped")
        if reason:
            return str(reason)
    return None


def _baseline_rows(base: dict) -> list[tuple[str, dict]]:
    """(name, scores) of the no-learning baselines, in the order they were computed."""
    return [(name, scores) for name, scores in base.items() if isinstance(scores, dict) and scores]


def _per_prompt_section(number: int, dataset: str, variants: list[str], eval_metrics: dict[str, dict],
                        baselines: dict, boundary_tolerance_px: int | None, split: str = "test") -> list[str]:
    cols = _score_columns(dataset)
    out = [f"## Table {number}: {dataset}, {_split_label(split)}, per prompt", ""]
    rows, notes = [], []
    for variant in variants:
        ev = eval_metrics.get(variant)
        if ev is None:
            notes.append(f"Variant `{variant}`: not evaluated yet (metrics/eval/{variant}.json is missing: run "
                         f"`dvc repro evaluate@{variant}`).")
            continue
        if ev.get("skipped"):
            notes.append(f"Variant `{variant}`: skipped, no numbers (the reason is under the {dataset} ladder table).")
            continue
        block = ev.get(dataset)
        test = _get(block, split)
        if not isinstance(test, dict):
            notes.append(f"Variant `{variant}`: no {split} scores for {dataset} in metrics/eval/{variant}.json.")
            continue
        threshold = _num(block.get("threshold"))
        for prompt, scores in (test.get("prompts") or {}).items():
            rows.append([f'"{prompt}"', variant, threshold, *(_num(scores.get(k)) for _, k in cols),
                         _int(scores.get("images"))])
        mean = test.get("all_prompts") or {}
        rows.append(["mean over prompts", variant, threshold, *(_num(mean.get(k)) for _, k in cols),
                     _int(test.get("images"))])
        ensemble = test.get("ensemble")
        if isinstance(ensemble, dict):
            rows.append(["prompt ensemble", variant, _num(block.get("ensemble_threshold", block.get("threshold"))),
                         *(_num(ensemble.get(k)) for _, k in cols), _int(ensemble.get("images"))])
    base = baselines.get(dataset) or {}
    for name, scores in _baseline_rows(base):
        rows.append([f"no learning: {name}", "no model", MISSING, *(_num(scores.get(k)) for _, k in cols),
                     _int(scores.get("images"))])
    if rows:
        out += [_table(["prompt", "variant", "threshold (val)", *(c for c, _ in cols), "images"], rows,
                       "llr" + "r" * len(cols) + "r"), ""]
    if any(isinstance(_get(eval_metrics.get(v), dataset, split, "ensemble"), dict) for v in variants):
        notes.append("Prompt ensemble: the logits of every prompt of the dataset averaged, thresholded at its own "
                     "val threshold (`ensemble_threshold`).")
    if not base:
        notes.append(f"No no-learning baselines for {dataset} (no processed {split} split found).")
    if split != "test":
        notes.insert(0, f"Scored on {split}: {NO_TEST_SPLIT_NOTE}.")
    if dataset in THIN_STRUCTURE_DATASETS:
        tolerance = f"{boundary_tolerance_px} px" if boundary_tolerance_px is not None else "the evaluation tolerance"
        notes.append(f"Boundary F1: precision and recall of mask pixels lying within {tolerance} of the other mask; "
                     "clDice compares skeletons. Both suit thin cracks, where IoU punishes one-pixel offsets.")
    out += [n + "\n" for n in notes]
    return out


def _best_baseline(base: dict) -> tuple[str, float] | None:
    """(name, Dice) of the no-learning baseline with the highest mean test Dice (the first one on a tie)."""
    named = [(name, s.get("dice")) for name, s in _baseline_rows(base)
             if isinstance(s.get("dice"), (int, float)) and not math.isnan(s.get("dice"))]
    return max(named, key=lambda t: t[1]) if named else None


def _beaten_notes(dataset: str, variants: list[str], eval_metrics: dict[str, dict], base: dict,
                  split: str = "test") -> list[str]:
    """One line per variant whose mean Dice on ``split`` does not beat the best no-learning mask (at 3 decimals)."""
    best = _best_baseline(base)
    if best is None:
        return []
    best_name, best_dice = best
    notes = []
    for variant in variants:
        dice = _get(eval_metrics.get(variant), dataset, split, "all_prompts", "dice")
        if isinstance(dice, (int, float)) and not math.isnan(dice) and round(dice, 3) <= round(best_dice, 3):
            notes.append(f"Note: `{variant}` on {dataset} (mean Dice {_num(dice)}) does not beat the no-learning "
                         f"'{best_name}' mask (Dice {_num(best_dice)}).")
    return notes


def _method_cell(variant: str, tr: dict) -> str:
    method = tr.get("method") or ("zero-shot (no training)" if variant == ZEROSHOT else MISSING)
    architecture = tr.get("architecture")
    return f"{method} / {architecture}" if architecture else str(method)


def _schedule_cell(tr: dict) -> str:
    """``"<epochs> @ <image_size>"`` of a trained rung (rungs may override both), or the missing mark."""
    if tr.get("epochs") is None or tr.get("image_size") is None:
        return MISSING
    return f"{tr['epochs']} @ {tr['image_size']}"


def _ladder_section(number: int, dataset: str, variants: list[str], train_metrics: dict[str, dict],
                    eval_metrics: dict[str, dict], baselines: dict, split: str = "test") -> list[str]:
    """One dataset's ladder: the no-learning baselines, then every rung in ``variants`` (params) order."""
    cols = _score_columns(dataset)
    out = [f"## Table {number}: {dataset} ladder ({_split_label(split)}, mean over prompts)", ""]
    header = ["rung", "method / architecture", "trainable params", "total params", *(c for c, _ in cols),
              "cross-prompt lit", "unrelated-prompt lit", "epochs @ px", "s/epoch"]
    rows, notes, skipped_notes = [], [], []
    base = baselines.get(dataset) or {}
    for name, scores in _baseline_rows(base):
        lit = _num(scores.get("lit"))
        rows.append([name, "no learning", NONE, NONE, *(_num(scores.get(k)) for _, k in cols), lit, lit, NONE, NONE])
    for variant in variants:
        tr, ev = train_metrics.get(variant), eval_metrics.get(variant)
        reason = _skipped(variant, train_metrics, eval_metrics)
        if reason is not None:
            rows.append([variant, _method_cell(variant, tr or {}), *([SKIPPED] * (len(header) - 2))])
            skipped_notes.append(f"`{variant}` was skipped: {reason.rstrip('.')}.")
            continue
        if tr is None and ev is None:
            notes.append(f"Variant `{variant}`: neither trained nor evaluated yet (no metrics/train/{variant}.json "
                         f"or metrics/eval/{variant}.json).")
            continue
        if tr is None and variant != ZEROSHOT:
            notes.append(f"Variant `{variant}`: metrics/train/{variant}.json is missing (run `dvc repro train@{variant}`).")
        if ev is None:
            notes.append(f"Variant `{variant}`: not evaluated yet (metrics/eval/{variant}.json is missing).")
        elif not isinstance(_get(ev, dataset, split), dict):
            notes.append(f"Variant `{variant}`: no {split} scores for {dataset} in metrics/eval/{variant}.json.")
        tr = tr or {}
        trainable = tr.get("trainable_params")
        if variant == ZEROSHOT and trainable is None:
            trainable = 0
        test = _get(ev, dataset, split) or {}
        mean = test.get("all_prompts") or {}
        rows.append([variant, _method_cell(variant, tr), _int(trainable), _int(tr.get("total_params")),
                     *(_num(mean.get(k)) for _, k in cols), _num(test.get("cross_prompt_lit")),
                     _num(test.get("unrelated_prompt_lit")), _schedule_cell(tr), _num(tr.get("seconds_per_epoch"))])
    if rows:
        out += [_table(header, rows, "llrr" + "r" * len(cols) + "rrrr"), ""]
    best = _best_baseline(base)
    if best is not None:
        out += [f"Read every rung against the best no-learning baseline ({best[0]}, Dice {_num(best[1])}).", ""]
        notes = _beaten_notes(dataset, variants, eval_metrics, base, split) + notes
    else:
        notes.insert(0, f"No no-learning baselines for {dataset} (no processed {split} split found).")
    if split != "test":
        notes.insert(0, f"Scored on {split}: {NO_TEST_SPLIT_NOTE} (see the note at the top).")
    if base:
        notes.append("The no-learning masks ignore the prompt, so their cross- and unrelated-prompt lit is simply "
                     "the share of pixels they light with any prompt.")
    out += [n + "\n" for n in skipped_notes + notes]
    return out


def _options_section(number: int, variants: list[str], eval_metrics: dict[str, dict], datasets: Sequence[str],
                     infer_defaults: dict | None) -> list[str]:
    """Best-threshold val Dice of each inference option (``options_val``), per variant and dataset."""
    out = [f"## Table {number}: Inference options on validation", ""]
    settings = ""
    if infer_defaults:
        settings = " (now " + ", ".join(f"`{k}: {str(bool(v)).lower()}`" for k, v in infer_defaults.items()) + ")"
    out += ["Best-threshold Dice (mean over val images, and over prompts for a single prompt) of each inference "
            "option: one prompt at a time, the logit average over the dataset's prompts (prompt ensemble), and "
            "each with horizontal-flip test-time augmentation, and one prompt with sliding-window (tiled) inference at "
            "the image's own resolution. These are measured on val only (test is never used to choose), and the "
            "defaults in params.yaml `infer.hflip_tta` / `infer.prompt_ensemble`"
            f"{settings} / `infer.tiled` follow them.", ""]
    rows, notes = [], []
    for variant in variants:
        ev = eval_metrics.get(variant)
        if ev is None or ev.get("skipped"):
            continue  # the ladder tables say why
        for dataset in datasets:
            options = _get(ev, dataset, "options_val")
            if not isinstance(options, dict):
                if isinstance(ev.get(dataset), dict):
                    notes.append(f"Variant `{variant}`: no `options_val` for {dataset} in metrics/eval/{variant}.json "
                                 "(`eval.measure_inference_options` is off, or it was evaluated before the options "
                                 f"were measured: rerun `dvc repro evaluate@{variant}`).")
                continue
            known = [(label, options.get(key)) for label, key in INFER_OPTIONS
                     if isinstance(options.get(key), (int, float)) and not math.isnan(options.get(key))]
            best = max(known, key=lambda t: t[1])[0] if known else MISSING
            rows.append([variant, dataset, *(_num(options.get(key)) for _, key in INFER_OPTIONS), best])
    if rows:
        out += [_table(["variant", "dataset", *(label for label, _ in INFER_OPTIONS), "best on val"], rows,
                       "ll" + "r" * len(INFER_OPTIONS) + "l"), ""]
        out += [n + "\n" for n in notes]
    elif notes:  # no variant has them: one line, not one per variant and dataset
        out += ["Not measured in this run: `eval.measure_inference_options` is off (it adds about 40 s per rung on "
                "2 CPU cores; the paper profile turns it on). Turn it on and rerun `dvc repro` to fill this table.", ""]
    else:
        out += ["No inference-option figures yet (no variant has been evaluated).", ""]
    return out


def _switching_section(number: int, variants: list[str], eval_metrics: dict[str, dict],
                       data_metrics: dict[str, dict], datasets: Sequence[str],
                       splits: dict[str, str] | None = None) -> list[str]:
    splits = splits or {}
    on_val = [d for d in datasets if splits.get(d, "test") != "test"]
    title = "test split" + (f"; {', '.join(on_val)}: val, {NO_TEST_SPLIT_NOTE}" if on_val else "")
    out = [f"## Table {number}: prompt switching ({title})", "",
           "Fraction of pixels lit: with the dataset's own prompts (in-prompt; compare with the ground-truth "
           "foreground share), with every prompt of the OTHER dataset (cross-prompt: a model that does not "
           "switch on the prompt lights the same pixels; lower is better) and with unrelated prompts "
           "(lower is better). Paraphrase Dice: prompts never used in training, scored like the training prompts.",
           ""]
    rows, notes = [], []
    for variant in variants:
        ev = eval_metrics.get(variant)
        if ev is None:
            notes.append(f"Variant `{variant}`: not evaluated yet.")
            continue
        if ev.get("skipped"):
            notes.append(f"Variant `{variant}`: skipped (see the ladder tables).")
            continue
        for dataset in datasets:
            split = splits.get(dataset, "test")
            test = _get(ev, dataset, split)
            if not isinstance(test, dict):
                continue
            paraphrases = test.get("paraphrases") or {}
            para = "; ".join(f'"{p}" {_num(s.get("dice"))}' for p, s in paraphrases.items()) or MISSING
            gt = _get(data_metrics, dataset, split, "mean_foreground_fraction")
            rows.append([variant, dataset if split == "test" else f"{dataset} ({split})", _num(gt), _num(test.get("in_prompt_lit")),
                         _num(test.get("cross_prompt_lit")), _num(test.get("unrelated_prompt_lit")), para])
    if rows:
        out += [_table(["variant", "dataset", "ground-truth foreground", "in-prompt lit", "cross-prompt lit",
                        "unrelated-prompt lit", "paraphrase Dice"], rows, "llrrrrl"), ""]
    out += [n + "\n" for n in notes]
    return out


def _figures_section(figures: dict[str, list[str]] | None, splits: dict[str, str] | None = None) -> list[str]:
    if not figures:
        return []
    on_val = [d for d, s in (splits or {}).items() if s != "test"]
    where = "first test images" + (f"; {', '.join(on_val)}: first val images, {NO_TEST_SPLIT_NOTE}" if on_val else "")
    out = ["## Qualitative figures", "",
           f"Each row: image, ground truth, heatmap, binary mask ({where}; first prompt of the dataset).", ""]
    for variant, links in figures.items():
        for link in links:
            out.append(f"- {variant}, {Path(link).stem.removeprefix(variant + '_')}: ![{Path(link).stem}]({link})")
    return out + [""]


# --------------------------------------------------------------------------- assembly
def build_report(data_metrics: dict[str, dict], train_metrics: dict[str, dict], eval_metrics: dict[str, dict],
                 baselines: dict, *, model_source: str, variants: list[str] | None = None,
                 datasets: Sequence[str] = DATASETS, figures: dict[str, list[str]] | None = None,
                 boundary_tolerance_px: int | None = None, infer_defaults: dict | None = None,
                 scored_splits: dict[str, str] | None = None) -> str:
    """The markdown report.

    Args:
        data_metrics: ``{dataset: metrics/data/<dataset>.json}`` (missing datasets allowed).
        train_metrics: ``{variant: metrics/train/<variant>.json}``.
        eval_metrics: ``{variant: metrics/eval/<variant>.json}``.
        baselines: ``{dataset: trivial_baseline_scores(...)}`` on the test split.
        model_source: ``model.source`` from params.yaml (``"small"`` or pretrained weights).
        variants: the ladder's rungs, in params order; default: every variant found in train or eval metrics.
            A variant with no files gets a line saying so; a skipped rung gets a "skipped" row and its reason.
        datasets: datasets to report.
        figures: ``{variant: [relative link, ...]}`` to qualitative PNGs that exist.
        boundary_tolerance_px: the boundary F1 tolerance, named in the thin-structure note when given.
        infer_defaults: ``{"hflip_tta": bool, "prompt_ensemble": bool}`` from ``params.yaml: infer``, named next to
            the inference-options table when given.
        scored_splits: ``{dataset: "test" | "val"}``, the split each dataset's tables report (``val`` for a dataset
            without test split, labelled as optimistic); default: ``val`` where an evaluation says
            ``reported_split: val``, else ``test``.
    """
    if variants is None:
        variants = list(dict.fromkeys([*train_metrics, *eval_metrics]))
    variants = list(variants)
    if model_source != "small" and ZEROSHOT in eval_metrics and ZEROSHOT not in variants:
        variants.append(ZEROSHOT)
    if model_source == "small":
        variants = [v for v in variants if v != ZEROSHOT]

    splits = {d: _scored_split(d, eval_metrics, scored_splits) for d in datasets}
    lines = _header(variants, model_source, datasets) + _missing_test_lines(splits)
    if model_source == "small":
        lines += ["Zero-shot: a zero-shot row is meaningless for a randomly initialised model and is omitted.", ""]
    elif ZEROSHOT not in eval_metrics:
        lines += [f"Zero-shot: no metrics/eval/{ZEROSHOT}.json yet, so no zero-shot row.", ""]
    lines += _data_section(data_metrics, datasets)
    number = 2
    for dataset in datasets:
        lines += _ladder_section(number, dataset, variants, train_metrics, eval_metrics, baselines, splits[dataset])
        number += 1
    lines += _options_section(number, variants, eval_metrics, datasets, infer_defaults)
    number += 1
    for dataset in datasets:
        lines += _per_prompt_section(number, dataset, variants, eval_metrics, baselines, boundary_tolerance_px,
                                     splits[dataset])
        number += 1
    lines += _switching_section(number, variants, eval_metrics, data_metrics, datasets, splits)
    lines += _figures_section(figures, splits)
    text = "\n".join(lines)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.rstrip("\n") + "\n"


def _read_json(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        print(f"[report] ignoring {path}: not readable JSON ({exc})")
        return None
    return value if isinstance(value, dict) else None


def write_report(metrics_dir: Path, processed_root: Path, out_path: Path, *, variants: list[str], model_source: str,
                 datasets: Sequence[str] = DATASETS, empty_score: float = 1.0,
                 boundary_tolerance_px: int = 2, darkest_share: float | None = DEFAULT_DARKEST_SHARE,
                 morphology: bool = True, kernel_size: int = 3, infer_defaults: dict | None = None,
                 missing_test_split: str = "report_val") -> None:
    """Read the metrics files under ``metrics_dir``, score the no-learning baselines on the processed test
    splits (``darkest_share``, ``morphology``, ``kernel_size``: see :func:`trivial_baseline_scores`), and write
    the markdown report to ``out_path`` (figure links relative to it). A dataset with no processed test images
    is reported on val when ``missing_test_split`` is ``report_val`` (``eval.missing_test_split``), baselines
    included, and labelled so."""
    metrics_dir, processed_root, out_path = Path(metrics_dir), Path(processed_root), Path(out_path)
    variants = list(variants)
    if model_source != "small" and (metrics_dir / "eval" / f"{ZEROSHOT}.json").exists() and ZEROSHOT not in variants:
        variants.append(ZEROSHOT)
    data = {d: m for d in datasets if (m := _read_json(metrics_dir / "data" / f"{d}.json")) is not None}
    train = {v: m for v in variants if (m := _read_json(metrics_dir / "train" / f"{v}.json")) is not None}
    evals = {v: m for v in variants if (m := _read_json(metrics_dir / "eval" / f"{v}.json")) is not None}
    baselines, splits = {}, {}
    for dataset in datasets:
        splits[dataset] = "test"
        if missing_test_split == "report_val" and not list_split(processed_root, dataset, "test") \
                and list_split(processed_root, dataset, "val"):
            splits[dataset] = "val"
        scores = trivial_baseline_scores(processed_root, dataset, splits[dataset], empty_score=empty_score,
                                         boundary_tolerance_px=boundary_tolerance_px, darkest_share=darkest_share,
                                         morphology=morphology, kernel_size=kernel_size)
        if scores:
            baselines[dataset] = scores
    figures: dict[str, list[str]] = {}
    for variant in variants:
        for dataset in datasets:
            png = metrics_dir / "eval" / "figures" / f"{variant}_{dataset}.png"
            if png.exists():
                figures.setdefault(variant, []).append(_relative(png, out_path.parent))
    text = build_report(data, train, evals, baselines, model_source=model_source, variants=variants,
                        datasets=datasets, figures=figures, boundary_tolerance_px=boundary_tolerance_px,
                        infer_defaults=infer_defaults, scored_splits=splits)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(text)


def _relative(path: Path, start: Path) -> str:
    import os

    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()
