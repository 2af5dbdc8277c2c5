"""Inference helpers: resizing logits and turning probabilities into masks."""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["postprocess_probabilities", "upsample_logits"]


def postprocess_probabilities(
    probs: np.ndarray,
    threshold: float,
    *,
    morphology: bool = True,
    kernel_size: int = 3,
) -> np.ndarray:
    """Binarise an ``(H, W)`` probability map into a ``uint8`` ``{0, 255}`` mask.

    Steps:

    1. ``probs > threshold`` (strict; compared in the dtype of ``probs``, the
       same rule as :func:`promptseg.metrics.threshold_sweep_counts`);
    2. if ``morphology``: ``cv2.morphologyEx`` OPEN, then CLOSE, both with a
       ``kernel_size x kernel_size`` rectangular kernel. OPEN removes specks
       smaller than the kernel, CLOSE fills gaps narrower than it.
       ``kernel_size == 1`` is a no-op.

    Note that OPEN with a ``k x k`` kernel also deletes any structure thinner
    than ``k`` px (e.g. a 1-px-wide crack with ``k = 3``); pass
    ``morphology=False`` to keep such structures.

    Args:
        probs: ``(H, W)`` float map (float32 expected) in ``[0, 1]``.
        threshold: probability threshold.
        morphology: apply OPEN then CLOSE.
        kernel_size: side of the square structuring element, ``>= 1``.

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
    return mask


def upsample_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize logits (``align_corners=False``) to ``size = (H, W)``.

    Args:
        logits: ``(B, h, w)`` or ``(h, w)`` float tensor.
        size: target ``(H, W)``.

    Returns:
        ``(B, H, W)`` or ``(H, W)`` tensor (same rank and dtype as ``logits``).
        Resizing logits rather than probabilities keeps the sigmoid after the
        interpolation.
    """
    if logits.ndim not in (2, 3):
        raise ValueError(f"logits must be (B, h, w) or (h, w), got {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating tensor, got {logits.dtype}")
    out_size = (int(size[0]), int(size[1]))
    squeeze = logits.ndim == 2
    x = logits[None, None] if squeeze else logits[:, None]
    y = F.interpolate(x, size=out_size, mode="bilinear", align_corners=False)
    return y[0, 0] if squeeze else y[:, 0]
