"""What the labels allow: the crack labels' own centerline, drawn at a width, scored against the labels.

A crack label is a polygon whose width is the annotator's choice: on the real sample's test split the labels'
mean widths run from 6.6 px (10th percentile) to 57 px (90th), and cracks that look alike are outlined a few px
wide in one photo and tens of px in the next. A model that found every crack's centerline
exactly would still have to guess that width. This module measures how much the guess costs, from the labels
alone (no model, no image):

- ``one width``: each label's skeleton (``skimage.morphology.skeletonize``) dilated by a disk of radius ``r``,
  for every ``r`` in ``radii``; the best single ``r`` over the split is reported: about the best a model that
  draws every crack on its true centerline at one width can score.
- ``each image's width``: the same, with each image's own best ``r`` (a model that also guessed every label's
  width among ``radii``).
- ``label_width_px``: each non-empty label's mean width, area / skeleton length, as deciles.

Both read the test labels, so they are references, not baselines, and neither bounds a model that reads each
crack's width off the photo: a disk-dilated skeleton is not exactly a label's shape, and on the synthetic default
``hed_full`` scores above both. :func:`centerline_width_scores` scores any masks this way (a model's own
centerline, for a diagnosis: ``benchmarks/crack_width_ceiling.py``). The ``baselines`` stage writes
:func:`label_ceilings` of every thin-structure dataset to ``metrics/eval/ceilings.json``; the report quotes it
under the crack ladder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from skimage.morphology import skeletonize

from promptseg.images import list_split
from promptseg.metrics import image_scores
from promptseg.params import THIN_STRUCTURE_DATASETS
from promptseg.paths import write_json
from promptseg.score.baselines import read_label_masks, scored_split

__all__ = [
    "dilated_centerlines",
    "centerline_width_scores",
    "label_widths",
    "label_ceilings",
    "ceiling_scores",
    "write_ceilings",
]

WIDTH_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _skeleton(mask: np.ndarray) -> np.ndarray:
    return skeletonize(np.asarray(mask) > 0)


def dilated_centerlines(mask: np.ndarray, radii: Sequence[int], skeleton: np.ndarray | None = None) -> list[np.ndarray]:
    """The skeleton of ``mask`` (bool or {0, 255}, (H, W); or ``skeleton`` when already computed) dilated by a disk
    of each radius in ``radii`` (radius 0: the skeleton itself), as bool masks of the same shape. An empty mask gives
    empty masks."""
    skeleton = (_skeleton(mask) if skeleton is None else np.asarray(skeleton)).astype(np.uint8)
    return [(cv2.dilate(skeleton, _disk(int(r))) if r else skeleton) > 0 for r in radii]


def centerline_width_scores(masks, truths, radii: Sequence[int], *, empty_score: float, skeletons=None) -> dict:
    """Score the centerlines of ``masks`` (the truths themselves: :func:`label_ceilings`) against ``truths`` at
    each radius: ``{"per_radius": {r: {"miou", "dice"}}, "one width": {"radius_px", "miou", "dice"}`` (the best
    single radius by mIoU; the smallest on ties), ``"each image's width": {"miou", "dice"}`` (each image's best
    radius by IoU), ``"images"``}. Per-image IoU/Dice as evaluation counts them (both empty: ``empty_score``).
    ``skeletons``: the masks' skeletons, where the caller already has them."""
    radii = [int(r) for r in radii]
    if not radii or min(radii) < 0:
        raise ValueError(f"radii must be one or more radii >= 0 px, got {list(radii)}")
    if len(masks) != len(truths):
        raise ValueError(f"{len(masks)} masks for {len(truths)} label masks")
    iou = np.zeros((len(truths), len(radii)))
    dice = np.zeros_like(iou)
    for i, (mask, truth) in enumerate(zip(masks, truths)):
        drawn = dilated_centerlines(mask, radii, None if skeletons is None else skeletons[i])
        each = image_scores(drawn, [truth] * len(radii), empty_score=empty_score, tolerance_px=0, thin=False)
        iou[i], dice[i] = each["iou"], each["dice"]
    if not len(truths):
        return {"per_radius": {}, "one width": None, "each image's width": None, "images": 0}
    mean_iou = iou.mean(axis=0)
    best = int(np.argmax(mean_iou))  # argmax: the first (smallest) radius on ties
    rows = np.arange(len(truths))
    own = iou.argmax(axis=1)
    return {
        "per_radius": {
            str(r): {"miou": float(mean_iou[k]), "dice": float(dice[:, k].mean())} for k, r in enumerate(radii)
        },
        "one width": {"radius_px": radii[best], "miou": float(mean_iou[best]), "dice": float(dice[:, best].mean())},
        "each image's width": {"miou": float(iou[rows, own].mean()), "dice": float(dice[rows, own].mean())},
        "images": len(truths),
    }


def label_widths(truths, skeletons=None) -> list[float]:
    """Each non-empty label's mean width in px: its area over its skeleton's length (pixels; ``skeletons``: the
    labels' skeletons, where the caller already has them)."""
    widths = []
    for i, truth in enumerate(truths):
        truth = np.asarray(truth) > 0
        length = int(np.count_nonzero(_skeleton(truth) if skeletons is None else skeletons[i]))
        if length:
            widths.append(float(np.count_nonzero(truth)) / length)
    return widths


def label_ceilings(truths, radii: Sequence[int], *, empty_score: float) -> dict:
    """:func:`centerline_width_scores` of the labels' own centerlines, plus ``label_width_px``: the deciles
    (:data:`WIDTH_QUANTILES`) of :func:`label_widths` (None without a non-empty label)."""
    skeletons = [_skeleton(t) for t in truths]  # once, for both
    out = centerline_width_scores(truths, truths, radii, empty_score=empty_score, skeletons=skeletons)
    widths = label_widths(truths, skeletons)
    out["label_width_px"] = (
        {f"p{round(q * 100)}": float(v) for q, v in zip(WIDTH_QUANTILES, np.quantile(widths, WIDTH_QUANTILES))}
        if widths
        else None
    )
    return out


def ceiling_scores(
    processed_root: Path, *, datasets: Sequence[str], radii: Sequence[int], missing_test_split: str, empty_score: float
) -> dict:
    """``{dataset: label_ceilings(...) of its reported split}`` for the thin-structure datasets among ``datasets``
    (cracks; box labels have no centerline to speak of), and ``scored_splits``; a dataset without images is left
    out."""
    out, splits = {}, {}
    for dataset in datasets:
        if dataset not in THIN_STRUCTURE_DATASETS:
            continue
        splits[dataset] = scored_split(processed_root, dataset, missing_test_split)
        truths = read_label_masks(list_split(Path(processed_root), dataset, splits[dataset]), dataset)
        if truths:
            out[dataset] = label_ceilings(truths, radii, empty_score=empty_score)
    out["scored_splits"] = splits
    return out


def write_ceilings(processed_root: Path, out_path: Path, **kwargs) -> dict:
    """:func:`ceiling_scores` (same keyword arguments) written as JSON to ``out_path``; returns it."""
    scores = ceiling_scores(Path(processed_root), **kwargs)
    write_json(Path(out_path), scores)
    return scores
