"""Seeded synthetic wall photos, written in exactly the formats Roboflow exports.

This is the embedded default data set: it lets the whole pipeline run offline and
reproducibly. Two data sets are produced, each in the export format of its real
Roboflow counterpart:

``cracks`` -- COCO segmentation export::

    out_dir/README.roboflow.txt
    out_dir/{train,valid,test}/_annotations.coco.json
    out_dir/{train,valid,test}/<stem>_jpg.rf.<32 hex>.jpg

``drywall`` -- YOLOv8 detection export (boxes only), plus sidecar truth masks::

    out_dir/README.roboflow.txt
    out_dir/data.yaml
    out_dir/{train,valid,test}/images/<stem>_jpg.rf.<32 hex>.jpg
    out_dir/{train,valid,test}/labels/<stem>_jpg.rf.<32 hex>.txt      # "0 cx cy w h"
    out_dir/true_masks/{train,valid,test}/<stem>_jpg.rf.<32 hex>.png  # {0,255} band mask

The images try to look like photos of walls rather than flat toys: a plaster /
painted drywall texture (several octaves of low-frequency noise plus fine grain), a
varying base colour (off-white, grey, beige), a lighting gradient and vignette, soft
shadows and dark stains as distractors, optical blur and sensor noise.

* Cracks are thin, branching, dark random-walk polylines (1-4 px wide at 320 px,
  scaled with ``image_size``), 1-3 per image. Each crack (with its branches) is one
  COCO annotation whose polygons are the outer contours of the rendered crack mask
  (``cv2.findContours`` with ``RETR_EXTERNAL`` / ``CHAIN_APPROX_SIMPLE``), so filling
  the polygons gives back the crack pixels.
* Joints are long tape/compound bands (40-80 px wide at 320 px, scaled), vertical or
  horizontal, 1-2 per image, spanning most of the image, with feathered compound edges
  and a central paper-tape strip. Each band's YOLO box is the bounding box of its
  pixels; the band pixels themselves are written as the sidecar truth mask.

Everything random comes from ``numpy.random.default_rng(seed + DATASET_OFFSETS[dataset])``
(each image draws its own child generator from it), and JPEGs are written with a fixed
quality, so the same arguments give byte-identical output.
"""

from __future__ import annotations

import json
import math
import pathlib
import shutil
from dataclasses import dataclass, field

import cv2
import numpy as np

__all__ = [
    "DATASET_OFFSETS",
    "DATASET_FORMATS",
    "CLASS_NAMES",
    "ROBOFLOW_SPLITS",
    "JPEG_QUALITY",
    "WallSample",
    "render_wall_sample",
    "crack_polygons",
    "mask_to_yolo_box",
    "write_synthetic_export",
]

#: Added to the seed so the two data sets never share a random stream.
DATASET_OFFSETS = {"cracks": 1_000, "drywall": 2_000}
#: Export format written for each data set.
DATASET_FORMATS = {"cracks": "coco", "drywall": "yolov8"}
#: The single class name of each data set (as in the real Roboflow projects).
CLASS_NAMES = {"cracks": "crack", "drywall": "drywall-join"}
#: Roboflow's split folder names, in writing order.
ROBOFLOW_SPLITS = ("train", "valid", "test")
#: Fixed JPEG quality (part of what makes the output byte-identical).
JPEG_QUALITY = 92

_SPLIT_ALIASES = {"train": "train", "valid": "valid", "val": "valid", "test": "test"}
_REFERENCE_SIZE = 320.0  # pixel sizes in the brief are given for 320 px images
_FIXED_DATE = "2024-01-01T00:00:00+00:00"

# Base wall colours in BGR (cv2 order): off-whites, greys, beiges.
_WALL_PALETTE = np.array(
    [
        [236, 238, 240],  # cool white
        [228, 233, 236],  # warm off-white
        [214, 220, 224],  # eggshell
        [200, 202, 204],  # light grey
        [176, 180, 183],  # mid grey
        [196, 210, 220],  # beige
        [178, 196, 212],  # sand
        [206, 214, 214],  # greige
    ],
    dtype=np.float32,
)


# --------------------------------------------------------------------------- rendering


