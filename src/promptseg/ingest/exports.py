"""Read a Roboflow export (COCO or YOLO) into plain records, counting every quirk met.

Nothing here renders pixels (see :mod:`promptseg.ingest.masks`); this module only turns the
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

* **Invalid labels**: every dropped shape is reported (file, annotation id or label-file line,
  reason). An image that had annotations and lost ALL of them to validation (bad polygons,
  unknown categories, malformed YOLO lines, a malformed RLE dict, no segmentation and no bbox)
  is skipped and counted ``all_labels_invalid``: it is never kept as a negative. An image with
  no annotation at all (or an empty label file) stays a negative.
* Image files in a COCO split folder that its JSON does not list are counted
  ``unlisted_image`` and named. A COCO file without an ``images`` or ``annotations`` list is an
  :class:`ExportError` naming the file.

Every problem is a :class:`Problem`: a ``str`` (the human message) that also carries ``split``,
``file``, ``annotation`` and ``kind`` (a counter name) for the problems table.
``images_listed = images + skipped`` per split, where the skips are the kinds in
:data:`IMAGE_SKIP_KINDS` counted at read time, each with one problem naming the image.

Counters (per split, all present, zero when not met): see :data:`COUNT_KEYS`.
``images_listed`` is what the export lists (COCO ``images`` entries, YOLO image files
found); ``images`` is the number of records returned for the split.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from promptseg.images import IMAGE_SUFFIXES, TOO_LARGE, ImageReadError, image_size
from promptseg.params import SPLITS

COCO_ANNOTATION_FILE = "_annotations.coco.json"
# Roboflow's split folder names -> ours (Roboflow calls the validation split "valid").
ROBOFLOW_SPLIT_NAMES = {"train": "train", "valid": "val", "val": "val", "test": "test"}
EMPTY_SEGMENTATION_MODES = ("box", "skip")

#: Every counter :func:`read_export` reports, per split (zero when not met).
COUNT_KEYS = (
    "images_listed",
    "images",
    "images_without_labels",
    "missing_image_file",
    "corrupt_image",
    "image_too_large",
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
    "lost_with_annotation_file",
    "all_labels_invalid",
    "unlisted_image",
    "label_values_outside_unit",
)

#: Counters that mean "this listed image was not kept" (read time and, in :mod:`promptseg.ingest.masks`,
#: render time); each comes with exactly one :class:`Problem` of that kind naming the image file.
IMAGE_SKIP_KINDS = (
    "missing_image_file",
    "duplicate_image_ids",
    "corrupt_image",
    "truncated_image",
    "image_too_large",
    "lost_with_annotation_file",
    "all_labels_invalid",
)

#: Columns of the problems table (``metrics/data/problems/<dataset>.csv``).
PROBLEM_COLUMNS = ("split", "file", "annotation", "kind", "detail")


class ExportError(ValueError):
    """The export cannot be used at all; the message names the file and the fix."""


class Problem(str):
    """One problem met while reading or rendering: the human message (the string itself: the file,
    what is wrong, the fix) with the fields of the problems table: ``split``, ``file``,
    ``annotation`` (a COCO annotation id, ``line N`` of a YOLO label file, or empty) and ``kind``
    (the counter it adds to)."""

    def __new__(cls, message: str = "", *, kind: str = "", file="", split: str = "", annotation="") -> Problem:
        self = super().__new__(cls, message)
        self.kind, self.file, self.split = kind, str(file), split
        self.annotation = "" if annotation is None else str(annotation)
        return self

    def row(self) -> dict[str, str]:
        return {
            "split": self.split,
            "file": self.file,
            "annotation": self.annotation,
            "kind": self.kind,
            "detail": str(self),
        }


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
    ref: str = ""  # where it comes from, for messages: the COCO annotation id or "line N" of a label file


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
    problems: list[Problem]  # one per problem: the file, what is wrong, the fix (see Problem)
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
    ``data.yaml`` or any ``<split>/labels`` exists; otherwise :class:`ExportError`."""
    root = Path(root)
    if not root.exists():
        raise ExportError(f"export folder {root} does not exist; check the path")
    if not root.is_dir():
        raise ExportError(
            f"{root} is not a folder; unzip the Roboflow export and pass the folder that holds train/ valid/ test/"
        )
    splits = _split_dirs(root)
    if any((d / COCO_ANNOTATION_FILE).is_file() for _, _, d in splits):
        return "coco"
    if (root / "data.yaml").is_file() or any((d / "labels").is_dir() for _, _, d in splits):
        return "yolo"
    hint = ""
    nested = sorted(
        p.parent.parent for p in list(root.glob(f"*/*/{COCO_ANNOTATION_FILE}")) + list(root.glob("*/data.yaml"))
    )
    if nested:
        hint = f"; an export seems to be one level down, in {nested[0]}: pass that folder"
    raise ExportError(
        f"{root} is not a Roboflow export: expected <split>/{COCO_ANNOTATION_FILE} (COCO) or "
        f"data.yaml / <split>/labels/ (YOLO), with split folders named "
        f"{', '.join(ROBOFLOW_SPLIT_NAMES)}{hint}"
    )


