"""Contact sheets and the suspicious-items CSV."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

from promptseg.ingest.exports import read_export
from promptseg.ingest.masks import build_processed_dataset
from promptseg.ingest.qa import (
    SUSPICIOUS_COLUMNS,
    contact_sheet_size,
    read_index,
    suspicious_items,
    write_contact_sheets,
    write_suspicious_csv,
)

from fixtures_exports import coco_ann, coco_image, rf_name, write_coco_split, write_image

W = H = 48


def _export(root: Path) -> Path:
    """train: a normal image, annotations that render to nothing (a zero-width box, an empty RLE), a
    mask over 80% of the image, and photo P; valid: another copy of photo P."""
    train = [
        (rf_name("ok", 1), [coco_ann(1, 0, segmentation=[[4, 4, 20, 4, 4, 20]], bbox=(4, 4, 16, 16))]),
        # a zero-width box (dropped) beside an empty RLE (valid, draws nothing): kept, an empty render
        (
            rf_name("empty", 2),
            [
                coco_ann(2, 1, segmentation=[], bbox=(10, 10, 0, 5)),
                coco_ann(5, 1, segmentation={"size": [H, W], "counts": [H * W]}, bbox=(0, 0, 1, 1)),
            ],
        ),
        (rf_name("huge", 3), [coco_ann(3, 2, segmentation=[], bbox=(0, 0, W, 0.75 * H))]),
        (rf_name("P", 4), [coco_ann(4, 3, segmentation=[[1, 1, 9, 1, 1, 9]], bbox=(1, 1, 8, 8))]),
    ]
    images = [coco_image(i, name, W, H) for i, (name, _) in enumerate(train)]
    write_coco_split(root, "train", images, [a for _, anns in train for a in anns])
    d = write_coco_split(
        root,
        "valid",
        [coco_image(0, rf_name("P", 5), W, H)],
        [coco_ann(1, 0, segmentation=[[1, 1, 9, 1, 1, 9]], bbox=(1, 1, 8, 8))],
    )
    # the fixture seeds its noise images by position: give this one its own pixels, or it
    # would be (rightly) a near-duplicate of train's first image
    write_image(d / rf_name("P", 5), W, H, seed=99)
    return root


def test_suspicious_csv_lists_planted_items(tmp_path):
    read = read_export(_export(tmp_path / "exp"))
    out = tmp_path / "out"
    build_processed_dataset(read, out)
    rows = read_index(out / "index.csv")
    path = tmp_path / "suspicious" / "x.csv"
    counts = write_suspicious_csv(rows, path, max_foreground_share=0.6)
    with open(path, newline="") as f:
        items = list(csv.DictReader(f))
    assert tuple(items[0].keys()) == SUSPICIOUS_COLUMNS
    got = {(r["split"], r["stem"], r["reason"]) for r in items}
    stem = lambda s, i: Path(rf_name(s, i)).stem  # noqa: E731
    assert got == {
        ("train", stem("empty", 2), "empty_render"),
        ("train", stem("empty", 2), "degenerate_box"),
        ("train", stem("huge", 3), "large_mask"),
        ("train", stem("P", 4), "duplicate_across_splits"),
        ("val", stem("P", 5), "duplicate_across_splits"),
    }
    assert counts == {"degenerate_box": 1, "duplicate_across_splits": 2, "empty_render": 1, "large_mask": 1}
    huge = next(r for r in items if r["reason"] == "large_mask")
    assert "75.0%" in huge["detail"] and "60%" in huge["detail"]
    leak = next(r for r in items if r["reason"] == "duplicate_across_splits" and r["split"] == "train")
    assert "exported in train" in leak["detail"] and "'P' also in val" in leak["detail"]
    # the threshold is a parameter; sorted train before val
    assert not any(r["reason"] == "large_mask" for r in suspicious_items(rows, max_foreground_share=0.9))
    assert [r["split"] for r in items] == sorted((r["split"] for r in items), key=["train", "val"].index)


def test_empty_csv_still_has_a_header(tmp_path):
    path = tmp_path / "s.csv"
    assert write_suspicious_csv([], path) == {}
    assert path.read_text().strip() == ",".join(SUSPICIOUS_COLUMNS)


def test_contact_sheets_exist_with_expected_size(tmp_path):
    read = read_export(_export(tmp_path / "exp"))
    out = tmp_path / "out"
    build_processed_dataset(read, out)
    paths = write_contact_sheets(out, "cracks", tmp_path / "sheets", grid=3, tile_px=64)
    assert [p.name for p in paths] == ["cracks_train.png", "cracks_val.png", "cracks_test.png"]
    width, height = contact_sheet_size(3, 64)
    for p in paths:  # the export has no test split: its sheet says so, at the same size
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        assert img is not None and img.shape == (height, width, 3)
    train = cv2.imread(str(paths[0]), cv2.IMREAD_COLOR).astype(int)
    # the mask is overlaid in red: some pixels are clearly red
    red = (train[..., 2] - np.maximum(train[..., 0], train[..., 1])) > 60
    assert red.sum() > 50
    # deterministic
    again = write_contact_sheets(out, "cracks", tmp_path / "sheets2", grid=3, tile_px=64)
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(paths, again))
    # more images than tiles: grid*grid tiles, same size
    big = tmp_path / "big"
    (big / "train" / "images").mkdir(parents=True)
    (big / "train" / "masks").mkdir(parents=True)
    for i in range(30):
        cv2.imwrite(str(big / "train" / "images" / f"im{i:02d}.jpg"), np.full((40, 60, 3), 4 * i, np.uint8))
        cv2.imwrite(str(big / "train" / "masks" / f"im{i:02d}.png"), np.zeros((40, 60), np.uint8))
    (p,) = write_contact_sheets(big, "d", tmp_path / "sheets3", splits=("train",), grid=4, tile_px=50)
    assert cv2.imread(str(p)).shape == (contact_sheet_size(4, 50)[1], contact_sheet_size(4, 50)[0], 3)
