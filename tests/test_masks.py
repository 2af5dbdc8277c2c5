"""Mask rendering: exact pixels, clipping and counting, and build_processed_dataset."""

from __future__ import annotations

import collections
import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from promptseg.ingest.exports import ImageRecord, Shape, read_export
from promptseg.ingest.masks import (
    INDEX_COLUMNS,
    RENDER_COUNT_KEYS,
    build_processed_dataset,
    render_box_mask,
    render_polygon_mask,
    render_record_mask,
)

from fixtures_exports import coco_ann, coco_image, rf_name, write_coco_export, write_coco_split, write_yolo_export

H, W = 24, 32


def _rec(*shapes, width=W, height=H):
    return ImageRecord("train", Path("x.jpg"), width, height, list(shapes))


def _poly(flat):
    return Shape("polygon", points=np.asarray(flat, dtype=np.float64).reshape(-1, 2))


def _coco_box(x, y, w, h):
    return Shape("box", box=(x, y, x + w, y + h))


def _render(*shapes, **kw):
    counts = collections.Counter()
    m = render_record_mask(_rec(*shapes), H, W, counts, **kw)
    assert m.dtype == np.uint8 and m.shape == (H, W)
    assert set(np.unique(m)) <= {0, 255}
    return m, counts


def _expected(fn):
    yy, xx = np.mgrid[0:H, 0:W]
    return np.where(fn(xx, yy), 255, 0).astype(np.uint8)


# ------------------------------------------------------------------ polygons


def test_triangle_exact_pixels():
    m = render_polygon_mask(H, W, [np.array([[2, 2], [10, 2], [2, 10]], float)])
    np.testing.assert_array_equal(m, _expected(lambda x, y: (x >= 2) & (y >= 2) & (x + y <= 12)))


def test_polygon_vertices_rounded_half_up():
    # 1.5 -> 2 and 9.6 -> 10 (numpy's round-half-even would give 2 for 2.5; half-up gives 3).
    m = render_polygon_mask(H, W, [np.array([[1.5, 1.5], [9.6, 1.5], [1.5, 9.6]])])
    np.testing.assert_array_equal(m, _expected(lambda x, y: (x >= 2) & (y >= 2) & (x + y <= 12)))
    m = render_polygon_mask(H, W, [np.array([[2.5, 2.5], [6.5, 2.5], [6.5, 6.5], [2.5, 6.5]])])
    np.testing.assert_array_equal(m, _expected(lambda x, y: (x >= 3) & (x <= 7) & (y >= 3) & (y <= 7)))


def test_multipart_polygon_renders_both_parts():
    m, counts = _render(_poly([1, 1, 4, 1, 4, 4, 1, 4]), _poly([20, 10, 25, 10, 25, 15, 20, 15]))
    exp = _expected(
        lambda x, y: ((x >= 1) & (x <= 4) & (y >= 1) & (y <= 4)) | ((x >= 20) & (x <= 25) & (y >= 10) & (y <= 15))
    )
    np.testing.assert_array_equal(m, exp)
    assert counts["clipped_polygons"] == 0


def test_polygon_hole_is_not_supported_parts_are_unioned():
    """COCO polygons have no holes: an inner ring is just another part, and the union
    fills it. (A hole needs an RLE segmentation.)"""
    outer = _poly([2, 2, 20, 2, 20, 20, 2, 20])
    inner = _poly([8, 8, 14, 8, 14, 14, 8, 14])
    m, _ = _render(outer, inner)
    np.testing.assert_array_equal(m, _expected(lambda x, y: (x >= 2) & (x <= 20) & (y >= 2) & (y <= 20)))


def test_overlapping_polygons_union_not_xor():
    a = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], float)
    b = np.array([[5, 5], [15, 5], [15, 15], [5, 15]], float)
    m = render_polygon_mask(H, W, [a, b])
    assert m[7, 7] == 255


def test_polygon_outside_is_clipped_and_counted():
    m, counts = _render(_poly([-5, -5, 10, -5, -5, 10]))
    assert counts["clipped_polygons"] == 1
    assert m[0, 0] == 255 and m.any()
    # A vertex exactly on the border (x == W, as Roboflow writes them) is inside.
    m, counts = _render(_poly([20, 0, W, 0, W, H, 20, H]))
    assert counts["clipped_polygons"] == 0
    np.testing.assert_array_equal(m, _expected(lambda x, y: x >= 20))


# ---------------------------------------------------------------------- boxes


