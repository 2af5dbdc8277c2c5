"""What the crack labels allow (promptseg.score.ceilings): their own centerline drawn at a width, scored like a
model; the `baselines` stage's ceilings.json and the report's sentence under the crack ladder."""

import json

import numpy as np
import pytest
from test_report import BASELINES, DATA, EVAL, TRAIN, section

from promptseg.metrics import iou_dice
from promptseg.score.ceilings import (
    ceiling_scores,
    centerline_width_scores,
    dilated_centerlines,
    label_ceilings,
    label_widths,
    write_ceilings,
)
from promptseg.score.report import build_report


def line_label() -> np.ndarray:
    """A 1 px wide, 40 px long horizontal crack label: its own skeleton."""
    mask = np.zeros((32, 64), dtype=bool)
    mask[10, 5:45] = True
    return mask


def bar_label() -> np.ndarray:
    """A 7 px wide bar (rows 20-26): a wide crack label, best drawn at radius 3."""
    mask = np.zeros((32, 64), dtype=bool)
    mask[20:27, 10:60] = True
    return mask


def test_a_one_pixel_label_drawn_at_radius_0_is_itself_and_at_radius_1_three_rows_wide():
    label = line_label()
    skeleton, wider = dilated_centerlines(label, [0, 1])
    assert np.array_equal(skeleton, label)
    # radius 1: OpenCV's 3x3 elliptic disk is a cross: rows 9-11 over the line's 40 columns plus one pixel at each end
    expected = np.zeros_like(label)
    expected[9:12, 5:45] = True
    expected[10, 4] = expected[10, 45] = True
    assert np.array_equal(wider, expected)
    scores = centerline_width_scores([label], [label], [0, 1], empty_score=1.0)
    assert scores["per_radius"]["0"] == {"miou": 1.0, "dice": 1.0}
    assert scores["per_radius"]["1"]["miou"] == pytest.approx(40 / 122)
    assert scores["per_radius"]["1"]["dice"] == pytest.approx(80 / 162)
    assert scores["one width"] == {"radius_px": 0, "miou": 1.0, "dice": 1.0}


def test_each_images_best_width_beats_one_width_when_the_labels_disagree_on_width():
    labels, radii = [line_label(), bar_label()], [0, 1, 2, 3, 4, 6]
    bar_alone = centerline_width_scores([labels[1]], [labels[1]], radii, empty_score=1.0)
    assert bar_alone["one width"]["radius_px"] == 3  # a 7 px bar is its centerline at radius 3
    both = centerline_width_scores(labels, labels, radii, empty_score=1.0)
    per_image_best = [max(iou_dice(drawn, label)[0] for drawn in dilated_centerlines(label, radii)) for label in labels]
    assert both["each image's width"]["miou"] == pytest.approx(np.mean(per_image_best))
    assert both["each image's width"]["miou"] > both["one width"]["miou"] + 0.1
    assert both["one width"]["miou"] == max(v["miou"] for v in both["per_radius"].values())
    assert both["images"] == 2


def test_a_model_centerline_is_scored_against_the_labels():
    label = bar_label()
    shifted = np.roll(label, 5, axis=0)  # a model that draws the bar 5 rows too low
    on_target = centerline_width_scores([label], [label], [3], empty_score=1.0)["one width"]["miou"]
    off_target = centerline_width_scores([shifted], [label], [3], empty_score=1.0)["one width"]["miou"]
    assert off_target < on_target and off_target == pytest.approx(
        iou_dice(dilated_centerlines(shifted, [3])[0], label)[0]
    )


def test_an_empty_label_drawn_as_nothing_scores_the_empty_score():
    empty = np.zeros((16, 16), dtype=bool)
    assert centerline_width_scores([empty], [empty], [0, 2], empty_score=0.5)["per_radius"]["2"]["miou"] == 0.5
    assert label_widths([empty]) == [] and label_ceilings([empty], [1], empty_score=1.0)["label_width_px"] is None


def test_label_widths_are_area_over_skeleton_length():
    widths = label_widths([line_label(), bar_label()])
    assert widths[0] == 1.0
    assert 6.5 < widths[1] < 8.0  # 350 px over a 46 px skeleton


@pytest.mark.parametrize("radii", [[], [-1, 2]])
def test_radii_must_be_given_and_not_negative(radii):
    with pytest.raises(ValueError, match="radii"):
        centerline_width_scores([line_label()], [line_label()], radii, empty_score=1.0)


def test_ceilings_file_covers_the_thin_structure_datasets_on_their_reported_split(processed_root, tmp_path):
    out = tmp_path / "ceilings.json"
    kwargs = dict(datasets=["cracks", "drywall"], radii=[1, 2, 4], missing_test_split="report_val", empty_score=1.0)
    written = write_ceilings(processed_root, out, **kwargs)
    assert json.loads(out.read_text()) == written == ceiling_scores(processed_root, **kwargs)
    assert list(written) == ["cracks", "scored_splits"] and written["scored_splits"] == {"cracks": "test"}
    cracks = written["cracks"]
    assert cracks["images"] == 4 and list(cracks["per_radius"]) == ["1", "2", "4"]
    assert cracks["one width"]["miou"] <= cracks["each image's width"]["miou"] <= 1.0


CEILINGS = {
    "cracks": {
        "one width": {"radius_px": 8, "miou": 0.4724, "dice": 0.6237},
        "each image's width": {"miou": 0.7511, "dice": 0.8545},
        "label_width_px": {"p10": 6.58, "p25": 8.4, "p50": 18.25, "p75": 40.9, "p90": 57.12},
    },
    "scored_splits": {"cracks": "test"},
}


def test_report_states_what_the_labels_allow_under_the_crack_ladder():
    args = (DATA, TRAIN, EVAL, BASELINES)
    text = build_report(*args, model_source="small", ceilings=CEILINGS)
    cracks = section(text, "cracks ladder")
    assert "radius 8 px, the best single radius) scores mIoU 0.472 / Dice 0.624" in cracks
    assert "drawn at each image's best width, 0.751 / 0.855" in cracks
    assert "from 6.6 px (10th percentile) through 18.2 (median) to 57.1 (90th)" in cracks
    assert "What the labels allow" not in section(text, "drywall ladder")
    assert "What the labels allow" not in build_report(*args, model_source="small")
    on_val = {**CEILINGS, "scored_splits": {"cracks": "val"}}  # another split than the ladder's: left out
    assert "What the labels allow" not in build_report(*args, model_source="small", ceilings=on_val)