@dataclass
class WallSample:
    """One rendered image with its ground truth.

    Attributes:
        image: ``uint8`` BGR image, ``(S, S, 3)``.
        instances: one ``uint8`` {0, 255} mask per object (crack with its branches, or
            one tape band), ``(S, S)`` each; empty for a negative image.
    """

    image: np.ndarray
    instances: list[np.ndarray] = field(default_factory=list)

    @property
    def mask(self) -> np.ndarray:
        """Union of all instance masks, ``uint8`` {0, 255}."""
        out = np.zeros(self.image.shape[:2], np.uint8)
        for inst in self.instances:
            np.maximum(out, inst, out=out)
        return out


def _smooth_noise(rng: np.random.Generator, size: int, cells: tuple[int, int]) -> np.ndarray:
    """Unit-ish Gaussian noise on a coarse ``cells = (rows, cols)`` grid, upscaled to
    ``size x size`` with bicubic interpolation (a cheap value-noise octave)."""
    grid = rng.standard_normal(cells, dtype=np.float32)
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)


def _coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinate grids ``(x, y)`` normalised to ``[-1, 1]``."""
    t = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    return np.meshgrid(t, t)


def _wall_texture(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(image, base_colour)``: a float32 BGR plaster/paint texture around a
    randomly chosen and jittered base colour."""
    base = _WALL_PALETTE[rng.integers(len(_WALL_PALETTE))].copy()
    base += rng.normal(0.0, 2.5, 3).astype(np.float32)  # per-channel tint jitter
    base += np.float32(rng.normal(0.0, 6.0))  # overall brightness jitter
    base = np.minimum(base, np.float32(228.0))  # leave head-room for lighting, avoid clipping
    lum = np.zeros((size, size), np.float32)
    # Low-frequency octaves (paint unevenness, plaster waviness) ...
    for cells, amp in ((3, rng.uniform(2.0, 6.0)), (8, rng.uniform(1.5, 4.0)), (24, rng.uniform(1.0, 2.5))):
        lum += np.float32(amp) * _smooth_noise(rng, size, (cells, cells))
    # ... fine grain (orange-peel / sanded texture) ...
    grain = rng.standard_normal((size, size), dtype=np.float32)
    grain = cv2.GaussianBlur(grain, (0, 0), rng.uniform(0.6, 1.2))
    lum += np.float32(rng.uniform(3.0, 7.0)) * grain
    # ... plus slight per-channel colour mottling.
    img = np.empty((size, size, 3), np.float32)
    for ch in range(3):
        img[..., ch] = base[ch] + lum + np.float32(rng.uniform(0.5, 1.5)) * _smooth_noise(rng, size, (6, 6))
    return img, base


def _crack_walk(rng: np.random.Generator, start: np.ndarray, angle: float, length: float, step: float) -> np.ndarray:
    """Jagged random-walk polyline: ``(n+1, 2)`` float points ``(x, y)``.

    The heading is ``angle`` plus a slow wander (cumulative sum) plus per-step jitter,
    which gives the zig-zag look of real cracks without curling up on itself."""
    n = max(2, int(length / step))
    wander = np.cumsum(rng.normal(0.0, 0.07, n))
    jitter = rng.normal(0.0, 0.38, n)
    heading = angle + wander + jitter
    steps = step * rng.uniform(0.6, 1.4, n)
    d = np.stack([np.cos(heading) * steps, np.sin(heading) * steps], axis=1)
    return np.vstack([start[None, :], start[None, :] + np.cumsum(d, axis=0)])


def _draw_polyline(mask: np.ndarray, pts: np.ndarray, widths: np.ndarray) -> None:
    """Draw ``pts`` into ``mask`` (255) segment by segment with per-segment thickness."""
    ip = np.rint(pts).astype(np.int32)
    thick = np.maximum(1, np.rint(widths)).astype(np.int32)
    for i in range(len(ip) - 1):
        cv2.line(mask, (int(ip[i, 0]), int(ip[i, 1])), (int(ip[i + 1, 0]), int(ip[i + 1, 1])), 255, int(thick[i]), cv2.LINE_8)


