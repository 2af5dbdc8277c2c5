"""Masks shaped like the labels: drywall labels are boxes, so a rung's drywall masks may be filled to the bounding
boxes of their regions (``infer.mask_shape``), decided on val, recorded in the recipe and followed by predict."""

import copy
import dataclasses
import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from promptseg.images import load_split
from promptseg.infer.recipe import Recipe
from promptseg.infer.segmenter import Segmenter
from promptseg.metrics import fill_bounding_boxes, fill_strip_boxes, postprocess_probabilities, score_masks
from promptseg.params import ParamsError
from promptseg.profiles import params_with_profiles
from promptseg.score.evaluate import choose_mask_shape, evaluate_rung
from promptseg.score.report import _rung_prompt_rows
from promptseg.settings import evaluate_settings

from conftest import PROMPTS, tiny_eval_config

ROOT = Path(__file__).resolve().parents[1]


def test_each_region_becomes_its_filled_bounding_box():
    mask = np.zeros((8, 10), np.uint8)
    mask[1, 1:5] = 255  # an L: row 1, columns 1-4 ...
    mask[1:4, 1] = 255  # ... and column 1, rows 1-3
    mask[7, 0] = 255  # a lone pixel
    mask[4, 6] = mask[5, 7] = 255  # two pixels touching at a corner: one region (8-connected)
    expected = np.zeros_like(mask)
    expected[1:4, 1:5] = 255
    expected[7, 0] = 255
    expected[4:6, 6:8] = 255
    assert np.array_equal(fill_bounding_boxes(mask), expected)
    assert not fill_bounding_boxes(np.zeros((3, 3), np.uint8)).any()


def test_postprocessing_fills_the_boxes_after_the_threshold_and_open_close():
    probs = np.zeros((12, 12), np.float32)
    probs[2:9, 2:9] = 0.9
    probs[5, 5] = 0.1  # a hole inside: closed by the 3 x 3 closing anyway
    probs[2:4, 7:9] = 0.2  # the top right corner below the threshold: the box puts it back
    probs[11, 0] = 0.9  # a speck: opened away before the boxes
    plain = postprocess_probabilities(probs, 0.5)
    boxed = postprocess_probabilities(probs, 0.5, boxes=True)
    assert plain[2:4, 7:9].sum() == 0 and plain[11, 0] == 0
    expected = np.zeros((12, 12), np.uint8)
    expected[2:9, 2:9] = 255
    assert np.array_equal(boxed, expected)
    assert np.array_equal(Recipe(threshold=0.5, boxes=True).mask(probs), expected)


def _box_truths():
    """Two 20 x 20 label images with one box each, and 'probabilities' lighting a ragged cross inside each box."""
    truths, probs = [], []
    for top, left in ((2, 3), (6, 5)):
        truth = np.zeros((20, 20), np.uint8)
        truth[top : top + 10, left : left + 12] = 255
        prob = np.zeros((20, 20), np.float32)
        prob[top + 3 : top + 7, left : left + 12] = 0.8  # a band across the box ...
        prob[top : top + 10, left + 4 : left + 8] = 0.8  # ... and one down it: its bounding box is the box
        truths.append(truth)
        probs.append(prob)
    return truths, probs


def test_choose_on_val_takes_boxes_where_they_score_higher_and_records_both():
    truths, probs = _box_truths()
    cfg = tiny_eval_config(threshold_grid=(0.5, 0.9))
    recipe = Recipe.from_settings(cfg.infer, "drywall")
    threshold, shape, measured = choose_mask_shape({"a": probs, "b": probs}, truths, 0.5, "choose_on_val", recipe, cfg)
    assert (threshold, shape) == (0.5, "boxes")
    assert measured["boxes"]["dice"] == 1.0 and measured["boxes"]["threshold"] == 0.5
    # the cross's strips run 4 px wide both ways (longer than the 3 px a strip needs here): the same one box, a
    # tie, which goes to the simpler shape
    assert measured["strips"]["dice"] == 1.0
    assert measured["boxes"]["sweep"] == {0.5: 1.0, 0.9: 0.0}  # nothing lit above 0.8
    # the cross covers 4 x 12 + 10 x 4 - 4 x 4 = 72 of the box's 120 pixels: Dice 2 * 72 / (72 + 120)
    assert measured["pixels"] == {
        "threshold": 0.5,
        "dice": pytest.approx(2 * 72 / 192),
        "best_dice": pytest.approx(2 * 72 / 192),
        "sweep": {0.5: pytest.approx(2 * 72 / 192), 0.9: 0.0},
    }


