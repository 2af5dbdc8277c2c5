"""Segmentation metrics, per image over the WHOLE 2-D mask.

Every score here treats a mask as one set of pixels: ``(H, W)`` in, one number
out. Nothing is averaged over rows or columns. (A row-averaged score would
give an empty prediction on a one-row crack a score near 1, because every row
without ground truth counts as a correct "nothing here".)

Masks (``pred``, ``gt``) may be ``bool`` or numeric; a pixel is foreground
when it is ``True`` / non-zero (so ``{0, 1}`` and ``{0, 255}`` both work).

Empty-mask rules
----------------
* :func:`iou_dice_from_counts` (and everything built on it: :func:`iou_dice`, the evaluation's sweep
  and mask scorer, training validation): prediction and ground truth both empty ->
  ``(empty_score, empty_score)`` (``eval.empty_score``: a correct "nothing here", e.g. a negative
  prompt). One empty, the other not -> ``(0.0, 0.0)``.
* :func:`score_masks`' micro IoU/Dice (counts summed over images): all sums zero -> ``(empty_score, empty_score)``.
* :func:`boundary_f1`, :func:`cl_dice`: both empty -> ``1.0``; exactly one
  empty -> ``0.0``.

Threshold selection
-------------------
:func:`threshold_sweep_counts` and :func:`choose_threshold` pick the
probability threshold on validation data. The sweep scores are computed on the
RAW thresholded probabilities (``probs > t``), i.e. before the morphological
post-processing of :func:`postprocess_probabilities`.
Thresholding is strict (``>``) everywhere and is done in the dtype of
``probs``, exactly like the post-processing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import cv2
import numpy as np
import torch
from skimage.morphology import skeletonize

__all__ = [
    "pixel_counts",
    "iou_dice_from_counts",
    "iou_dice",
    "confusion_counts",
    "boundary_f1",
    "cl_dice",
    "lit_fraction",
    "threshold_sweep_counts",
    "choose_threshold",
    "postprocess_probabilities",
    "fill_bounding_boxes",
    "fill_strip_boxes",
    "image_scores",
    "score_masks",
    "summarise_image_scores",
]


def _as_bool(mask: np.ndarray, name: str = "mask") -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (H, W) mask, got shape {mask.shape}")
    return mask if mask.dtype == np.bool_ else mask != 0


def _as_bool_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = _as_bool(pred, "pred")
    g = _as_bool(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred shape {p.shape} != gt shape {g.shape}")
    return p, g


def pixel_counts(pred, gt):
    """Per-image ``(tp, fp, fn)`` of boolean masks ``(..., H, W)`` -> ``(..., 3)`` integer counts, counted ONCE
    over the last two axes (numpy arrays or torch tensors; the result is of the same kind).

    This is the scoring primitive (segmentation_models.pytorch style): every IoU/Dice in the project is
    :func:`iou_dice_from_counts` over these counts, so the empty-mask rule is written once.
    """
    tp = (pred & gt).sum((-2, -1))
    fp = pred.sum((-2, -1)) - tp
    fn = gt.sum((-2, -1)) - tp
    if type(tp).__module__.startswith("torch"):
        return torch.stack([tp, fp, fn], dim=-1)
    return np.stack([tp, fp, fn], axis=-1).astype(np.int64)


def iou_dice_from_counts(counts, empty_score: float):
    """``counts (..., 3)`` tp, fp, fn -> ``(iou, dice)`` arrays of shape ``(...)`` (numpy or torch, like
    ``counts``). THE empty rule: where ``tp + fp + fn == 0`` (prediction and ground truth both empty)
    both scores are ``empty_score`` (``eval.empty_score``); one empty, the other not, scores 0."""
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    union, denom = tp + fp + fn, 2 * tp + fp + fn
    if type(counts).__module__.startswith("torch"):
        tp, union, denom = tp.double(), union.double(), denom.double()
        empty = torch.full_like(union, float(empty_score))
        return (
            torch.where(union > 0, tp / union.clamp(min=1), empty),
            torch.where(denom > 0, 2 * tp / denom.clamp(min=1), empty),
        )
    return (
        np.where(union > 0, tp / np.maximum(union, 1), float(empty_score)),
        np.where(denom > 0, 2 * tp / np.maximum(denom, 1), float(empty_score)),
    )


def confusion_counts(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, int]:
    """Pixel counts ``(tp, fp, fn)`` of one ``(H, W)`` prediction against its ground truth.

    Returns Python ``int`` s: ``tp = |P & G|``, ``fp = |P & ~G|``, ``fn = |~P & G|`` (:func:`pixel_counts`).
    """
    tp, fp, fn = pixel_counts(*_as_bool_pair(pred, gt)).tolist()
    return tp, fp, fn


def _iou_dice_from_counts(tp: int, fp: int, fn: int, empty_score: float) -> tuple[float, float]:
    iou, dice = iou_dice_from_counts(np.array([tp, fp, fn], dtype=np.int64), empty_score)
    return float(iou), float(dice)


def iou_dice(pred: np.ndarray, gt: np.ndarray, *, empty_score: float = 1.0) -> tuple[float, float]:
    """IoU and Dice of one ``(H, W)`` prediction over all its pixels.

    ``IoU = |P & G| / |P | G|`` and ``Dice = 2 |P & G| / (|P| + |G|)``.
    Both masks empty -> ``(empty_score, empty_score)`` (the pipeline passes ``eval.empty_score``; 1.0 is
    this library function's own default); one empty -> ``(0.0, 0.0)``.
    """
    return _iou_dice_from_counts(*confusion_counts(pred, gt), empty_score)


def _distance_to(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance (float32, px) of every pixel to the nearest ``True`` pixel of ``mask``."""
    # cv2.distanceTransform measures the distance to the nearest ZERO pixel.
    src = np.where(mask, 0, 255).astype(np.uint8)
    return cv2.distanceTransform(src, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


def boundary_f1(pred: np.ndarray, gt: np.ndarray, *, tolerance_px: int = 2) -> float:
    """Tolerance-based F1 of one ``(H, W)`` prediction.

    ``precision`` = share of predicted foreground pixels whose Euclidean
    distance (``cv2.distanceTransform``, ``DIST_L2``, precise mask) to the
    nearest ground-truth pixel is ``<= tolerance_px``; ``recall`` = share of
    ground-truth pixels within ``tolerance_px`` of a predicted pixel;
    ``F1 = 2 P R / (P + R)`` (``0.0`` when ``P + R == 0``).

    The foreground pixels themselves are matched (not extracted contours): for
    thin structures such as cracks, where the mask is its own boundary, this is
    the usual boundary F1; for wide regions it is a tolerant region F1.

    Both empty -> ``1.0``; exactly one empty -> ``0.0``.
    """
    if tolerance_px < 0:
        raise ValueError(f"tolerance_px must be >= 0, got {tolerance_px}")
    p, g = _as_bool_pair(pred, gt)
    n_p, n_g = int(np.count_nonzero(p)), int(np.count_nonzero(g))
    if n_p == 0 and n_g == 0:
        return 1.0
    if n_p == 0 or n_g == 0:
        return 0.0
    precision = np.count_nonzero(_distance_to(g)[p] <= tolerance_px) / n_p
    recall = np.count_nonzero(_distance_to(p)[g] <= tolerance_px) / n_g
    if precision + recall == 0:
        return 0.0
    return float(2.0 * precision * recall / (precision + recall))


def cl_dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Centerline Dice (Shit et al., CVPR 2021) of one ``(H, W)`` prediction.

    With ``S = skimage.morphology.skeletonize`` (default method)::

        Tprec = |S(P) & G| / |S(P)|     Tsens = |S(G) & P| / |S(G)|
        clDice = 2 * Tprec * Tsens / (Tprec + Tsens)

    It scores topology / connectivity and ignores thickness: a thick bar
    against a thinner band on its centre scores 1.

    Both empty -> ``1.0``; exactly one empty -> ``0.0``; ``Tprec + Tsens == 0`` -> ``0.0``.
    """
    p, g = _as_bool_pair(pred, gt)
    has_p, has_g = bool(p.any()), bool(g.any())
    if not has_p and not has_g:
        return 1.0
    if not has_p or not has_g:
        return 0.0
    sp = skeletonize(p)
    sg = skeletonize(g)
    n_sp, n_sg = int(np.count_nonzero(sp)), int(np.count_nonzero(sg))
    tprec = np.count_nonzero(sp & g) / n_sp if n_sp else 0.0
    tsens = np.count_nonzero(sg & p) / n_sg if n_sg else 0.0
    if tprec + tsens == 0:
        return 0.0
    return float(2.0 * tprec * tsens / (tprec + tsens))


def lit_fraction(pred: np.ndarray) -> float:
    """Share of the pixels of an ``(H, W)`` mask that are foreground, in ``[0, 1]`` (``0.0`` if it has no pixels)."""
    p = _as_bool(pred, "pred")
    return float(np.count_nonzero(p) / p.size) if p.size else 0.0


def threshold_sweep_counts(probs: np.ndarray, gt: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """``(tp, fp, fn)`` of ``probs > t`` against ``gt`` for every threshold, in one pass.

    Args:
        probs: ``(H, W)`` float probabilities in ``[0, 1]`` (raw model output,
            before any morphology). Must not contain NaN.
        gt: ``(H, W)`` bool (or non-zero = foreground) ground truth.
        thresholds: ``T`` thresholds in any order (duplicates allowed).

    Returns:
        ``(T, 3)`` ``int64`` array; row ``k`` holds ``tp, fp, fn`` of the mask
        ``probs > thresholds[k]``. The comparison is strict and made in the
        dtype of ``probs`` (thresholds are cast to it), so row ``k`` equals
        ``confusion_counts(probs > thresholds[k], gt)`` exactly.

    Each pixel is binned once against the sorted thresholds
    (``np.searchsorted``, ``O(H W log T)``); a reverse cumulative sum of the
    per-bin counts of foreground and background pixels gives the counts for
    every threshold.
    """
    probs = np.asarray(probs)
    if probs.ndim != 2:
        raise ValueError(f"probs must be (H, W), got shape {probs.shape}")
    g = _as_bool(gt, "gt")
    if g.shape != probs.shape:
        raise ValueError(f"gt shape {g.shape} != probs shape {probs.shape}")
    if not np.issubdtype(probs.dtype, np.floating):
        probs = probs.astype(np.float64)
    if np.isnan(probs).any():
        raise ValueError("probs contains NaN")

    thr = np.asarray(thresholds, dtype=probs.dtype).reshape(-1)
    n_thr = thr.size
    if n_thr == 0:
        return np.zeros((0, 3), dtype=np.int64)
    uniq, inverse = np.unique(thr, return_inverse=True)  # sorted ascending
    n_u = uniq.size

    # idx = number of thresholds strictly below p, i.e. p > uniq[j] <=> j < idx.
    idx = np.searchsorted(uniq, probs.ravel(), side="left")
    g_flat = g.ravel()
    hist = np.bincount(idx + (n_u + 1) * g_flat, minlength=2 * (n_u + 1)).reshape(2, n_u + 1)
    # above[:, j] = number of pixels with idx > j = sum(hist[:, j+1:]).
    above = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1][:, 1:]
    fp_u, tp_u = above[0], above[1]
    n_fg = int(np.count_nonzero(g_flat))

    out = np.empty((n_thr, 3), dtype=np.int64)
    out[:, 0] = tp_u[inverse]
    out[:, 1] = fp_u[inverse]
    out[:, 2] = n_fg - out[:, 0]
    return out


def choose_threshold(per_threshold_scores: Mapping[float, float]) -> float:
    """The threshold with the highest score.

    Ties (exactly equal scores) go to the threshold closest to ``0.5`` (distances
    compared after rounding to 9 decimals, so that e.g. 0.3 and 0.7 count as
    equally close), then to the lower one. NaN scores are ignored; raises
    ``ValueError`` if no score is left.
    """
    candidates = [
        (float(score), -round(abs(float(t) - 0.5), 9), -float(t))
        for t, score in per_threshold_scores.items()
        if not math.isnan(float(score))
    ]
    if not candidates:
        raise ValueError("no (non-NaN) scores to choose a threshold from")
    best = max(candidates)
    return -best[2]


# --------------------------------------------------------------------------- masks from probabilities, and their scores
def postprocess_probabilities(
    probs: np.ndarray,
    threshold: float,
    *,
    morphology: bool = True,
    kernel_size: int = 3,
    boxes: bool = False,
    strip_length: float = 0.0,
) -> np.ndarray:
    """Binarise an ``(H, W)`` probability map into a ``uint8`` ``{0, 255}`` mask.

    Steps:

    1. ``probs > threshold`` (strict; compared in the dtype of ``probs``, the
       same rule as :func:`promptseg.metrics.threshold_sweep_counts`);
    2. if ``morphology``: ``cv2.morphologyEx`` OPEN, then CLOSE, both with a
       ``kernel_size x kernel_size`` rectangular kernel. OPEN removes specks
       smaller than the kernel, CLOSE fills gaps narrower than it.
       ``kernel_size == 1`` is a no-op;
    3. if ``boxes``: each region replaced by its filled bounding box (:func:`fill_bounding_boxes`), the
       shape of a box-annotated dataset's labels; with ``strip_length > 0``, the mask is first split into its
       horizontal and vertical strips at least that share of the shorter side long, each boxed on its own
       (:func:`fill_strip_boxes`).

    Note that OPEN with a ``k x k`` kernel also deletes any structure thinner
    than ``k`` px (e.g. a 1-px-wide crack with ``k = 3``); pass
    ``morphology=False`` to keep such structures.

    Args:
        probs: ``(H, W)`` float map (float32 expected) in ``[0, 1]``.
        threshold: probability threshold.
        morphology: apply OPEN then CLOSE.
        kernel_size: side of the square structuring element, ``>= 1``.
        boxes: replace each 8-connected region by its bounding box.
        strip_length: with ``boxes``, box the horizontal and vertical strips separately (0: whole regions).

    Returns:
        ``(H, W)`` ``uint8`` array with values in ``{0, 255}``.
    """
    probs = np.asarray(probs)
    if probs.ndim != 2:
        raise ValueError(f"probs must be (H, W), got shape {probs.shape}")
    if not np.issubdtype(probs.dtype, np.floating):
        probs = probs.astype(np.float64)
    if int(kernel_size) != kernel_size or kernel_size < 1:
        raise ValueError(f"kernel_size must be a positive integer, got {kernel_size}")
    thr = np.asarray(threshold, dtype=probs.dtype)
    mask = np.where(probs > thr, 255, 0).astype(np.uint8)
    if morphology and kernel_size > 1:
        k = int(kernel_size)
        kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (k, k))
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    if not boxes:
        return mask
    if strip_length > 0:
        return fill_strip_boxes(mask, strip_length, rest_kernel=int(kernel_size) if morphology else 1)
    return fill_bounding_boxes(mask)


def fill_bounding_boxes(mask: np.ndarray) -> np.ndarray:
    """``uint8`` ``{0, 255}`` mask in which each 8-connected region of ``mask`` (non-zero = foreground) is
    replaced by its filled axis-aligned bounding box. Boxes may overlap; they are not merged further."""
    count, _, stats, _ = cv2.connectedComponentsWithStats((np.asarray(mask) > 0).astype(np.uint8), connectivity=8)
    out = np.zeros(np.asarray(mask).shape, dtype=np.uint8)
    for x, y, w, h, _ in stats[1:count]:
        out[y : y + h, x : x + w] = 255
    return out


def fill_strip_boxes(mask: np.ndarray, min_length: float, *, rest_kernel: int = 3) -> np.ndarray:
    """``uint8`` ``{0, 255}`` mask of boxes, one per horizontal strip, vertical strip and leftover region of ``mask``.

    Box labels (drywall joints) are drawn one box per joint, so a T-, L- or cross-shaped mask of joints that meet is
    several boxes, not the one bounding box of the whole region (which would cover the wall between them). Here:

    1. the horizontal strips: ``mask`` opened with a ``1 x L`` line (``L = min_length`` x the shorter side in px,
       odd, at least 3): the pixels on a horizontal run at least ``L`` long;
    2. the vertical strips: the same with an ``L x 1`` line;
    3. the rest (a diagonal joint, a blob): the pixels in neither, opened with a ``rest_kernel`` square so the
       slivers left along a strip's edges do not become boxes of their own;

    each of the three is then boxed on its own (:func:`fill_bounding_boxes`) and the boxes are united."""
    mask = np.asarray(mask)
    if not 0 < min_length <= 1:
        raise ValueError(f"min_length must be a share of the shorter side in (0, 1], got {min_length}")
    binary = np.where(mask > 0, 255, 0).astype(np.uint8)
    length = max(3, int(round(min_length * min(binary.shape))) | 1)
    horizontal = cv2.morphologyEx(binary, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_RECT, (length, 1)))
    vertical = cv2.morphologyEx(binary, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_RECT, (1, length)))
    rest = np.where((horizontal > 0) | (vertical > 0), 0, binary).astype(np.uint8)
    if rest_kernel > 1:
        rest = cv2.morphologyEx(rest, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_RECT, (rest_kernel,) * 2))
    return np.maximum.reduce([fill_bounding_boxes(part) for part in (horizontal, vertical, rest)])


def image_scores(masks, truths, *, empty_score: float, tolerance_px: int, thin: bool) -> dict[str, np.ndarray]:
    """Per image: ``counts`` (tp, fp, fn), ``iou``, ``dice``, ``pred_share`` and ``true_share`` (foreground
    fractions), and for thin structures ``boundary_f1`` (``tolerance_px``) and ``cl_dice``: what :func:`score_masks`
    averages; both-empty images score ``empty_score``."""
    bf1, cld, counts, pred_share, true_share = [], [], [], [], []
    for mask, truth in zip(masks, truths):
        pred = mask > 0
        counts.append(confusion_counts(pred, truth))
        pred_share.append(lit_fraction(pred))
        true_share.append(lit_fraction(truth))
        if thin:
            bf1.append(boundary_f1(pred, truth, tolerance_px=tolerance_px))
            cld.append(cl_dice(pred, truth))
    counts = np.array(counts, dtype=np.int64).reshape(-1, 3)  # (images, 3): tp, fp, fn, counted once
    ious, dices = iou_dice_from_counts(counts, empty_score)
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


def score_masks(
    masks, truths, *, empty_score: float, tolerance_px: int, thin: bool, per_image: dict | None = None
) -> dict:
    """Per-image mean IoU/Dice (+ boundary F1, clDice for thin structures) and micro IoU/Dice.

    ``per_image`` (a dict) receives :func:`image_scores`, the numbers the means are made of."""
    each = image_scores(masks, truths, empty_score=empty_score, tolerance_px=tolerance_px, thin=thin)
    if per_image is not None:
        per_image.update(each)
    return summarise_image_scores(each, empty_score=empty_score)


def summarise_image_scores(each: Mapping[str, np.ndarray], *, empty_score: float) -> dict:
    """What :func:`score_masks` reports from :func:`image_scores` (or several of them concatenated key by key):
    the means of the per-image IoU/Dice (boundary F1 and clDice where present), micro IoU/Dice from the summed
    counts, and the number of images."""
    micro_iou, micro_dice = iou_dice_from_counts(np.asarray(each["counts"]).reshape(-1, 3).sum(axis=0), empty_score)
    scores = {
        "miou": float(np.mean(each["iou"])),
        "dice": float(np.mean(each["dice"])),
        "micro_iou": float(micro_iou),
        "micro_dice": float(micro_dice),
        "images": len(each["iou"]),
    }
    if "boundary_f1" in each:
        scores["boundary_f1"] = float(np.mean(each["boundary_f1"]))
        scores["cl_dice"] = float(np.mean(each["cl_dice"]))
    return scores
