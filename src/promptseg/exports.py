"""Read a Roboflow export (COCO or YOLO) into plain records, counting every quirk met.

Nothing here renders pixels (see :mod:`promptseg.masks`); this module only turns the
annotation files into :class:`ImageRecord` objects whose shapes keep the coordinates
exactly as they are in the file (they may lie outside the image: clipping is the
renderer's job, so that it can be counted there).

Policies (see ``/work/shared/real/README.md`` for the quirks they answer):

* **Categories** are selected by the ids that annotations actually use, never by name or
  by position: every annotation whose ``category_id`` exists in ``categories`` is
  foreground. A category no annotation uses (Roboflow's parent category 0) is ignored and
  counted ``unused_categories``; an annotation whose ``category_id`` is not in
  ``categories`` at all is skipped, counted ``unknown_category`` and reported.
* **Polygons**: COCO polygons are flat ``[x1, y1, x2, y2, ...]`` lists; an annotation may
  hold several (a multi-part object): each part becomes its own polygon :class:`Shape`
  and the renderer takes their union. COCO polygons cannot express holes (a hole needs
  an RLE). A part with fewer than 3 points (< 6 numbers), an odd number count or
  non-finite values is skipped and counted ``degenerate_polygons``.
* **RLE** segmentations (a dict, compressed string or uncompressed list ``counts``) are
  kept as an ``rle`` :class:`Shape` (counted ``rle``).
* **Box-only annotations** (``segmentation: []``): in a boxes-only export (no annotation
  of any split has a polygon or RLE) the box is the shape (counted ``boxes``). In an
  export that otherwise has masks, such an annotation is an *empty segmentation*:
  ``empty_segmentation="box"`` renders its bbox (counted ``empty_segmentation_as_box``),
  ``"skip"`` drops it (counted ``empty_segmentation_skipped``).
* ``area`` is never used (Roboflow writes the box area even for polygons);
  ``info.year``/``info.version`` are never parsed; annotation ids are never used.
* YOLO ``cls cx cy w h`` lines (normalised) become box shapes in pixel coordinates;
  lines with more than 5 values and an even number of coordinates become polygons (a
  segmentation export). In a YOLO export that has polygons, a 5-value line is treated
  like a COCO empty segmentation (``empty_segmentation`` decides).

Counters (per split, all present, zero when not met): see :data:`COUNT_KEYS`.
``images_listed`` is what the export lists (COCO ``images`` entries, YOLO image files
found); ``images`` is the number of records returned for the split.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from promptseg import ROBOFLOW_SPLIT_NAMES, SPLITS

COCO_ANNOTATION_FILE = "_annotations.coco.json"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
EMPTY_SEGMENTATION_MODES = ("box", "skip")

#: Every counter :func:`read_export` reports, per split (zero when not met).
COUNT_KEYS = (
    "images_listed",
    "images",
    "images_without_labels",
    "missing_image_file",
    "corrupt_image",
    "duplicate_image_ids",
    "annotations",
    "polygons",
    "multipart_polygons",
    "rle",
    "boxes",
    "degenerate_polygons",
    "empty_segmentation_as_box",
    "empty_segmentation_skipped",
    "unknown_category",
    "unused_categories",
    "labels_without_image",
    "malformed_annotations",
    "malformed_label_lines",
    "unreadable_annotation_file",
)


@dataclass(frozen=True)
class Shape:
    """One foreground shape, in the coordinates of the annotation file.

    kind: ``"polygon"`` (``points``: (N, 2) float64 pixel coords ``x, y``), ``"box"``
    (``box``: ``(x0, y0, x1, y1)`` continuous pixel coords) or ``"rle"`` (``rle``: a COCO
    RLE dict ``{"size": [h, w], "counts": ...}``, compressed or not).
    """

    kind: str
    points: np.ndarray | None = None
    box: tuple[float, float, float, float] | None = None
    rle: dict | None = None


@dataclass
class ImageRecord:
    split: str  # ours: train | val | test
    image_path: Path
    width: int | None  # from the annotation file; None for YOLO
    height: int | None
    shapes: list[Shape]
    source_name: str | None = None  # images[*].extra.name where present


@dataclass
class ExportReadResult:
    format: str  # "coco" | "yolo"
    records: list[ImageRecord]
    counts: dict[str, dict[str, int]]  # split -> counter -> n
    problems: list[str]  # one human message per problem: the file, what is wrong, the fix
    root: Path | None = None  # the export folder that was read


# --------------------------------------------------------------------------- helpers


def _split_dirs(root: Path) -> list[tuple[str, str, Path]]:
    """(roboflow name, our name, folder) for each split folder under root, in our order."""
    found = []
    for rf_name, ours in ROBOFLOW_SPLIT_NAMES.items():
        d = root / rf_name
        if d.is_dir():
            found.append((rf_name, ours, d))
    order = {s: i for i, s in enumerate(SPLITS)}
    found.sort(key=lambda t: (order.get(t[1], len(order)), t[0]))
    return found


def _new_counter() -> Counter:
    c: Counter = Counter()
    for k in COUNT_KEYS:
        c[k] = 0
    return c


def _finalise_counts(counts: dict[str, Counter]) -> dict[str, dict[str, int]]:
    return {split: {k: int(v) for k, v in c.items()} for split, c in counts.items()}


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def detect_export_format(root: Path) -> str:
    """``"coco"`` if any ``<split>/_annotations.coco.json`` exists, ``"yolo"`` if
    ``data.yaml`` or any ``<split>/labels`` exists; otherwise ``ValueError``."""
    root = Path(root)
    if not root.exists():
        raise ValueError(f"export folder {root} does not exist; check the path")
    if not root.is_dir():
        raise ValueError(
            f"{root} is not a folder; unzip the Roboflow export and pass the folder "
            "that holds train/ valid/ test/"
        )
    splits = _split_dirs(root)
    if any((d / COCO_ANNOTATION_FILE).is_file() for _, _, d in splits):
        return "coco"
    if (root / "data.yaml").is_file() or any((d / "labels").is_dir() for _, _, d in splits):
        return "yolo"
    hint = ""
    nested = sorted(
        p.parent.parent
        for p in list(root.glob(f"*/*/{COCO_ANNOTATION_FILE}")) + list(root.glob("*/data.yaml"))
    )
    if nested:
        hint = f"; an export seems to be one level down, in {nested[0]}: pass that folder"
    raise ValueError(
        f"{root} is not a Roboflow export: expected <split>/{COCO_ANNOTATION_FILE} (COCO) or "
        f"data.yaml / <split>/labels/ (YOLO), with split folders named "
        f"{', '.join(ROBOFLOW_SPLIT_NAMES)}{hint}"
    )


def read_export(root: Path, *, empty_segmentation: str = "box") -> ExportReadResult:
    """Read the Roboflow export at ``root`` (format detected) into records and counts.

    ``empty_segmentation``: what an annotation with an empty segmentation but a bbox
    becomes in an export that otherwise has masks: ``"box"`` (its bbox) or ``"skip"``.
    A bad sample never raises: it is skipped, counted and reported in ``problems``.
    """
    if empty_segmentation not in EMPTY_SEGMENTATION_MODES:
        raise ValueError(
            f"empty_segmentation must be one of {EMPTY_SEGMENTATION_MODES}, got {empty_segmentation!r}"
        )
    root = Path(root)
    fmt = detect_export_format(root)
    if fmt == "coco":
        result = _read_coco(root, empty_segmentation)
    else:
        result = _read_yolo(root, empty_segmentation)
    result.root = root
    return result


# ------------------------------------------------------------------------------ COCO


def _coco_polygon_parts(seg: list, counts: Counter) -> list[Shape]:
    """Polygon shapes from a COCO polygon list (one flat list per part)."""
    # Some writers emit a single flat list instead of a list of lists.
    if seg and all(_is_number(v) for v in seg):
        seg = [seg]
    shapes = []
    for part in seg:
        if (
            not isinstance(part, (list, tuple))
            or len(part) < 6
            or len(part) % 2
            or not all(_is_number(v) for v in part)
        ):
            counts["degenerate_polygons"] += 1
            continue
        pts = np.asarray(part, dtype=np.float64).reshape(-1, 2)
        shapes.append(Shape(kind="polygon", points=pts))
    return shapes


def _coco_bbox(ann: dict) -> tuple[float, float, float, float] | None:
    bbox = ann.get("bbox")
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        return None
    x, y, w, h = (float(v) for v in bbox)
    return (x, y, x + w, y + h)


def _has_mask_segmentation(seg) -> bool:
    if isinstance(seg, dict):
        return True
    return isinstance(seg, list) and len(seg) > 0


def _read_coco(root: Path, empty_mode: str) -> ExportReadResult:
    problems: list[str] = []
    counts: dict[str, Counter] = {}
    loaded: list[tuple[str, Path, dict]] = []

    for rf_name, split, d in _split_dirs(root):
        ann_path = d / COCO_ANNOTATION_FILE
        if not ann_path.is_file():
            continue
        c = counts.setdefault(split, _new_counter())
        try:
            with open(ann_path, encoding="utf-8") as f:
                data = json.load(f)
            if not isinstance(data, dict):
                raise ValueError("top level is not a JSON object")
        except (OSError, ValueError) as e:
            c["unreadable_annotation_file"] += 1
            problems.append(
                f"{ann_path}: cannot be read as COCO JSON ({e}); re-download the export "
                f"or remove the {rf_name}/ folder"
            )
            continue
        loaded.append((split, ann_path, data))

    # Does the export (any split) have masks? Decides what an empty segmentation means.
    has_masks = any(
        _has_mask_segmentation(a.get("segmentation"))
        for _, _, data in loaded
        for a in (data.get("annotations") or [])
        if isinstance(a, dict)
    )

    records: list[ImageRecord] = []
    for split, ann_path, data in loaded:
        c = counts[split]
        split_dir = ann_path.parent
        categories = {
            cat.get("id") for cat in (data.get("categories") or []) if isinstance(cat, dict)
        }
        # image id -> (record, file exists)
        by_id: dict = {}
        order: list = []
        for im in data.get("images") or []:
            if not isinstance(im, dict) or "id" not in im or not isinstance(im.get("file_name"), str):
                c["malformed_annotations"] += 1
                problems.append(
                    f"{ann_path}: image entry without id or file_name ({str(im)[:120]}); "
                    "it is ignored; re-export the dataset"
                )
                continue
            c["images_listed"] += 1
            if im["id"] in by_id:
                c["duplicate_image_ids"] += 1
                problems.append(
                    f"{ann_path}: image id {im['id']} is listed twice; the second entry "
                    f"({im['file_name']}) is ignored; re-export the dataset"
                )
                continue
            extra = im.get("extra") if isinstance(im.get("extra"), dict) else {}
            w, h = im.get("width"), im.get("height")
            rec = ImageRecord(
                split=split,
                image_path=split_dir / im["file_name"],
                width=int(w) if _is_number(w) else None,
                height=int(h) if _is_number(h) else None,
                shapes=[],
                source_name=extra.get("name") if isinstance(extra.get("name"), str) else None,
            )
            by_id[im["id"]] = rec
            order.append(im["id"])

        used_categories = set()
        annotated_ids = set()
        for ann in data.get("annotations") or []:
            if not isinstance(ann, dict):
                c["malformed_annotations"] += 1
                problems.append(f"{ann_path}: annotation is not an object ({str(ann)[:80]}); ignored")
                continue
            c["annotations"] += 1
            img_id = ann.get("image_id")
            cat_id = ann.get("category_id")
            if img_id not in by_id:
                c["labels_without_image"] += 1
                problems.append(
                    f"{ann_path}: annotation {ann.get('id')} refers to image id {img_id}, which "
                    "is not in 'images'; it is ignored; re-export the dataset"
                )
                continue
            annotated_ids.add(img_id)
            if cat_id not in categories:
                c["unknown_category"] += 1
                problems.append(
                    f"{ann_path}: annotation {ann.get('id')} has category_id {cat_id!r}, which is "
                    f"not in 'categories' (ids {sorted(categories, key=str)}); it is ignored; "
                    "fix the category in Roboflow and re-export"
                )
                continue
            used_categories.add(cat_id)
            rec = by_id[img_id]
            seg = ann.get("segmentation")
            if isinstance(seg, dict):
                if "counts" in seg and "size" in seg:
                    rec.shapes.append(Shape(kind="rle", rle=seg))
                    c["rle"] += 1
                else:
                    c["malformed_annotations"] += 1
                    problems.append(
                        f"{ann_path}: annotation {ann.get('id')} has an RLE segmentation without "
                        "'size'/'counts'; it is ignored; re-export the dataset"
                    )
                continue
            if isinstance(seg, list) and seg:
                parts = _coco_polygon_parts(seg, c)
                if parts:
                    rec.shapes.extend(parts)
                    c["polygons"] += 1
                    if len(parts) > 1:
                        c["multipart_polygons"] += 1
                continue
            # Empty (or absent) segmentation: the bbox is all there is.
            box = _coco_bbox(ann)
            if has_masks and empty_mode == "skip":
                c["empty_segmentation_skipped"] += 1
                continue
            if box is None:
                c["malformed_annotations"] += 1
                problems.append(
                    f"{ann_path}: annotation {ann.get('id')} has neither a segmentation nor a "
                    f"valid bbox ({ann.get('bbox')!r}); it is ignored; re-export the dataset"
                )
                continue
            rec.shapes.append(Shape(kind="box", box=box))
            c["empty_segmentation_as_box" if has_masks else "boxes"] += 1

        c["unused_categories"] += len(categories - used_categories)

        for img_id in order:
            rec = by_id[img_id]
            if not rec.image_path.is_file():
                c["missing_image_file"] += 1
                problems.append(
                    f"{rec.image_path}: listed in {ann_path} but missing on disk; the image is "
                    "dropped; re-download the export (or unzip it completely)"
                )
                continue
            if img_id not in annotated_ids:
                c["images_without_labels"] += 1
            records.append(rec)
            c["images"] += 1

    return ExportReadResult("coco", records, _finalise_counts(counts), problems)


# ------------------------------------------------------------------------------ YOLO


def _read_yolo_names(root: Path, problems: list[str]) -> int | None:
    """Number of classes from data.yaml (``nc`` or ``names``), None if unknown."""
    path = root / "data.yaml"
    if not path.is_file():
        return None
    try:
        import yaml

        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, dict):
            raise ValueError("top level is not a mapping")
    except Exception as e:  # noqa: BLE001 - any parse error is a problem, not a crash
        problems.append(f"{path}: cannot be read ({e}); class ids are not checked; fix or delete it")
        return None
    nc = data.get("nc")
    names = data.get("names")
    if isinstance(nc, int) and not isinstance(nc, bool):
        return nc
    if isinstance(names, list):
        return len(names)
    if isinstance(names, dict) and names:
        try:
            return max(int(k) for k in names) + 1
        except (TypeError, ValueError):
            pass
    problems.append(f"{path}: has no usable 'nc' or 'names'; class ids are not checked")
    return None


def _parse_yolo_line(line: str):
    """(class id, values) or None if malformed."""
    parts = line.split()
    if len(parts) < 5:
        return None
    try:
        cls_f = float(parts[0])
        vals = [float(v) for v in parts[1:]]
    except ValueError:
        return None
    if not cls_f.is_integer() or cls_f < 0 or not all(math.isfinite(v) for v in vals):
        return None
    if len(vals) == 4:
        return int(cls_f), vals
    if len(vals) % 2 == 0 and len(vals) >= 6:
        return int(cls_f), vals
    return None


def _image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the header, without decoding the pixels; None if unreadable."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            w, h = im.size
        return int(w), int(h)
    except Exception:  # noqa: BLE001 - unreadable for whatever reason
        return None


def _read_yolo(root: Path, empty_mode: str) -> ExportReadResult:
    problems: list[str] = []
    counts: dict[str, Counter] = {}
    nc = _read_yolo_names(root, problems)

    # First pass: parse every label file (so that we know whether the export has polygons).
    splits = []
    for rf_name, split, d in _split_dirs(root):
        img_dir, lbl_dir = d / "images", d / "labels"
        if not img_dir.is_dir() and not lbl_dir.is_dir():
            continue
        c = counts.setdefault(split, _new_counter())
        images = (
            sorted(p for p in img_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if img_dir.is_dir()
            else []
        )
        labels = sorted(lbl_dir.glob("*.txt")) if lbl_dir.is_dir() else []
        label_by_stem = {p.stem: p for p in labels}
        image_stems = {p.stem for p in images}
        for p in labels:
            if p.stem not in image_stems:
                c["labels_without_image"] += 1
                problems.append(
                    f"{p}: label file without a matching image in {img_dir}; it is ignored; "
                    "re-download the export"
                )
        parsed: dict[Path, tuple[Path | None, list]] = {}
        for img in images:
            lbl = label_by_stem.get(img.stem)
            lines = []
            if lbl is not None:
                try:
                    text = lbl.read_text(encoding="utf-8", errors="replace")
                except OSError as e:
                    c["malformed_label_lines"] += 1
                    problems.append(f"{lbl}: cannot be read ({e}); the image gets no labels")
                    text = ""
                for lineno, line in enumerate(text.splitlines(), 1):
                    if not line.strip():
                        continue
                    p = _parse_yolo_line(line)
                    if p is None:
                        c["malformed_label_lines"] += 1
                        problems.append(
                            f"{lbl}:{lineno}: malformed line {line.strip()[:60]!r} (want "
                            "'cls cx cy w h' or 'cls x1 y1 x2 y2 x3 y3 ...', normalised); ignored"
                        )
                        continue
                    lines.append(p)
            parsed[img] = (lbl, lines)
        splits.append((split, c, parsed))

    has_polygons = any(
        len(v) > 4 for _, _, parsed in splits for _, ls in parsed.values() for _, v in ls
    )

    records: list[ImageRecord] = []
    for split, c, parsed in splits:
        used = set()
        for img, (lbl, lines) in parsed.items():
            c["images_listed"] += 1
            size = _image_size(img)
            if size is None:
                c["corrupt_image"] += 1
                problems.append(
                    f"{img}: cannot be read as an image (corrupt or not an image); it is "
                    "skipped; re-download the export or delete the file"
                )
                continue
            W, H = size
            shapes: list[Shape] = []
            if not lines:
                c["images_without_labels"] += 1
            for cls, vals in lines:
                c["annotations"] += 1
                if nc is not None and cls >= nc:
                    c["unknown_category"] += 1
                    problems.append(
                        f"{lbl}: class id {cls} is "
                        f"not below nc={nc} from data.yaml; the line is ignored; fix data.yaml "
                        "or the labels"
                    )
                    continue
                used.add(cls)
                if len(vals) == 4:
                    if has_polygons and empty_mode == "skip":
                        c["empty_segmentation_skipped"] += 1
                        continue
                    cx, cy, w, h = vals
                    box = ((cx - w / 2) * W, (cy - h / 2) * H, (cx + w / 2) * W, (cy + h / 2) * H)
                    shapes.append(Shape(kind="box", box=box))
                    c["empty_segmentation_as_box" if has_polygons else "boxes"] += 1
                else:
                    pts = np.asarray(vals, dtype=np.float64).reshape(-1, 2) * (W, H)
                    shapes.append(Shape(kind="polygon", points=pts))
                    c["polygons"] += 1
            records.append(ImageRecord(split, img, None, None, shapes))
            c["images"] += 1
        if nc is not None:
            c["unused_categories"] += len(set(range(nc)) - used)

    return ExportReadResult("yolo", records, _finalise_counts(counts), problems)


# ----------------------------------------------------------------------- file names

_RF_NAME = re.compile(r"^(?P<stem>.+)_(?P<ext>[A-Za-z0-9]+)\.rf\.(?P<hash>[A-Za-z0-9]+)$")


def source_group_of(file_name: str, extra_name: str | None = None) -> str:
    """The source photo a Roboflow file comes from: the stem of ``extra.name`` when
    present, else the file stem before ``_<ext>.rf.<hash>`` (the whole stem otherwise).

    ``IMG_8213_JPG_jpg.rf.fbb8...jpg`` and extra name ``IMG_8213_JPG.jpg`` both give
    ``IMG_8213_JPG``, so augmented copies of one photo share a group.
    """
    if extra_name:
        return Path(extra_name).stem
    stem = Path(file_name).stem
    m = _RF_NAME.match(stem)
    return m.group("stem") if m else stem


__all__ = [
    "COUNT_KEYS",
    "ExportReadResult",
    "ImageRecord",
    "Shape",
    "detect_export_format",
    "read_export",
    "source_group_of",
]