def test_box_convention_half_open():
    """(x0, y0, x1, y1) covers columns round(x0)..round(x1)-1, rows round(y0)..round(y1)-1."""
    m = render_box_mask(H, W, [(3, 4, 7, 6)])
    np.testing.assert_array_equal(m, _expected(lambda x, y: (x >= 3) & (x < 7) & (y >= 4) & (y < 6)))
    assert np.count_nonzero(m) == 4 * 2
    # Non-integer: 1.4 -> 1, 4.6 -> 5, 2.5 -> 3, 3.5 -> 4 (half-up).
    m, counts = _render(Shape("box", box=(1.4, 2.5, 4.6, 3.5)))
    np.testing.assert_array_equal(m, _expected(lambda x, y: (x >= 1) & (x < 5) & (y == 3)))
    assert counts["degenerate_boxes"] == 0


def test_box_touching_border_and_full_image():
    m, counts = _render(_coco_box(24, 14, 8, 10))  # x + w == W, y + h == H
    np.testing.assert_array_equal(m, _expected(lambda x, y: (x >= 24) & (y >= 14)))
    assert counts["clipped_boxes"] == 0
    m, counts = _render(_coco_box(0, 0, W, H))
    assert (m == 255).all() and counts["clipped_boxes"] == 0


def test_box_overrunning_by_one_pixel_is_clipped_and_counted():
    m, counts = _render(_coco_box(24, 0, W - 24 + 1, 5))  # x + w == W + 1
    np.testing.assert_array_equal(m, _expected(lambda x, y: (x >= 24) & (y < 5)))
    assert counts["clipped_boxes"] == 1
    m, counts = _render(_coco_box(-2, -1, 4, 3))
    np.testing.assert_array_equal(m, _expected(lambda x, y: (x < 2) & (y < 2)))
    assert counts["clipped_boxes"] == 1


@pytest.mark.parametrize("bbox", [(0, 0, 0.5, 1), (0, 0, 0, 1), (1, 1, 0.37, 0.212), (0, 0, 5, 0)])
def test_degenerate_boxes_skipped_and_counted(bbox):
    m, counts = _render(_coco_box(*bbox), _coco_box(10, 10, 2, 2))
    assert counts["degenerate_boxes"] == 1
    np.testing.assert_array_equal(m, _expected(lambda x, y: (x >= 10) & (x < 12) & (y >= 10) & (y < 12)))


def test_box_entirely_outside_is_degenerate():
    m, counts = _render(_coco_box(40, 5, 5, 5))
    assert counts["degenerate_boxes"] == 1 and counts["clipped_boxes"] == 1 and not m.any()


def test_min_box_side_px():
    m, counts = _render(_coco_box(2, 2, 1, 8), min_box_side_px=2.0)
    assert counts["degenerate_boxes"] == 1 and not m.any()
    m, counts = _render(_coco_box(2, 2, 1, 8), min_box_side_px=1.0)
    assert counts["degenerate_boxes"] == 0 and np.count_nonzero(m) == 8


# ------------------------------------------------------------------------ RLE


def test_rle_renders_exactly():
    from pycocotools import mask as mask_utils

    src = np.zeros((H, W), np.uint8)
    src[3:9, 5:12] = 1
    src[5:7, 7:9] = 0  # a hole: RLE can have one
    src[20:, 30:] = 1
    enc = mask_utils.encode(np.asfortranarray(src))
    compressed_str = {"size": enc["size"], "counts": enc["counts"].decode("ascii")}
    # Uncompressed: column-major run lengths, starting with zeros.
    flat = src.flatten(order="F")
    runs, cur, n = [], 0, 0
    for v in flat:
        if v == cur:
            n += 1
        else:
            runs.append(n)
            cur, n = v, 1
    runs.append(n)
    uncompressed = {"size": [H, W], "counts": runs}
    for rle in (enc, compressed_str, uncompressed):
        m, counts = _render(Shape("rle", rle=rle))
        np.testing.assert_array_equal(m, src * 255)
        assert counts["malformed_rle"] == 0


def test_rle_bad_or_wrong_size():
    m, counts = _render(Shape("rle", rle={"size": [H, W], "counts": [1, 2, 3]}))
    assert counts["malformed_rle"] == 1 and not m.any()
    small = {"size": [4, 4], "counts": [0, 16]}  # all ones, 4x4
    m, counts = _render(Shape("rle", rle=small))
    assert counts["rle_size_mismatch"] == 1
    assert np.count_nonzero(m) == 16 and (m[:4, :4] == 255).all()


def test_mixed_shapes_union():
    m, _ = _render(_poly([0, 0, 3, 0, 0, 3]), _coco_box(20, 20, 2, 2))
    assert m[0, 0] == 255 and m[21, 21] == 255 and m[10, 10] == 0


# ----------------------------------------------------------- build_processed_dataset


