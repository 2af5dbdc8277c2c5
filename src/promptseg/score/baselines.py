"""The no-learning baselines: masks that need no model, scored like the models on the same test images.

``dvc repro baselines`` writes ``metrics/eval/baselines.json``: per dataset, ``{"all zeros": scores,
"all ones": scores}`` and, for thin structures (cracks), ``{"darkest 5%": scores}`` (each image's darkest
pixels, then the models' open/close; the share is ``report.darkest_share``). ``scores`` are what
:func:`promptseg.metrics.score_masks` gives on the processed test split, plus ``lit`` (the mean share of pixels
lit: with any prompt, since the masks ignore it). The report reads this file; it computes nothing itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from promptseg.images import list_split, read_rgb
from promptseg.metrics import lit_fraction, postprocess_probabilities, score_masks
from promptseg.params import DATASETS, THIN_STRUCTURE_DATASETS
from promptseg.paths import write_json

__all__ = [
    "trivial_baseline_scores",
    "darkest_pixels_mask",
    "darkest_name",
    "baseline_scores",
    "write_baselines",
    "read_label_masks",
    "scored_split",
    "DEFAULT_DARKEST_SHARE",
]

DEFAULT_DARKEST_SHARE = 0.05


def darkest_name(share: float) -> str:
    """``0.05`` -> ``"darkest 5%"``."""
    return f"darkest {float(share) * 100:g}%"


def darkest_pixels_mask(
    rgb: np.ndarray, share: float = DEFAULT_DARKEST_SHARE, *, morphology: bool = True, kernel_size: int = 3
) -> np.ndarray:
    """The "darkest pixels" guess at a crack: a {0, 255} uint8 mask of one (H, W, 3) RGB image.

    The pixels whose grayscale value (``cv2.COLOR_RGB2GRAY``) is at or below the image's ``share`` quantile
    (``np.quantile``, linear interpolation), then the models' post-processing
    (:func:`promptseg.metrics.postprocess_probabilities` on a map that is 1.0 on those pixels, threshold 0.5:
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


def read_label_masks(pairs, dataset: str) -> list[np.ndarray]:
    """The bool label masks of ``pairs`` (``promptseg.images.list_split``); one clear error for a missing one."""
    truths = []
    for _, mask_path in pairs:
        mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise ValueError(f"{mask_path}: mask missing or unreadable; rerun `dvc repro masks@{dataset}`.")
        truths.append(mask > 0)
    return truths


def trivial_baseline_scores(
    processed_root: Path,
    dataset: str,
    split: str,
    *,
    empty_score: float = 1.0,
    boundary_tolerance_px: int = 2,
    darkest_share: float | None = DEFAULT_DARKEST_SHARE,
    morphology: bool = True,
    kernel_size: int = 3,
) -> dict:
    """Scores of masks that need no learning on every image of one processed split.

    Returns ``{"all zeros": scores, "all ones": scores}`` and, for thin-structure datasets (cracks) when
    ``darkest_share`` is not None, ``{darkest_name(darkest_share): scores}`` (:func:`darkest_pixels_mask` with
    ``morphology`` / ``kernel_size``, the ``infer.morphology`` the models use). ``scores`` is what
    :func:`promptseg.metrics.score_masks` gives (``miou``, ``dice``, ``micro_iou``, ``micro_dice``, ``images``;
    for thin-structure datasets also ``boundary_f1`` and ``cl_dice``), with the same empty-mask rule (an image
    whose ground truth and prediction are both empty scores ``empty_score``), plus ``lit``, the mean share of
    pixels lit. Returns ``{}`` when the split has no images. Images are read only for the darkest baseline.
    """
    pairs = list_split(Path(processed_root), dataset, split)
    truths = read_label_masks(pairs, dataset)
    if not truths:
        return {}
    thin = dataset in THIN_STRUCTURE_DATASETS
    scoring = {"empty_score": empty_score, "tolerance_px": boundary_tolerance_px, "thin": thin}
    zeros = [np.zeros(t.shape, dtype=np.uint8) for t in truths]
    ones = [np.full(t.shape, 255, dtype=np.uint8) for t in truths]
    out = {
        "all zeros": _with_lit(score_masks(zeros, truths, **scoring), zeros),
        "all ones": _with_lit(score_masks(ones, truths, **scoring), ones),
    }
    if thin and darkest_share is not None:
        dark = []
        for (image_path, mask_path), truth in zip(pairs, truths):
            mask = darkest_pixels_mask(
                read_rgb(image_path), darkest_share, morphology=morphology, kernel_size=kernel_size
            )
            if mask.shape != truth.shape:
                raise ValueError(
                    f"{image_path}: image is {mask.shape[1]}x{mask.shape[0]} px but its mask "
                    f"{mask_path.name} is {truth.shape[1]}x{truth.shape[0]}; rerun `dvc repro masks@{dataset}`."
                )
            dark.append(mask)
        out[darkest_name(darkest_share)] = _with_lit(score_masks(dark, truths, **scoring), dark)
    return out


def scored_split(processed_root: Path, dataset: str, missing_test_split: str) -> str:
    """The split a dataset is reported on: ``test``, or ``val`` when it has no test images and
    ``eval.missing_test_split`` is ``report_val`` (the rule evaluation follows: promptseg.score.evaluate)."""
    if (
        missing_test_split == "report_val"
        and not list_split(processed_root, dataset, "test")
        and list_split(processed_root, dataset, "val")
    ):
        return "val"
    return "test"


def baseline_scores(
    processed_root: Path,
    *,
    datasets: Sequence[str] = DATASETS,
    missing_test_split: str = "report_val",
    empty_score: float = 1.0,
    boundary_tolerance_px: int = 2,
    darkest_share: float | None = DEFAULT_DARKEST_SHARE,
    morphology: bool = True,
    kernel_size: int = 3,
) -> dict:
    """``{dataset: trivial_baseline_scores(...)}`` on each dataset's reported split (:func:`scored_split`), and
    ``scored_splits: {dataset: split}``."""
    out, splits = {}, {}
    for dataset in datasets:
        splits[dataset] = scored_split(processed_root, dataset, missing_test_split)
        scores = trivial_baseline_scores(
            processed_root,
            dataset,
            splits[dataset],
            empty_score=empty_score,
            boundary_tolerance_px=boundary_tolerance_px,
            darkest_share=darkest_share,
            morphology=morphology,
            kernel_size=kernel_size,
        )
        if scores:
            out[dataset] = scores
    out["scored_splits"] = splits
    return out


def write_baselines(processed_root: Path, out_path: Path, **kwargs) -> dict:
    """:func:`baseline_scores` (same keyword arguments) written as JSON to ``out_path``; returns it."""
    scores = baseline_scores(Path(processed_root), **kwargs)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_json(out_path, scores)
    return scores
