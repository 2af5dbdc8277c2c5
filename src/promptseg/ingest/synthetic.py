"""Seeded synthetic wall photos, written in exactly the formats Roboflow exports.

This is the embedded default data set: it lets the whole pipeline run offline and
reproducibly. Two data sets are produced, each in the export format of its real
Roboflow counterpart:

``cracks`` -- COCO segmentation export::

    out_dir/README.roboflow.txt
    out_dir/{train,valid,test}/_annotations.coco.json
    out_dir/{train,valid,test}/<stem>_jpg.rf.<32 hex>.jpg
    out_dir/true_measures.json   # sidecar: each annotation's true length and width (crack_truth)

``drywall`` -- YOLOv8 detection export (boxes only), plus sidecar truth masks::

    out_dir/README.roboflow.txt
    out_dir/data.yaml
    out_dir/{train,valid,test}/images/<stem>_jpg.rf.<32 hex>.jpg
    out_dir/{train,valid,test}/labels/<stem>_jpg.rf.<32 hex>.txt      # "0 cx cy w h"
    out_dir/true_masks/{train,valid,test}/<stem>_jpg.rf.<32 hex>.png  # {0,255} band mask

The images try to look like photos of walls rather than flat toys: a plaster / paint /
render / concrete texture (several octaves of low-frequency noise, fine grain, pores and
aggregate on rough surfaces), a varying base colour (off-white, grey, beige, concrete;
green board for drywall), scene context around the wall (a floor strip, a dark doorway or
room background at a side, a door / window frame, a second wall plane at a room corner),
a lighting falloff and off-centre vignette, soft shadows, dark stains and screw holes as
distractors, then an auto-exposing camera, optical blur and sensor noise.

* Cracks are branching, dark random-walk polylines (the open fissure 1.2-5 px wide at
  320 px before its taper, scaled with ``image_size``), 0.45-1.2 image sides long, growing
  both ways from a random point, 1-3 per image; branches end before they would close a
  loop. Like a human annotator, the label usually outlines a 1-2 px margin (at 320 px)
  over the crack's chipped, shadowed edges (those are rendered slightly darker), so the
  polygon is a little wider than the dark line, as on the real export. Each crack (with
  its branches) is one COCO annotation whose polygons are the outer contours of the label
  mask (``cv2.findContours`` with ``RETR_EXTERNAL`` / ``CHAIN_APPROX_SIMPLE``); the label
  is hole-free, so filling the polygons gives it back.
* Joints are long tape/compound bands (40-80 px wide at 320 px, scaled), vertical or
  horizontal, 1-2 per image, spanning most of the image, with feathered compound edges
  and a central paper-tape strip; faint: the compound is only 5-14 gray levels lighter
  than the wall. Each band's YOLO box is the bounding box of its pixels; the band pixels
  themselves are written as the sidecar truth mask.
* Objects partly hidden by an occluding context (floor, side, frame) are clipped to
  their visible pixels, so masks, polygons and boxes stay exact.

Target: every per-image figure that ``benchmarks/synthetic_vs_real.py`` compares has its
synthetic median inside the p10-p90 range of the real Roboflow exports (cracks-3ii36-yg05p;
drywall-join-detect-7nstl and -v1). The ranges, read off the real exports:

* foreground fraction: cracks 0.008-0.11 (median 0.029); drywall boxes 0.034-0.30 /
  0.021-0.29 (7nstl / v1);
* crack width, typical (2 x median distance transform on the ridge, px at 640): 4.4-51
  (median 14.6); widest: 8.5-80 (median 30);
* crack box long side / image side: 0.14-1.0 (median 0.70);
* brightness (mean gray): cracks 118-199 (median 152); drywall 100-176 / 89-166
  (medians 146 / 147);
* contrast (std gray): cracks 17.4-52.7 (median 36.7); drywall 18.1-84 / 13.3-80
  (medians 52 / 48).

With params.yaml's settings (seed 7, 320 px) the synthetic medians are: cracks foreground
0.017, typical width 11 px at 640, brightness 144, contrast 26.5; drywall brightness 145,
contrast 31. Nothing is made easier to get there: the cracks are wider and longer than
before (the real ones are), but fainter ones are included, and the added context edges,
corner creases, pores, darker stains and shadows are all crack- or band-like distractors.

Everything random comes from ``numpy.random.default_rng(seed + DATASET_OFFSETS[dataset])``
(each image draws its own child generator from it), and JPEGs are written with a fixed
quality, so the same arguments give byte-identical output.
"""

from __future__ import annotations

import functools
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

#: Sidecar of the cracks export: each annotation's true length and width (crack_truth).
TRUE_MEASURES_FILE = "true_measures.json"
_SPLIT_ALIASES = {"train": "train", "valid": "valid", "val": "valid", "test": "test"}
_REFERENCE_SIZE = 320.0  # pixel sizes in the brief are given for 320 px images
_FIXED_DATE = "2024-01-01T00:00:00+00:00"