def _taper(n: int, rng: np.random.Generator) -> np.ndarray:
    """Width profile over ``n`` segments: thin at both ends, fluctuating in between."""
    t = (np.arange(n) + 0.5) / n
    prof = 0.35 + 0.65 * np.sin(np.pi * t) ** 0.6
    wobble = 1.0 + 0.25 * np.interp(t, np.linspace(0, 1, 6), rng.normal(0, 1, 6))
    return prof * np.clip(wobble, 0.5, 1.5)


def _crack_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """Render one crack (main walk plus occasional thinner branches) as a {0,255} mask."""
    scale = size / _REFERENCE_SIZE
    mask = np.zeros((size, size), np.uint8)
    width = rng.uniform(1.0, 4.0) * scale  # 1-4 px at 320 px
    length = rng.uniform(0.35, 0.95) * size
    step = max(1.5, 3.0 * scale)
    start = rng.uniform(0.05, 0.95, 2) * size
    angle = rng.uniform(0, 2 * np.pi)
    main = _crack_walk(rng, start, angle, length, step)
    n = len(main) - 1
    _draw_polyline(mask, main, width * _taper(n, rng))
    n_branches = rng.choice([0, 0, 1, 1, 2])
    for _ in range(n_branches):
        i0 = int(rng.integers(n // 5, max(n // 5 + 1, 4 * n // 5)))
        b_angle = angle + rng.choice([-1.0, 1.0]) * rng.uniform(0.4, 1.1)
        b_len = length * rng.uniform(0.15, 0.45)
        branch = _crack_walk(rng, main[i0], b_angle, b_len, step)
        nb = len(branch) - 1
        b_width = max(0.6 * scale, width * rng.uniform(0.4, 0.8))
        # branches start as wide as the parent and thin out towards the tip
        prof = np.linspace(1.0, 0.3, nb) * b_width
        _draw_polyline(mask, branch, prof)
    return mask


def _apply_cracks(rng: np.random.Generator, img: np.ndarray, masks: list[np.ndarray]) -> None:
    """Darken ``img`` in place along the crack masks (not pitch black: 35-65 % of the
    wall brightness), with a faint shadow halo just around the crack."""
    size = img.shape[0]
    union = np.zeros((size, size), np.uint8)
    for m in masks:
        np.maximum(union, m, out=union)
    inside = union.astype(np.float32) / 255.0
    keep = np.float32(rng.uniform(0.35, 0.6)) + np.float32(0.07) * _smooth_noise(rng, size, (5, 5))
    keep = np.clip(keep, 0.25, 0.7)
    halo = cv2.GaussianBlur(inside, (0, 0), max(0.8, 1.5 * size / _REFERENCE_SIZE))
    factor = 1.0 - inside * (1.0 - keep)
    factor *= 1.0 - np.float32(rng.uniform(0.03, 0.1)) * halo * (1.0 - inside)
    img *= factor[..., None]


def _band_polygon(rng: np.random.Generator, size: int, vertical: bool, centre: float, width: float) -> np.ndarray:
    """Corner points ``(4, 2)`` of a slightly tilted band spanning most of the image."""
    a0 = rng.uniform(0.0, 0.12) * size if rng.random() < 0.6 else -1.0
    a1 = size - rng.uniform(0.0, 0.12) * size if rng.random() < 0.6 else size + 1.0
    tilt = rng.uniform(-0.02, 0.02) * size  # across-offset at the far end
    c0, c1 = centre - tilt / 2, centre + tilt / 2
    h = width / 2
    pts = np.array([[c0 - h, a0], [c0 + h, a0], [c1 + h, a1], [c1 - h, a1]], np.float64)
    if not vertical:
        pts = pts[:, ::-1]
    return pts


def _fill_polygon(size: int, pts: np.ndarray) -> np.ndarray:
    """Sub-pixel ``fillPoly`` of float points into a {0,255} mask."""
    mask = np.zeros((size, size), np.uint8)
    shift = 4
    ip = np.rint(pts * (1 << shift)).astype(np.int32)
    cv2.fillPoly(mask, [ip], 255, cv2.LINE_8, shift)
    return mask


def _band_masks(rng: np.random.Generator, size: int) -> list[np.ndarray]:
    """One or two non-overlapping-parallel (possibly crossing) joint band masks."""
    scale = size / _REFERENCE_SIZE
    n = 1 if rng.random() < 0.55 else 2
    bands: list[tuple[bool, float, float]] = []
    for _ in range(n):
        for _try in range(8):
            vertical = bool(rng.random() < 0.5)
            width = rng.uniform(40.0, 80.0) * scale
            centre = rng.uniform(0.6 * width, size - 0.6 * width)
            clash = any(
                v == vertical and abs(c - centre) < (w + width) / 2 + 0.1 * size for v, c, w in bands
            )
            if not clash:
                bands.append((vertical, centre, width))
                break
    return [_fill_polygon(size, _band_polygon(rng, size, v, c, w)) for v, c, w in bands]


def _apply_bands(rng: np.random.Generator, img: np.ndarray, base: np.ndarray, masks: list[np.ndarray]) -> None:
    """Paint joint-compound bands (feathered edges, trowel streaks) with a central
    paper-tape strip into ``img`` in place."""
    size = img.shape[0]
    scale = size / _REFERENCE_SIZE
    for mask in masks:
        m = mask.astype(np.float32) / 255.0
        ys, xs = np.nonzero(mask)
        vertical = (ys.max() - ys.min()) >= (xs.max() - xs.min())
        width = float(m.sum()) / max(1.0, float(ys.max() - ys.min() + 1 if vertical else xs.max() - xs.min() + 1))
        # compound: slightly lighter / different tone than the wall, smoother grain
        tone = base + np.float32(rng.uniform(5.0, 14.0)) + rng.normal(0.0, 2.0, 3).astype(np.float32)
        cells = (3, 20) if vertical else (20, 3)  # streaks run along the band
        streaks = np.float32(rng.uniform(0.8, 2.0)) * _smooth_noise(rng, size, cells)
        texture = tone[None, None, :] + (streaks + 0.35 * (img.mean(axis=2) - img.mean()))[..., None]
        feather = cv2.GaussianBlur(m, (0, 0), max(1.0, rng.uniform(0.06, 0.14) * width))
        alpha = np.float32(rng.uniform(0.75, 0.95)) * np.maximum(feather, 0.85 * m)
        img *= 1.0 - alpha[..., None]
        img += alpha[..., None] * texture
        # central paper tape strip (about 5 cm of a 15-30 cm taping area)
        tape_w = width * rng.uniform(0.3, 0.5)
        # follow the (slight) tilt of the band: fit its centre line across vs. along
        along_px = ys if vertical else xs
        across_px = xs if vertical else ys
        slope, icpt = np.polyfit(along_px.astype(np.float64), across_px.astype(np.float64), 1)
        xg, yg = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32))
        along = yg if vertical else xg
        across = xg if vertical else yg
        centre_line = (np.float32(slope) * along + np.float32(icpt)).astype(np.float32)
        tape = (np.abs(across - centre_line) <= tape_w / 2).astype(np.float32) * m
        tape = cv2.GaussianBlur(tape, (0, 0), max(0.6, 1.0 * scale))
        t_delta = np.float32(rng.choice([-1.0, 1.0]) * rng.uniform(2.0, 6.0))
        t_tint = rng.normal(0.0, 2.0, 3).astype(np.float32)
        img += tape[..., None] * (t_delta + t_tint)[None, None, :]


