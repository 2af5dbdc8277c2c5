"""Sliding-window (tiled) inference for thin structures such as wall cracks.

Why: the plain path (``Segmenter.whole_image_probabilities``) resizes the whole photo to the model's input
size (224 or 352 px). On a 640 px photo that is a 0.35-0.55x downscale, so a 2-px crack becomes a
sub-pixel, low-contrast line that the ViT's 16-px patches barely see, and the upsampled logits can
only give back a blurred band. Tiling instead runs the model on ``image_size x image_size`` windows
cut from the image at its native resolution (or upscaled by ``upscale``), so the crack keeps its
width in model pixels; the overlapping window logits are blended with a smooth weight window.

How:

- :func:`tile_origins` gives the start offsets along one axis: ``0, stride, 2*stride, ...`` and a
  last tile flush with the end, so every pixel is covered and no tile reaches past the image.
- :func:`blend_window` is a strictly positive 2-D weight (a Hann window, or a cosine ramp near the
  edges only). Every pixel's result is ``sum_t w_t * logit_t / sum_t w_t`` over the tiles ``t``
  covering it: a weighted average, so identical overlapping values come back unchanged (no seams),
  and tile borders, where the model lacks context, count less than tile centres.
- Blending happens on **logits**, like :func:`promptseg.infer.logits.upsample_logits`; the sigmoid comes
  last.
- An image smaller than the tile in some dimension is reflect-padded up to the tile (replicate-padded
  when it is too small to reflect) and the result is cropped back.

Caveats (left to the caller):

- A model trained only on whole-image resizes sees objects at a different scale in tiles; tiling
  helps most when training also used crops at the scale of inference.
- ``per_image`` standardisation (the ``small`` model) uses the statistics of the **whole** resized
  image, not of each tile: flat tiles would otherwise have their noise blown up to unit variance.
- Cost grows with the number of tiles: a 640 x 640 photo at ``tile=352, overlap=0.25`` is 3 x 3 = 9
  forwards instead of 1; ``upscale=2`` makes it 5 x 5 = 25.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from promptseg.infer.logits import average_prompts_and_flips, prompt_sets, upsample_logits
from promptseg.modeling.preprocessing import normalize

__all__ = ["tile_origins", "blend_window", "tiled_logits", "predict_probabilities_tiled"]


def tile_origins(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)``.

    ``[0, stride, 2*stride, ...]`` below ``length - tile``, then ``length - tile`` (the last tile is
    flush with the end; it overlaps its predecessor by more than ``tile - stride`` when ``length -
    tile`` is not a multiple of ``stride``). If ``length <= tile`` the answer is ``[0]`` (the caller
    pads). Offsets are strictly increasing and consecutive tiles leave no gap when ``stride <= tile``.
    """
    length, tile, stride = int(length), int(tile), int(stride)
    if length < 1 or tile < 1 or stride < 1:
        raise ValueError(f"length, tile and stride must be >= 1, got {length}, {tile}, {stride}")
    if stride > tile:
        raise ValueError(f"stride {stride} > tile {tile} would leave gaps between tiles")
    if length <= tile:
        return [0]
    last = length - tile
    return list(range(0, last, stride)) + [last]