# Exposure of the wall palette: a phone camera meters a wall to mid-grey, so even a white
# wall photographs at a gray level of about 150-190, not 235 (the real crack photos have a
# median mean gray of 152, the real drywall photos 146-147). With the palette at that level
# the auto-exposure gain below stays near 1, so the absolute strengths of the compound,
# tape and screw holes (gray levels) keep their meaning, and there is head-room for the
# +10-25 % brightness-jittered augmentation copies.
_EXPOSURE = 0.8
# Base wall colours in BGR (cv2 order), before exposure: off-whites, greys, beiges, bare
# concrete / render. Drywall also draws from _BOARD_PALETTE (moisture-resistant green board).
_WALL_PALETTE = _EXPOSURE * np.array(
    [
        [236, 238, 240],  # cool white
        [228, 233, 236],  # warm off-white
        [214, 220, 224],  # eggshell
        [200, 202, 204],  # light grey
        [176, 180, 183],  # mid grey
        [196, 210, 220],  # beige
        [178, 196, 212],  # sand
        [206, 214, 214],  # greige
        [164, 170, 174],  # bare concrete
        [150, 170, 188],  # weathered sand render
    ],
    dtype=np.float32,
)
#: Auto-exposure of the simulated camera: the mean gray it meters a scene to is drawn from
#: N(_AE_TARGET, _AE_SPREAD) (clipped at 2 sigma), unless that would push the 99.5th gray
#: percentile above _AE_HIGHLIGHT: then the highlights win (a +25 % brightness-jittered copy
#: stays below 255, so jittered copies do not clip and still match their original's dhash).
_AE_TARGET, _AE_SPREAD, _AE_HIGHLIGHT = 158.0, 22.0, 198.0
_BOARD_PALETTE = _EXPOSURE * np.array([[196, 206, 150], [200, 210, 190]], dtype=np.float32)  # green / grey-green board


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
    truth: list[dict] = field(default_factory=list)  # cracks: one per instance (see crack_truth)

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


def _scale_(img: np.ndarray, factor: np.ndarray) -> None:
    """``img *= factor`` in place for a ``(S, S, 3)`` image and a ``(S, S)`` factor (cv2 is
    several times faster than numpy's broadcasting here)."""
    cv2.multiply(img, cv2.merge([factor, factor, factor]), dst=img)


def _speckles(rng: np.random.Generator, size: int, density: float, sigma: float) -> np.ndarray:
    """Sparse soft dots (peak about 1): pores, aggregate, paint splatter, screw holes."""
    dots = (rng.random((size, size), dtype=np.float32) < density).astype(np.float32)
    dots = cv2.GaussianBlur(dots, (0, 0), sigma)
    return np.minimum(dots * np.float32(2.0 * np.pi * sigma * sigma), 1.0)