def _apply_distractors(rng: np.random.Generator, img: np.ndarray, dataset: str) -> None:
    """Soft shadows, dark stains and (drywall) screw-head spots, in place."""
    size = img.shape[0]
    x, y = _coords(size)
    # soft half-plane shadow (a fixture, a door frame ...)
    if rng.random() < 0.45:
        th = float(rng.uniform(0, 2 * np.pi))
        d = math.cos(th) * x + math.sin(th) * y - float(rng.uniform(0.3, 0.9))
        soft = float(rng.uniform(0.05, 0.3))
        shadow = 1.0 / (1.0 + np.exp(-d / soft))
        img *= (1.0 - np.float32(rng.uniform(0.06, 0.2)) * shadow)[..., None]
    # stains: irregular dark blotches, slightly brownish
    n_stains = int(rng.choice([0, 1, 1, 2, 3]))
    for _ in range(n_stains):
        cx, cy = (float(v) for v in rng.uniform(-0.9, 0.9, 2))
        r1, r2 = (float(v) for v in rng.uniform(0.05, 0.25, 2))
        th = float(rng.uniform(0, np.pi))
        c, s = math.cos(th), math.sin(th)
        u = (c * (x - cx) + s * (y - cy)) / r1
        v = (-s * (x - cx) + c * (y - cy)) / r2
        q = u * u + v * v + 0.6 * _smooth_noise(rng, size, (10, 10))
        blot = np.clip(1.0 - q, 0.0, 1.0)
        blot = cv2.GaussianBlur(blot.astype(np.float32), (0, 0), max(1.0, 0.01 * size))
        strength = np.float32(rng.uniform(0.08, 0.3))
        tint = np.array([1.25, 1.0, 0.8], np.float32)  # B darkens most -> brownish
        img *= 1.0 - np.clip(strength * blot[..., None] * tint[None, None, :], 0.0, 0.6)
    if dataset == "drywall" and rng.random() < 0.6:
        # screw / nail heads covered with compound: small faint spots in a column or row
        n = int(rng.integers(2, 7))
        vertical = rng.random() < 0.5
        pos = rng.uniform(0.1, 0.9) * size
        along = np.sort(rng.uniform(0.05, 0.95, n)) * size
        spots = np.zeros((size, size), np.float32)
        r = max(1, int(round(3 * size / _REFERENCE_SIZE)))
        for a in along:
            pt = (int(pos), int(a)) if vertical else (int(a), int(pos))
            cv2.circle(spots, pt, r, 1.0, -1, cv2.LINE_AA)
        spots = cv2.GaussianBlur(spots, (0, 0), 0.8)
        img += spots[..., None] * np.float32(rng.choice([-1.0, 1.0]) * rng.uniform(4.0, 12.0))