def read_export(
    root: Path, *, empty_segmentation: str = "box", max_image_pixels: int | None = None
) -> ExportReadResult:
    """Read the Roboflow export at ``root`` (format detected) into records and counts.

    ``max_image_pixels`` (``data.max_image_pixels``): an image whose header says it is larger is skipped as
    ``image_too_large`` before any of its pixels is decoded (:func:`promptseg.images.image_size`).

    ``empty_segmentation``: what an annotation with an empty segmentation but a bbox
    becomes in an export that otherwise has masks: ``"box"`` (its bbox) or ``"skip"``.
    A bad sample never raises: it is skipped, counted and reported in ``problems``.
    """
    if empty_segmentation not in EMPTY_SEGMENTATION_MODES:
        raise ValueError(f"empty_segmentation must be one of {EMPTY_SEGMENTATION_MODES}, got {empty_segmentation!r}")
    root = Path(root)
    fmt = detect_export_format(root)
    if fmt == "coco":
        result = _read_coco(root, empty_segmentation, max_image_pixels)
    else:
        result = _read_yolo(root, empty_segmentation, max_image_pixels)
    result.root = root
    return result


# ------------------------------------------------------------------------------ COCO


def _polygon_part_defect(part) -> str | None:
    """Why a COCO polygon part is unusable, or None."""
    if not isinstance(part, (list, tuple)):
        return f"a polygon part is not a list ({str(part)[:40]})"
    if not all(_is_number(v) for v in part):
        bad = next(v for v in part if not _is_number(v))
        return f"a polygon has a non-finite or non-numeric coordinate ({bad!r})"
    if len(part) % 2:
        return f"a polygon has an odd number of coordinates ({len(part)})"
    if len(part) < 6:
        return f"a polygon has {len(part) // 2} points (fewer than 3)"
    return None


def _coco_polygon_parts(seg: list, counts: Counter, ref: str = "") -> tuple[list[Shape], list[str]]:
    """Polygon shapes from a COCO polygon list (one flat list per part), and why each dropped
    part was dropped (``"part k: ..."`` when there are several parts)."""
    # Some writers emit a single flat list instead of a list of lists.
    if seg and all(_is_number(v) for v in seg):
        seg = [seg]
    elif seg and not any(isinstance(v, (list, tuple)) for v in seg):
        seg = [seg]  # a flat list with a bad value: one bad part, not one per value
    shapes, dropped = [], []
    for k, part in enumerate(seg, 1):
        why = _polygon_part_defect(part)
        if why is not None:
            counts["degenerate_polygons"] += 1
            dropped.append(f"part {k} of {len(seg)}: {why}" if len(seg) > 1 else why)
            continue
        pts = np.asarray(part, dtype=np.float64).reshape(-1, 2)
        shapes.append(Shape(kind="polygon", points=pts, ref=ref))
    return shapes, dropped


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