def test_choose_on_val_keeps_pixels_where_boxes_would_swallow_thin_diagonals():
    truth = np.zeros((20, 20), np.uint8)
    for i in range(2, 18):
        truth[i, i - 1 : i + 2] = 255  # a 3 px diagonal crack
    prob = (truth > 0).astype(np.float32) * 0.8
    cfg = tiny_eval_config(threshold_grid=(0.5,), morphology=False)
    recipe = Recipe.from_settings(cfg.infer, "cracks")
    threshold, shape, measured = choose_mask_shape({"a": [prob]}, [truth], 0.5, "choose_on_val", recipe, cfg)
    assert (threshold, shape) == (0.5, "pixels")
    assert measured["pixels"]["dice"] == 1.0 and measured["boxes"]["dice"] < 0.3


def _joint_t(height: int = 40, width: int = 40) -> np.ndarray:
    """Two joints meeting in a T, labelled one box each: a 4 x 36 horizontal band and a 29 x 4 vertical one."""
    mask = np.zeros((height, width), np.uint8)
    mask[5:9, 2:38] = 255
    mask[9:38, 18:22] = 255
    return mask


def test_strips_box_each_joint_of_a_t_on_its_own():
    joints = _joint_t()
    assert (joints > 0).sum() == 4 * 36 + 29 * 4
    whole = fill_bounding_boxes(joints)
    assert (whole > 0).sum() == 33 * 36  # one box over the wall between the joints
    # L = 0.25 x 40 = 10 -> 11 px: each band is a run of 36 (29 + 4) px its own way, 4 px the other
    assert np.array_equal(fill_strip_boxes(joints, 0.25), joints)
    # a ragged edge: 4 px sticking out under the horizontal band are not a strip; as boxes they would widen it by a
    # row, as strips the rest is opened away (a 3 x 3 square does not fit in a 1 x 4 sliver)
    ragged = joints.copy()
    ragged[9, 5:9] = 255
    assert np.array_equal(fill_strip_boxes(ragged, 0.25, rest_kernel=3), joints)
    assert (fill_strip_boxes(ragged, 0.25, rest_kernel=1) > 0).sum() == (joints > 0).sum() + 4  # kept: its own box
    # a diagonal joint is neither: its one box, as with whole-region boxes
    diagonal = np.zeros((40, 40), np.uint8)
    for i in range(4, 36):
        diagonal[i, i - 2 : i + 3] = 255
    assert np.array_equal(fill_strip_boxes(diagonal, 0.25, rest_kernel=1), fill_bounding_boxes(diagonal))
    assert (fill_strip_boxes(diagonal, 0.25, rest_kernel=1) > 0).sum() == 32 * 36
    with pytest.raises(ValueError, match="min_length"):
        fill_strip_boxes(joints, 0.0)


def test_choose_on_val_takes_strips_where_joints_meet():
    """The labels are the T's two boxes; the model lights them with a few holes. Pixels miss the holes, whole-region
    boxes cover the wall between the joints, strips give the two boxes back."""
    truth = _joint_t()
    prob = (truth > 0).astype(np.float32) * 0.8
    for y, x in ((6, 25), (7, 30), (20, 19), (30, 20)):
        prob[y, x] = 0.0
    cfg = tiny_eval_config(threshold_grid=(0.5,), morphology=False, strip_length=0.25)
    recipe = Recipe.from_settings(cfg.infer, "drywall")
    threshold, shape, measured = choose_mask_shape({"a": [prob]}, [truth], 0.5, "choose_on_val", recipe, cfg)
    assert (threshold, shape) == (0.5, "strips")
    assert measured["strips"]["dice"] == 1.0
    assert measured["pixels"]["dice"] == pytest.approx(2 * 256 / (256 + 260))
    assert measured["boxes"]["dice"] == pytest.approx(2 * 260 / (33 * 36 + 260))
    strips = cfg.recipe("drywall", threshold, shape=shape)
    assert (strips.boxes, strips.strip_length, strips.mask_shape) == (True, 0.25, "strips")
    assert np.array_equal(strips.mask(prob), truth)  # the recipe predict follows draws the same two boxes
    assert "strips of at least 0.25 of the shorter side" in strips.describe()


