"""Training losses for binary, per-prompt segmentation maps.

All functions take raw ``logits`` and a soft or hard ``target`` of the same
shape ``(B, H, W)`` (one map per image-prompt pair) and return a 0-d tensor.

Empty-target rule
-----------------
Training mixes positive prompts with *negative prompts* whose target is all
zero (e.g. "segment crack" on a wall without a crack). For such an image the
soft Dice coefficient is degenerate: with ``eps`` smoothing it only rewards
``sum(p) -> 0``, with a weight that depends on the image size, and without
smoothing it is undefined. Following ``segmentation_models.pytorch``'s
``DiceLoss``, images whose target is all zero are therefore **dropped from the
Dice term** and are supervised by BCE alone. If no image of the batch has any
foreground, the Dice term is exactly ``0`` (still attached to the graph, so
``backward()`` works and yields zero Dice gradients).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["soft_dice_loss", "bce_dice_loss"]


def _check_pair(logits: torch.Tensor, target: torch.Tensor) -> None:
    if logits.ndim != 3:
        raise ValueError(f"logits must have shape (B, H, W), got {tuple(logits.shape)}")
    if target.shape != logits.shape:
        raise ValueError(
            f"target shape {tuple(target.shape)} != logits shape {tuple(logits.shape)}"
        )
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating tensor, got {logits.dtype}")


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, *, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice loss, per image over the whole 2-D map, averaged over non-empty targets.

    Args:
        logits: ``(B, H, W)`` float tensor of raw scores.
        target: ``(B, H, W)`` tensor with values in ``[0, 1]`` (cast to ``logits.dtype``).
        eps: additive smoothing in numerator and denominator.

    For each image ``i`` with ``p = sigmoid(logits)`` and ``t = target``::

        dice_i = (2 * sum(p_i * t_i) + eps) / (sum(p_i) + sum(t_i) + eps)

    where the sums run over all ``H * W`` pixels. The loss is
    ``mean(1 - dice_i)`` over the images whose target has ``sum(t_i) > 0``.
    Images with an all-zero target are left out (see the module docstring);
    if every target in the batch is empty the result is ``0``.

    Returns:
        0-d tensor of ``logits.dtype``.
    """
    _check_pair(logits, target)
    target = target.to(logits.dtype)
    probs = torch.sigmoid(logits)
    inter = (probs * target).sum(dim=(-2, -1))
    denom = probs.sum(dim=(-2, -1)) + target.sum(dim=(-2, -1))
    dice = (2.0 * inter + eps) / (denom + eps)
    nonempty = target.sum(dim=(-2, -1)) > 0
    if not bool(nonempty.any()):
        # Exactly zero, but connected to the graph so that backward() works.
        return (probs * 0.0).sum()  # probs is finite, so this is exactly 0
    return (1.0 - dice)[nonempty].mean()


def bce_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    bce_weight: float = 1.0,
    dice_weight: float = 1.0,
    eps: float = 1.0,
) -> torch.Tensor:
    """Weighted sum of pixel BCE and soft Dice: ``bce_weight * BCE + dice_weight * Dice``.

    Args:
        logits: ``(B, H, W)`` float tensor of raw scores.
        target: ``(B, H, W)`` tensor with values in ``[0, 1]``.
        bce_weight: weight of the BCE term.
        dice_weight: weight of :func:`soft_dice_loss`.
        eps: Dice smoothing, passed to :func:`soft_dice_loss`.

    ``BCE = F.binary_cross_entropy_with_logits(logits, target)`` with ``mean``
    reduction over **all** ``B * H * W`` pixels, including those of images with
    an empty target. The Dice term only counts images with a non-empty target,
    so for a batch whose targets are all zero the result is exactly
    ``bce_weight * BCE``.

    Returns:
        0-d tensor of ``logits.dtype``.
    """
    _check_pair(logits, target)
    target = target.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="mean")
    dice = soft_dice_loss(logits, target, eps=eps)
    return bce_weight * bce + dice_weight * dice