def _wall_texture(rng: np.random.Generator, size: int, dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(image, base_colour)``: a float32 BGR plaster/paint/concrete texture around a
    randomly chosen and jittered base colour.

    Surfaces range from smooth paint to rough render / concrete: a log-uniform roughness of
    1-3.5 (cracks; drywall boards are smooth paper, 1-1.6) scales the texture octaves and the
    grain, and rough surfaces get pores and aggregate specks (dark and light dots that a crack
    model must not take for cracks)."""
    palette = _WALL_PALETTE
    if dataset == "drywall" and rng.random() < 0.15:
        palette = _BOARD_PALETTE
    base = palette[rng.integers(len(palette))].copy()
    base += rng.normal(0.0, 2.5, 3).astype(np.float32)  # per-channel tint jitter
    base += np.float32(rng.normal(0.0, 8.0))  # overall brightness jitter
    base = np.minimum(base, np.float32(200.0))  # head-room for texture, lighting and jittered copies
    rough = float(np.exp(rng.uniform(0.0, math.log(3.5)))) if dataset == "cracks" else float(rng.uniform(1.0, 1.6))
    lum = np.zeros((size, size), np.float32)
    # Low-frequency octaves (paint unevenness, plaster waviness, render trowel marks) ...
    for cells, amp in ((3, rng.uniform(2.0, 6.0)), (8, rng.uniform(1.5, 4.0)), (24, rng.uniform(1.0, 2.5))):
        lum += np.float32(amp * rough) * _smooth_noise(rng, size, (cells, cells))
    # ... fine grain (orange-peel / sanded / sand-float texture) ...
    grain = rng.standard_normal((size, size), dtype=np.float32)
    grain = cv2.GaussianBlur(grain, (0, 0), rng.uniform(0.6, 1.2) * max(1.0, size / _REFERENCE_SIZE))
    lum += np.float32(rng.uniform(3.0, 7.0) * rough) * grain
    # ... pores (dark) and aggregate (light) on rough render / concrete ...
    if rough > 1.6:
        sig_px = rng.uniform(0.6, 1.3) * size / _REFERENCE_SIZE  # dot size scales with the image,
        density = rng.uniform(0.002, 0.008) * (rough - 1.0) / (sig_px * sig_px)  # dot count does not
        sig = max(0.5, sig_px)
        lum -= np.float32(rng.uniform(0.12, 0.3) * base.mean()) * _speckles(rng, size, density, sig)
        lum += np.float32(rng.uniform(0.05, 0.15) * base.mean()) * _speckles(rng, size, density, sig)
    # ... plus slight per-channel colour mottling.
    mottle = rng.standard_normal((6, 6, 3), dtype=np.float32) * rng.uniform(0.5, 1.5, 3).astype(np.float32)
    img = cv2.resize(mottle, (size, size), interpolation=cv2.INTER_CUBIC)
    img += cv2.merge([lum + base[ch] for ch in range(3)])
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
        cv2.line(
            mask, (int(ip[i, 0]), int(ip[i, 1])), (int(ip[i + 1, 0]), int(ip[i + 1, 1])), 255, int(thick[i]), cv2.LINE_8
        )


def _taper(n: int, rng: np.random.Generator) -> np.ndarray:
    """Width profile over ``n`` segments: thin at both ends, fluctuating in between."""
    t = (np.arange(n) + 0.5) / n
    prof = 0.35 + 0.65 * np.sin(np.pi * t) ** 0.6
    wobble = 1.0 + 0.25 * np.interp(t, np.linspace(0, 1, 6), rng.normal(0, 1, 6))
    return prof * np.clip(wobble, 0.5, 1.5)


@functools.cache
def _drawn_width(thickness: int, angle_deg: int) -> float:
    """The width ``cv2.line(..., thickness, LINE_8)`` really draws at this angle (px, across the
    line): the area added by lengthening a line from 100 to 300 px, divided by 200 (the round
    caps cancel). OpenCV's thickness is not the width: thickness 3 draws 5 px across a horizontal
    line and about 3.5 px across a diagonal one."""
    a = math.radians(angle_deg)
    areas = []
    for length in (100.0, 300.0):
        canvas = np.zeros((400, 400), np.uint8)
        c = np.array([200.0, 200.0])
        d = np.array([math.cos(a), math.sin(a)]) * length / 2
        p0, p1 = np.rint(c - d).astype(int), np.rint(c + d).astype(int)
        cv2.line(canvas, (int(p0[0]), int(p0[1])), (int(p1[0]), int(p1[1])), 255, int(thickness), cv2.LINE_8)
        areas.append(float(np.count_nonzero(canvas)))
    return (areas[1] - areas[0]) / 200.0


def crack_truth(
    strokes: list[tuple[np.ndarray, np.ndarray]], margin: int, size: int, hidden: np.ndarray | None = None
) -> dict:
    """A crack's true length and width (px) from the polylines it was drawn with, for the
    measurement benchmark (``promptseg.serve.measure``; nothing here draws or draws random numbers).

    ``strokes``: (points (n+1, 2) as x, y; cv2 thickness per segment (n,)) for the main walk and
    each branch. A segment's width is what OpenCV drew across it (:func:`_drawn_width`) plus the
    annotator's margin on both sides. Only visible parts count (inside the image and not
    ``hidden``, sampled every 0.5 px). Length: the visible centre lines plus, at each visible free
    end (the main walk's two ends, each branch's tip), half the width there (the round cap)."""
    total_len, wsum, wmax, caps = 0.0, 0.0, 0.0, 0.0
    for k, (pts, thick) in enumerate(strokes):
        for i in range(len(pts) - 1):
            p0, p1 = pts[i], pts[i + 1]
            seg = float(np.hypot(*(p1 - p0)))
            if seg <= 0:
                continue
            n = max(2, int(math.ceil(seg / 0.5)) + 1)
            t = np.linspace(0.0, 1.0, n)
            q = np.rint(p0[None, :] + t[:, None] * (p1 - p0)[None, :]).astype(np.int64)
            vis = (q[:, 0] >= 0) & (q[:, 0] < size) & (q[:, 1] >= 0) & (q[:, 1] < size)
            if hidden is not None:
                vis[vis] &= ~hidden[q[vis, 1], q[vis, 0]]
            share = float(vis.mean())
            if share == 0.0:
                continue
            angle = int(round(math.degrees(math.atan2(p1[1] - p0[1], p1[0] - p0[0])) % 180.0))
            width = _drawn_width(int(thick[i]), angle) + 2 * margin
            total_len += seg * share
            wsum += width * seg * share
            wmax = max(wmax, width)
        # free ends: both ends of the main walk (k == 0), the tip of a branch
        for end, j in [(pts[0], 0), (pts[-1], len(thick) - 1)] if k == 0 else [(pts[-1], len(thick) - 1)]:
            e = np.rint(end).astype(np.int64)
            if 0 <= e[0] < size and 0 <= e[1] < size and (hidden is None or not hidden[e[1], e[0]]):
                caps += (_drawn_width(int(thick[j]), 0) + 2 * margin) / 2
    return {
        "length_px": round(total_len + caps, 2),
        "mean_width_px": round(wsum / total_len, 2) if total_len else 0.0,
        "max_width_px": round(wmax, 2),
        "margin_px": int(margin),
    }


def _crack_mask(rng: np.random.Generator, size: int, strokes: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Render one crack (main walk plus thinner branches): ``(core, label)`` {0,255} masks.

    ``core`` is the open, dark fissure (1.2-5 px wide at 320 px before the taper);
    ``label`` is what an annotator outlines: the core plus, for most cracks, a margin of
    1-2 px (at 320 px) over the chipped, shadowed edges, as on the real polygons, which are
    drawn wider than the visible dark line. The main walk grows both ways from a random
    point and is 0.45-1.2 image sides long (it often runs off the image, like the real
    cracks: their boxes' long side is a median 0.7 of the image side)."""
    scale = size / _REFERENCE_SIZE
    core = np.zeros((size, size), np.uint8)
    width = rng.uniform(1.2, 5.0) * scale
    length = rng.uniform(0.45, 1.2) * size
    step = max(1.5, 3.0 * scale)
    start = rng.uniform(0.1, 0.9, 2) * size
    angle = rng.uniform(0, 2 * np.pi)
    fwd = length * rng.uniform(0.35, 0.65)
    ahead = _crack_walk(rng, start, angle, fwd, step)
    behind = _crack_walk(rng, start, angle + np.pi, length - fwd, step)
    main = np.vstack([behind[::-1], ahead[1:]])
    n = len(main) - 1
    main_widths = width * _taper(n, rng)
    _draw_polyline(core, main, main_widths)
    if strokes is not None:  # for crack_truth: the polylines and the thicknesses they were drawn with
        strokes.append((main, np.maximum(1, np.rint(main_widths)).astype(np.int32)))
    margin = int(round(float(rng.choice([0.0, 1.0, 1.0, 2.0])) * scale))
    n_branches = int(rng.choice([0, 1, 1, 2, 3]))
    for _ in range(n_branches):
        i0 = int(rng.integers(n // 10, max(n // 10 + 1, 9 * n // 10)))
        direction = angle + (np.pi if rng.random() < 0.5 else 0.0)
        b_angle = direction + rng.choice([-1.0, 1.0]) * rng.uniform(0.4, 1.1)
        b_len = length * rng.uniform(0.15, 0.5)
        branch = _crack_walk(rng, main[i0], b_angle, b_len, step)
        b_width = max(0.6 * scale, width * rng.uniform(0.4, 0.8))
        branch = _stop_short(core, branch, b_width / 2 + 2 * margin + 2.0)
        nb = len(branch) - 1
        if nb < 1:
            continue
        # branches start as wide as the parent and thin out towards the tip
        _draw_polyline(core, branch, np.linspace(1.0, 0.3, nb) * b_width)
        if strokes is not None:
            strokes.append((branch, np.maximum(1, np.rint(np.linspace(1.0, 0.3, nb) * b_width)).astype(np.int32)))
    if strokes is not None:
        strokes.append(margin)
    label = core
    if margin >= 1:
        label = cv2.dilate(core, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin + 1, 2 * margin + 1)))
    # an annotator outlines the crack and ignores pinholes in it: the label is the filled
    # outer contour (exactly what the exported COCO polygons describe)
    contours, _ = cv2.findContours(label, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    filled = np.zeros_like(label)
    cv2.drawContours(filled, contours, -1, 255, thickness=cv2.FILLED)
    return core, filled


def _stop_short(core: np.ndarray, branch: np.ndarray, gap: float) -> np.ndarray:
    """Cut a branch polyline where, having left the crack drawn so far, it comes back within
    ``gap`` px of it: branches end before they would close a loop (an enclosed piece of wall
    cannot be told apart in an outline polygon)."""
    size = core.shape[0]
    dist = cv2.distanceTransform(np.where(core > 0, 0, 255).astype(np.uint8), cv2.DIST_L2, 3)
    ip = np.rint(branch).astype(np.int64)
    inside = (ip[:, 0] >= 0) & (ip[:, 0] < size) & (ip[:, 1] >= 0) & (ip[:, 1] < size)
    d = np.full(len(ip), np.inf)
    d[inside] = dist[ip[inside, 1], ip[inside, 0]]
    away = np.nonzero(d >= gap + 1.0)[0]
    if len(away) == 0:
        return branch[:1]
    back = np.nonzero(d[away[0] :] < gap)[0]
    return branch if len(back) == 0 else branch[: away[0] + back[0]]


def _apply_cracks(rng: np.random.Generator, img: np.ndarray, cores: list[np.ndarray], labels: list[np.ndarray]) -> None:
    """Darken ``img`` in place along the cracks: the core to 30-70 % of the wall brightness,
    the labelled rim around it (chipped, shadowed edges) by 5-18 %, and a faint shadow halo
    just outside."""
    size = img.shape[0]
    core = np.zeros((size, size), np.uint8)
    label = np.zeros((size, size), np.uint8)
    for c, m in zip(cores, labels):
        np.maximum(core, c, out=core)
        np.maximum(label, m, out=label)
    inside = core.astype(np.float32) / 255.0
    lab = label.astype(np.float32) / 255.0
    rim = lab - inside
    keep = np.float32(rng.uniform(0.3, 0.7)) + np.float32(0.07) * _smooth_noise(rng, size, (5, 5))
    keep = np.clip(keep, 0.22, 0.78)
    halo = cv2.GaussianBlur(lab, (0, 0), max(0.8, 1.5 * size / _REFERENCE_SIZE))
    factor = 1.0 - inside * (1.0 - keep)
    factor *= 1.0 - np.float32(rng.uniform(0.05, 0.18)) * rim
    factor *= 1.0 - np.float32(rng.uniform(0.03, 0.1)) * halo * (1.0 - lab)
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
            clash = any(v == vertical and abs(c - centre) < (w + width) / 2 + 0.1 * size for v, c, w in bands)
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
        lum = cv2.transform(img, np.full((1, 3), 1.0 / 3.0, np.float32))
        shade = streaks + np.float32(0.35) * (lum - np.float32(lum.mean()))
        feather = cv2.GaussianBlur(m, (0, 0), max(1.0, rng.uniform(0.06, 0.14) * width))
        alpha = np.float32(rng.uniform(0.75, 0.95)) * np.maximum(feather, 0.85 * m)
        _scale_(img, 1.0 - alpha)
        img += cv2.merge([alpha * (shade + tone[ch]) for ch in range(3)])
        # central paper tape strip (about 5 cm of a 15-30 cm taping area)
        tape_w = width * rng.uniform(0.3, 0.5)
        # follow the (slight) tilt of the band: fit its centre line across vs. along
        along_px = ys if vertical else xs
        across_px = xs if vertical else ys
        slope, icpt = np.polyfit(along_px.astype(np.float64), across_px.astype(np.float64), 1)
        t = np.arange(size, dtype=np.float32)
        along, across = (t[:, None], t[None, :]) if vertical else (t[None, :], t[:, None])
        centre_line = np.float32(slope) * along + np.float32(icpt)
        tape = (np.abs(across - centre_line) <= tape_w / 2).astype(np.float32) * m
        tape = cv2.GaussianBlur(tape, (0, 0), max(0.6, 1.0 * scale))
        t_delta = np.float32(rng.choice([-1.0, 1.0]) * rng.uniform(2.0, 6.0))
        t_tint = rng.normal(0.0, 2.0, 3).astype(np.float32)
        img += cv2.merge([tape * (t_delta + t_tint[ch]) for ch in range(3)])


def _apply_distractors(rng: np.random.Generator, img: np.ndarray, dataset: str) -> None:
    """Soft shadows, dark stains and (drywall) screw holes / screw-head spots, in place."""
    size = img.shape[0]
    x, y = _coords(size)
    # soft half-plane shadow (a fixture, a ladder, the photographer ...)
    if rng.random() < 0.55:
        th = float(rng.uniform(0, 2 * np.pi))
        d = math.cos(th) * x + math.sin(th) * y - float(rng.uniform(0.2, 0.9))
        soft = float(rng.uniform(0.05, 0.3))
        shadow = 1.0 / (1.0 + np.exp(-d / np.float32(soft)))
        _scale_(img, 1.0 - np.float32(rng.uniform(0.1, 0.35)) * shadow)
    # stains: irregular dark blotches (damp, dirt, filler), slightly brownish; each is
    # computed in a window around it (the blotch is zero further out)
    n_stains = int(rng.choice([0, 1, 1, 2, 3]))
    tint = np.array([1.25, 1.0, 0.8], np.float32)  # B darkens most -> brownish
    blur = max(1.0, 0.01 * size)
    for _ in range(n_stains):
        cx, cy = (float(v) for v in rng.uniform(-0.9, 0.9, 2))
        r1, r2 = (float(v) for v in rng.uniform(0.05, 0.25, 2))
        th = float(rng.uniform(0, np.pi))
        half = 2.0 * max(r1, r2) * size / 2.0 + 3.0 * blur
        px, py = (cx + 1.0) * size / 2.0, (cy + 1.0) * size / 2.0
        c0, c1 = max(0, int(px - half)), min(size, int(px + half) + 1)
        r0, rb = max(0, int(py - half)), min(size, int(py + half) + 1)
        xs, ys = x[r0:rb, c0:c1], y[r0:rb, c0:c1]
        c, s = math.cos(th), math.sin(th)
        u = (c * (xs - cx) + s * (ys - cy)) / r1
        v = (-s * (xs - cx) + c * (ys - cy)) / r2
        cells = (max(2, round(10 * (rb - r0) / size)), max(2, round(10 * (c1 - c0) / size)))
        grid = rng.standard_normal(cells, dtype=np.float32)
        wobble = cv2.resize(grid, (c1 - c0, rb - r0), interpolation=cv2.INTER_CUBIC)
        # at most 0.6 * 1.6 of wobble: the blotch stays inside 2 radii, inside the window
        q = u * u + v * v + 0.6 * np.clip(wobble, -1.6, 1.6)
        blot = np.clip(1.0 - q, 0.0, 1.0).astype(np.float32)
        blot = cv2.GaussianBlur(blot, (0, 0), blur)
        strength = np.float32(rng.uniform(0.1, 0.4))
        roi = img[r0:rb, c0:c1]
        roi *= 1.0 - np.clip(strength * blot[..., None] * tint[None, None, :], 0.0, 0.6)
    if dataset == "drywall" and rng.random() < 0.7:
        # screws along a stud line: open screw holes (dark) or heads spotted with compound
        # (light), in a column or row
        n = int(rng.integers(2, 11))
        vertical = rng.random() < 0.5
        pos = rng.uniform(0.1, 0.9) * size
        along = np.sort(rng.uniform(0.05, 0.95, n)) * size
        spots = np.zeros((size, size), np.float32)
        r = max(1, int(round(rng.uniform(2.0, 4.0) * size / _REFERENCE_SIZE)))
        for a in along:
            pt = (int(pos), int(a)) if vertical else (int(a), int(pos))
            cv2.circle(spots, pt, r, 1.0, -1, cv2.LINE_AA)
        spots = cv2.GaussianBlur(spots, (0, 0), 0.8)
        sign = -1.0 if rng.random() < 0.65 else 1.0
        img += cv2.merge([spots * np.float32(sign * rng.uniform(6.0, 30.0))] * 3)


@dataclass
class _Context:
    """One piece of scene around / on the wall: ``kind`` is ``floor`` / ``side`` / ``trim``
    (occluding: the wall, and any object on it, is hidden where ``dist > 0``) or ``plane``
    (a second wall plane, turned from the light: only darkened). ``dist`` is the signed
    distance in px to the boundary line, positive on the context side."""

    kind: str
    dist: np.ndarray  # float32 (S, S)

    @property
    def mask(self) -> np.ndarray:
        return (self.dist > 0).astype(np.float32)


def _half_plane(
    rng: np.random.Generator, kind: str, size: int, side: str, depth: tuple[float, float], tilt: float
) -> _Context:
    """The part of the image beyond a slightly tilted line ``depth`` (a share of the image
    side, drawn uniformly) from the ``side`` border (``bottom`` / ``top`` / ``left`` /
    ``right``); ``tilt`` is the largest slope of the line."""
    d = float(rng.uniform(*depth)) * size
    k = float(rng.uniform(-tilt, tilt))
    t = np.arange(size, dtype=np.float32) + 0.5
    across, along = (t[:, None], t[None, :]) if side in ("bottom", "top") else (t[None, :], t[:, None])
    line = np.float32(d) + np.float32(k) * (along - np.float32(size / 2))
    dist = (across - (size - line)) if side in ("bottom", "right") else (line - across)
    return _Context(kind, np.ascontiguousarray(np.broadcast_to(dist, (size, size)), dtype=np.float32))


def _context_plan(rng: np.random.Generator, size: int, dataset: str) -> list[_Context]:
    """Decide which scene context the photo shows (each independently): a floor strip at the
    bottom, a dark background / doorway at a side, a door or window frame at a side or the
    top, and a second wall plane (a room corner or the ceiling). Real photos are rarely
    framed on the wall alone; the real drywall photos mostly show the board standing on a
    floor in a room."""
    if dataset == "drywall":
        p = {"floor": 0.45, "side": 0.3, "trim": 0.1, "plane": 0.2}
    else:
        p = {"floor": 0.15, "side": 0.2, "trim": 0.2, "plane": 0.3}
    out: list[_Context] = []
    if rng.random() < p["floor"]:
        out.append(_half_plane(rng, "floor", size, "bottom", (0.08, 0.3), 0.08))
    for kind, depth in (("side", (0.06, 0.25)), ("trim", (0.04, 0.1))):
        if rng.random() < p[kind]:
            where = "left" if rng.random() < 0.5 else "right"
            if kind == "trim" and rng.random() < 0.3:
                where = "top"
            out.append(_half_plane(rng, kind, size, where, depth, 0.05))
    if rng.random() < p["plane"]:
        where = ("left", "right", "top")[int(rng.integers(3))]
        out.append(_half_plane(rng, "plane", size, where, (0.15, 0.5), 0.1))
    return out


def _occluded(plan: list[_Context]) -> np.ndarray | None:
    """Bool mask of the pixels hidden by occluding context, or None."""
    occ = [c.dist > 0 for c in plan if c.kind != "plane"]
    return np.logical_or.reduce(occ) if occ else None


def _apply_context(rng: np.random.Generator, img: np.ndarray, base: np.ndarray, plan: list[_Context]) -> None:
    """Paint the planned context into ``img`` in place (before the camera: lighting, blur and
    noise apply to it too)."""
    size = img.shape[0]
    scale = size / _REFERENCE_SIZE
    lum = float(base.mean())
    for ctx in plan:
        m = ctx.mask
        if ctx.kind == "plane":
            # the other plane gets less light; a thin shadowed crease along the corner
            crease = np.exp(-0.5 * (ctx.dist / np.float32(max(0.8, 1.2 * scale))) ** 2)
            factor = (1.0 - np.float32(rng.uniform(0.15, 0.45)) * m) * (
                1.0 - np.float32(rng.uniform(0.05, 0.2)) * crease
            )
            _scale_(img, factor.astype(np.float32))
            continue
        if ctx.kind == "floor":
            # concrete / screed floor: darker, grey-brown, textured, with paint splatter
            level = lum * rng.uniform(0.35, 0.7)
            colour = level * (1.0 + rng.normal(0.0, 0.05, 3)).astype(np.float32)
            tex = np.float32(rng.uniform(5.0, 12.0)) * _smooth_noise(rng, size, (6, 12))
            tex += np.float32(rng.uniform(3.0, 7.0)) * rng.standard_normal((size, size), dtype=np.float32)
            tex += np.float32(rng.uniform(0.3, 0.8) * lum) * _speckles(
                rng, size, rng.uniform(0.0005, 0.003), max(0.6, 1.2 * scale)
            )
            contact = rng.uniform(0.2, 0.45)  # shadow where the wall meets the floor
        elif ctx.kind == "side":
            # room background / doorway seen past the wall edge: dark, out of focus
            level = lum * rng.uniform(0.12, 0.55)
            colour = level * (1.0 + rng.normal(0.0, 0.12, 3)).astype(np.float32)
            tex = np.float32(rng.uniform(0.1, 0.3) * level) * _smooth_noise(rng, size, (5, 5))
            contact = rng.uniform(0.0, 0.25)
        else:
            # door / window frame: painted (lighter) or wood (darker), smooth
            level = lum * (rng.uniform(1.02, 1.15) if rng.random() < 0.6 else rng.uniform(0.3, 0.55))
            colour = level * (1.0 + rng.normal(0.0, 0.06, 3)).astype(np.float32)
            tex = np.float32(rng.uniform(1.0, 3.0)) * _smooth_noise(rng, size, (4, 16))
            contact = rng.uniform(0.25, 0.5)  # the frame's shadow line on the wall
        width = np.float32(rng.uniform(1.5, 6.0) * scale)
        shade = np.exp(np.minimum(ctx.dist, 0.0) / width) * (1.0 - m)
        _scale_(img, ((1.0 - np.float32(contact) * shade) * (1.0 - m)).astype(np.float32))
        img += cv2.merge([m * (tex + colour[ch]) for ch in range(3)])


def _apply_camera(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Lighting falloff and off-centre vignette, optical blur, sensor noise; returns ``uint8``.

    The light falls off by 8-35 % across the image from its brightest side (a window or a
    lamp to one side) and by up to 30 % more towards the corners around an off-centre
    hot spot: the low-frequency shading that dominates the contrast of real wall photos."""
    size = img.shape[0]
    x, y = _coords(size)
    th = float(rng.uniform(0, 2 * np.pi))
    ramp = (math.cos(th) * x + math.sin(th) * y) / np.float32(math.sqrt(2.0))  # in [-1, 1]
    falloff = np.float32(rng.uniform(0.08, 0.35)) * (1.0 - ramp) / 2.0
    cx, cy = (np.float32(v) for v in rng.uniform(-0.4, 0.4, 2))
    vignette = np.float32(rng.uniform(0.05, 0.3)) * ((x - cx) ** 2 + (y - cy) ** 2) / 2.0
    light = np.maximum(1.0 - falloff - vignette, 0.3).astype(np.float32)
    colour = (1.0 + rng.normal(0.0, 0.01, 3)).astype(np.float32)  # warm / cool light
    img = cv2.multiply(img, cv2.merge([light * colour[0], light * colour[1], light * colour[2]]))
    # auto-exposure: meter the scene to a mid-tone (with the usual metering error), but do
    # not blow out the highlights
    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    sub = gray[::2, ::2].ravel()
    k = min(sub.size - 1, int(0.995 * sub.size))
    highlight = float(np.partition(sub, k)[k])
    target = float(
        np.clip(rng.normal(_AE_TARGET, _AE_SPREAD), _AE_TARGET - 2 * _AE_SPREAD, _AE_TARGET + 2 * _AE_SPREAD)
    )
    gain = min(target / max(float(gray.mean()), 1.0), _AE_HIGHLIGHT / max(highlight, 1.0))
    img *= np.float32(gain)
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.45, 0.85))
    sigma = np.float32(rng.uniform(1.2, 3.5))
    luma_noise = rng.standard_normal((size, size), dtype=np.float32)
    noise = rng.standard_normal((size, size, 3), dtype=np.float32)
    noise *= np.float32(0.5) * sigma
    noise += cv2.merge([np.float32(0.7) * sigma * luma_noise] * 3)
    img += noise
    np.clip(img, 0, 255, out=img)
    return np.rint(img, out=img).astype(np.uint8)


def _clip_objects(masks: list[np.ndarray], occ: np.ndarray | None, min_keep: float) -> list[np.ndarray]:
    """Remove the occluded pixels from each object mask; keep a mask only if at least
    ``min_keep`` of its pixels (and at least one) stay visible."""
    out = []
    for m in masks:
        v = m if occ is None else np.where(occ, np.uint8(0), m)
        nv = np.count_nonzero(v)
        if nv and nv >= min_keep * np.count_nonzero(m):
            out.append(v)
    return out


def render_wall_sample(
    dataset: str, rng: np.random.Generator, image_size: int, *, negative: bool = False
) -> WallSample:
    """Render one synthetic wall photo for ``dataset`` (``'cracks'`` or ``'drywall'``).

    Args:
        dataset: which object to draw: cracks (1-3 per image) or joint bands (1-2).
        rng: the generator everything is drawn from.
        image_size: side of the square image in pixels.
        negative: draw no object (distractors only).

    Returns:
        A :class:`WallSample` with the ``uint8`` BGR image and one {0,255} mask per object.
        Objects partly hidden by the scene context (a floor strip, a frame ...) are clipped
        to their visible pixels; if the context would hide every object of a positive
        image, the occluding context is left out.
    """
    _check_dataset(dataset)
    size = int(image_size)
    img, base = _wall_texture(rng, size, dataset)
    plan = _context_plan(rng, size, dataset)
    occ = _occluded(plan)
    instances: list[np.ndarray] = []
    truth: list[dict] = []
    if dataset == "drywall":
        if not negative:
            bands = _band_masks(rng, size)
            instances = _clip_objects(bands, occ, 0.6)
            if not instances:
                plan = [c for c in plan if c.kind == "plane"]
                instances = _clip_objects(bands, None, 0.0)
            _apply_bands(rng, img, base, instances)
        _apply_distractors(rng, img, dataset)
    else:
        # stains and shadows go under the cracks (the crack is in the wall surface)
        _apply_distractors(rng, img, dataset)
        if not negative:
            n = int(rng.choice([1, 1, 1, 2, 2, 3]))
            geometry = [[] for _ in range(n)]
            drawn = [_crack_mask(rng, size, geometry[i]) for i in range(n)]
            cores = [c for c, _ in drawn]
            labels = _clip_objects([lab for _, lab in drawn], occ, 0.0)
            hidden = occ
            if not labels:
                plan = [c for c in plan if c.kind == "plane"]
                labels = _clip_objects([lab for _, lab in drawn], None, 0.0)
                hidden = None
            _apply_cracks(rng, img, cores, [lab for _, lab in drawn])
            instances = labels
            # the truth of the cracks _clip_objects kept (it drops wholly hidden ones, keeping order)
            kept = [
                i
                for i, (_, lab) in enumerate(drawn)
                if np.count_nonzero(lab if hidden is None else np.where(hidden, 0, lab))
            ]
            truth = [crack_truth(geometry[i][:-1], geometry[i][-1], size, hidden) for i in kept]
            truth = [
                dict(t, occluded=bool(hidden is not None and np.any(hidden & (drawn[i][1] > 0))))
                for t, i in zip(truth, kept)
            ]
    _apply_context(rng, img, base, plan)
    return WallSample(image=_apply_camera(rng, img), instances=instances, truth=truth)


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


def _plan(
    rng: np.random.Generator, counts: dict[str, int], negative_share: float, augment_copies_share: float
) -> dict[str, list[_Item]]:
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
            truth=[dict(t) for t in sample.truth],
        )
    img = np.clip(np.rint(sample.image.astype(np.float32) * np.float32(item.brightness)), 0, 255).astype(np.uint8)
    return WallSample(image=img, instances=[m.copy() for m in sample.instances], truth=[dict(t) for t in sample.truth])


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
            "description": f"Synthetic stand-in for the Roboflow {dataset} export (promptseg.ingest.synthetic)",
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
    _clear_export(out_dir)
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
    fractions: list[float] = []  # foreground share per image, every split
    true_measures: dict[str, dict[str, list[dict]]] = {}
    for split, items in plan.items():
        samples = _rendered_samples(dataset, items, size, summary)
        if fmt == "coco":
            counted = _write_coco_split(dataset, out_dir / split, samples, size, true_measures.setdefault(split, {}))
        else:
            counted = _write_yolo_split(out_dir, split, samples)
        n_inst = n_neg = 0
        for count, sample in counted:
            n_inst += count
            n_neg += count == 0
            fractions.append(float(np.count_nonzero(sample.mask)) / (size * size))
        summary["images"][split] = len(items)
        summary["instances"][split] = n_inst
        summary["negatives"][split] = n_neg
    true_measures = {split: m for split, m in true_measures.items() if m}
    _write_export_files(out_dir, dataset, fmt, int(seed), size, true_measures)
    fg_sum = 0.0
    for fraction in fractions:  # summed in order, as the images were written
        fg_sum += fraction
    summary["foreground_fraction"] = fg_sum / len(fractions) if fractions else 0.0
    return summary


def _clear_export(out_dir: pathlib.Path) -> None:
    """Remove the split folders, ``true_masks/`` and the export's own files (nothing else) from ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in (*ROBOFLOW_SPLITS, "true_masks"):
        if (out_dir / name).exists():
            shutil.rmtree(out_dir / name)
    for name in ("data.yaml", "README.roboflow.txt", TRUE_MEASURES_FILE):
        (out_dir / name).unlink(missing_ok=True)


def _rendered_samples(dataset: str, items: list, size: int, summary: dict):
    """(image id, plan item, sample) for each item of a split: rendered, or an augmentation copy of an earlier
    one (counted in ``summary["copies"]``)."""
    rendered: list[WallSample] = []
    for image_id, item in enumerate(items):
        if item.copy_of is None:
            sample = render_wall_sample(dataset, np.random.default_rng(item.seed), size, negative=item.negative)
        else:
            sample = _augment(rendered[item.copy_of], item)
            summary["copies"] += 1
        rendered.append(sample)
        yield image_id, item, sample


def _write_coco_split(dataset: str, split_dir: pathlib.Path, samples, size: int, true_measures: dict):
    """The split's JPEGs and ``_annotations.coco.json`` (written after the last image); yields (annotations
    written, sample) per image; ``true_measures[file name]``: the truth of each annotation."""
    split_dir.mkdir(parents=True)
    coco = _coco_header(dataset)
    coco["images"], coco["annotations"] = [], []
    for image_id, item, sample in samples:
        fname = item.file_stem + ".jpg"
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
        # the truth of the instances that became annotations (_coco_annotations skips polygon-less ones)
        kept = [t for inst, t in zip(sample.instances, sample.truth) if crack_polygons(inst)]
        true_measures[fname] = [dict(t, annotation_id=a["id"]) for t, a in zip(kept, anns)]
        yield len(anns), sample
    (split_dir / "_annotations.coco.json").write_text(json.dumps(coco, indent=None, separators=(",", ":")))


def _write_yolo_split(out_dir: pathlib.Path, split: str, samples):
    """The split's JPEGs, YOLO label files and true band masks; yields (label lines written, sample) per image."""
    img_dir, lbl_dir = out_dir / split / "images", out_dir / split / "labels"
    mask_dir = out_dir / "true_masks" / split
    for d in (img_dir, lbl_dir, mask_dir):
        d.mkdir(parents=True)
    for _, item, sample in samples:
        _write_jpeg(img_dir / (item.file_stem + ".jpg"), sample.image)
        lines = _yolo_lines(sample.instances)
        (lbl_dir / (item.file_stem + ".txt")).write_text("\n".join(lines) + ("\n" if lines else ""))
        _write_png(mask_dir / (item.file_stem + ".png"), sample.mask)
        yield len(lines), sample


def _write_export_files(out_dir: pathlib.Path, dataset: str, fmt: str, seed: int, size: int, true_measures) -> None:
    """``data.yaml`` (YOLO), ``README.roboflow.txt`` and, for COCO, the true crack measures."""
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
        f"Synthetic {dataset} data set generated offline by promptseg.ingest.synthetic "
        f"(seed {seed}, {size} px) in the Roboflow {'COCO segmentation' if fmt == 'coco' else 'YOLOv8'} "
        "export format; not real photos.\n"
    )
    if fmt == "coco":
        (out_dir / TRUE_MEASURES_FILE).write_text(
            json.dumps(
                {
                    "about": "true length and width (px) of each crack annotation, from the polylines it was drawn "
                    "with (promptseg.ingest.synthetic.crack_truth); for benchmarks/measure_accuracy.py",
                    "splits": true_measures,
                },
                indent=None,
                separators=(",", ":"),
            )
        )
