"""read_export on small fixture exports written into tmp_path (never /work/shared)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from promptseg.ingest.exports import COUNT_KEYS, detect_export_format, read_export, source_group_of

from fixtures_exports import (
    coco_ann,
    coco_image,
    rf_name,
    write_coco_export,
    write_coco_split,
    write_image,
    write_yolo_export,
)

TRI = [2, 2, 10, 2, 2, 10]


def _by_name(result):
    return {r.image_path.name: r for r in result.records}


# ------------------------------------------------------------------ detection


def test_detect_format(tmp_path):
    coco = write_coco_export(tmp_path / "c", {"train": [("a.jpg", 32, 24, [])]})
    yolo = write_yolo_export(tmp_path / "y", {"train": {"a": (32, 24, [])}})
    yolo_no_yaml = write_yolo_export(tmp_path / "y2", {"valid": {"a": (32, 24, [])}}, names=None)
    assert detect_export_format(coco) == "coco"
    assert detect_export_format(yolo) == "yolo"
    assert detect_export_format(yolo_no_yaml) == "yolo"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a Roboflow export"):
        detect_export_format(tmp_path / "empty")
    # An export unzipped one level down: the message says where it is.
    write_coco_export(tmp_path / "outer" / "cracks-1", {"valid": [("a.jpg", 32, 24, [])]})
    with pytest.raises(ValueError, match="one level down"):
        detect_export_format(tmp_path / "outer")
    with pytest.raises(ValueError, match="does not exist"):
        detect_export_format(tmp_path / "nope")


def test_bad_empty_segmentation_mode(tmp_path):
    root = write_coco_export(tmp_path, {"train": [("a.jpg", 32, 24, [])]})
    with pytest.raises(ValueError, match="empty_segmentation"):
        read_export(root, empty_segmentation="nothing")


# ----------------------------------------------------------------------- COCO


def test_coco_shapes_and_split_names(tmp_path):
    rle = {"size": [24, 32], "counts": [30, 4, 734]}
    root = write_coco_export(
        tmp_path,
        {
            "train": [("tri.jpg", 32, 24, [("poly", TRI)])],
            "valid": [
                ("multi.jpg", 32, 24, [("poly", [[0, 0, 4, 0, 0, 4], [20, 20, 30, 20, 20, 23]])]),
                ("rle.jpg", 32, 24, [("rle", rle)]),
            ],
            "test": [("none.jpg", 32, 24, [])],
        },
    )
    res = read_export(root)
    assert res.format == "coco"
    assert set(res.counts) == {"train", "val", "test"}  # 'valid' -> 'val'
    for c in res.counts.values():
        assert set(COUNT_KEYS) <= set(c)
    recs = _by_name(res)
    assert recs["tri.jpg"].split == "train"
    assert recs["multi.jpg"].split == "val"
    tri = recs["tri.jpg"].shapes
    assert len(tri) == 1 and tri[0].kind == "polygon"
    np.testing.assert_array_equal(tri[0].points, [[2, 2], [10, 2], [2, 10]])
    assert tri[0].points.dtype == np.float64
    assert (recs["tri.jpg"].width, recs["tri.jpg"].height) == (32, 24)
    assert [s.kind for s in recs["multi.jpg"].shapes] == ["polygon", "polygon"]
    assert recs["rle.jpg"].shapes[0].kind == "rle" and recs["rle.jpg"].shapes[0].rle == rle
    assert recs["none.jpg"].shapes == []
    assert res.counts["val"]["multipart_polygons"] == 1
    assert res.counts["val"]["polygons"] == 1 and res.counts["val"]["rle"] == 1
    assert res.counts["test"]["images_without_labels"] == 1
    assert res.counts["train"]["images"] == 1 and res.counts["val"]["images"] == 2
    assert res.problems == []


def test_coco_roboflow_quirks(tmp_path):
    """Category 0 unused, class 1 with a weird name, string info.year/version,
    annotation ids starting at 0, area = box area, extra.name."""
    images = [
        coco_image(0, rf_name("IMG_1", 1), extra_name="IMG_1.jpg"),
        coco_image(1, rf_name("IMG_2", 2)),
        coco_image(2, rf_name("IMG_3", 3)),
    ]
    anns = [
        coco_ann(0, 0, segmentation=[TRI], bbox=(2, 2, 8, 8)),
        # area is w*h of the box and here absurdly small: must not filter anything.
        {**coco_ann(1, 1, segmentation=[TRI], bbox=(2, 2, 8, 8)), "area": 0},
    ]
    root = tmp_path / "exp"
    write_coco_split(root, "valid", images, anns, info={"year": "2025", "version": "3"})
    res = read_export(root)
    c = res.counts["val"]
    assert c["images"] == 3 and c["images_listed"] == 3
    assert c["polygons"] == 2
    assert c["unused_categories"] == 1
    assert c["images_without_labels"] == 1
    assert c["unknown_category"] == 0
    recs = _by_name(res)
    assert recs[rf_name("IMG_1", 1)].source_name == "IMG_1.jpg"
    assert recs[rf_name("IMG_2", 2)].source_name is None
    assert len(recs[rf_name("IMG_2", 2)].shapes) == 1
    assert res.problems == []


def test_coco_categories_by_used_id_not_name_or_position(tmp_path):
    # Categories listed in a shuffled order, the used one neither first nor named "crack".
    cats = [
        {"id": 5, "name": "crack", "supercategory": "none"},
        {"id": 0, "name": "background", "supercategory": "none"},
        {"id": 3, "name": "seam-detect - v1 2024-12-12 9-11pm", "supercategory": "crack"},
    ]
    images = [coco_image(0, "a.jpg")]
    anns = [coco_ann(1, 0, segmentation=[TRI], category_id=3)]
    root = tmp_path / "exp"
    write_coco_split(root, "train", images, anns, categories=cats)
    res = read_export(root)
    assert len(res.records[0].shapes) == 1
    assert res.counts["train"]["unused_categories"] == 2


def test_coco_unknown_category(tmp_path):
    images = [coco_image(0, "a.jpg")]
    anns = [coco_ann(1, 0, segmentation=[TRI]), coco_ann(2, 0, segmentation=[TRI], category_id=7)]
    root = tmp_path / "exp"
    write_coco_split(root, "train", images, anns)
    res = read_export(root)
    assert res.counts["train"]["unknown_category"] == 1
    assert len(res.records[0].shapes) == 1
    assert len(res.problems) == 1
    assert "category_id 7" in res.problems[0] and "_annotations.coco.json" in res.problems[0]


@pytest.mark.parametrize("mode", ["box", "skip"])
def test_coco_empty_segmentation_in_polygon_dataset(tmp_path, mode):
    root = write_coco_export(
        tmp_path,
        {
            "train": [
                ("a.jpg", 32, 24, [("poly", TRI), ("empty", [4, 5, 6, 7])]),
            ]
        },
    )
    res = read_export(root, empty_segmentation=mode)
    c = res.counts["train"]
    shapes = res.records[0].shapes
    if mode == "box":
        assert c["empty_segmentation_as_box"] == 1 and c["empty_segmentation_skipped"] == 0
        assert [s.kind for s in shapes] == ["polygon", "box"]
        assert shapes[1].box == (4.0, 5.0, 10.0, 12.0)
    else:
        assert c["empty_segmentation_skipped"] == 1 and c["empty_segmentation_as_box"] == 0
        assert [s.kind for s in shapes] == ["polygon"]
    assert c["boxes"] == 0


def test_coco_empty_segmentation_decided_across_splits(tmp_path):
    """A split with only box annotations in an export whose other split has polygons
    still treats them as empty segmentations."""
    root = write_coco_export(
        tmp_path,
        {"train": [("a.jpg", 32, 24, [("poly", TRI)])], "test": [("b.jpg", 32, 24, [("empty", [1, 1, 5, 5])])]},
    )
    res = read_export(root, empty_segmentation="skip")
    assert res.counts["test"]["empty_segmentation_skipped"] == 1


def test_coco_boxes_only_export(tmp_path):
    root = write_coco_export(
        tmp_path,
        {"train": [("a.jpg", 32, 24, [("box", [1, 2, 3, 4]), ("box", [0, 0, 0.5, 1])])]},
    )
    for mode in ("box", "skip"):  # the mode is irrelevant without polygons
        res = read_export(root, empty_segmentation=mode)
        c = res.counts["train"]
        assert c["boxes"] == 2
        assert c["empty_segmentation_as_box"] == 0 and c["empty_segmentation_skipped"] == 0
        assert [s.box for s in res.records[0].shapes] == [(1.0, 2.0, 4.0, 6.0), (0.0, 0.0, 0.5, 1.0)]


def test_coco_degenerate_polygons(tmp_path):
    images = [coco_image(0, "a.jpg")]
    anns = [
        coco_ann(1, 0, segmentation=[[1, 1, 5, 5]]),  # 2 points
        coco_ann(2, 0, segmentation=[[1, 1, 5, 5, 3]]),  # odd count
        coco_ann(3, 0, segmentation=[[1, 1, 5, 5], TRI]),  # one bad part, one good
    ]
    root = tmp_path / "exp"
    write_coco_split(root, "train", images, anns)
    res = read_export(root)
    c = res.counts["train"]
    assert c["degenerate_polygons"] == 3
    assert c["polygons"] == 1
    assert len(res.records[0].shapes) == 1


def test_coco_label_for_missing_image_id_and_missing_file(tmp_path):
    images = [coco_image(0, "here.jpg"), coco_image(1, "gone.jpg")]
    anns = [coco_ann(1, 0, segmentation=[TRI]), coco_ann(2, 42, segmentation=[TRI])]
    root = tmp_path / "exp"
    write_coco_split(root, "train", images, anns, missing={"gone.jpg"})
    res = read_export(root)
    c = res.counts["train"]
    assert c["labels_without_image"] == 1
    assert c["missing_image_file"] == 1
    assert c["images_listed"] == 2 and c["images"] == 1
    assert [r.image_path.name for r in res.records] == ["here.jpg"]
    assert any("image id 42" in p for p in res.problems)
    assert any("gone.jpg" in p and "missing on disk" in p for p in res.problems)


def test_coco_rle_compressed_kept(tmp_path):
    from pycocotools import mask as mask_utils

    m = np.zeros((24, 32), np.uint8, order="F")
    m[3:7, 5:9] = 1
    enc = mask_utils.encode(m)
    rle = {"size": enc["size"], "counts": enc["counts"].decode("ascii")}
    root = write_coco_export(tmp_path, {"train": [("a.jpg", 32, 24, [("rle", rle)])]})
    res = read_export(root)
    assert res.records[0].shapes[0].rle == rle


def test_coco_unreadable_json_is_a_problem_not_a_crash(tmp_path):
    root = write_coco_export(tmp_path, {"train": [("a.jpg", 32, 24, [("poly", TRI)])]})
    (root / "valid").mkdir()
    (root / "valid" / "_annotations.coco.json").write_text("{not json", encoding="utf-8")
    res = read_export(root)
    assert res.counts["val"]["unreadable_annotation_file"] == 1
    assert res.counts["train"]["images"] == 1
    assert any("valid" in p and "COCO JSON" in p for p in res.problems)


def test_counts_are_json_serialisable(tmp_path):
    root = write_coco_export(tmp_path, {"train": [("a.jpg", 32, 24, [("poly", TRI)])]})
    json.dumps(read_export(root).counts)


# ----------------------------------------------------------------------- YOLO


def test_yolo_detection(tmp_path):
    root = write_yolo_export(
        tmp_path,
        {
            "train": {
                "a": (40, 20, ["0 0.5 0.5 0.5 0.5"]),
                "nolabel": (40, 20, None),
                "emptylabel": (40, 20, []),
            },
            "valid": {"b": (40, 20, ["0 0.25 0.25 0.5 0.5", "0 0.75 0.75 0.1 0.2"])},
        },
    )
    res = read_export(root)
    assert res.format == "yolo"
    recs = _by_name(res)
    a = recs["a.jpg"]
    assert a.split == "train" and a.width is None and a.height is None
    assert a.shapes[0].kind == "box"
    np.testing.assert_allclose(a.shapes[0].box, (10, 5, 30, 15))
    assert recs["b.jpg"].split == "val"
    np.testing.assert_allclose(recs["b.jpg"].shapes[1].box, (28, 13, 32, 17))
    assert res.counts["train"]["images_without_labels"] == 2
    assert res.counts["train"]["boxes"] == 1 and res.counts["val"]["boxes"] == 2
    assert res.counts["train"]["images"] == 3
    assert res.problems == []


def test_yolo_segmentation(tmp_path):
    root = write_yolo_export(
        tmp_path,
        {"train": {"a": (40, 20, ["0 0.1 0.1 0.5 0.1 0.1 0.9", "0 0.5 0.5 0.2 0.2"])}},
    )
    for mode, kinds in (("box", ["polygon", "box"]), ("skip", ["polygon"])):
        res = read_export(root, empty_segmentation=mode)
        shapes = res.records[0].shapes
        assert [s.kind for s in shapes] == kinds
        np.testing.assert_allclose(shapes[0].points, [[4, 2], [20, 2], [4, 18]])
        assert res.counts["train"]["polygons"] == 1
    assert read_export(root, empty_segmentation="box").counts["train"]["empty_segmentation_as_box"] == 1
    assert read_export(root, empty_segmentation="skip").counts["train"]["empty_segmentation_skipped"] == 1


def test_yolo_quirks(tmp_path):
    root = write_yolo_export(
        tmp_path,
        {
            "train": {
                "a": (
                    40,
                    20,
                    [
                        "0 0.5 0.5 0.5 0.5",
                        "0 0.5 0.5",  # too short
                        "x 0.5 0.5 0.5 0.5",  # not a number
                        "0 0.1 0.1 0.5 0.1 0.2",  # odd number of coordinates
                        "3 0.5 0.5 0.5 0.5",  # class id >= nc
                        "",
                    ],
                ),
                "bad": (40, 20, ["0 0.5 0.5 0.5 0.5"]),
            }
        },
        names=["crack", "other"],
        orphan_labels={"train": {"orphan": ["0 0.5 0.5 0.1 0.1"]}},
        corrupt={"bad"},
    )
    res = read_export(root)
    c = res.counts["train"]
    assert c["malformed_label_lines"] == 3
    assert c["unknown_category"] == 1
    assert c["labels_without_image"] == 1
    assert c["corrupt_image"] == 1
    assert c["unused_categories"] == 1
    assert c["images_listed"] == 2 and c["images"] == 1
    assert len(res.records[0].shapes) == 1
    assert any("orphan.txt" in p for p in res.problems)
    assert any("bad.jpg" in p and "corrupt" in p for p in res.problems)
    assert sum("malformed line" in p for p in res.problems) == 3
    assert any("class id 3" in p for p in res.problems)


def test_yolo_png_images_and_no_yaml(tmp_path):
    root = write_yolo_export(tmp_path, {"test": {"a": (16, 16, ["7 0.5 0.5 0.5 0.5"])}}, names=None, image_ext=".png")
    res = read_export(root)
    # Without data.yaml class ids cannot be checked: every class is foreground.
    assert res.counts["test"]["unknown_category"] == 0
    assert res.records[0].image_path.suffix == ".png"
    np.testing.assert_allclose(res.records[0].shapes[0].box, (4, 4, 12, 12))


# ---------------------------------------------------------------- file names


def test_source_group_of():
    assert source_group_of("IMG_8213_JPG_jpg.rf.fbb81e670e1cf5b550af75f697ef6089.jpg") == "IMG_8213_JPG"
    assert source_group_of("IMG_8213_JPG_jpg.rf.abcdefghij0123456789.jpg") == "IMG_8213_JPG"
    assert source_group_of("a_24_0_png_jpg.rf.3150713994ed64c0c60d0649cad859d6.jpg") == "a_24_0_png"
    assert source_group_of("x.rf.jpg") == "x.rf"
    assert source_group_of("plain.jpg") == "plain"
    assert source_group_of("whatever_jpg.rf.0.jpg", "IMG_8213_JPG.jpg") == "IMG_8213_JPG"


def test_write_image_helper_sizes(tmp_path):
    import cv2

    p = write_image(tmp_path / "a.png", 30, 10)
    assert cv2.imread(str(p)).shape[:2] == (10, 30)
