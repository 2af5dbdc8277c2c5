"""Tests for promptseg.ingest.synthetic: the offline stand-in for the Roboflow exports."""

from __future__ import annotations

import json
import pathlib
import re

import cv2
import numpy as np
import pytest
import yaml

from promptseg.ingest.synthetic import crack_polygons, render_wall_sample, write_synthetic_export

SIZE = 128
RF_NAME = re.compile(r"^(wall_\d{4})_jpg\.rf\.([0-9a-f]{32})\.jpg$")
SPLITS = ("train", "valid", "test")


def _export(dataset, out, **kw):
    args = dict(seed=3, image_size=SIZE, counts={"train": 10, "valid": 4, "test": 4}, negative_share=0.2)
    args.update(kw)
    return write_synthetic_export(dataset, out, **args)


@pytest.fixture(scope="module")
def cracks(tmp_path_factory):
    out = tmp_path_factory.mktemp("cracks")
    return out, _export("cracks", out)


@pytest.fixture(scope="module")
def drywall(tmp_path_factory):
    out = tmp_path_factory.mktemp("drywall")
    return out, _export("drywall", out)


def _load_coco(root: pathlib.Path, split: str) -> dict:
    return json.loads((root / split / "_annotations.coco.json").read_text())


def _fill(polys, shape) -> np.ndarray:
    """Fill each polygon on its own (one fillPoly call with several polygons is even-odd)."""
    mask = np.zeros(shape, np.uint8)
    for p in polys:
        pts = np.rint(np.asarray(p, np.float64).reshape(-1, 2)).astype(np.int32)
        cv2.fillPoly(mask, [pts], 255)
    return mask


def _read_labels(path: pathlib.Path) -> list[list[float]]:
    rows = []
    for line in path.read_text().splitlines():
        parts = line.split()
        assert parts[0] == "0" and len(parts) == 5, line
        assert all(re.fullmatch(r"\d\.\d{6}", v) for v in parts[1:]), line
        rows.append([float(v) for v in parts[1:]])
    return rows


# ----------------------------------------------------------------------------- COCO


def test_coco_export_is_valid_and_consistent(cracks):
    root, summary = cracks
    assert (root / "README.roboflow.txt").read_text().strip()
    assert summary["format"] == "coco" and summary["images"] == {"train": 10, "valid": 4, "test": 4}
    for split in SPLITS:
        coco = _load_coco(root, split)
        assert isinstance(coco["info"]["year"], str) and isinstance(coco["info"]["version"], str)
        assert isinstance(coco["licenses"], list)
        assert coco["categories"] == [
            {"id": 0, "name": "cracks", "supercategory": "none"},
            {"id": 1, "name": "crack", "supercategory": "cracks"},
        ]
        ids = [im["id"] for im in coco["images"]]
        assert ids == list(range(len(ids)))
        for im in coco["images"]:
            m = RF_NAME.match(im["file_name"])
            assert m, im["file_name"]
            assert im["extra"]["name"] == m.group(1) + ".jpg"
            path = root / split / im["file_name"]
            assert path.is_file()
            assert cv2.imread(str(path)).shape == (im["height"], im["width"], 3) == (SIZE, SIZE, 3)
        ann_ids = [a["id"] for a in coco["annotations"]]
        assert len(set(ann_ids)) == len(ann_ids)
        for a in coco["annotations"]:
            assert a["image_id"] in ids
            assert a["category_id"] == 1 and a["iscrowd"] == 0
            assert a["segmentation"] and all(len(p) >= 6 and len(p) % 2 == 0 for p in a["segmentation"])
            x, y, w, h = a["bbox"]
            assert w > 0 and h > 0 and a["area"] == pytest.approx(w * h)
            pts = np.concatenate([np.asarray(p).reshape(-1, 2) for p in a["segmentation"]])
            assert pts[:, 0].min() >= x and pts[:, 0].max() <= x + w
            assert pts[:, 1].min() >= y and pts[:, 1].max() <= y + h
            assert pts.min() >= 0 and pts.max() <= SIZE - 1


def test_crack_polygons_cover_dark_pixels(cracks):
    """Filling the exported polygons lands on pixels clearly darker than the wall."""
    root, _ = cracks
    checked = 0
    for split in SPLITS:
        coco = _load_coco(root, split)
        by_image: dict[int, list] = {}
        for a in coco["annotations"]:
            by_image.setdefault(a["image_id"], []).extend(a["segmentation"])
        for im in coco["images"]:
            if im["id"] not in by_image:
                continue
            gray = cv2.imread(str(root / split / im["file_name"]), cv2.IMREAD_GRAYSCALE).astype(np.float64)
            mask = _fill(by_image[im["id"]], gray.shape) > 0
            assert 0 < mask.sum() < mask.size
            # darker than the wall around it (not the whole image: a floor or a doorway in
            # the frame can be darker than any crack), and clearly darker than the wall
            # right along it
            near = (cv2.dilate(mask.astype(np.uint8), np.ones((15, 15), np.uint8)) > 0) & ~mask
            ring = cv2.dilate(mask.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
            ring &= cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)) == 0
            assert gray[mask].mean() < 0.95 * gray[near].mean()
            assert gray[mask].mean() < 0.9 * gray[ring].mean()
            checked += 1
    assert checked >= 8


