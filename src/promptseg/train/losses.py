"""Training losses for binary, per-prompt segmentation maps.

All loss functions take raw ``logits`` and a soft or hard ``target`` of the same
shape ``(B, H, W)`` (one map per image-prompt pair) and return a 0-d tensor
(:func:`box_components` is a helper that labels box masks).

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

Box supervision
---------------
:func:`box_projection_loss` trains on box-labelled data (the drywall export: the mask is a filled
union of rectangles, the object a thin tape band inside it) without asking for the whole
rectangle, BoxInst-style (Tian et al., CVPR 2021). The same empty-target rule applies: an image
whose box mask is empty (negative prompt, no object) has no projection term and is supervised by
the outside term alone, which then covers all its pixels.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["soft_dice_loss", "bce_dice_loss", "box_components", "box_projection_loss"]


def _check_pair(logits: torch.Tensor, target: torch.Tensor) -> None:
    if logits.ndim != 3:
        raise ValueError(f"logits must have shape (B, H, W), got {tuple(logits.shape)}")
    if target.shape != logits.shape:
        raise ValueError(f"target shape {tuple(target.shape)} != logits shape {tuple(logits.shape)}")
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


def presence_loss(presence_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Image-level BCE for a presence gate (``promptseg.modeling.unet``): presence_logits (B,), target masks (B, H, W)
    in [0, 1] -> scalar, the mean over the batch of BCE(presence logit, 1 if the target has a pixel above
    0.5 else 0). Negative prompts (all-zero targets) and images without the prompt's target teach "absent"."""
    if presence_logits.shape != target.shape[:1]:
        raise ValueError(
            f"presence_logits {tuple(presence_logits.shape)} must be (B,) for target {tuple(target.shape)}"
        )
    present = (target.flatten(1) > 0.5).any(dim=1).to(presence_logits.dtype)
    return F.binary_cross_entropy_with_logits(presence_logits, present)


# --------------------------------------------------------------------------- box supervision
# Undirected neighbour offsets (dy, dx) at distance d: right, down, down-right, down-left. With both
# orders of each pair implied, this is BoxInst's 8-neighbourhood at dilation d.
def _pair_offsets(dilation: int) -> tuple[tuple[int, int], ...]:
    d = int(dilation)
    return ((0, d), (d, 0), (d, d), (d, -d))


