"""Write small Roboflow-like exports (COCO and YOLO) into a folder, for tests.

Images are real files written with ``cv2.imwrite`` (a flat grey with a little noise, so
JPEG encoding is not trivial). Nothing here reads ``/work/shared``.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

# Roboflow's two categories: a parent (id 0) no annotation uses, and the real class (id 1)
# with an unhelpful name.
ROBOFLOW_CATEGORIES = [
    {"id": 0, "name": "crack", "supercategory": "none"},
    {"id": 1, "name": "NewCracks - v2 2024-05-18 10-54pm", "supercategory": "crack"},
]

ROBOFLOW_INFO = {
    "year": "2026",
    "version": "1",
    "description": "Exported from roboflow.com",
    "contributor": "",
    "url": "https://app.roboflow.com/datasets/fixture/1",
    "date_created": "2026-02-13T08:56:57+00:00",
}


def write_image(path: Path, width: int = 32, height: int = 24, seed: int = 0) -> Path:
    """A real image file (format from the suffix) of the given size."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    img = (128 + rng.integers(-20, 20, size=(height, width, 3))).astype(np.uint8)
    if not cv2.imwrite(str(path), img):
        raise OSError(f"could not write {path}")
    return path


def write_garbage(path: Path) -> Path:
    """A file with an image suffix whose bytes are not an image."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not a jpeg\x00\x01\x02" * 8)
    return path


def rf_name(stem: str, i: int = 0, ext: str = "jpg") -> str:
    """A Roboflow-style file name: ``<stem>_<ext>.rf.<32 hex>.jpg``."""
    return f"{stem}_{ext}.rf.{i:032x}.jpg"


def coco_image(image_id: int, file_name: str, width: int = 32, height: int = 24, extra_name: str | None = None) -> dict:
    im = {
        "id": image_id,
        "license": 1,
        "file_name": file_name,
        "height": height,
        "width": width,
        "date_captured": "2026-02-13T08:56:57+00:00",
    }
    if extra_name is not None:
        im["extra"] = {"name": extra_name}
    return im


def coco_ann(
    ann_id: int,
    image_id: int,
    *,
    segmentation=None,
    bbox=(0, 0, 1, 1),
    category_id: int = 1,
) -> dict:
    """An annotation; ``area`` is the box area, as Roboflow writes it even for polygons."""
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": list(bbox),
        "area": bbox[2] * bbox[3],
        "segmentation": [] if segmentation is None else segmentation,
        "iscrowd": 0,
    }


def write_coco_split(
    root: Path,
    split: str,
    images: list[dict],
    annotations: list[dict],
    *,
    categories: list[dict] | None = None,
    info: dict | None = None,
    missing: set[str] = frozenset(),
    corrupt: set[str] = frozenset(),
    sizes: dict[str, tuple[int, int]] | None = None,
) -> Path:
    """Write ``root/<split>/_annotations.coco.json`` and the image files beside it.

    ``split`` is the Roboflow name (``train``, ``valid``, ``test``). Images named in
    ``missing`` are not written, those in ``corrupt`` get garbage bytes, and ``sizes``
    (file name -> (width, height)) overrides the size of the file actually written.
    """
    d = Path(root) / split
    d.mkdir(parents=True, exist_ok=True)
    data = {
        "info": dict(ROBOFLOW_INFO) if info is None else info,
        "licenses": [{"id": 1, "url": "https://creativecommons.org/licenses/by/4.0/", "name": "CC BY 4.0"}],
        "categories": ROBOFLOW_CATEGORIES if categories is None else categories,
        "images": images,
        "annotations": annotations,
    }
    (d / "_annotations.coco.json").write_text(json.dumps(data), encoding="utf-8")
    for i, im in enumerate(images):
        name = im["file_name"]
        if name in missing:
            continue
        if name in corrupt:
            write_garbage(d / name)
            continue
        w, h = (sizes or {}).get(name, (im["width"], im["height"]))
        write_image(d / name, w, h, seed=i)
    return d


def write_coco_export(
    root: Path,
    splits: dict[str, list[tuple[str, int, int, list]]],
    **kwargs,
) -> Path:
    """Write a COCO export from plain shapes.

    ``splits``: Roboflow split name -> list of ``(file_name, width, height, anns)`` where
    each ann is ``("poly", [flat list] or [[part], [part]])``, ``("box", [x, y, w, h])``,
    ``("rle", rle_dict)`` or ``("empty", [x, y, w, h])`` (empty segmentation + bbox).
    Image ids are 0..N-1 and annotation ids start at 1, per split.
    """
    for split, items in splits.items():
        images, anns = [], []
        aid = 1
        for image_id, (name, w, h, shapes) in enumerate(items):
            images.append(coco_image(image_id, name, w, h))
            for kind, val in shapes:
                if kind == "poly":
                    parts = val if val and isinstance(val[0], (list, tuple)) else [val]
                    xs = [v for p in parts for v in p[0::2]]
                    ys = [v for p in parts for v in p[1::2]]
                    bbox = (min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys))
                    anns.append(coco_ann(aid, image_id, segmentation=[list(p) for p in parts], bbox=bbox))
                elif kind == "rle":
                    anns.append(coco_ann(aid, image_id, segmentation=val, bbox=(0, 0, w, h)))
                elif kind in ("box", "empty"):
                    anns.append(coco_ann(aid, image_id, segmentation=[], bbox=tuple(val)))
                else:
                    raise ValueError(kind)
                aid += 1
        write_coco_split(root, split, images, anns, **kwargs)
    return Path(root)


def write_yolo_export(
    root: Path,
    splits: dict[str, dict[str, tuple[int, int, list[str] | None]]],
    *,
    names: list[str] | None = ("crack",),
    orphan_labels: dict[str, dict[str, list[str]]] | None = None,
    corrupt: set[str] = frozenset(),
    image_ext: str = ".jpg",
) -> Path:
    """Write a YOLO (v5/v8) export: ``data.yaml`` and ``<split>/images|labels``.

    ``splits``: Roboflow split name -> {stem: (width, height, label lines or None)}; None
    writes no label file, ``[]`` an empty one. ``names=None`` writes no data.yaml.
    ``orphan_labels``: split -> {stem: lines} label files with no image.
    ``corrupt``: stems whose image gets garbage bytes.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if names is not None:
        lines = [
            "train: ../train/images",
            "val: ../valid/images",
            "test: ../test/images",
            "",
            f"nc: {len(names)}",
            "names: [" + ", ".join(repr(n) for n in names) + "]",
        ]
        (root / "data.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for split, items in splits.items():
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "labels").mkdir(parents=True, exist_ok=True)
        for i, (stem, (w, h, label_lines)) in enumerate(items.items()):
            img = root / split / "images" / f"{stem}{image_ext}"
            if stem in corrupt:
                write_garbage(img)
            else:
                write_image(img, w, h, seed=i)
            if label_lines is not None:
                text = "".join(line + "\n" for line in label_lines)
                (root / split / "labels" / f"{stem}.txt").write_text(text, encoding="utf-8")
    for split, items in (orphan_labels or {}).items():
        (root / split / "labels").mkdir(parents=True, exist_ok=True)
        for stem, label_lines in items.items():
            text = "".join(line + "\n" for line in label_lines)
            (root / split / "labels" / f"{stem}.txt").write_text(text, encoding="utf-8")
    return root