def _load_coco_file(ann_path: Path) -> dict:
    """The parsed COCO JSON; ValueError/OSError if unreadable; :class:`ExportError` if it lacks
    an ``images`` or ``annotations`` list (every image would silently become a negative)."""
    with open(ann_path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError("top level is not a JSON object")
    for key in ("images", "annotations"):
        if key not in data:
            raise ExportError(
                f"{ann_path}: has no '{key}' list, so its images cannot be matched to their labels; "
                "re-download the export (or re-export it from Roboflow in COCO format)"
            )
        if not isinstance(data[key], list):
            raise ExportError(
                f"{ann_path}: '{key}' is a {type(data[key]).__name__}, not a list; re-download the export"
            )
    return data


def _read_coco(root: Path, empty_mode: str, max_pixels: int | None = None) -> ExportReadResult:
    problems: list[Problem] = []
    counts: dict[str, Counter] = {}
    loaded = _load_coco_splits(root, counts, problems)
    # Does the export (any split) have masks? Decides what an empty segmentation means.
    has_masks = any(
        _has_mask_segmentation(a.get("segmentation"))
        for _, _, data in loaded
        for a in data["annotations"]
        if isinstance(a, dict)
    )
    records: list[ImageRecord] = []
    for split, ann_path, data in loaded:
        reader = _CocoSplitReader(split, ann_path, data, counts[split], problems, has_masks, empty_mode)
        reader.max_pixels = max_pixels
        records += reader.read()
    return ExportReadResult("coco", records, _finalise_counts(counts), problems)


def _load_coco_splits(root: Path, counts: dict[str, Counter], problems: list[Problem]) -> list[tuple[str, Path, dict]]:
    """(split, annotation file, parsed JSON) of every split folder with a COCO file; an unreadable one is counted
    and named, one without its lists raises (:func:`_load_coco_file`)."""
    loaded: list[tuple[str, Path, dict]] = []
    for rf_name, split, d in _split_dirs(root):
        ann_path = d / COCO_ANNOTATION_FILE
        if not ann_path.is_file():
            continue
        c = counts.setdefault(split, _new_counter())
        try:
            data = _load_coco_file(ann_path)
        except ExportError:
            raise
        except (OSError, ValueError) as e:
            c["unreadable_annotation_file"] += 1
            problems.append(
                Problem(
                    f"{ann_path}: cannot be read as COCO JSON ({e}); re-download the export "
                    f"or remove the {rf_name}/ folder",
                    kind="unreadable_annotation_file",
                    file=ann_path,
                    split=split,
                )
            )
            _count_lost_images(d, ann_path, split, c, problems)
            continue
        loaded.append((split, ann_path, data))
    return loaded


def _count_lost_images(split_dir: Path, ann_path: Path, split: str, c: Counter, problems: list[Problem]) -> None:
    """The image files of a split whose annotation file cannot be read: each is listed and lost
    (``lost_with_annotation_file``), named, so that images listed = written + skipped still holds."""
    for img in sorted(p for p in split_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
        c["images_listed"] += 1
        c["lost_with_annotation_file"] += 1
        problems.append(
            Problem(
                f"{img}: not used, because {ann_path.name} beside it cannot be read (see that problem)",
                kind="lost_with_annotation_file",
                file=img,
                split=split,
            )
        )


class _CocoSplitReader:
    """One split's COCO JSON -> its image records (in the order listed), counting into ``c`` and naming
    every problem: the images, then each annotation (image known? category known? its segmentation as RLE,
    polygon or box), then which images are kept, then the image files the JSON does not list."""

    def __init__(self, split, ann_path: Path, data: dict, c: Counter, problems: list, has_masks: bool, empty_mode):
        self.split, self.ann_path, self.data, self.c, self.problems = split, ann_path, data, c, problems
        self.split_dir = ann_path.parent
        self.has_masks, self.empty_mode = has_masks, empty_mode
        self.categories = {cat.get("id") for cat in (data.get("categories") or []) if isinstance(cat, dict)}
        self.by_id: dict = {}  # image id -> record
        self.order: list = []
        self.listed_files: set[Path] = set()  # the file names the JSON lists (for unlisted files)
        self.used_categories: set = set()
        self.annotated_ids: set = set()
        self.invalid: Counter = Counter()  # image id -> annotations dropped by validation
        self.max_pixels: int | None = None  # data.max_image_pixels

    def problem(self, message: str, kind: str, file=None, annotation="") -> None:
        file = self.ann_path if file is None else file
        self.problems.append(Problem(message, kind=kind, file=file, split=self.split, annotation=annotation))

    def read(self) -> list[ImageRecord]:
        for im in self.data["images"]:
            self._read_image(im)
        for ann in self.data["annotations"]:
            self._read_annotation(ann)
        self.c["unused_categories"] += len(self.categories - self.used_categories)
        records = self._kept_records()
        self._note_unlisted_images()
        return records

    def _read_image(self, im) -> None:
        c, ann_path = self.c, self.ann_path
        if not isinstance(im, dict) or "id" not in im or not isinstance(im.get("file_name"), str):
            c["malformed_annotations"] += 1
            self.problem(
                f"{ann_path}: image entry without id or file_name ({str(im)[:120]}); "
                "it is ignored; re-export the dataset",
                "malformed_annotations",
            )
            return
        c["images_listed"] += 1
        image_path = self.split_dir / im["file_name"]
        self.listed_files.add(Path(os.path.normpath(image_path)))
        try:
            hash(im["id"])
        except TypeError:  # an id JSON cannot use as a key (a list or an object)
            im = {**im, "id": json.dumps(im["id"])}
        if im["id"] in self.by_id:
            c["duplicate_image_ids"] += 1
            self.problem(
                f"{ann_path}: image id {im['id']} is listed twice; the second entry "
                f"({im['file_name']}) is ignored; re-export the dataset",
                "duplicate_image_ids",
                file=image_path,
            )
            return
        extra = im.get("extra") if isinstance(im.get("extra"), dict) else {}
        w, h = im.get("width"), im.get("height")
        rec = ImageRecord(
            split=self.split,
            image_path=image_path,
            width=int(w) if _is_number(w) else None,
            height=int(h) if _is_number(h) else None,
            shapes=[],
            source_name=extra.get("name") if isinstance(extra.get("name"), str) else None,
        )
        self.by_id[im["id"]] = rec
        self.order.append(im["id"])

    def _read_annotation(self, ann) -> None:
        c, ann_path = self.c, self.ann_path
        if not isinstance(ann, dict):
            c["malformed_annotations"] += 1
            self.problem(f"{ann_path}: annotation is not an object ({str(ann)[:80]}); ignored", "malformed_annotations")
            return
        c["annotations"] += 1
        img_id = ann.get("image_id")
        cat_id = ann.get("category_id")
        ref = str(ann.get("id"))
        try:
            known_image = img_id in self.by_id
        except TypeError:  # an unhashable image_id
            known_image = False
        if not known_image:
            c["labels_without_image"] += 1
            self.problem(
                f"{ann_path}: annotation {ann.get('id')} refers to image id {img_id}, which "
                "is not in 'images'; it is ignored; re-export the dataset",
                "labels_without_image",
                annotation=ref,
            )
            return
        self.annotated_ids.add(img_id)
        rec = self.by_id[img_id]
        try:
            known_category = cat_id in self.categories
        except TypeError:
            known_category = False
        if not known_category:
            c["unknown_category"] += 1
            self.invalid[img_id] += 1
            self.problem(
                f"{ann_path}: annotation {ann.get('id')} (image {rec.image_path.name}) has category_id "
                f"{cat_id!r}, which is not in 'categories' (ids {sorted(self.categories, key=str)}); it is "
                "ignored; fix the category in Roboflow and re-export",
                "unknown_category",
                file=rec.image_path,
                annotation=ref,
            )
            return
        self.used_categories.add(cat_id)
        seg = ann.get("segmentation")
        if isinstance(seg, dict):
            self._add_rle(ann, seg, img_id, rec, ref)
        elif isinstance(seg, list) and seg:
            self._add_polygon(ann, seg, img_id, rec, ref)
        else:  # Empty (or absent) segmentation: the bbox is all there is.
            self._add_box(ann, img_id, rec, ref)

    def _add_rle(self, ann: dict, seg: dict, img_id, rec: ImageRecord, ref: str) -> None:
        if "counts" in seg and "size" in seg:
            rec.shapes.append(Shape(kind="rle", rle=seg, ref=ref))
            self.c["rle"] += 1
            return
        self.c["malformed_annotations"] += 1
        self.invalid[img_id] += 1
        self.problem(
            f"{self.ann_path}: annotation {ann.get('id')} (image {rec.image_path.name}) has an RLE "
            "segmentation without 'size'/'counts'; it is ignored; re-export the dataset",
            "malformed_annotations",
            file=rec.image_path,
            annotation=ref,
        )

    def _add_polygon(self, ann: dict, seg: list, img_id, rec: ImageRecord, ref: str) -> None:
        c = self.c
        parts, dropped = _coco_polygon_parts(seg, c, ref)
        for why in dropped:
            self.problem(
                f"{self.ann_path}: annotation {ann.get('id')} (image {rec.image_path.name}): {why}; "
                "the polygon is ignored; fix it in Roboflow and re-export",
                "degenerate_polygons",
                file=rec.image_path,
                annotation=ref,
            )
        if parts:
            rec.shapes.extend(parts)
            c["polygons"] += 1
            if len(parts) > 1:
                c["multipart_polygons"] += 1
        else:
            self.invalid[img_id] += 1

    def _add_box(self, ann: dict, img_id, rec: ImageRecord, ref: str) -> None:
        c = self.c
        box = _coco_bbox(ann)
        if self.has_masks and self.empty_mode == "skip":
            c["empty_segmentation_skipped"] += 1
            return
        if box is None:
            c["malformed_annotations"] += 1
            self.invalid[img_id] += 1
            self.problem(
                f"{self.ann_path}: annotation {ann.get('id')} (image {rec.image_path.name}) has neither a "
                f"segmentation nor a valid bbox ({ann.get('bbox')!r}); it is ignored; re-export the dataset",
                "malformed_annotations",
                file=rec.image_path,
                annotation=ref,
            )
            return
        rec.shapes.append(Shape(kind="box", box=box, ref=ref))
        c["empty_segmentation_as_box" if self.has_masks else "boxes"] += 1

    def _kept_records(self) -> list[ImageRecord]:
        """The listed images in order, less those missing on disk and those whose every label is invalid."""
        c, records = self.c, []
        for img_id in self.order:
            rec = self.by_id[img_id]
            if not rec.image_path.is_file():
                c["missing_image_file"] += 1
                self.problem(
                    f"{rec.image_path}: listed in {self.ann_path} but missing on disk; the image is "
                    "dropped; re-download the export (or unzip it completely)",
                    "missing_image_file",
                    file=rec.image_path,
                )
                continue
            too_large = _too_large(rec.image_path, self.max_pixels)
            if too_large:
                c[TOO_LARGE] += 1
                self.problem(f"{rec.image_path}: {too_large}; it is skipped", TOO_LARGE, file=rec.image_path)
                continue
            if self.invalid[img_id] and not rec.shapes:
                c["all_labels_invalid"] += 1
                self.problem(
                    f"{rec.image_path}: all {self.invalid[img_id]} of its annotations in {self.ann_path} are "
                    "invalid (see the problems naming them); the image is skipped, not kept as a negative; fix "
                    "the labels in Roboflow and re-export",
                    "all_labels_invalid",
                    file=rec.image_path,
                )
                continue
            if img_id not in self.annotated_ids:
                c["images_without_labels"] += 1
            records.append(rec)
            c["images"] += 1
        return records

    def _note_unlisted_images(self) -> None:
        """Image files beside the JSON that it does not list are not used: say so."""
        split_dir = self.split_dir
        for f in sorted(split_dir.iterdir()):
            if (
                f.is_file()
                and f.suffix.lower() in IMAGE_SUFFIXES
                and Path(os.path.normpath(f)) not in self.listed_files
            ):
                self.c["unlisted_image"] += 1
                self.problem(
                    f"{f}: an image file in {split_dir} that {self.ann_path.name} does not list; it is not "
                    "used; re-download the export or remove the file",
                    "unlisted_image",
                    file=f,
                )


# ------------------------------------------------------------------------------ YOLO


def _read_yolo_names(root: Path, problems: list[Problem]) -> int | None:
    """Number of classes from data.yaml (``nc`` or ``names``), None if unknown."""
    path = root / "data.yaml"
    if not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, dict):
            raise ValueError("top level is not a mapping")
    except Exception as e:  # noqa: BLE001 - any parse error is a problem, not a crash
        problems.append(
            Problem(
                f"{path}: cannot be read ({e}); class ids are not checked; fix or delete it",
                kind="unreadable_data_yaml",
                file=path,
            )
        )
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
    problems.append(
        Problem(
            f"{path}: has no usable 'nc' or 'names'; class ids are not checked", kind="unreadable_data_yaml", file=path
        )
    )
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


def _too_large(path: Path, max_pixels: int | None) -> str | None:
    """Why the image at ``path`` is over ``max_pixels`` (read from its header), else None; a header that cannot
    be read is left to the decoder, which names it."""
    if max_pixels is None:
        return None
    try:
        image_size(path, max_pixels)
    except ImageReadError as exc:
        return exc.reason if exc.kind == TOO_LARGE else None
    return None


def _read_yolo(root: Path, empty_mode: str, max_pixels: int | None = None) -> ExportReadResult:
    problems: list[Problem] = []
    counts: dict[str, Counter] = {}
    nc = _read_yolo_names(root, problems)

    # First pass: parse every label file (so that we know whether the export has polygons).
    splits = []
    for _rf_name, split, d in _split_dirs(root):
        img_dir, lbl_dir = d / "images", d / "labels"
        if not img_dir.is_dir() and not lbl_dir.is_dir():
            continue
        c = counts.setdefault(split, _new_counter())
        problem = _split_problem(problems, split)
        splits.append((split, c, _parse_yolo_split(img_dir, lbl_dir, c, problem), problem))

    has_polygons = any(len(v) > 4 for _, _, parsed, _ in splits for _, ls, _ in parsed.values() for _, _, v in ls)

    records: list[ImageRecord] = []
    for split, c, parsed, problem in splits:
        used: set = set()
        for img, (lbl, lines, dropped) in parsed.items():
            rec = _yolo_record(
                split, img, lbl, lines, dropped, c, problem, used, nc, has_polygons, empty_mode, max_pixels
            )
            if rec is not None:
                records.append(rec)
                c["images"] += 1
        if nc is not None:
            c["unused_categories"] += len(set(range(nc)) - used)

    return ExportReadResult("yolo", records, _finalise_counts(counts), problems)


def _split_problem(problems: list[Problem], split: str):
    """``problem(message, kind, file, annotation="")``: append a :class:`Problem` of ``split``."""

    def problem(message: str, kind: str, file, annotation="", split=split) -> None:
        problems.append(Problem(message, kind=kind, file=file, split=split, annotation=annotation))

    return problem


def _parse_yolo_split(img_dir: Path, lbl_dir: Path, c: Counter, problem) -> dict[Path, tuple[Path | None, list, int]]:
    """image -> (label file, valid lines (line number, class, values), lines dropped); label files without an
    image are counted and named."""
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
            problem(
                f"{p}: label file without a matching image in {img_dir}; it is ignored; re-download the export",
                "labels_without_image",
                p,
            )
    parsed: dict[Path, tuple[Path | None, list, int]] = {}
    for img in images:
        lbl = label_by_stem.get(img.stem)
        lines, dropped = _yolo_label_lines(lbl, c, problem) if lbl is not None else ([], 0)
        parsed[img] = (lbl, lines, dropped)
    return parsed


def _yolo_label_lines(lbl: Path, c: Counter, problem) -> tuple[list, int]:
    """The valid lines of one label file (line number, class, values) and how many were dropped."""
    lines, dropped = [], 0
    try:
        text = lbl.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        c["malformed_label_lines"] += 1
        dropped += 1
        problem(
            f"{lbl}: cannot be read ({e}); its labels are lost; re-download the export",
            "malformed_label_lines",
            lbl,
        )
        text = ""
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        p = _parse_yolo_line(line)
        if p is None:
            c["malformed_label_lines"] += 1
            dropped += 1
            problem(
                f"{lbl}:{lineno}: malformed line {line.strip()[:60]!r} (want "
                "'cls cx cy w h' or 'cls x1 y1 x2 y2 x3 y3 ...', normalised); ignored",
                "malformed_label_lines",
                lbl,
                f"line {lineno}",
            )
            continue
        outside = [v for v in p[1] if not 0.0 <= v <= 1.0]
        if (
            outside
        ):  # kept: clipped to the image when rendered (clipped_boxes / clipped_polygons; wholly outside: dropped)
            c["label_values_outside_unit"] += 1
            problem(
                f"{lbl}:{lineno}: {len(outside)} value(s) outside [0, 1] (e.g. {outside[0]:g}); YOLO coordinates are "
                "fractions of the image: the shape is clipped to the image; fix the labels",
                "label_values_outside_unit",
                lbl,
                f"line {lineno}",
            )
        lines.append((lineno, *p))
    return lines, dropped


def _yolo_record(split, img, lbl, lines, dropped, c, problem, used, nc, has_polygons, empty_mode, max_pixels=None):
    """One image's record (its lines as boxes or polygons in pixels, scaled by the image's size AS DISPLAYED:
    EXIF orientation applied, as every reader decodes it), or None when it cannot be read, is over
    ``max_pixels`` or every label line is invalid (counted and named); the classes it uses are added to ``used``."""
    c["images_listed"] += 1
    try:
        W, H = image_size(img, max_pixels)
    except ImageReadError as exc:
        c[exc.kind] += 1
        fix = "" if exc.kind == TOO_LARGE else "; re-download the export or delete the file"
        problem(f"{img}: {exc.reason}; it is skipped{fix}", exc.kind, img)
        return None
    shapes: list[Shape] = []
    if not lines and not dropped:
        c["images_without_labels"] += 1
    for lineno, cls, vals in lines:
        c["annotations"] += 1
        if nc is not None and cls >= nc:
            c["unknown_category"] += 1
            dropped += 1
            problem(
                f"{lbl}:{lineno}: class id {cls} is not below nc={nc} from data.yaml; the line is ignored; "
                "fix data.yaml or the labels",
                "unknown_category",
                lbl,
                f"line {lineno}",
            )
            continue
        used.add(cls)
        if len(vals) == 4:
            if has_polygons and empty_mode == "skip":
                c["empty_segmentation_skipped"] += 1
                continue
            cx, cy, w, h = vals
            box = ((cx - w / 2) * W, (cy - h / 2) * H, (cx + w / 2) * W, (cy + h / 2) * H)
            shapes.append(Shape(kind="box", box=box, ref=f"line {lineno}"))
            c["empty_segmentation_as_box" if has_polygons else "boxes"] += 1
        else:
            pts = np.asarray(vals, dtype=np.float64).reshape(-1, 2) * (W, H)
            shapes.append(Shape(kind="polygon", points=pts, ref=f"line {lineno}"))
            c["polygons"] += 1
    if dropped and not shapes:
        c["all_labels_invalid"] += 1
        problem(
            f"{img}: all {dropped} label lines of {lbl} are invalid (see the problems naming "
            "them); the image is skipped, not kept as a negative; fix the labels and re-export",
            "all_labels_invalid",
            img,
        )
        return None
    return ImageRecord(split, img, None, None, shapes)


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
    "ExportError",
    "ExportReadResult",
    "IMAGE_SKIP_KINDS",
    "ImageRecord",
    "PROBLEM_COLUMNS",
    "Problem",
    "Shape",
    "detect_export_format",
    "read_export",
    "source_group_of",
]