def test_the_report_says_which_masks_are_strips_and_why():
    block = {
        "threshold": 0.7,
        "mask_shape": "strips",
        "mask_shape_val": {
            "boxes": {"threshold": 0.8, "dice": 0.625},
            "strips": {"threshold": 0.7, "dice": 0.667},
            "pixels": {"threshold": 0.4, "dice": 0.553, "best_dice": 0.5531},
        },
        "test": {"prompts": {"segment joint tape": {"miou": 0.4, "dice": 0.5, "images": 3}}, "all_prompts": {}},
    }
    notes: list[str] = []
    rows = _rung_prompt_rows("hed_full", {"drywall": block}, "drywall", "test", [("mIoU", "miou")], notes)
    assert rows[0][:3] == ['"segment joint tape"', "hed_full", "0.700, strips"]
    assert notes == [
        "Rung `hed_full`, drywall: each horizontal and vertical strip of the mask (and each region left over) is "
        "filled to its own bounding box, the shape of the labels (val Dice 0.667 against 0.625 as boxes and at most "
        "0.553 as pixels); `promptseg predict` and the app draw the same strips."
    ]


class _LabelSegmenter(Segmenter):
    """'Probabilities' made from each image's own label: 0.8 on the labelled pixels except a grid of one-pixel holes
    (every third row and column crossing), so the region of a box stays one region and its bounding box is the box."""

    def __init__(self, labels: dict[bytes, np.ndarray]):
        self.labels = labels

    def probabilities(self, images, prompts, recipe):
        out = []
        for image in images:
            label = self.labels[hashlib.sha256(image.tobytes()).digest()]
            prob = (label > 0).astype(np.float32) * 0.8
            prob[1::3, 1::3] = 0.0
            out.append(prob)
        return out

    def forget_encodings(self):
        pass


def _box_label_tree(root: Path) -> Path:
    """A processed drywall tree whose labels are single boxes (one test image has none): 3 val, 3 test images."""
    rng = np.random.default_rng(0)
    boxes = {"val": [(2, 3, 20, 9), (5, 5, 9, 22), (10, 1, 18, 18)], "test": [(4, 4, 12, 20), (1, 8, 25, 6), None]}
    for split, split_boxes in boxes.items():
        for k, box in enumerate(split_boxes):
            for folder in ("images", "masks"):
                (root / "drywall" / split / folder).mkdir(parents=True, exist_ok=True)
            label = np.zeros((32, 32), np.uint8)
            if box is not None:
                top, left, height, width = box
                label[top : top + height, left : left + width] = 255
            cv2.imwrite(
                str(root / "drywall" / split / "images" / f"{split}{k}.png"),
                rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
            )
            cv2.imwrite(str(root / "drywall" / split / "masks" / f"{split}{k}.png"), label)
    return root


