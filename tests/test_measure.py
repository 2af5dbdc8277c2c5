"""promptseg.serve.measure on drawn shapes whose length and width are known, and `promptseg measure`."""

from __future__ import annotations

import csv
import json
import math

import cv2
import numpy as np
import pytest

from promptseg.serve.cli import main
from promptseg.serve.measure import MeasureSettings, bre_category, measure_mask


def band(shape, p0, p1, width):
    """A straight band of ``width`` px between points p0 and p1 (x, y): pixel centres within width/2
    of the segment's line and between its ends (flat ends)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    d = (p1 - p0) / np.linalg.norm(p1 - p0)
    rel_x, rel_y = xx - p0[0], yy - p0[1]
    t = rel_x * d[0] + rel_y * d[1]
    s = -rel_x * d[1] + rel_y * d[0]
    inside = (t >= -0.5) & (t <= np.linalg.norm(p1 - p0) + 0.5) & (np.abs(s) <= width / 2)
    return np.where(inside, 255, 0).astype(np.uint8)


def only(result):
    assert result["image"]["count"] == 1, result["components"]
    return result["components"][0]


def test_straight_5px_band_200px_long():
    mask = np.zeros((300, 300), np.uint8)
    mask[100:105, 50:250] = 255
    c = only(measure_mask(mask))
    assert c["max_width_px"] == 5.0  # exact: EDT(p) + far-side neighbour's EDT
    assert abs(c["mean_width_px"] - 5.0) <= 0.05
    assert abs(c["length_px"] - 200.0) <= 1.0
    assert c["area_px"] == 1000
    assert c["orientation_deg"] == 0.0


def test_even_width_band_is_not_one_px_short():
    mask = np.zeros((300, 300), np.uint8)
    mask[100:104, 50:250] = 255
    c = only(measure_mask(mask))
    assert c["max_width_px"] == 4.0  # 2 x EDT - 1 would say 3
    assert abs(c["length_px"] - 200.0) <= 1.5


def test_one_px_line():
    mask = np.zeros((300, 300), np.uint8)
    mask[40:240, 150] = 255
    c = only(measure_mask(mask))
    assert c["max_width_px"] == 1.0 and c["mean_width_px"] == 1.0
    assert c["length_px"] == 200.0
    assert c["orientation_deg"] == 90.0


def test_l_shape_length_is_the_centreline():
    mask = np.zeros((300, 300), np.uint8)
    mask[50:250, 100:105] = 255  # vertical arm, 5 px wide
    mask[245:250, 100:250] = 255  # horizontal arm along the bottom
    c = only(measure_mask(mask))
    centreline = (247 - 49.5) + (249.5 - 102)  # 345: along both arms' centre lines, edge to edge
    assert abs(c["length_px"] - centreline) / centreline <= 0.01
    assert abs(c["mean_width_px"] - 5.0) <= 0.1
    assert 5.0 <= c["max_width_px"] <= 6.0  # the corner's diagonal reads up to 1 px wider


def test_ring_is_measured_around_its_loop():
    yy, xx = np.mgrid[:300, :300]
    r = np.hypot(yy - 150, xx - 150)
    mask = np.where((r >= 76.5) & (r < 83.5), 255, 0).astype(np.uint8)  # 7 px wide, centre radius 80
    c = only(measure_mask(mask))
    true_length = 2 * math.pi * 80
    assert abs(c["length_px"] - true_length) / true_length <= 0.01
    assert abs(c["mean_width_px"] - 7.0) <= 0.1
    assert 7.0 <= c["max_width_px"] <= 8.0  # digitised circle: up to 1 px wider at some angles


@pytest.mark.parametrize("angle_deg,width", [(45.0, 5), (30.0, 5), (22.5, 9)])
def test_diagonal_band(angle_deg, width):
    a = math.radians(angle_deg)
    p0 = (60.0, 60.0)
    p1 = (60.0 + 200.0 * math.cos(a), 60.0 + 200.0 * math.sin(a))  # 200 px long, pointing down-right
    mask = band((340, 340), p0, p1, width)
    c = only(measure_mask(mask))
    # 200 between the end centres + half a px each end; a wide band's flat, slanted ends cost up to 2%
    assert abs(c["length_px"] - 201.0) / 201.0 <= 0.02
    assert abs(c["mean_width_px"] - width) <= 0.25
    assert abs(c["max_width_px"] - width) <= 0.6
    assert abs(c["orientation_deg"] - (180.0 - angle_deg)) <= 1.0  # y grows downwards: down-right is 180 - a


def test_components_specks_and_per_image_totals():
    mask = np.zeros((200, 200), np.uint8)
    mask[20:23, 10:110] = 255  # 3 x 100
    mask[60:160, 150:157] = 255  # 7 x 100
    mask[180:182, 180:182] = 255  # a 4-px speck: below min_area_px
    result = measure_mask(mask, settings=MeasureSettings(min_area_px=10))
    assert result["image"]["count"] == 2
    assert [c["id"] for c in result["components"]] == [1, 2]
    assert result["image"]["max_width_px"] == 7.0
    assert abs(result["image"]["total_length_px"] - 200.0) <= 2.0
    assert result["units"] == "px" and any("pixels only" in n for n in result["notes"])


def test_scale_gives_mm_and_bre_category():
    mask = np.zeros((300, 300), np.uint8)
    mask[100:105, 50:250] = 255
    result = measure_mask(mask, mm_per_px=0.5)  # 5 px -> 2.5 mm: category 2
    c = only(result)
    assert c["max_width_mm"] == 2.5 and c["bre_251_category"] == 2
    assert abs(c["length_mm"] - 100.0) <= 0.5
    assert result["image"]["bre_251_category"] == 2 and result["notes"] == []


@pytest.mark.parametrize(
    "mm,category", [(0.05, 0), (0.1, 1), (1.0, 1), (1.01, 2), (5.0, 2), (14.9, 3), (15.0, 3), (25.0, 4), (25.1, 5)]
)
def test_bre_251_categories(mm, category):
    assert bre_category(mm) == category


def test_joints_orientation_share_and_box_note():
    mask = np.zeros((200, 400), np.uint8)
    mask[:, 100:140] = 255  # vertical joint band, 40 px wide
    mask[150:170, 200:400] = 255  # horizontal band
    result = measure_mask(mask, kind="joint")
    kinds = sorted(c["orientation"] for c in result["components"])
    assert kinds == ["horizontal", "vertical"]
    assert result["image"]["taped_share"] == round((200 * 40 + 20 * 200) / (200 * 400), 4)
    assert any("boxes" in n for n in result["notes"])


def test_cli_measure_writes_csv_json_overlay_and_skips_bad_files(tmp_path, capsys):
    mask = np.zeros((120, 260), np.uint8)
    mask[50:55, 30:230] = 255
    cv2.imwrite(str(tmp_path / "wall__segment-crack.png"), mask)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    photo = np.full((120, 260, 3), 200, np.uint8)
    cv2.imwrite(str(tmp_path / "notmask.png"), photo + np.arange(260, dtype=np.uint8)[None, :, None] % 7)
    rc = main(["measure", str(tmp_path), "--mm-per-px", "0.2"])
    out, err = capsys.readouterr()
    assert rc == 0
    assert "broken.png: not a readable image" in err and "notmask.png: not a binary mask" in err
    data = json.loads((tmp_path / "measurements.json").read_text())
    c = data["wall__segment-crack.png"]["components"][0]
    assert c["max_width_px"] == 5.0 and c["max_width_mm"] == 1.0 and c["bre_251_category"] == 1
    rows = list(csv.DictReader((tmp_path / "measurements.csv").open()))
    assert len(rows) == 1 and rows[0]["mask"] == "wall__segment-crack.png" and rows[0]["bre_251_category"] == "1"
    overlay = cv2.imread(str(tmp_path / "wall__segment-crack_measured.png"))
    assert overlay.shape == (120, 260, 3)
    assert "BRE 251 category 1" in out
    # a second run does not take its own overlay for a mask
    rc = main(["measure", str(tmp_path)])
    out, err = capsys.readouterr()
    assert "_measured.png" not in err and "pixels only" in out


def test_measure_speed_640px():
    import time

    rng = np.random.default_rng(0)
    mask = np.zeros((640, 640), np.uint8)
    for _ in range(5):
        pts = (np.cumsum(rng.normal(0, 8, (80, 2)), axis=0) + 320).astype(np.int32)
        cv2.polylines(mask, [pts], False, 255, int(rng.integers(2, 9)))
    measure_mask(mask)
    started = time.perf_counter()
    measure_mask(mask)
    assert time.perf_counter() - started < 0.5  # generous on a loaded CI box; the benchmark reports the figure


def test_synthetic_sidecar_truth_matches_measure_on_the_true_masks(tmp_path):
    from promptseg.ingest.synthetic import TRUE_MEASURES_FILE, write_synthetic_export

    root = tmp_path / "cracks"
    write_synthetic_export(
        "cracks", root, seed=3, image_size=160, counts={"train": 0, "valid": 0, "test": 10}, negative_share=0.0
    )
    truth = json.loads((root / TRUE_MEASURES_FILE).read_text())["splits"]["test"]
    coco = json.loads((root / "test" / "_annotations.coco.json").read_text())
    by_id = {a["id"]: a for a in coco["annotations"]}
    assert sum(len(v) for v in truth.values()) == len(coco["annotations"])  # one truth per annotation
    errors = []
    for items in truth.values():
        for t in items:
            if t["occluded"]:
                continue
            mask = np.zeros((160, 160), np.uint8)
            cv2.fillPoly(
                mask,
                [
                    np.rint(np.asarray(p).reshape(-1, 2)).astype(np.int32)
                    for p in by_id[t["annotation_id"]]["segmentation"]
                ],
                255,
            )
            comps = measure_mask(mask)["components"]
            length = sum(c["length_px"] for c in comps)
            errors.append(
                (
                    abs(length - t["length_px"]) / t["length_px"],
                    abs(max(c["max_width_px"] for c in comps) - t["max_width_px"]),
                )
            )
    assert len(errors) >= 5
    assert np.median([e[0] for e in errors]) < 0.12 and np.median([e[1] for e in errors]) < 1.5


def test_full_mask_has_finite_width():
    result = measure_mask(np.full((50, 80), 255, np.uint8))
    assert result["image"]["count"] == 1 and result["components"][0]["max_width_px"] <= 50.0