def _read_index(out):
    with open(out / "index.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_build_processed_dataset_coco(tmp_path):
    images = [
        coco_image(0, rf_name("IMG_1", 1), 32, 24, extra_name="IMG_1.jpg"),
        coco_image(1, rf_name("IMG_1", 2), 32, 24),  # an augmented copy of the same photo
        coco_image(2, rf_name("IMG_2", 3), 32, 24),  # no annotation
        coco_image(3, "corrupt.jpg", 32, 24),
        coco_image(4, "bigger.jpg", 32, 24),  # file is 40x30
        coco_image(5, "gone.jpg", 32, 24),
    ]
    anns = [
        coco_ann(0, 0, segmentation=[[2, 2, 10, 2, 2, 10]], bbox=(2, 2, 8, 8)),
        coco_ann(1, 1, segmentation=[], bbox=(24, 0, 9, 5)),  # empty seg, overruns by 1
        coco_ann(2, 4, segmentation=[[30, 20, 38, 20, 38, 28]], bbox=(30, 20, 8, 8)),
        coco_ann(3, 0, segmentation=[], bbox=(0, 0, 0.5, 1)),  # degenerate
    ]
    export = tmp_path / "export"
    write_coco_split(
        export,
        "valid",
        images,
        anns,
        corrupt={"corrupt.jpg"},
        missing={"gone.jpg"},
        sizes={"bigger.jpg": (40, 30)},
    )
    write_coco_export(export, {"train": [("t.png", 32, 24, [("poly", [1, 1, 8, 1, 1, 8])])]})
    read = read_export(export, empty_segmentation="box")
    out = tmp_path / "processed"
    summary = build_processed_dataset(read, out)

    # Tree.
    assert sorted(p.name for p in (out / "val" / "images").iterdir()) == sorted(
        [rf_name("IMG_1", 1), rf_name("IMG_1", 2), rf_name("IMG_2", 3), "bigger.jpg"]
    )
    assert (out / "train" / "images" / "t.png").is_file()
    masks = sorted((out / "val" / "masks").iterdir())
    assert len(masks) == 4
    for p in masks + [out / "train" / "masks" / "t.png"]:
        m = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        assert m.dtype == np.uint8 and m.ndim == 2
        assert set(np.unique(m)) <= {0, 255}
    big = cv2.imread(str(out / "val" / "masks" / "bigger.png"), cv2.IMREAD_UNCHANGED)
    assert big.shape == (30, 40)  # the file's actual size
    assert big[22, 36] == 255  # rendered in file coordinates, beyond the claimed 32x24

    # index.csv.
    rows = _read_index(out)
    assert list(rows[0].keys()) == list(INDEX_COLUMNS)
    by_stem = {r["stem"]: r for r in rows}
    assert len(rows) == 5
    s1 = Path(rf_name("IMG_1", 1)).stem
    s2 = Path(rf_name("IMG_1", 2)).stem
    assert by_stem[s1]["source_group"] == "IMG_1" == by_stem[s2]["source_group"]
    assert by_stem[s1]["n_shapes"] == "2"
    assert "degenerate_boxes=1" in by_stem[s1]["notes"]
    assert "clipped_boxes=1" in by_stem[s2]["notes"]
    assert "size_mismatch=1" in by_stem["bigger"]["notes"]
    assert float(by_stem[Path(rf_name("IMG_2", 3)).stem]["foreground_fraction"]) == 0.0
    assert (by_stem["bigger"]["width"], by_stem["bigger"]["height"]) == ("40", "30")
    assert by_stem["t"]["split"] == "train"

    # Returned counts.
    v = summary["val"]
    assert v["images"] == 4
    assert v["images_listed"] == 6
    assert v["with_foreground"] == 3 and v["without_foreground"] == 1
    assert v["corrupt_image"] == 1
    assert v["missing_image_file"] == 1
    assert v["size_mismatch"] == 1
    assert v["clipped_boxes"] == 1
    assert v["degenerate_boxes"] == 1
    assert v["empty_segmentation_as_box"] == 2
    assert v["images_without_labels"] == 2  # IMG_2 and corrupt.jpg (gone.jpg is dropped first)
    assert v["unused_categories"] == 1
    assert 0 < v["mean_foreground_fraction"] < 1
    assert set(RENDER_COUNT_KEYS) <= set(v)
    assert summary["train"]["images"] == 1
    # missing, corrupt, size mismatch, and the degenerate box (every dropped shape is named)
    assert summary["problems"] == len(read.problems) == 4
    assert [p.kind for p in read.problems] == [
        "missing_image_file",
        "degenerate_boxes",
        "corrupt_image",
        "size_mismatch",
    ]
    assert read.problems[1].annotation == "3" and read.problems[1].file.endswith(rf_name("IMG_1", 1))
    assert any("corrupt.jpg" in p and ("re-download" in p or "remove" in p) for p in read.problems)
    json.dumps(summary)


def test_build_yolo_and_rerun_replaces_stale_files(tmp_path):
    export = write_yolo_export(
        tmp_path / "export",
        {"train": {"a": (20, 10, ["0 0.5 0.5 0.5 0.4"]), "b": (20, 10, None)}},
    )
    out = tmp_path / "out"
    (out / "train" / "masks").mkdir(parents=True)
    (out / "train" / "masks" / "stale.png").write_bytes(b"old")
    summary = build_processed_dataset(read_export(export), out)
    assert not (out / "train" / "masks" / "stale.png").exists()
    m = cv2.imread(str(out / "train" / "masks" / "a.png"), cv2.IMREAD_UNCHANGED)
    # cx=10, cy=5, w=10, h=4 -> x 5..15, y 3..7 -> columns 5..14, rows 3..6.
    exp = np.zeros((10, 20), np.uint8)
    exp[3:7, 5:15] = 255
    np.testing.assert_array_equal(m, exp)
    assert summary["train"]["images"] == 2 and summary["train"]["without_foreground"] == 1
    assert summary["train"]["images_without_labels"] == 1
    rows = _read_index(out)
    assert {r["source_group"] for r in rows} == {"a", "b"}


def test_corrupt_coco_image_skipped_with_message(tmp_path):
    root = tmp_path / "export"
    write_coco_split(
        root,
        "train",
        [coco_image(0, "ok.jpg"), coco_image(1, "broken.jpg")],
        [coco_ann(1, 1, segmentation=[[1, 1, 5, 1, 1, 5]])],
        corrupt={"broken.jpg"},
    )
    read = read_export(root)
    summary = build_processed_dataset(read, tmp_path / "out")
    assert summary["train"]["corrupt_image"] == 1 and summary["train"]["images"] == 1
    msg = [p for p in read.problems if "broken.jpg" in p]
    assert len(msg) == 1 and "re-download" in msg[0]


def test_zero_usable_images_raises(tmp_path):
    root = tmp_path / "export"
    write_coco_split(
        root,
        "valid",
        [coco_image(i, f"{i}.jpg") for i in range(3)],
        [],
        missing={"0.jpg", "1.jpg", "2.jpg"},
    )
    read = read_export(root)
    with pytest.raises(ValueError, match=r"no usable images in .*: 3 listed, 3 missing on disk.*check the export path"):
        build_processed_dataset(read, tmp_path / "out")

    root2 = tmp_path / "export2"
    write_coco_split(root2, "train", [coco_image(0, "c.jpg")], [], corrupt={"c.jpg"})
    with pytest.raises(ValueError, match="1 corrupt"):
        build_processed_dataset(read_export(root2), tmp_path / "out2")


def test_refuses_to_write_over_the_export(tmp_path):
    root = write_coco_export(tmp_path / "exp", {"train": [("a.jpg", 32, 24, [])]})
    read = read_export(root)
    # Roboflow's train/ is also our train/: writing into the export would delete it.
    with pytest.raises(ValueError, match="overlaps the export"):
        build_processed_dataset(read, root)
    assert (root / "train" / "a.jpg").is_file()


def test_duplicate_stems_and_thread_independence(tmp_path):
    from fixtures_exports import write_image

    export = write_yolo_export(
        tmp_path / "export",
        {"train": {f"s{i}": (16, 12, [f"0 0.5 0.5 0.{i + 1} 0.5"]) for i in range(6)}},
    )
    write_image(export / "train" / "images" / "s0.png", 16, 12)  # same stem, other format
    read = read_export(export)
    a = build_processed_dataset(read, tmp_path / "one", workers=1)
    b = build_processed_dataset(read_export(export), tmp_path / "many", workers=4)
    assert a["train"]["duplicate_stems"] == 1 and a["train"]["images"] == 7
    assert (tmp_path / "one" / "train" / "masks" / "s0__2.png").is_file()
    assert (tmp_path / "one" / "index.csv").read_text() == (tmp_path / "many" / "index.csv").read_text()
    for p in sorted((tmp_path / "one" / "train" / "masks").iterdir()):
        q = tmp_path / "many" / "train" / "masks" / p.name
        np.testing.assert_array_equal(cv2.imread(str(p), -1), cv2.imread(str(q), -1))
    assert {k: v for k, v in a.items() if k != "problems"} == {k: v for k, v in b.items() if k != "problems"}