def _shifted_pairs(t: torch.Tensor, dy: int, dx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(t[..., y, x], t[..., y + dy, x + dx])`` over every position where both are inside the map."""
    h, w = t.shape[-2:]
    if dx >= 0:
        return t[..., : h - dy, : w - dx], t[..., dy:, dx:]
    return t[..., : h - dy, -dx:], t[..., dy:, : w + dx]


def box_components(box_masks: torch.Tensor, *, threshold: float = 0.5) -> torch.Tensor:
    """Connected components of each box mask: ``(B, H, W)`` int64, 0 = no box, 1..K = one box each.

    ``box_masks > threshold`` is labelled with ``cv2.connectedComponents`` (4-connectivity) on the
    CPU, image by image (a few milliseconds per 352 px mask). Boxes that overlap or share an
    edge merge into one component. Compute it once per batch (or in the dataset) and pass it to
    :func:`box_projection_loss` as ``components``; the result is on ``box_masks``'s device.
    """

    if box_masks.ndim != 3:
        raise ValueError(f"box_masks must have shape (B, H, W), got {tuple(box_masks.shape)}")
    binary = (box_masks.detach() > threshold).to("cpu", torch.uint8).numpy()
    labels = np.stack([cv2.connectedComponents(m, connectivity=4, ltype=cv2.CV_32S)[1] for m in binary])
    return torch.from_numpy(labels.astype(np.int64)).to(box_masks.device)


def _projection_dice(pred: torch.Tensor, target: torch.Tensor, eps: float) -> torch.Tensor:
    """Sum over the two axes of ``1 - Dice(max-projection of pred, max-projection of target)``.

    ``pred, target``: ``(..., H, W)``; returns ``(...)``. ``amax(dim=-2)`` is the column profile
    (length W), ``amax(dim=-1)`` the row profile (length H).
    """
    total = pred.new_zeros(pred.shape[:-2])
    for dim in (-2, -1):
        p, t = pred.amax(dim=dim), target.amax(dim=dim)
        dice = (2.0 * (p * t).sum(-1) + eps) / (p.sum(-1) + t.sum(-1) + eps)
        total = total + (1.0 - dice)
    return total


def box_projection_loss(
    logits: torch.Tensor,
    box_masks: torch.Tensor,
    *,
    projection_weight: float = 1.0,
    outside_weight: float = 1.0,
    pairwise_weight: float = 0.0,
    images: torch.Tensor | None = None,
    components: torch.Tensor | None = None,
    theta: float = 0.1,
    tau: float = 0.3,
    dilation: int = 2,
    eps: float = 1.0,
) -> torch.Tensor:
    """BoxInst-style loss for box labels: ``projection_weight * P + outside_weight * O + pairwise_weight * A``.

    Args:
        logits: ``(B, H, W)`` float tensor of raw scores.
        box_masks: ``(B, H, W)`` box masks in ``[0, 1]`` (1 inside a box; the bilinearly resized
            training targets, soft at the box edges, are fine).
        projection_weight, outside_weight, pairwise_weight: term weights (defaults 1, 1, 0).
        images: ``(B, C, H, W)`` input tensor at the logits' resolution; only for the pairwise term.
        components: optional output of :func:`box_components` for ``box_masks``: then the
            projection term is per box instead of on the union (see below).
        theta, tau: colour affinity ``exp(-||x_i - x_j|| / theta)`` and the threshold above which a
            pair counts as same-coloured.
        dilation: neighbour distance of the pairwise term.
        eps: Dice smoothing of the projection term.

    With ``p = sigmoid(logits)`` and ``b = box_masks``:

    **P, projection.** Premise (BoxInst): the object touches all four sides of its tight box, so
    the max over rows of ``p`` (a length-W column profile) must equal the box's, and likewise the max
    over columns (length-H row profile). Per image, ``P_i = (1 - Dice(col(p), col(b))) + (1 - Dice(row(p),
    row(b)))`` with ``Dice(u, v) = (2 sum(u v) + eps) / (sum u + sum v + eps)``, so ``0 <= P_i < 2``;
    ``P`` is the mean over images with a non-empty box mask (empty ones: module docstring; all empty:
    ``P = 0``). A slanted tape band whose tight box is the label, and the full box, have the **same**
    projections: P cannot tell a band from a filled rectangle, it only stops asking for the
    rectangle. What pushes the wall inside the box to "off" is the pairwise term.

    Union vs per box: the projection of a union of boxes is weaker than per-box projections: two
    boxes stacked over the same columns share one column profile, so an object in one of them
    satisfies the other's column profile too. With ``components`` each component ``k`` is compared
    with its own projections: ``P_i`` becomes the mean over the image's components of the terms for
    ``p * [comp == k]`` against ``[comp == k]`` (hard, from the thresholded mask). Overlapping or
    touching boxes form one component, which is then treated as one region (as in union mode).

    **O, outside.** Pixels outside every box are background: ``O = sum((1 - b) * BCE(logits, 0)) /
    sum(1 - b)`` over the whole batch (BCE rather than mean ``p``: it keeps a gradient on confidently
    wrong pixels and matches :func:`bce_dice_loss`); ``0`` if no pixel is outside a box. For an image
    with an empty mask this is plain BCE against all zeros.

    **A, pairwise colour affinity** (only computed when ``pairwise_weight != 0``; needs ``images``).
    For neighbour pairs ``(i, j)`` at offsets right/down/both diagonals times ``dilation`` (BoxInst's
    8-neighbourhood), ``s_ij = exp(-||x_i - x_j||_2 / theta)`` on the given ``images`` tensor (the
    normalised network input: distances are in its units, ~58 RGB levels per unit with ImageNet std;
    the defaults count pairs closer than ``-theta ln tau ~ 0.12`` units, ~7 levels, as same-coloured;
    retune under per-image standardisation). Each pair with ``s_ij > tau`` costs ``-log(p_i p_j +
    (1 - p_i)(1 - p_j))`` (computed from log-sigmoids, finite for any logits), weighted by
    ``max(b_i, b_j)``: pairs with at least one end in a box, as BoxInst weights by the box mask at the
    centre pixel. Pairs straddling the box border matter: they carry "off" from outside the box into
    same-coloured wall inside it, while the tape's edge (dissimilar colours) is free. ``A`` is the
    weighted mean, ``sum(w * cost) / max(sum(w), 1)``.

    Returns:
        0-d tensor of ``logits.dtype``.
    """
    _check_pair(logits, box_masks)
    b = box_masks.to(logits.dtype)
    probs = torch.sigmoid(logits)
    zero = (probs * 0.0).sum()  # exact 0 attached to the graph
    projection = _projection_term(probs, b, components, eps, zero)
    outside = _outside_term(logits, b, zero)
    loss = projection_weight * projection + outside_weight * outside
    if pairwise_weight:
        loss = loss + pairwise_weight * _pairwise_term(logits, b, images, theta, tau, dilation, zero)
    return loss


def _projection_term(probs, b, components, eps: float, zero) -> torch.Tensor:
    """P of :func:`box_projection_loss`: per box with ``components``, else on the union of boxes."""
    if components is not None:
        if components.shape != probs.shape:
            raise ValueError(f"components shape {tuple(components.shape)} != logits shape {tuple(probs.shape)}")
        n_comp = int(components.max().item()) if components.numel() else 0
        if n_comp == 0:
            return zero
        labels = torch.arange(1, n_comp + 1, device=components.device).view(1, -1, 1, 1)
        onehot = (components[:, None] == labels).to(probs.dtype)  # (B, K, H, W)
        per_comp = _projection_dice(probs[:, None] * onehot, onehot, eps)  # (B, K)
        present = onehot.amax(dim=(-2, -1))  # (B, K)
        count = present.sum(-1)
        keep = count > 0
        return ((per_comp * present).sum(-1)[keep] / count[keep]).mean() if bool(keep.any()) else zero
    nonempty = b.sum(dim=(-2, -1)) > 0
    return _projection_dice(probs, b, eps)[nonempty].mean() if bool(nonempty.any()) else zero


def _outside_term(logits, b, zero) -> torch.Tensor:
    """O of :func:`box_projection_loss`: BCE against 0 over the pixels outside every box."""
    outside_w = 1.0 - b
    norm = outside_w.sum()
    if float(norm) > 0:
        return (outside_w * F.softplus(logits)).sum() / norm  # BCE(logits, 0) = softplus(logits)
    return zero


def _pairwise_term(logits, b, images, theta: float, tau: float, dilation: int, zero) -> torch.Tensor:
    """A of :func:`box_projection_loss`: the colour-affinity pairwise cost, weighted by the box mask."""
    if images is None:
        raise ValueError("pairwise_weight != 0 needs images (B, C, H, W)")
    if images.ndim != 4 or images.shape[0] != logits.shape[0] or images.shape[-2:] != logits.shape[-2:]:
        raise ValueError(f"images shape {tuple(images.shape)} does not match logits {tuple(logits.shape)}")
    x = images.to(logits.dtype)
    log_on, log_off = F.logsigmoid(logits), F.logsigmoid(-logits)
    total, weight = zero, zero
    for dy, dx in _pair_offsets(dilation):
        if dy >= logits.shape[-2] or abs(dx) >= logits.shape[-1]:
            continue
        xa, xb = _shifted_pairs(x, dy, dx)
        similar = torch.exp(-torch.linalg.vector_norm(xa - xb, dim=1) / theta) > tau
        ba, bb = _shifted_pairs(b, dy, dx)
        w = torch.maximum(ba, bb) * similar.to(logits.dtype)
        on_a, on_b = _shifted_pairs(log_on, dy, dx)
        off_a, off_b = _shifted_pairs(log_off, dy, dx)
        cost = -torch.logaddexp(on_a + on_b, off_a + off_b)
        total = total + (w * cost).sum()
        weight = weight + w.sum()
    return total / weight.clamp(min=1.0)