def blend_window(tile: int, kind: str = "hann", *, ramp: int | None = None, floor: float = 1e-3) -> np.ndarray:
    """A smooth, strictly positive ``(tile, tile)`` float64 weight window for blending tiles.

    Kinds (all separable, ``w[y, x] = v[y] * v[x]``, then raised to at least ``floor``):

    - ``"hann"``: ``v[i] = sin(pi * (i + 0.5) / tile) ** 2``, a Hann window sampled at pixel centres:
      1 at the centre, ``~(pi / 2 / tile) ** 2`` at the border pixels, never 0.
    - ``"ramp"``: 1 in the middle, a raised-cosine ramp over the ``ramp`` outermost pixels on each
      side (default ``tile // 4``, i.e. the overlap of ``overlap=0.25``); pixels far from the tile
      border all count fully.
    - ``"uniform"``: all ones (plain averaging; seams where neighbouring tiles disagree).

    ``floor`` keeps every weight positive so a pixel covered by a single tile (image corners) still
    gets that tile's value, exactly.
    """
    tile = int(tile)
    if tile < 1:
        raise ValueError(f"tile must be >= 1, got {tile}")
    if not floor > 0:
        raise ValueError(f"floor must be > 0, got {floor}")
    i = np.arange(tile, dtype=np.float64)
    if kind == "hann":
        v = np.sin(np.pi * (i + 0.5) / tile) ** 2
    elif kind == "ramp":
        r = tile // 4 if ramp is None else int(ramp)
        r = max(0, min(r, tile // 2))
        dist = np.minimum(i, tile - 1 - i)  # pixels from the nearest border
        v = np.ones(tile)
        if r > 0:
            inside = dist < r
            v[inside] = 0.5 - 0.5 * np.cos(np.pi * (dist[inside] + 0.5) / r)
    elif kind == "uniform":
        v = np.ones(tile)
    else:
        raise ValueError(f"unknown window kind {kind!r}: use 'hann', 'ramp' or 'uniform'")
    return np.maximum(np.outer(v, v), floor)


def _pad_to(image: torch.Tensor, tile: int) -> torch.Tensor:
    """Pad a ``(C, H, W)`` tensor at the bottom/right up to ``tile`` in each dimension smaller than it."""
    _, h, w = image.shape
    pad_h, pad_w = max(0, tile - h), max(0, tile - w)
    if not pad_h and not pad_w:
        return image
    # reflect needs pad < size; tiny images fall back to replicate
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    return F.pad(image[None], (0, pad_w, 0, pad_h), mode=mode)[0]


def tiled_logits(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    image_chw: torch.Tensor,
    *,
    tile: int,
    overlap: float = 0.25,
    batch_size: int = 16,
    window: str = "hann",
) -> torch.Tensor:
    """Blend ``logits_fn`` over overlapping ``tile x tile`` windows of ``image_chw``.

    Args:
        logits_fn: maps a ``(N, C, tile, tile)`` batch (on ``image_chw``'s device and dtype) to
            ``(N, tile, tile)`` logits.
        image_chw: ``(C, H, W)`` float tensor, already normalised, at the resolution to infer at.
        tile: window side in pixels (the model's input size).
        overlap: fraction of a tile shared by neighbouring tiles, ``0 <= overlap < 1``; the stride is
            ``max(1, round(tile * (1 - overlap)))``.
        batch_size: tiles per ``logits_fn`` call.
        window: the :func:`blend_window` kind.

    Returns:
        ``(H, W)`` float32 CPU tensor: per pixel, ``sum(w * logit) / sum(w)`` over the covering tiles
        (accumulated in float64, so identical overlapping values are reproduced to float32 precision).
        Dimensions smaller than ``tile`` are padded (see :func:`_pad_to`) and cropped back.
    """
    if image_chw.ndim != 3:
        raise ValueError(f"image_chw must be (C, H, W), got {tuple(image_chw.shape)}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    tile, batch_size = int(tile), int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    _, height, width = image_chw.shape
    padded = _pad_to(image_chw, tile)
    ph, pw = padded.shape[-2:]
    stride = max(1, int(round(tile * (1.0 - overlap))))
    origins = [(y, x) for y in tile_origins(ph, tile, stride) for x in tile_origins(pw, tile, stride)]

    weight = torch.from_numpy(blend_window(tile, window))  # float64, CPU
    acc = torch.zeros(ph, pw, dtype=torch.float64)
    norm = torch.zeros(ph, pw, dtype=torch.float64)
    for start in range(0, len(origins), batch_size):
        chunk = origins[start : start + batch_size]
        batch = torch.stack([padded[:, y : y + tile, x : x + tile] for y, x in chunk])
        logits = logits_fn(batch)
        if tuple(logits.shape) != (len(chunk), tile, tile):
            raise ValueError(f"logits_fn returned shape {tuple(logits.shape)}, expected {(len(chunk), tile, tile)}")
        logits = logits.detach().to("cpu", torch.float64)
        for (y, x), logit in zip(chunk, logits):
            acc[y : y + tile, x : x + tile] += weight * logit
            norm[y : y + tile, x : x + tile] += weight
    return (acc / norm)[:height, :width].to(torch.float32)


@torch.no_grad()
def predict_probabilities_tiled(
    segmenter,
    images: list[np.ndarray],
    prompts: list,
    *,
    upscale: float = 1.0,
    overlap: float = 0.25,
    batch_size: int = 16,
    window: str = "hann",
    hflip_tta: bool = False,
    precision: str = "fp32",
) -> list[np.ndarray]:
    """The tiled path of ``promptseg.infer.segmenter.Segmenter.probabilities`` (same contract), on any engine:
    its ``window_logits`` runs the model on a batch of tiles of its input size.

    ``images[i]`` is an ``(H, W, 3)`` uint8 RGB array paired with ``prompts[i]``. Per image:
    bilinear (PIL) resize to ``(round(H * upscale), round(W * upscale))`` -> :func:`promptseg.modeling.preprocessing.normalize`
    with the engine's mean/std/per_image over the whole resized image -> :func:`tiled_logits` with
    ``tile = segmenter.image_size`` and the prompt repeated for each tile batch -> bilinear
    upsample of the blended logits to ``(H, W)`` -> sigmoid. Returns float32 ``(H, W)`` arrays in [0, 1].
    ``batch_size`` counts tiles (of one image), not images.

    ``prompts[i]`` may be a list of strings (a prompt ensemble: the tile logits of every prompt are averaged)
    and ``hflip_tta`` also averages each tile's logits with those of its horizontal mirror, flipped back. Both
    average logits before blending.
    """
    if not upscale > 0:
        raise ValueError(f"upscale must be > 0, got {upscale}")
    sets = prompt_sets(images, prompts)
    out: list[np.ndarray] = []
    for image, prompt_set in zip(images, sets):
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"images must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
        height, width = image.shape[:2]
        x = _resized_input(segmenter, image, upscale).to(segmenter.device)

        def logits_fn(batch: torch.Tensor, prompt_set=prompt_set) -> torch.Tensor:
            return average_prompts_and_flips(
                lambda view, rows, ps, flipped: segmenter.window_logits(view[rows], ps, precision),
                batch,
                [prompt_set] * batch.shape[0],
                hflip_tta,
                lambda v: torch.flip(v, dims=[-1]),
                torch.zeros,
            )

        blended = tiled_logits(
            logits_fn, x, tile=segmenter.image_size, overlap=overlap, batch_size=batch_size, window=window
        )
        out.append(torch.sigmoid(upsample_logits(blended, (height, width))).numpy().astype(np.float32, copy=False))
    return out


def _resized_input(segmenter, image: np.ndarray, upscale: float) -> torch.Tensor:
    """The image resized by ``upscale`` (PIL bilinear) and normalised as the engine's model expects (CPU)."""
    height, width = image.shape[:2]
    size = (max(1, int(round(height * upscale))), max(1, int(round(width * upscale))))
    resized = (
        image
        if size == (height, width)
        else np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))
    )
    return normalize(np.ascontiguousarray(resized), segmenter.mean, segmenter.std, segmenter.per_image)