def test_polygon_fill_reproduces_crack_mask():
    """A crack label is an outline without holes (branches stop before closing a loop), so
    its exported outer-contour polygons give back the label."""
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(12):
        sample = render_wall_sample("cracks", rng, 160)
        for inst in sample.instances:
            filled = _fill(crack_polygons(inst), inst.shape) > 0
            truth = inst > 0
            iou = (filled & truth).sum() / (filled | truth).sum()
            assert iou > 0.99
            checked += 1
    assert checked >= 12


def test_crack_foreground_fraction_is_small(cracks):
    """Cracks cover a few % of an image: the median lies in the real export's p10-p90 range
    (0.008-0.11, median 0.029: benchmarks/synthetic_vs_real.py), the mean stays small."""
    root, summary = cracks
    fractions = []
    for split in SPLITS:
        coco = _load_coco(root, split)
        polys: dict[int, list] = {im["id"]: [] for im in coco["images"]}
        for a in coco["annotations"]:
            polys[a["image_id"]].extend(a["segmentation"])
        fractions += [(_fill(p, (SIZE, SIZE)) > 0).mean() for p in polys.values()]
    assert 0.008 < np.median(fractions) < 0.11
    assert np.mean(fractions) < 0.05
    assert summary["foreground_fraction"] == pytest.approx(np.mean(fractions), abs=0.005)


@pytest.mark.parametrize(
    "dataset, brightness, contrast",
    # the real exports' p10-p90 of the mean and std of the gray image (for drywall, the
    # tighter of the two real exports): benchmarks/synthetic_vs_real.py
    [("cracks", (118, 199), (17.4, 52.7)), ("drywall", (99.6, 166), (18.1, 80.0))],
)
def test_brightness_and_contrast_like_real_photos(dataset, brightness, contrast):
    """Median brightness and contrast of the renders lie in the real range, and every render
    leaves head-room for the +25 % brightness-jittered augmentation copies (no clipping)."""
    means, stds = [], []
    for i in range(30):
        sample = render_wall_sample(dataset, np.random.default_rng(100 + i), 128, negative=i % 5 == 0)
        gray = cv2.cvtColor(sample.image, cv2.COLOR_BGR2GRAY).astype(np.float64)
        means.append(gray.mean())
        stds.append(gray.std())
        assert np.percentile(gray, 99) * 1.25 < 254
    assert brightness[0] < np.median(means) < brightness[1]
    assert contrast[0] < np.median(stds) < contrast[1]


# ----------------------------------------------------------------------------- YOLO


def test_yolo_export_parses(drywall):
    root, summary = drywall
    data = yaml.safe_load((root / "data.yaml").read_text())
    assert data["nc"] == 1 and data["names"] == ["drywall-join"]
    assert (data["train"], data["val"], data["test"]) == ("../train/images", "../valid/images", "../test/images")
    assert summary["format"] == "yolov8"
    for split in SPLITS:
        images = sorted((root / split / "images").glob("*.jpg"))
        labels = sorted((root / split / "labels").glob("*.txt"))
        assert len(images) == summary["images"][split]
        assert [p.stem for p in images] == [p.stem for p in labels]
        negatives = 0
        for img_path, lbl_path in zip(images, labels):
            assert RF_NAME.match(img_path.name)
            rows = _read_labels(lbl_path)
            assert all(0.0 <= v <= 1.0 for r in rows for v in r)
            assert all(r[2] > 0 and r[3] > 0 for r in rows)
            truth = cv2.imread(str(root / "true_masks" / split / (img_path.stem + ".png")), cv2.IMREAD_UNCHANGED)
            assert truth.shape == (SIZE, SIZE) and set(np.unique(truth)) <= {0, 255}
            if not rows:
                negatives += 1
                assert lbl_path.read_bytes() == b""
                assert not truth.any()
        assert negatives == summary["negatives"][split]


def test_true_band_mask_inside_its_box(drywall):
    root, _ = drywall
    checked = 0
    for lbl_path in sorted(root.glob("*/labels/*.txt")):
        split = lbl_path.parent.parent.name
        rows = _read_labels(lbl_path)
        if not rows:
            continue
        truth = cv2.imread(str(root / "true_masks" / split / (lbl_path.stem + ".png")), cv2.IMREAD_UNCHANGED) > 0
        ys, xs = np.nonzero(truth)
        xc, yc = (xs + 0.5) / SIZE, (ys + 0.5) / SIZE  # pixel centres, normalised
        covered = np.zeros(len(xs), bool)
        for cx, cy, w, h in rows:
            x0, x1, y0, y1 = cx - w / 2, cx + w / 2, cy - h / 2, cy + h / 2
            covered |= (xc >= x0 - 1e-5) & (xc <= x1 + 1e-5) & (yc >= y0 - 1e-5) & (yc <= y1 + 1e-5)
            # the band fills a large share of its box
            c0, c1 = int(round(x0 * SIZE)), int(round(x1 * SIZE))
            r0, r1 = int(round(y0 * SIZE)), int(round(y1 * SIZE))
            assert truth[r0:r1, c0:c1].mean() > 0.6
            # a joint spans most of the image along its length (a floor strip or a frame at
            # the image border may hide up to 40 % of it)
            assert max(w, h) > 0.55
        assert covered.all()
        checked += 1
    assert checked >= 8