def test_evaluation_chooses_boxes_for_box_labels_and_writes_box_masks(tmp_path):
    processed_root = _box_label_tree(tmp_path / "processed")
    labels = {}
    for split in ("val", "test"):
        data = load_split(processed_root, "drywall", split)
        labels.update({hashlib.sha256(i.tobytes()).digest(): t for i, t in zip(data.images, data.truths)})
    cfg = tiny_eval_config(threshold_grid=(0.5,), morphology=False, mask_shape={"drywall": "choose_on_val"})
    results, _ = evaluate_rung(
        _LabelSegmenter(labels), processed_root, {"drywall": PROMPTS["drywall"]}, cfg, tmp_path / "predictions"
    )
    block = results["drywall"]
    assert block["mask_shape"] == "boxes" and block["recipe"]["boxes"] is True
    assert block["mask_shape_val"]["boxes"]["dice"] > block["mask_shape_val"]["pixels"]["dice"]
    test = load_split(processed_root, "drywall", "test")
    probs = _LabelSegmenter(labels).probabilities(test.images, None, None)
    expected = score_masks(
        [fill_bounding_boxes(p > 0.5) for p in probs], test.truths, empty_score=1.0, tolerance_px=2, thin=False
    )
    assert block["test"]["all_prompts"]["dice"] == pytest.approx(expected["dice"], abs=1e-12) == 1.0
    for path in (tmp_path / "predictions" / "drywall" / "test").glob("*.png"):  # the masks evaluation wrote: boxes
        mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        assert np.array_equal(mask, fill_bounding_boxes(mask)), path.name
    # pixels where the params say so: the same maps, no boxes, the raw sweep's threshold
    plain, _ = evaluate_rung(
        _LabelSegmenter(labels),
        processed_root,
        {"drywall": PROMPTS["drywall"]},
        dataclasses.replace(cfg, infer=dataclasses.replace(cfg.infer, mask_shape={})),
        None,
    )
    assert plain["drywall"]["mask_shape"] == "pixels" and "mask_shape_val" not in plain["drywall"]
    assert plain["drywall"]["recipe"]["boxes"] is False
    assert plain["drywall"]["test"]["all_prompts"]["dice"] < block["test"]["all_prompts"]["dice"]


def test_the_report_says_which_masks_are_boxes_and_why():
    block = {
        "threshold": 0.6,
        "mask_shape": "boxes",
        "mask_shape_val": {
            "boxes": {"threshold": 0.6, "dice": 0.617},
            "pixels": {"threshold": 0.5, "dice": 0.553, "best_dice": 0.5561},
        },
        "test": {"prompts": {"segment joint tape": {"miou": 0.4, "dice": 0.5, "images": 3}}, "all_prompts": {}},
    }
    notes: list[str] = []
    rows = _rung_prompt_rows("hed_full", {"drywall": block}, "drywall", "test", [("mIoU", "miou")], notes)
    assert rows[0][:3] == ['"segment joint tape"', "hed_full", "0.600, boxes"]
    assert notes == [
        "Rung `hed_full`, drywall: each region of the mask is filled to its bounding box, the shape of the labels "
        "(val Dice 0.617 against at most 0.556 as pixels); `promptseg predict` and the app draw the same boxes."
    ]


def test_mask_shape_params_are_checked():
    base = params_with_profiles(params_path=ROOT / "params.yaml")
    assert evaluate_settings(base).infer.mask_shape == {"cracks": "pixels", "drywall": "choose_on_val"}
    p = copy.deepcopy(base)
    p["infer"]["mask_shape"]["drywal"] = "boxes"
    with pytest.raises(ParamsError, match=r"infer\.mask_shape\.drywal: unknown key; did you mean 'drywall'"):
        evaluate_settings(p)
    p = copy.deepcopy(base)
    p["infer"]["mask_shape"]["drywall"] = "box"
    with pytest.raises(ParamsError, match=r"infer\.mask_shape\.drywall"):
        evaluate_settings(p)


def _crack_band_tree(root: Path) -> Path:
    """A processed cracks tree beside the drywall one: 2 val, 2 test images, each labelled with a 4 x 24 band."""
    rng = np.random.default_rng(1)
    for split in ("val", "test"):
        for k in range(2):
            for folder in ("images", "masks"):
                (root / "cracks" / split / folder).mkdir(parents=True, exist_ok=True)
            label = np.zeros((32, 32), np.uint8)
            label[10 + k : 14 + k, 4:28] = 255
            cv2.imwrite(str(root / "cracks" / split / "images" / f"c{split}{k}.png"), rng.integers(0, 255, (32, 32, 3)))
            cv2.imwrite(str(root / "cracks" / split / "masks" / f"c{split}{k}.png"), label)
    return root