def _apply_camera(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Lighting gradient and vignette, optical blur, sensor noise; returns ``uint8``."""
    size = img.shape[0]
    x, y = _coords(size)
    th = float(rng.uniform(0, 2 * np.pi))
    grad = np.float32(rng.uniform(0.04, 0.16)) * (math.cos(th) * x + math.sin(th) * y)
    vignette = np.float32(rng.uniform(0.0, 0.12)) * (x * x + y * y) / 2.0
    light = (1.0 + grad - vignette).astype(np.float32)
    colour = (1.0 + rng.normal(0.0, 0.01, 3)).astype(np.float32)  # warm / cool light
    img *= light[..., None] * colour[None, None, :]
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.45, 0.85))
    sigma = np.float32(rng.uniform(1.2, 3.5))
    luma_noise = rng.standard_normal((size, size), dtype=np.float32)
    chroma_noise = rng.standard_normal((size, size, 3), dtype=np.float32)
    img += sigma * (0.7 * luma_noise[..., None] + 0.5 * chroma_noise)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def render_wall_sample(dataset: str, rng: np.random.Generator, image_size: int, *, negative: bool = False) -> WallSample:
    """Render one synthetic wall photo for ``dataset`` (``'cracks'`` or ``'drywall'``).

    Args:
        dataset: which object to draw: cracks (1-3 per image) or joint bands (1-2).
        rng: the generator everything is drawn from.
        image_size: side of the square image in pixels.
        negative: draw no object (distractors only).

    Returns:
        A :class:`WallSample` with the ``uint8`` BGR image and one {0,255} mask per object.
    """
    _check_dataset(dataset)
    size = int(image_size)
    img, base = _wall_texture(rng, size)
    instances: list[np.ndarray] = []
    if dataset == "drywall":
        if not negative:
            instances = _band_masks(rng, size)
            _apply_bands(rng, img, base, instances)
        _apply_distractors(rng, img, dataset)
    else:
        # stains and shadows go under the cracks (the crack is in the wall surface)
        _apply_distractors(rng, img, dataset)
        if not negative:
            n = int(rng.choice([1, 1, 1, 2, 2, 3]))
            instances = [_crack_mask(rng, size) for _ in range(n)]
            instances = [m for m in instances if m.any()]
            _apply_cracks(rng, img, instances)
    return WallSample(image=_apply_camera(rng, img), instances=instances)


# --------------------------------------------------------------------------- annotations


def crack_polygons(mask: np.ndarray) -> list[list[float]]:
    """Outer contours of a {0,255} mask as flat COCO polygons ``[x1, y1, x2, y2, ...]``.

    Uses ``cv2.findContours(RETR_EXTERNAL, CHAIN_APPROX_SIMPLE)``. A straight one-pixel
    line compresses to two points; its midpoint is inserted so every polygon has at least
    three points (filling it still gives the same line). Isolated single pixels are dropped.
    """
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys: list[list[float]] = []
    for c in contours:
        pts = c.reshape(-1, 2).astype(np.float64)
        if len(pts) < 2:
            continue
        if len(pts) == 2:
            pts = np.vstack([pts[0], (pts[0] + pts[1]) / 2.0, pts[1]])
        polys.append([float(v) for v in pts.reshape(-1)])
    return polys


def mask_to_yolo_box(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """Normalised YOLO box ``(cx, cy, w, h)`` enclosing all pixels of ``mask``
    (pixel edges, so the box contains every pixel), or ``None`` for an empty mask."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    h_img, w_img = mask.shape[:2]
    x0, x1 = float(xs.min()), float(xs.max() + 1)
    y0, y1 = float(ys.min()), float(ys.max() + 1)
    return ((x0 + x1) / 2 / w_img, (y0 + y1) / 2 / h_img, (x1 - x0) / w_img, (y1 - y0) / h_img)


def _coco_annotations(instances: list[np.ndarray], image_id: int, next_id: int) -> list[dict]:
    """COCO annotation dicts (Roboflow style: ``area`` = bbox w*h) for crack instances."""
    anns = []
    for inst in instances:
        polys = crack_polygons(inst)
        if not polys:
            continue
        pts = np.concatenate([np.asarray(p).reshape(-1, 2) for p in polys]).astype(np.float32)
        x, y, w, h = cv2.boundingRect(pts)
        anns.append(
            {
                "id": next_id + len(anns),
                "image_id": image_id,
                "category_id": 1,
                "bbox": [float(x), float(y), float(w), float(h)],
                "area": float(w * h),
                "segmentation": polys,
                "iscrowd": 0,
            }
        )
    return anns


def _yolo_lines(instances: list[np.ndarray]) -> list[str]:
    """``0 cx cy w h`` label lines (6 decimals) for band instances."""
    lines = []
    for inst in instances:
        box = mask_to_yolo_box(inst)
        if box is not None:
            lines.append("0 " + " ".join(f"{v:.6f}" for v in box))
    return lines


# --------------------------------------------------------------------------- writer


@dataclass
class _Item:
    """One planned output image."""

    split: str
    stem: str
    rf_hash: str
    seed: int
    negative: bool
    copy_of: int | None = None  # index (in the split's list) of the original
    copy_kind: str = ""  # "hflip" | "brightness"
    brightness: float = 1.0

    @property
    def file_stem(self) -> str:
        return f"{self.stem}_jpg.rf.{self.rf_hash}"


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASET_OFFSETS:
        raise ValueError(f"unknown synthetic dataset {dataset!r}; expected one of {sorted(DATASET_OFFSETS)}")


def _normalise_counts(counts: dict[str, int]) -> dict[str, int]:
    out = {s: 0 for s in ROBOFLOW_SPLITS}
    for key, n in counts.items():
        if key not in _SPLIT_ALIASES:
            raise ValueError(f"unknown split {key!r} in counts; expected train/valid/test")
        if int(n) < 0:
            raise ValueError(f"negative count for split {key!r}")
        out[_SPLIT_ALIASES[key]] += int(n)
    return out


def _plan(rng: np.random.Generator, counts: dict[str, int], negative_share: float, augment_copies_share: float) -> dict[str, list[_Item]]:
    """Decide, from the master generator only, every image's split, stem, hash, seed,
    negative flag and augmentation copy."""
    plan: dict[str, list[_Item]] = {}
    index = 0
    for split in ROBOFLOW_SPLITS:
        n = counts[split]
        n_neg = int(round(negative_share * n))
        neg = np.zeros(n, bool)
        neg[rng.permutation(n)[:n_neg]] = True
        items: list[_Item] = []
        for i in range(n):
            items.append(
                _Item(
                    split=split,
                    stem=f"wall_{index:04d}",
                    rf_hash=rng.bytes(16).hex(),
                    seed=int(rng.integers(0, 2**63 - 1)),
                    negative=bool(neg[i]),
                )
            )
            index += 1
        if split == "train" and n > 0 and augment_copies_share > 0:
            n_copy = int(round(augment_copies_share * n))
            chosen = set(rng.permutation(n)[:n_copy].tolist())
            with_copies: list[_Item] = []
            for i, item in enumerate(items):
                with_copies.append(item)
                if i in chosen:
                    kind = "hflip" if rng.random() < 0.5 else "brightness"
                    factor = float(rng.uniform(0.75, 0.9) if rng.random() < 0.5 else rng.uniform(1.1, 1.25))
                    with_copies.append(
                        _Item(
                            split=split,
                            stem=item.stem,
                            rf_hash=rng.bytes(16).hex(),
                            seed=item.seed,
                            negative=item.negative,
                            copy_of=len(with_copies) - 1,
                            copy_kind=kind,
                            brightness=factor,
                        )
                    )
            items = with_copies
        plan[split] = items
    return plan


def _augment(sample: WallSample, item: _Item) -> WallSample:
    """Roboflow-style augmentation copy: horizontal flip or brightness jitter."""
    if item.copy_kind == "hflip":
        return WallSample(
            image=np.ascontiguousarray(sample.image[:, ::-1]),
            instances=[np.ascontiguousarray(m[:, ::-1]) for m in sample.instances],
        )
    img = np.clip(np.rint(sample.image.astype(np.float32) * np.float32(item.brightness)), 0, 255).astype(np.uint8)
    return WallSample(image=img, instances=[m.copy() for m in sample.instances])


def _write_jpeg(path: pathlib.Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
        raise OSError(f"could not write {path}")


def _write_png(path: pathlib.Path, mask: np.ndarray) -> None:
    if not cv2.imwrite(str(path), mask):
        raise OSError(f"could not write {path}")


def _coco_header(dataset: str) -> dict:
    return {
        "info": {
            "year": "2024",
            "version": "1",
            "description": f"Synthetic stand-in for the Roboflow {dataset} export (promptseg.synthetic)",
            "contributor": "promptseg",
            "url": "",
            "date_created": _FIXED_DATE,
        },
        "licenses": [{"id": 1, "url": "https://creativecommons.org/licenses/by/4.0/", "name": "CC BY 4.0"}],
        "categories": [
            {"id": 0, "name": "cracks", "supercategory": "none"},
            {"id": 1, "name": "crack", "supercategory": "cracks"},
        ],
    }


def write_synthetic_export(
    dataset: str,
    out_dir: pathlib.Path,
    *,
    seed: int,
    image_size: int,
    counts: dict[str, int],
    negative_share: float,
    augment_copies_share: float = 0.0,
) -> dict:
    """Write a synthetic data set in the format of its real Roboflow export.

    Args:
        dataset: ``'cracks'`` -> COCO segmentation export; ``'drywall'`` -> YOLOv8
            detection export (plus true band masks under ``true_masks/``).
        out_dir: export root. The split folders, ``true_masks/``, ``data.yaml`` and
            ``README.roboflow.txt`` in it are replaced; nothing else is touched.
        seed: base seed; the generator is ``default_rng(seed + DATASET_OFFSETS[dataset])``.
        image_size: side of the square images in pixels (sizes scale from 320 px).
        counts: images per Roboflow split name (``train``, ``valid``, ``test``;
            ``val`` is accepted as an alias of ``valid``). Augmentation copies come on top.
        negative_share: share of images (per split, rounded) with no object.
        augment_copies_share: share of TRAIN images that also get an augmentation copy
            (horizontal flip or brightness jitter) with the same stem and a new
            ``.rf.<hash>``, annotations transformed accordingly.

    Returns:
        Summary dict: ``dataset``, ``format``, ``seed``, ``image_size``, and per split
        ``images`` (including copies), ``instances`` and ``negatives``, plus ``copies``
        (number of augmentation copies) and ``foreground_fraction`` (mean share of object
        pixels per image).
    """
    _check_dataset(dataset)
    if not 0.0 <= float(negative_share) <= 1.0:
        raise ValueError("negative_share must be in [0, 1]")
    if not 0.0 <= float(augment_copies_share) <= 1.0:
        raise ValueError("augment_copies_share must be in [0, 1]")
    if int(image_size) < 32:
        raise ValueError("image_size must be at least 32")
    size = int(image_size)
    counts_n = _normalise_counts(counts)
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in (*ROBOFLOW_SPLITS, "true_masks"):
        if (out_dir / name).exists():
            shutil.rmtree(out_dir / name)
    for name in ("data.yaml", "README.roboflow.txt"):
        (out_dir / name).unlink(missing_ok=True)

    rng = np.random.default_rng(int(seed) + DATASET_OFFSETS[dataset])
    plan = _plan(rng, counts_n, float(negative_share), float(augment_copies_share))
    fmt = DATASET_FORMATS[dataset]

    summary: dict = {
        "dataset": dataset,
        "format": fmt,
        "seed": int(seed),
        "image_size": size,
        "images": {},
        "instances": {},
        "negatives": {},
        "copies": 0,
    }
    fg_sum, fg_n = 0.0, 0
    for split, items in plan.items():
        if fmt == "coco":
            split_dir = out_dir / split
            split_dir.mkdir(parents=True)
            coco = _coco_header(dataset)
            coco["images"], coco["annotations"] = [], []
        else:
            img_dir, lbl_dir = out_dir / split / "images", out_dir / split / "labels"
            mask_dir = out_dir / "true_masks" / split
            for d in (img_dir, lbl_dir, mask_dir):
                d.mkdir(parents=True)
        rendered: list[WallSample] = []
        n_inst = n_neg = 0
        for image_id, item in enumerate(items):
            if item.copy_of is None:
                sample = render_wall_sample(dataset, np.random.default_rng(item.seed), size, negative=item.negative)
            else:
                sample = _augment(rendered[item.copy_of], item)
                summary["copies"] += 1
            rendered.append(sample)
            fname = item.file_stem + ".jpg"
            if fmt == "coco":
                _write_jpeg(split_dir / fname, sample.image)
                coco["images"].append(
                    {
                        "id": image_id,
                        "license": 1,
                        "file_name": fname,
                        "height": size,
                        "width": size,
                        "date_captured": _FIXED_DATE,
                        "extra": {"name": f"{item.stem}.jpg"},
                    }
                )
                anns = _coco_annotations(sample.instances, image_id, len(coco["annotations"]))
                coco["annotations"].extend(anns)
                count = len(anns)
            else:
                _write_jpeg(img_dir / fname, sample.image)
                lines = _yolo_lines(sample.instances)
                (lbl_dir / (item.file_stem + ".txt")).write_text("\n".join(lines) + ("\n" if lines else ""))
                _write_png(mask_dir / (item.file_stem + ".png"), sample.mask)
                count = len(lines)
            n_inst += count
            n_neg += count == 0
            fg_sum += float(np.count_nonzero(sample.mask)) / (size * size)
            fg_n += 1
        if fmt == "coco":
            (split_dir / "_annotations.coco.json").write_text(json.dumps(coco, indent=None, separators=(",", ":")))
        summary["images"][split] = len(items)
        summary["instances"][split] = n_inst
        summary["negatives"][split] = n_neg

    if fmt == "yolov8":
        (out_dir / "data.yaml").write_text(
            "train: ../train/images\n"
            "val: ../valid/images\n"
            "test: ../test/images\n"
            "\n"
            "nc: 1\n"
            f"names: ['{CLASS_NAMES[dataset]}']\n"
        )
    (out_dir / "README.roboflow.txt").write_text(
        f"Synthetic {dataset} data set generated offline by promptseg.synthetic "
        f"(seed {int(seed)}, {size} px) in the Roboflow {'COCO segmentation' if fmt == 'coco' else 'YOLOv8'} "
        "export format; not real photos.\n"
    )
    summary["foreground_fraction"] = fg_sum / fg_n if fg_n else 0.0
    return summary
