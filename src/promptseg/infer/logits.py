"""What every engine and every path does with logits: prompt sets, the ensemble/flip average, the upsample.

Logits are averaged (over a prompt ensemble and a mirrored view), resized and blended as logits; the sigmoid
comes last. These helpers are shared by the single-pass, native-resolution and tiled paths of both engines.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["prompt_sets", "average_prompts_and_flips", "upsample_logits"]


def prompt_sets(images: list, prompts: list) -> list[list[str]]:
    """One prompt list per image: ``prompts[i]`` is a string, or a list of strings (a prompt ensemble)."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts: pass one prompt per image.")
    sets = [[p] if isinstance(p, str) else list(p) for p in prompts]
    if any(not ps for ps in sets):
        raise ValueError("an empty prompt list was given for an image: pass at least one prompt.")
    return sets


def average_prompts_and_flips(logits_of, pixel_values, prompt_sets: list[list[str]], hflip_tta: bool, flip, zeros):
    """THE prompt-ensemble and flip-TTA average, shared by every path of both engines, torch or NumPy alike.

    ``pixel_values``: a batch (B, C, h, w); ``prompt_sets[i]``: the prompts of row i (one, or an ensemble).
    ``logits_of(view, rows, prompts, flipped)`` -> logits (len(rows), h', w') for ``view[rows]`` with one
    prompt per row; ``flip(x)`` mirrors the last axis; ``zeros(shape)`` makes the accumulator. Per row: the
    mean of the logits over its prompts and, with ``hflip_tta``, over the image and its mirror (whose
    logits are flipped back), summed in that order (prompt-major) and divided once."""
    views = [(pixel_values, False)] + ([(flip(pixel_values), True)] if hflip_tta else [])
    total = count = None
    for k in range(max(len(ps) for ps in prompt_sets)):
        rows = [i for i, ps in enumerate(prompt_sets) if k < len(ps)]
        for view, flipped in views:
            logits = logits_of(view, rows, [prompt_sets[i][k] for i in rows], flipped)
            if total is None:
                total, count = zeros((len(prompt_sets), *logits.shape[1:])), zeros((len(prompt_sets), 1, 1))
            total[rows] += flip(logits) if flipped else logits
            count[rows] += 1
    return total / count


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