class _PromptAwareSegmenter(_LabelSegmenter):
    """Each dataset's own prompts light its label (drywall with the holes of :class:`_LabelSegmenter`); crack prompts
    light nothing on drywall photos; drywall prompts on crack photos light a 1-px diagonal of 12 px (``leak``) or
    nothing: 12 px as pixels, but its bounding box, 144 px, as a box."""

    def __init__(self, labels, datasets, leak: bool):
        super().__init__(labels)
        self.datasets, self.leak = datasets, leak

    def probabilities(self, images, prompts, recipe):
        out = []
        for image, prompt in zip(images, prompts):
            key = hashlib.sha256(image.tobytes()).digest()
            photo, asked = self.datasets[key], "cracks" if prompt in PROMPTS["cracks"] else "drywall"
            prob = np.zeros((32, 32), np.float32)
            if photo == asked == "drywall":
                prob = super().probabilities([image], [prompt], recipe)[0]
            elif photo == asked == "cracks":
                prob = (self.labels[key] > 0).astype(np.float32) * 0.8
            elif photo == "cracks" and self.leak:
                prob[np.arange(8, 20), np.arange(8, 20)] = 0.8
            out.append(prob)
        return out


@pytest.mark.parametrize("leak", [True, False])
def test_boxes_that_would_break_prompt_switching_on_val_are_dropped_for_pixels(tmp_path, leak):
    """Boxes win drywall's val Dice, but drywall prompts on crack val photos light a diagonal: 12 px as pixels
    (0.125 of the crack prompts' 96 px: switching holds), 144 px as a box (1.5 of it: it breaks). Evaluation keeps
    pixels and says why; without the leak the boxes stay."""
    processed_root = _crack_band_tree(_box_label_tree(tmp_path / "processed"))
    labels, datasets = {}, {}
    for dataset in ("cracks", "drywall"):
        for split in ("val", "test"):
            data = load_split(processed_root, dataset, split)
            for image, truth in zip(data.images, data.truths):
                key = hashlib.sha256(image.tobytes()).digest()
                labels[key], datasets[key] = truth, dataset
    cfg = tiny_eval_config(threshold_grid=(0.5,), morphology=False, mask_shape={"drywall": "choose_on_val"})
    results, _ = evaluate_rung(_PromptAwareSegmenter(labels, datasets, leak), processed_root, PROMPTS, cfg, None)
    block = results["drywall"]
    switching = block["mask_shape_switching_val"]
    assert switching["limit"] == 0.25 and switching["shape"] == "boxes" and switching["dropped"] is leak
    on_cracks = switching["on"]["cracks"]
    assert on_cracks["own_prompts_lit"] == pytest.approx(96 / 1024)
    assert on_cracks["pixels_lit"] == pytest.approx(12 / 1024 if leak else 0.0)
    assert on_cracks["boxes_lit"] == pytest.approx(144 / 1024 if leak else 0.0)
    assert block["mask_shape_val"]["boxes"]["dice"] > block["mask_shape_val"]["pixels"]["best_dice"]
    assert block["mask_shape"] == ("pixels" if leak else "boxes") and block["recipe"]["boxes"] is not leak
    # the scores follow the recipe kept: drywall prompts on crack test photos light the diagonal as pixels
    assert results["cracks"]["test"]["cross_prompt_lit"] == pytest.approx(12 / 1024 if leak else 0.0)
    assert results["cracks"]["test"]["cross_prompt_lit"] < 0.25 * results["cracks"]["test"]["in_prompt_lit"]
    notes: list[str] = []
    _rung_prompt_rows("hed_lora", results, "drywall", "test", [("mIoU", "miou")], notes)
    if leak:
        assert notes == [
            "Rung `hed_lora`, drywall: pixel masks, although boxes scored a higher val Dice (1.000 against "
            f"{block['mask_shape_val']['pixels']['best_dice']:.3f}): as boxes they would break prompt switching, "
            "which pixels keep (on cracks val photos its prompts light 0.141 as boxes and 0.012 as pixels, against "
            "0.094 for the cracks prompts; the limit is 0.25 of the latter)."
        ]
    else:
        assert notes[0].startswith("Rung `hed_lora`, drywall: each region of the mask is filled to its bounding box")