# ----------------------------------------------------------------------------- shared


def _tree(root: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("dataset", ["cracks", "drywall"])
def test_deterministic(tmp_path, dataset):
    kw = dict(image_size=96, counts={"train": 4, "valid": 2, "test": 1}, negative_share=0.2, augment_copies_share=0.5)

    def run(name: str, seed: int) -> dict[str, bytes]:
        write_synthetic_export(dataset, tmp_path / name, seed=seed, **kw)
        return _tree(tmp_path / name)

    a, b, c = run("a", 11), run("b", 11), run("c", 12)
    assert a == b
    assert set(a) != set(c)  # the .rf hashes come from the seeded generator
    assert sorted(a.values()) != sorted(c.values())
    # rewriting into the same folder replaces, it does not accumulate
    write_synthetic_export(dataset, tmp_path / "a", seed=12, **kw)
    assert _tree(tmp_path / "a") == c


def test_negative_share_respected(tmp_path):
    summary = write_synthetic_export(
        "cracks", tmp_path, seed=5, image_size=64, counts={"train": 40, "valid": 10}, negative_share=0.25
    )
    assert summary["images"] == {"train": 40, "valid": 10, "test": 0}
    assert abs(summary["negatives"]["train"] - 10) <= 2 and abs(summary["negatives"]["valid"] - 2.5) <= 1
    coco = _load_coco(tmp_path, "train")
    with_ann = {a["image_id"] for a in coco["annotations"]}
    assert len(coco["images"]) - len(with_ann) == summary["negatives"]["train"]
    none = write_synthetic_export(
        "drywall", tmp_path / "d", seed=5, image_size=64, counts={"train": 10}, negative_share=0.0
    )
    assert none["negatives"]["train"] == 0


def test_augmentation_copies(tmp_path):
    summary = _export("drywall", tmp_path, counts={"train": 8, "valid": 2, "test": 0}, augment_copies_share=0.5)
    assert summary["copies"] == 4 and summary["images"]["train"] == 12 and summary["images"]["valid"] == 2
    groups: dict[str, list[str]] = {}
    for p in sorted((tmp_path / "train" / "images").glob("*.jpg")):
        stem, rf_hash = RF_NAME.match(p.name).groups()
        groups.setdefault(stem, []).append(p.stem)
    pairs = [g for g in groups.values() if len(g) == 2]
    assert len(pairs) == 4 and all(len(g) <= 2 for g in groups.values())
    assert len({p.stem for p in (tmp_path / "valid" / "images").glob("*.jpg")}) == 2
    for a, b in pairs:
        assert a != b  # same stem, different .rf hash
        ma, mb = (cv2.imread(str(tmp_path / "true_masks" / "train" / f"{s}.png"), cv2.IMREAD_UNCHANGED) for s in (a, b))
        la, lb = (_read_labels(tmp_path / "train" / "labels" / f"{s}.txt") for s in (a, b))
        if np.array_equal(ma, mb):  # brightness jitter: same annotations
            assert la == lb
        else:  # horizontal flip: masks and boxes mirrored
            assert np.array_equal(ma[:, ::-1], mb)
            flipped = sorted([round(1 - cx, 6), cy, w, h] for cx, cy, w, h in la)
            assert np.allclose(flipped, sorted(lb), atol=2e-6)


def test_cracks_augmentation_copies_transform_polygons(tmp_path):
    _export("cracks", tmp_path, counts={"train": 6}, negative_share=0.0, augment_copies_share=1.0)
    coco = _load_coco(tmp_path, "train")
    assert len(coco["images"]) == 12
    anns: dict[int, list] = {}
    for a in coco["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    for orig, copy in zip(coco["images"][0::2], coco["images"][1::2]):
        assert orig["extra"]["name"] == copy["extra"]["name"] and orig["file_name"] != copy["file_name"]
        boxes_o = sorted(a["bbox"] for a in anns[orig["id"]])
        boxes_c = sorted(a["bbox"] for a in anns[copy["id"]])
        mirrored = sorted([SIZE - x - w, y, w, h] for x, y, w, h in boxes_o)
        assert boxes_c in (boxes_o, mirrored)


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        write_synthetic_export("potholes", tmp_path, seed=0, image_size=64, counts={"train": 1}, negative_share=0.1)
    with pytest.raises(ValueError):
        write_synthetic_export("cracks", tmp_path, seed=0, image_size=64, counts={"training": 1}, negative_share=0.1)
    with pytest.raises(ValueError):
        write_synthetic_export("cracks", tmp_path, seed=0, image_size=64, counts={"train": 1}, negative_share=1.5)
