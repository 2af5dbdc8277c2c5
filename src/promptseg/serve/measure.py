"""Measurements from binary masks: cracks (length, width, orientation, area) and drywall joints.

Per connected component (8-connectivity) of a {0, 255} mask:

* **length** along the component's skeleton (``skimage.morphology.skeletonize``), after pruning
  spurs: a branch from an end point to a junction that is shorter than ``prune_factor`` times the
  local width (and ``min_spur_px``) is removed. The skeleton's length counts 1 px per orthogonal
  step and sqrt(2) per diagonal step (a diagonal step is not counted where both orthogonal
  neighbours are on the skeleton, so corners are not counted twice); each skeleton end point then
  adds its distance to the component's edge (``EDT - 0.5``): a skeleton stops about half a width
  short of each end of the shape. Exact for straight lines at 0, 45 and 90 degrees; at other
  angles the 8-connected path is up to about 8% long (measured in tests/test_measure.py).
* **width**: the distance transform sampled on the skeleton, calibrated for pixels. ``EDT`` is
  ``cv2.distanceTransform`` (``DIST_L2``, precise): from a pixel's centre to the nearest background
  pixel's centre. At the centre of an odd ``w``-px band it is ``(w + 1) / 2``, so the textbook
  ``2 x EDT`` says ``w + 1``; ``2 x EDT - 1`` is right for odd ``w`` but says ``w - 1`` for even ``w``
  (the skeleton sits on one of the two middle pixels). We take ``EDT(p)`` plus the largest ``EDT``
  of p's 8-neighbours off the skeleton (the far side's count): exact for odd and even bands.
  ``max_width`` is its maximum on the pruned skeleton away from the end points (where the skeleton
  runs into the rounded end); ``mean_width`` is ``area / length``, which is exact for a band of any
  width and not limited to whole pixels.
* **orientation**: the principal axis of the skeleton's pixels, degrees in [0, 180) from the
  image's x axis (0 = horizontal, 90 = vertical; y grows downwards, so 45 points up-right).
* **area**: pixels.

Per image: the number of components, total length and max width. With a scale (mm per px),
lengths and widths are also given in mm and each crack gets the BRE Digest 251 category from its
max width: 0 below 0.1 mm, 1 up to 1 mm, 2 up to 5 mm, 3 5-15 mm, 4 15-25 mm, 5 over 25 mm.

Drywall joints (``kind="joint"``): per component its orientation class (vertical / horizontal /
other, within ``orientation_tolerance_deg``), its length and the taped share of the image. The
models were trained on joint BOXES (the drywall labels are YOLO boxes), so their masks are
box-shaped bands; the output says so.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
from skimage.morphology import skeletonize

from promptseg.paths import write_json
from promptseg.settings import MeasureParams, build, to_plain

__all__ = [
    "BRE_251_LIMITS_MM",
    "KINDS",
    "MeasureSettings",
    "bre_category",
    "draw_measurements",
    "measure_files",
    "measure_mask",
]

KINDS = ("crack", "joint")
# Upper limits (mm) of BRE Digest 251 categories 0..4; category 5 is above the last.
BRE_251_LIMITS_MM = (0.1, 1.0, 5.0, 15.0, 25.0)
BRE_251_TEXT = (
    "0: hairline, < 0.1 mm",
    "1: fine, up to 1 mm",
    "2: up to 5 mm",
    "3: 5-15 mm",
    "4: 15-25 mm",
    "5: over 25 mm",
)
JOINT_LABEL_NOTE = (
    "the drywall training labels were boxes (YOLO), so joint masks are box-shaped bands: "
    "their length and orientation are meaningful, their width is the box's"
)
NO_SCALE_NOTE = "no scale given (--mm-per-px or --image-width-mm): lengths and widths are in pixels only"


@dataclass
class MeasureSettings:
    """The numbers that change a measurement (``params.yaml`` ``measure:``)."""

    min_area_px: int = 10  # components smaller than this are ignored (specks)
    prune_factor: float = 1.0  # spurs shorter than this x the local width are pruned ...
    min_spur_px: int = 3  # ... and never shorter than this
    orientation_tolerance_deg: float = 20.0  # joints within this of 0/90 degrees are horizontal/vertical

    @classmethod
    def from_params(cls, params: dict | None) -> MeasureSettings:
        """From a params file's ``measure:`` section, validated by the schema (promptseg.settings.MeasureParams:
        an unknown key names the nearest known one); the built-in values above only where a folder has no
        params.yaml (a user's own photos)."""

        section = (params or {}).get("measure")
        if section is None:
            return cls()
        return cls(**to_plain(build(MeasureParams, section, "measure")))


def bre_category(width_mm: float) -> int:
    """BRE Digest 251 category (0-5) of a crack of this width in mm."""
    for category, limit in enumerate(BRE_251_LIMITS_MM):
        if width_mm < limit if category == 0 else width_mm <= limit:
            return category
    return 5


# --------------------------------------------------------------------------- skeleton
_NEIGHBOURS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


def _neighbour_count(skel: np.ndarray) -> np.ndarray:
    kernel = np.ones((3, 3), np.float32)
    kernel[1, 1] = 0
    return (
        np.rint(cv2.filter2D(skel.astype(np.float32), -1, kernel, borderType=cv2.BORDER_CONSTANT)).astype(np.int32)
        * skel
    )


def _prune(skel: np.ndarray, edt: np.ndarray, settings: MeasureSettings) -> np.ndarray:
    """Remove spurs: paths from an end point to a junction shorter than the local width x prune_factor."""
    skel = skel.copy()
    h, w = skel.shape
    for _ in range(3):
        counts = _neighbour_count(skel)
        ends = np.argwhere(counts == 1)
        if (counts >= 3).sum() == 0:
            break
        removed = False
        for y0, x0 in ends:
            path, (y, x) = [(y0, x0)], (y0, x0)
            limit = max(settings.min_spur_px, settings.prune_factor * 2.0 * float(edt[y0, x0]) + 2)
            junction = False
            while len(path) <= limit:
                nxt = [
                    (y + dy, x + dx)
                    for dy, dx in _NEIGHBOURS
                    if 0 <= y + dy < h and 0 <= x + dx < w and skel[y + dy, x + dx] and (y + dy, x + dx) not in path
                ]
                if len(nxt) != 1:
                    junction = len(nxt) > 1
                    break
                y, x = nxt[0]
                if counts[y, x] >= 3:
                    junction = True
                    limit = max(settings.min_spur_px, settings.prune_factor * 2.0 * float(edt[y, x]))
                    break
                path.append((y, x))
            if junction and len(path) <= limit:
                for py, px in path:
                    skel[py, px] = 0
                removed = True
        if not removed:
            break
    return skel


def _order_path(coords: set, start: tuple) -> list:
    """Walk a simple 8-connected path of pixels from ``start``; orthogonal steps first (a staircase
    is walked pixel by pixel, not cut across)."""
    path, seen, (y, x) = [start], {start}, start
    while True:
        nxt = None
        for dy, dx in _ORTH_FIRST:
            q = (y + dy, x + dx)
            if q in coords and q not in seen:
                nxt = q
                break
        if nxt is None:
            return path
        seen.add(nxt)
        path.append(nxt)
        y, x = nxt


_ORTH_FIRST = [(-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1)]


def _smooth_length(path: list, closed: bool, window: int) -> float:
    """Length of a pixel path after a moving average of its coordinates over ``window`` pixels: a
    digital staircase measured step by step is up to 8% long; smoothed, a straight or gently curved
    path measures within about 1% at any angle (tests/test_measure.py)."""
    pts = np.asarray(path, np.float64)
    if len(pts) < 2:
        return 0.0
    if len(pts) > window:
        k = np.ones(window) / window
        if closed:
            ext = np.vstack([pts[-(window // 2) :], pts, pts[: window // 2]])
            pts = np.stack([np.convolve(ext[:, i], k, mode="valid") for i in range(2)], axis=1)
        else:
            inner = np.stack([np.convolve(pts[:, i], k, mode="valid") for i in range(2)], axis=1)
            pts = np.vstack([pts[:1], inner, pts[-1:]])
    if closed:
        pts = np.vstack([pts, pts[:1]])
    return float(np.sqrt((np.diff(pts, axis=0) ** 2).sum(axis=1)).sum())


def _skeleton_length(skel: np.ndarray, window: int = 5) -> float:
    """Skeleton length: split at junction pixels (3+ neighbours) into simple paths, each measured
    with :func:`_smooth_length`; each junction pixel adds the steps to the paths that meet it."""
    counts = _neighbour_count(skel)
    junction = counts >= 3
    paths = skel & ~junction
    n, lab = cv2.connectedComponents(paths.astype(np.uint8), connectivity=8)
    total = 0.0
    if n > 1:
        pcount = _neighbour_count(paths)
        ys, xs = np.nonzero(paths)
        groups: dict[int, set] = {}
        for y, x in zip(ys.tolist(), xs.tolist()):
            groups.setdefault(int(lab[y, x]), set()).add((y, x))
        for coords in groups.values():
            ends = [p for p in coords if pcount[p] <= 1]
            closed = not ends
            path = _order_path(coords, ends[0] if ends else min(coords))
            total += _smooth_length(path, closed and len(path) > 2, window)
    # steps from path ends into junction pixels, and between junction pixels
    if junction.any():
        jy, jx = np.nonzero(junction)
        for y, x in zip(jy.tolist(), jx.tolist()):
            for dy, dx in _NEIGHBOURS:
                yy, xx = y + dy, x + dx
                if 0 <= yy < skel.shape[0] and 0 <= xx < skel.shape[1] and skel[yy, xx]:
                    step = 1.0 if dy == 0 or dx == 0 else math.sqrt(2.0)
                    # junction-junction steps are seen from both ends
                    total += step / 2 if junction[yy, xx] else step
    return total


def _local_width(skel: np.ndarray, edt: np.ndarray) -> np.ndarray:
    """Width across the shape at each skeleton pixel: ``EDT(p) + max EDT of p's 8-neighbours off the
    skeleton``. ``EDT(p)`` counts the pixels from p to the edge on its near side, the neighbour's the
    pixels on the far side: a ``w``-px band gives exactly ``w`` for odd and even ``w`` (where
    ``2 x EDT`` gives ``w + 1``, and ``2 x EDT - 1`` gives ``w - 1`` for even ``w``)."""
    off = np.where(skel, 0.0, edt).astype(np.float32)
    far = cv2.dilate(off, np.ones((3, 3), np.uint8))
    return np.where(skel, edt + far, 0.0)


def _orientation_deg(ys: np.ndarray, xs: np.ndarray) -> float:
    if len(xs) < 2:
        return 0.0
    x = xs - xs.mean()
    y = -(ys - ys.mean())  # image y grows downwards; measure angles counter-clockwise from +x
    cov = np.array([[np.mean(x * x), np.mean(x * y)], [np.mean(x * y), np.mean(y * y)]])
    vals, vecs = np.linalg.eigh(cov)
    vx, vy = vecs[:, int(np.argmax(vals))]
    return float(math.degrees(math.atan2(vy, vx)) % 180.0)


def _orientation_class(angle: float, tolerance: float) -> str:
    if min(angle, 180.0 - angle) <= tolerance:
        return "horizontal"
    if abs(angle - 90.0) <= tolerance:
        return "vertical"
    return "other"


# --------------------------------------------------------------------------- measuring
def measure_mask(
    mask: np.ndarray, *, kind: str = "crack", mm_per_px: float | None = None, settings: MeasureSettings | None = None
) -> dict:
    """Measure every component of a 2-D mask (non-zero = object). Returns a JSON-able dict:
    ``{"kind", "units", "mm_per_px", "image": {...}, "components": [{...}, ...], "notes": [...]}``.
    Components are numbered from 1 in order of decreasing length."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}: expected one of {', '.join(KINDS)}")
    if mm_per_px is not None and not mm_per_px > 0:
        raise ValueError(f"mm_per_px must be positive, got {mm_per_px}")
    settings = settings or MeasureSettings()
    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = mask.max(axis=2)
    if mask.ndim != 2:
        raise ValueError(f"a mask must be 2-D, got shape {mask.shape}")
    binary = (mask > 0).astype(np.uint8)
    h, w = binary.shape
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    # the image's border counts as the shape's edge (a mask with no background pixel would have no edge)
    edt = cv2.distanceTransform(np.pad(binary, 1), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    components = []
    for label in range(1, n):
        if int(stats[label, cv2.CC_STAT_AREA]) < settings.min_area_px:
            continue
        components.append(_measure_component(label, labels, stats, edt, settings, kind, h * w))
    components.sort(key=lambda c: -c["length_px"])
    for i, c in enumerate(components, start=1):
        c["id"] = i
        if mm_per_px is not None:
            for key in ("length", "mean_width", "max_width"):
                c[f"{key}_mm"] = round(c[f"{key}_px"] * mm_per_px, 3)
            if kind == "crack":
                c["bre_251_category"] = bre_category(c["max_width_mm"])
    image, notes = _image_summary(components, binary, kind, mm_per_px)
    return {
        "kind": kind,
        "units": "mm and px" if mm_per_px is not None else "px",
        "mm_per_px": mm_per_px,
        "image": image,
        "components": components,
        "notes": notes,
        "settings": asdict(settings),
    }


def _measure_component(label: int, labels, stats, edt, settings, kind: str, image_px: int) -> dict:
    """Length (pruned skeleton plus its ends' half-widths), mean and max width, orientation, area and box of one
    connected component (``labels == label``) in pixels; joints also get their orientation class and image share."""

    area = int(stats[label, cv2.CC_STAT_AREA])
    x0, y0 = int(stats[label, cv2.CC_STAT_LEFT]), int(stats[label, cv2.CC_STAT_TOP])
    bw, bh = int(stats[label, cv2.CC_STAT_WIDTH]), int(stats[label, cv2.CC_STAT_HEIGHT])
    sl = (slice(y0, y0 + bh), slice(x0, x0 + bw))
    comp = labels[sl] == label
    # pad so the skeleton and its neighbour counts never touch the crop's border
    comp_p = np.pad(comp, 1)
    edt_p = np.pad(np.where(comp, edt[sl], 0.0), 1)
    skel = skeletonize(comp_p)
    if not skel.any():  # cannot happen for a non-empty component, kept for safety
        skel = comp_p.copy()
    skel = _prune(skel, edt_p, settings)
    counts = _neighbour_count(skel)
    ends = np.argwhere(counts == 1) if skel.sum() > 1 else np.argwhere(skel)
    length = _skeleton_length(skel)
    end_ext = [max(0.0, float(edt_p[y, x]) - 0.5) for y, x in ends]
    if skel.sum() == 1:  # a blob: its skeleton is one pixel; extend both ways
        end_ext = end_ext * 2
    length += sum(end_ext)
    length = max(length, 1.0)
    # width on the skeleton away from the rounded ends (the skeleton's last pixels run into them)
    local = _local_width(skel, edt_p)
    interior = skel.copy()
    for y, x in ends:
        r = math.ceil(edt_p[y, x])
        interior[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1] = False
    inner = local[interior] if interior.any() else local[skel]
    ys, xs = np.nonzero(skel)
    angle = _orientation_deg(ys.astype(np.float64), xs.astype(np.float64))
    item = {
        "length_px": round(float(length), 2),
        "mean_width_px": round(float(area / length), 2),
        "max_width_px": round(float(max(inner.max(), 1.0)), 2),
        "orientation_deg": round(angle, 1),
        "area_px": area,
        "bbox_xywh": [x0, y0, bw, bh],
        "label_xy": [int(xs[len(xs) // 2] + x0 - 1), int(ys[len(ys) // 2] + y0 - 1)],
    }
    if kind == "joint":
        item["orientation"] = _orientation_class(angle, settings.orientation_tolerance_deg)
        item["image_share"] = round(area / float(image_px), 4)
    return item


def _image_summary(components: list[dict], binary: np.ndarray, kind: str, mm_per_px: float | None):
    """The whole image's figures (count, total length, max width, area; joints: taped share and orientations;
    with a scale, mm and the BRE 251 category) and the notes."""
    h, w = binary.shape
    image = {
        "height_px": h,
        "width_px": w,
        "count": len(components),
        "total_length_px": round(sum(c["length_px"] for c in components), 2),
        "max_width_px": max((c["max_width_px"] for c in components), default=0.0),
        "area_px": int(sum(c["area_px"] for c in components)),
    }
    if kind == "joint":
        image["taped_share"] = round(float(binary.sum()) / float(h * w), 4)
        image["orientations"] = {
            k: sum(c["orientation"] == k for c in components) for k in ("vertical", "horizontal", "other")
        }
    notes = []
    if mm_per_px is not None:
        image["total_length_mm"] = round(image["total_length_px"] * mm_per_px, 3)
        image["max_width_mm"] = round(image["max_width_px"] * mm_per_px, 3)
        if kind == "crack":
            image["bre_251_category"] = bre_category(image["max_width_mm"]) if components else None
            if components:
                image["bre_251_text"] = BRE_251_TEXT[image["bre_251_category"]]
    else:
        notes.append(NO_SCALE_NOTE)
    if kind == "joint":
        notes.append(JOINT_LABEL_NOTE)
    return image, notes


# --------------------------------------------------------------------------- drawing and files
def draw_measurements(rgb: np.ndarray, mask: np.ndarray, result: dict, *, alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) uint8 RGB: the mask in red over ``rgb`` and each component's number and max width
    (mm when a scale was given, else px) written next to it."""
    out = rgb.astype(np.float32).copy()
    lit = np.asarray(mask) > 0
    if lit.ndim == 3:
        lit = lit.any(axis=2)
    out[lit] = (1.0 - alpha) * out[lit] + alpha * np.array([255.0, 0.0, 0.0])
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    h, w = out.shape[:2]
    scale = max(0.35, min(h, w) / 900.0)
    for c in result["components"]:
        if "max_width_mm" in c:
            text = f"#{c['id']} {c['max_width_mm']:.2f} mm"
        else:
            text = f"#{c['id']} {c['max_width_px']:.0f} px"
        x, y = c["label_xy"]
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        x = int(min(max(0, x + 4), max(0, w - tw - 2)))
        y = int(min(max(th + 2, y - 4), h - 2))
        cv2.putText(out, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(out, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 0), 1, cv2.LINE_AA)
    return out


CSV_FIELDS = [
    "mask",
    "id",
    "length_px",
    "mean_width_px",
    "max_width_px",
    "orientation_deg",
    "area_px",
    "orientation",
    "image_share",
    "length_mm",
    "mean_width_mm",
    "max_width_mm",
    "bre_251_category",
]


def write_outputs(results: dict[str, dict], out_dir: Path, name: str = "measurements") -> tuple[Path, Path]:
    """``<out_dir>/<name>.json`` (every mask's result) and ``<name>.csv`` (one row per component), MERGED with
    what an earlier run wrote there: this run's masks replace their own entries, the others are kept."""
    out_dir = Path(out_dir)
    json_path, csv_path = out_dir / f"{name}.json", out_dir / f"{name}.csv"
    try:
        earlier = json.loads(json_path.read_text()) if json_path.is_file() else {}
    except (OSError, ValueError):
        earlier = {}
    if isinstance(earlier, dict):
        results = {
            **{
                k: v
                for k, v in earlier.items()
                if k not in results and isinstance(v, dict) and isinstance(v.get("components"), list)
            },
            **results,
        }
    write_json(json_path, results, indent=1)
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for mask_name, result in results.items():
            for c in result["components"]:
                writer.writerow({"mask": mask_name, **c})
    return json_path, csv_path


@dataclass
class MeasureRun:
    results: dict[str, dict] = field(default_factory=dict)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)


def measure_files(
    paths: list[Path],
    *,
    kind: str = "crack",
    mm_per_px: float | None = None,
    image_width_mm: float | None = None,
    settings: MeasureSettings | None = None,
    images: dict[str, np.ndarray] | None = None,
    overlay: bool = True,
) -> MeasureRun:
    """Measure mask PNGs; write ``measurements.json``/``.csv`` and ``<stem>_measured.png`` next to them
    (per folder). ``image_width_mm`` gives each mask its own scale (its width in px). ``images``: optional
    RGB photos by mask stem for the overlays (else the overlay is drawn on a gray canvas)."""
    run = MeasureRun()
    by_dir: dict[Path, dict[str, dict]] = {}
    for path in paths:
        mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if mask is None or mask.ndim not in (2, 3) or mask.size == 0:
            run.skipped.append((path, "not a readable image"))
            continue
        if mask.ndim == 3:
            mask = mask[..., :3].max(axis=2)
        values = np.unique(mask)
        if len(values) > 2 or (len(values) == 2 and values[0] != 0):
            run.skipped.append(
                (
                    path,
                    (
                        f"not a binary mask (values {values[:5].tolist()}...): pass the masks "
                        "that `promptseg predict` writes, not photos or overlays"
                    ),
                )
            )
            continue
        scale = mm_per_px if mm_per_px is not None else (image_width_mm / mask.shape[1] if image_width_mm else None)
        result = measure_mask(mask, kind=kind, mm_per_px=scale, settings=settings)
        by_dir.setdefault(path.parent, {})[path.name] = result
        run.results[str(path)] = result
        if overlay:
            rgb = (images or {}).get(path.stem)
            if rgb is None or rgb.shape[:2] != mask.shape:
                rgb = np.full((*mask.shape, 3), 128, np.uint8)
            out = path.parent / f"{path.stem}_measured.png"
            cv2.imwrite(str(out), cv2.cvtColor(draw_measurements(rgb, mask, result), cv2.COLOR_RGB2BGR))
            run.written.append(out)
    for folder, results in by_dir.items():
        run.written.extend(write_outputs(results, folder))
    return run


def measure_kind(card: dict, prompt: str) -> str:
    """joint for a prompt of the model's drywall dataset, else crack."""
    prompts = card.get("prompts") if isinstance(card, dict) else None
    if isinstance(prompts, dict) and prompt in (prompts.get("drywall") or []):
        return "joint"
    return "crack"
