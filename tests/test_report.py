"""metrics/report.md from hand-written metrics dicts, and the no-learning baselines on hand-made masks and images."""

import json

import cv2
import numpy as np
import pytest

from promptseg.score.baselines import darkest_name, trivial_baseline_scores, write_baselines
from promptseg.score.report import build_report, write_report


def scores(miou, dice, thin=False, images=4):
    s = {"miou": miou, "dice": dice, "micro_iou": miou, "micro_dice": dice, "images": images}
    if thin:
        s.update(boundary_f1=0.25, cl_dice=0.125)
    return s


def split_block(prompt_scores, thin, paraphrase):
    keys = [k for k in next(iter(prompt_scores.values())) if k != "images"]
    mean = {k: float(np.mean([s[k] for s in prompt_scores.values()])) for k in keys}
    return {
        "prompts": prompt_scores,
        "all_prompts": mean,
        "images": 4,
        "in_prompt_lit": 0.04,
        "cross_prompt_lit": 0.0123,
        "unrelated_prompt_lit": 0.2,
        "paraphrases": {paraphrase: scores(0.3, 0.456, thin)},
    }


def eval_file(crack_miou, wall_miou):
    cracks = {"segment crack": scores(crack_miou, 0.6, True), "segment wall crack": scores(0.2, 0.3, True)}
    drywall = {"segment joint tape": scores(wall_miou, 0.7), "segment drywall seam": scores(0.4, 0.5)}
    return {
        "cracks": {
            "threshold": 0.4,
            "threshold_chosen_on": "val",
            "val": split_block(cracks, True, "p1"),
            "test": split_block(cracks, True, "segment the crack in the wall"),
        },
        "drywall": {
            "threshold": 0.6,
            "threshold_chosen_on": "val",
            "val": split_block(drywall, False, "p2"),
            "test": split_block(drywall, False, "find the drywall tape"),
        },
        "overall": {"test_miou": 0.3},
    }


DATA = {
    name: {
        "problems": 0,
        **{
            split: {
                "images": 4,
                "with_foreground": 3,
                "without_foreground": 1,
                "mean_foreground_fraction": 0.0525,
                "annotations": 9,
                "clipped_boxes": 2 if name == "drywall" else 0,
                "corrupt_image": 1,
                "unknown_category": 0,
            }
            for split in ("train", "val", "test")
        },
    }
    for name in ("cracks", "drywall")
}
TRAIN = {
    "lora": {
        "method": "lora",
        "architecture": "clipseg",
        "trainable_params": 995328,
        "total_params": 150747746,
        "seconds_per_epoch": 12.5,
    },
    "full": {
        "method": "full",
        "architecture": "clipseg",
        "trainable_params": 150747746,
        "total_params": 150747746,
        "seconds_per_epoch": 20.0,
    },
}
EVAL = {"lora": eval_file(0.512, 0.61), "full": eval_file(0.333, 0.444)}
BASELINES = {
    "cracks": {
        "all zeros": {**scores(0.25, 0.25, True), "lit": 0.0},
        "all ones": {**scores(0.011, 0.021, True), "lit": 1.0},
        "darkest 5%": {**scores(0.05, 0.09, True), "lit": 0.05},
    },
    "drywall": {"all zeros": scores(0.25, 0.25), "all ones": scores(0.2, 0.3)},
}
SKIP_REASON = "zero-shot needs pretrained weights, and model.source is `small`"
OPTIONS = {"single_prompt": 0.41, "ensemble": 0.43, "single_prompt+hflip": 0.42, "ensemble+hflip": 0.4}
LADDER = ["zeroshot", "decoder", "lora", "full", "unet"]


def row(text, *cells):
    """The first table row containing every cell (cells compared stripped)."""
    for line in text.splitlines():
        parts = [p.strip() for p in line.strip().strip("|").split("|")]
        if line.startswith("|") and all(c in parts for c in cells):
            return parts
    raise AssertionError(f"no row with {cells} in:\n{text}")


def section(text, title):
    start = text.index(title)
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def test_report_tables_hold_the_numbers_in_the_right_rows():
    text = build_report(DATA, TRAIN, EVAL, BASELINES, model_source="small", rungs=["lora", "full"])
    cracks, drywall = section(text, "cracks, test split"), section(text, "drywall, test split")
    r = row(cracks, '"segment crack"', "lora")
    assert r[2:7] == ["0.400", "0.512", "0.600", "0.250", "0.125"]
    assert row(cracks, '"segment crack"', "full")[3] == "0.333"
    assert row(cracks, "no learning: all ones")[3:7] == ["0.011", "0.021", "0.250", "0.125"]
    assert row(cracks, "no learning: darkest 5%")[3:5] == ["0.050", "0.090"]
    assert row(cracks, "mean over prompts", "lora")[3] == "0.356"  # (0.512 + 0.2) / 2
    assert "boundary F1" in cracks and "boundary F1" not in drywall
    assert row(drywall, '"segment joint tape"', "full")[2:5] == ["0.600", "0.444", "0.700"]
    assert row(drywall, "no learning: all zeros")[3:5] == ["0.250", "0.250"]
    assert "darkest" not in drywall
    ladder = section(text, "cracks ladder")
    assert row(ladder, "lora")[1:] == [
        "lora / clipseg",
        "995,328",
        "150,747,746",
        "0.356",
        "0.450",
        "0.250",
        "0.125",
        "0.012",
        "0.200",
        "n/a",
        "12.500",
    ]
    assert row(ladder, "full")[-1] == "20.000"
    assert row(ladder, "darkest 5%")[1:] == [
        "no learning",
        "\u2014",
        "\u2014",
        "0.050",
        "0.090",
        "0.250",
        "0.125",
        "0.050",
        "0.050",
        "\u2014",
        "\u2014",
    ]
    assert "Read every rung against the best no-learning baseline (all zeros, Dice 0.250)." in ladder
    wall = section(text, "drywall ladder")
    assert row(wall, "lora")[4:] == ["0.505", "0.600", "0.012", "0.200", "n/a", "12.500"]
    assert "boundary F1" not in wall and "darkest" not in wall
    assert "best no-learning baseline (all ones, Dice 0.300)" in wall
    switching = section(text, "prompt switching")
    assert row(switching, "lora", "cracks")[2:] == [
        "0.052",
        "0.040",
        "0.012",
        "0.200",
        '"segment the crack in the wall" 0.456',
    ]
    data = section(text, "Table 1")
    assert row(data, "drywall", "test")[2:] == ["4", "3", "1", "5.250", "3 (clipped_boxes 2, corrupt_image 1)"]
    assert row(data, "cracks", "val")[-1] == "1 (corrupt_image 1)"
    assert "meaningless for a randomly initialised model" in text
    assert "both empty scores 1" in text and "chosen on val only" in text
    assert "<" not in text.replace("<=", "")  # no HTML


def test_missing_rung_and_zeroshot_for_pretrained_source():
    text = build_report(
        DATA,
        {"lora": TRAIN["lora"]},
        {"lora": EVAL["lora"]},
        BASELINES,
        model_source="CIDAS/clipseg-rd64-refined",
        rungs=["lora", "full"],
    )
    assert "`full`: not evaluated yet" in text
    assert "meaningless" not in text and "no metrics/eval/zeroshot.json" in text
    with_zs = build_report(
        DATA,
        TRAIN,
        {**EVAL, "zeroshot": eval_file(0.05, 0.06)},
        BASELINES,
        model_source="CIDAS/clipseg-rd64-refined",
        rungs=["lora", "full"],
    )
    assert row(section(with_zs, "cracks, test split"), '"segment crack"', "zeroshot")[3] == "0.050"
    assert row(section(with_zs, "cracks ladder"), "zeroshot")[1:3] == ["zero-shot (no training)", "0"]
    small = build_report(DATA, TRAIN, {**EVAL, "zeroshot": eval_file(0.05, 0.06)}, BASELINES, model_source="small")
    assert "zeroshot" not in small
    empty = build_report({}, {}, {}, {}, model_source="small", rungs=["lora"])
    assert "metrics/data/cracks.json is missing" in empty and "`lora`" in empty


def test_rung_not_beating_a_trivial_mask_is_flagged():
    weak = eval_file(0.1, 0.1)
    weak["drywall"]["test"]["all_prompts"]["dice"] = 0.3
    text = build_report(DATA, TRAIN, {"lora": weak}, BASELINES, model_source="small", rungs=["lora"])
    assert "`lora` on drywall (mean Dice 0.300) does not beat the no-learning 'all ones' mask (Dice 0.300)" in text
    assert "`lora` on cracks" not in text
    darker = {**BASELINES, "cracks": {**BASELINES["cracks"], "darkest 5%": scores(0.5, 0.7, True)}}
    text = build_report(DATA, TRAIN, {"lora": weak}, darker, model_source="small", rungs=["lora"])
    ladder = section(text, "cracks ladder")
    assert "best no-learning baseline (darkest 5%, Dice 0.700)" in ladder
    assert "`lora` on cracks (mean Dice 0.450) does not beat the no-learning 'darkest 5%' mask (Dice 0.700)" in ladder


def write_split(root, dataset, split, masks):
    for folder in ("images", "masks"):
        (root / dataset / split / folder).mkdir(parents=True, exist_ok=True)
    for i, mask in enumerate(masks):
        cv2.imwrite(str(root / dataset / split / "images" / f"im{i}.png"), np.zeros((*mask.shape, 3), np.uint8))
        cv2.imwrite(str(root / dataset / split / "masks" / f"im{i}.png"), mask)


def test_trivial_baselines_on_hand_made_masks(tmp_path):
    empty = np.zeros((10, 20), np.uint8)
    half = empty.copy()
    half[:, :10] = 255
    write_split(tmp_path, "drywall", "test", [empty])
    only_empty = trivial_baseline_scores(tmp_path, "drywall", "test")
    assert only_empty["all zeros"]["miou"] == 1.0 and only_empty["all ones"]["miou"] == 0.0
    write_split(tmp_path, "drywall", "val", [half])
    only_half = trivial_baseline_scores(tmp_path, "drywall", "val")
    assert only_half["all ones"]["miou"] == pytest.approx(0.5)
    assert only_half["all ones"]["dice"] == pytest.approx(2 / 3)
    assert only_half["all zeros"]["miou"] == 0.0 and "boundary_f1" not in only_half["all ones"]
    write_split(tmp_path, "cracks", "test", [empty, half])
    both = trivial_baseline_scores(tmp_path, "cracks", "test", empty_score=0.0)
    assert both["all zeros"]["miou"] == 0.0 and both["all ones"]["miou"] == pytest.approx(0.25)
    assert {"boundary_f1", "cl_dice"} <= set(both["all ones"]) and both["all ones"]["images"] == 2
    assert trivial_baseline_scores(tmp_path, "cracks", "val") == {}


def test_write_report_reads_files_and_links_figures(tmp_path):
    metrics = tmp_path / "metrics"
    for sub, name, payload in (
        ("data", "cracks", DATA["cracks"]),
        ("train", "lora", TRAIN["lora"]),
        ("eval", "lora", EVAL["lora"]),
    ):
        (metrics / sub).mkdir(parents=True, exist_ok=True)
        (metrics / sub / f"{name}.json").write_text(json.dumps(payload))
    (metrics / "eval" / "figures").mkdir()
    (metrics / "eval" / "figures" / "lora_cracks.png").write_bytes(b"png")
    half = np.zeros((10, 20), np.uint8)
    half[:, :10] = 255
    write_split(tmp_path / "processed", "cracks", "test", [half])
    write_baselines(tmp_path / "processed", metrics / "eval" / "baselines.json")  # the `baselines` stage
    out = metrics / "report.md"
    write_report(metrics, out, rungs=["lora", "full"], model_source="small")
    text = out.read_text()
    assert "(eval/figures/lora_cracks.png)" in text and "lora_drywall" not in text
    assert row(section(text, "cracks, test split"), "no learning: all ones")[3] == "0.500"
    # black images: every pixel ties at the quantile, so the darkest baseline lights everything (= all ones)
    assert (
        row(section(text, "cracks ladder"), "darkest 5%")[4:6] == row(section(text, "cracks ladder"), "all ones")[4:6]
    )
    assert "`full`: neither trained nor evaluated yet" in text
    assert "`full`: not evaluated yet" in text and "metrics/data/drywall.json is missing" in text
    assert "No no-learning baselines for drywall" in text


def ladder_rungs(text, dataset):
    """The first cell of every body row of a dataset's ladder table, in order."""
    lines = [ln for ln in section(text, f"{dataset} ladder").splitlines() if ln.startswith("|")]
    return [ln.strip("|").split("|")[0].strip() for ln in lines[2:]]


def write_images_and_masks(root, dataset, split, pairs):
    """pairs: [(gray image (H, W) uint8, mask (H, W) uint8)] written as lossless PNGs a.png, b.png, ..."""
    for folder in ("images", "masks"):
        (root / dataset / split / folder).mkdir(parents=True, exist_ok=True)
    for stem, (gray, mask) in zip("abcdefgh", pairs):
        cv2.imwrite(str(root / dataset / split / "images" / f"{stem}.png"), np.dstack([gray] * 3))
        cv2.imwrite(str(root / dataset / split / "masks" / f"{stem}.png"), mask)


def test_darkest_baseline_on_a_hand_made_split_with_a_dark_line(tmp_path):
    # a: 20x20 at 200 with a 3-px dark band (rows 8-10, value 10: 15% of the pixels) and a 1-px black speck;
    #    ground truth: the left half of the band (30 px). 5% quantile = 10, so band + speck are dark; OPEN
    #    removes the speck -> prediction = the band (60 px): Dice 2*30/(60+30) = 2/3, IoU 30/60.
    a, a_gt = np.full((20, 20), 200, np.uint8), np.zeros((20, 20), np.uint8)
    a[8:11] = 10
    a[2, 2] = 0
    a_gt[8:11, :10] = 255
    # b: a 1-px dark line (row 5, exactly 5%): the quantile (10 + 0.95 * 190) keeps just the line, which OPEN
    #    with a 3x3 kernel deletes -> empty prediction against a non-empty truth: Dice 0.
    b, b_gt = np.full((20, 20), 200, np.uint8), np.zeros((20, 20), np.uint8)
    b[5] = 10
    b_gt[5] = 255
    # c: a uniform image with no crack: every pixel ties at the quantile -> all lit, truth empty: Dice 0.
    c, c_gt = np.full((20, 20), 128, np.uint8), np.zeros((20, 20), np.uint8)
    write_images_and_masks(tmp_path, "cracks", "test", [(a, a_gt), (b, b_gt), (c, c_gt)])

    got = trivial_baseline_scores(tmp_path, "cracks", "test")
    assert list(got) == ["all zeros", "all ones", "darkest 5%"]
    dark = got["darkest 5%"]
    assert dark["dice"] == pytest.approx((2 / 3 + 0 + 0) / 3)
    assert dark["miou"] == pytest.approx((1 / 2 + 0 + 0) / 3)
    assert dark["micro_dice"] == pytest.approx(2 * 30 / ((60 + 0 + 400) + (30 + 20 + 0)))
    assert dark["lit"] == pytest.approx((60 / 400 + 0 + 1) / 3)
    assert dark["images"] == 3 and {"boundary_f1", "cl_dice"} <= set(dark)

    # no morphology (kernel 1): the speck and the thin line stay. a: Dice 2*30/(61+30); b: Dice 1; c: 0.
    raw = trivial_baseline_scores(tmp_path, "cracks", "test", kernel_size=1)["darkest 5%"]
    assert raw["dice"] == pytest.approx((60 / 91 + 1 + 0) / 3)
    assert trivial_baseline_scores(tmp_path, "cracks", "test", morphology=False)["darkest 5%"]["dice"] == raw["dice"]

    assert darkest_name(0.1) == "darkest 10%" and darkest_name(0.025) == "darkest 2.5%"
    assert "darkest 10%" in trivial_baseline_scores(tmp_path, "cracks", "test", darkest_share=0.1)
    assert list(trivial_baseline_scores(tmp_path, "cracks", "test", darkest_share=None)) == ["all zeros", "all ones"]
    write_images_and_masks(tmp_path, "drywall", "test", [(a, a_gt)])
    assert list(trivial_baseline_scores(tmp_path, "drywall", "test")) == ["all zeros", "all ones"]


def test_skipped_rung_says_skipped_with_its_reason_and_no_numbers():
    train = {**TRAIN, "zeroshot": {"rung": "zeroshot", "method": "zeroshot", "skipped": SKIP_REASON}}
    evals = {**EVAL, "zeroshot": {"skipped": SKIP_REASON}}
    text = build_report(
        DATA, train, evals, BASELINES, model_source="CIDAS/clipseg-rd64-refined", rungs=["zeroshot", "lora", "full"]
    )
    for dataset in ("cracks", "drywall"):
        ladder = section(text, f"{dataset} ladder")
        r = row(ladder, "zeroshot")
        assert r[1] == "zeroshot" and set(r[2:]) == {"skipped"}
        assert not any(ch.isdigit() for ch in "".join(r))
        assert f"`zeroshot` was skipped: {SKIP_REASON}." in ladder
        assert "Rung `zeroshot`: skipped" in section(text, f"{dataset}, test split")
        assert "zeroshot" not in [
            p.strip()
            for ln in section(text, f"{dataset}, test split").splitlines()
            if ln.startswith("|")
            for p in ln.split("|")
        ]
    assert "Zero-shot: no metrics/eval" not in text and "zeroshot" not in section(text, "Inference options")
    # an eval file that says skipped is enough (no train file)
    only_eval = build_report(
        DATA,
        TRAIN,
        {**EVAL, "unet": {"skipped": "no GPU"}},
        BASELINES,
        model_source="small",
        rungs=["lora", "full", "unet"],
    )
    assert set(row(section(only_eval, "cracks ladder"), "unet")[2:]) == {"skipped"}
    assert "`unet` was skipped: no GPU." in only_eval
    # on `small` the skipped zero-shot rung keeps its one-line explanation and gets no row at all
    small = build_report(DATA, train, evals, BASELINES, model_source="small", rungs=["zeroshot", "lora", "full"])
    assert "meaningless for a randomly initialised model" in small and "zeroshot" not in small
    # a ladder without CLIPSeg rungs (the default: HED and U-Net) does not describe the CLIPSeg source at all
    no_clipseg = build_report(
        DATA,
        {"unet": TRAIN["lora"]},
        {"unet": EVAL["lora"]},
        BASELINES,
        model_source="small",
        rungs=["unet"],
        clipseg_in_ladder=False,
    )
    assert "Model source" not in no_clipseg and "Zero-shot" not in no_clipseg
    assert "No CLIPSeg rung in this ladder" in no_clipseg and "| unet" in no_clipseg


def test_ladder_lists_baselines_first_then_rungs_in_params_order():
    train = {
        v: {
            "method": "full" if v == "unet" else v,
            "architecture": "unet" if v == "unet" else "clipseg",
            "trainable_params": 10 * i,
            "total_params": 100,
            "seconds_per_epoch": 1.0 + i,
            "epochs": 24 if v == "full" else 8,
            "image_size": 224 if v == "unet" else 160,
        }
        for i, v in enumerate(LADDER)
    }
    evals = {v: eval_file(0.1 * i, 0.1 * i) for i, v in enumerate(LADDER)}
    order = ["unet", "full", "decoder", "lora", "zeroshot"]  # dicts in another order than params
    text = build_report(
        DATA,
        {v: train[v] for v in order},
        {v: evals[v] for v in order},
        BASELINES,
        model_source="CIDAS/clipseg-rd64-refined",
        rungs=LADDER,
    )
    assert ladder_rungs(text, "cracks") == ["all zeros", "all ones", "darkest 5%", *LADDER]
    assert ladder_rungs(text, "drywall") == ["all zeros", "all ones", *LADDER]
    assert row(section(text, "cracks ladder"), "unet")[1] == "full / unet"
    assert row(section(text, "drywall ladder"), "decoder")[1:4] == ["decoder / clipseg", "10", "100"]
    assert row(section(text, "cracks ladder"), "full")[-2:] == ["24 @ 160", "4.000"]  # rungs' own schedules
    assert row(section(text, "cracks ladder"), "unet")[-2:] == ["8 @ 224", "5.000"]
    assert row(section(text, "cracks ladder"), "all zeros")[-2:] == ["\u2014", "\u2014"]
    small = build_report(DATA, train, evals, BASELINES, model_source="small", rungs=LADDER)
    assert ladder_rungs(small, "cracks") == ["all zeros", "all ones", "darkest 5%", "decoder", "lora", "full", "unet"]


def test_inference_options_on_val_and_prompt_ensemble_row():
    lora = eval_file(0.512, 0.61)
    lora["cracks"]["options_val"] = OPTIONS
    lora["drywall"]["options_val"] = {**OPTIONS, "single_prompt+hflip": 0.5}
    lora["cracks"]["ensemble_threshold"] = 0.7
    lora["cracks"]["test"]["ensemble"] = scores(0.61, 0.66, True)
    text = build_report(
        DATA,
        TRAIN,
        {"lora": lora, "full": EVAL["full"]},
        BASELINES,
        model_source="small",
        rungs=["lora", "full"],
        infer_defaults={"hflip_tta": False, "prompt_ensemble": True},
    )
    options = section(text, "Inference options on validation")
    assert row(options, "lora", "cracks")[2:] == ["0.410", "0.430", "0.420", "0.400", "n/a", "prompt ensemble"]
    assert row(options, "lora", "drywall")[2:] == ["0.410", "0.430", "0.500", "0.400", "n/a", "single prompt + hflip"]
    assert "val only" in options and "`infer.hflip_tta` / `infer.prompt_ensemble`" in options
    assert "`hflip_tta: false`, `prompt_ensemble: true`" in options
    assert "Rung `full`: no `options_val` for cracks" in options
    none_measured = build_report(DATA, TRAIN, {"full": EVAL["full"]}, BASELINES, model_source="small", rungs=["full"])
    options_off = section(none_measured, "Inference options on validation")
    assert "`eval.measure_inference_options` is off" in options_off and "Rung `full`" not in options_off
    cracks = section(text, "cracks, test split")
    assert row(cracks, "prompt ensemble", "lora")[2:7] == ["0.700", "0.610", "0.660", "0.250", "0.125"]
    assert "prompt ensemble" not in section(text, "drywall, test split")
    assert text.index("cracks ladder") < text.index("Inference options") < text.index("cracks, test split")


def test_export_quirks_are_shown_when_the_splits_were_regrouped():
    data = {
        "cracks": {
            **DATA["cracks"],
            "export": {"test": {"images": 804, "empty_segmentation_as_box": 2, "unused_categories": 1}},
        }
    }
    text = build_report(data, TRAIN, EVAL, BASELINES, model_source="small", datasets=["cracks"])
    assert (
        "`cracks` export as parsed, per exported split, skipped/repaired: `test` 2 "
        "(empty_segmentation_as_box 2)." in text
    )


def test_pretrained_table_sets_lora_against_full_with_the_numbers_of_each():
    """The HED rungs' table: each rung's trainable and LoRA parameters, minutes and scores, the U-Net beside them,
    and the LoRA-vs-full sentence computed from the two eval files (cracks test mean mIoU: (a + 0.2) / 2)."""
    train = {
        "hed_lora": {
            "method": "lora",
            "architecture": "hed",
            "trainable_params": 7661180,
            "lora_params": 279552,
            "epochs": 6,
            "train_seconds": 600.0,
        },
        "hed_full": {
            "method": "full",
            "architecture": "hed",
            "trainable_params": 22096316,
            "lora_params": 0,
            "epochs": 6,
            "train_seconds": 1200.0,
        },
        "unet": {
            "method": "full",
            "architecture": "unet",
            "trainable_params": 10,
            "epochs": 46,
            "train_seconds": 900.0,
        },
    }
    evals = {"hed_lora": eval_file(0.5, 0.4), "hed_full": eval_file(0.6, 0.4), "unet": eval_file(0.3, 0.4)}
    text = build_report(DATA, train, evals, BASELINES, model_source="small", rungs=["hed_lora", "hed_full", "unet"])
    section = text.split("pretrained HED-VGG16 rungs")[1].split("## Table")[0]
    rows = {
        cells[0]: cells
        for line in section.splitlines()
        if line.startswith("| ") and (cells := [c.strip() for c in line.strip("|").split("|")])
    }
    assert rows["hed_lora"][2:6] == ["7,661,180", "279,552", "10.0", "0.350"]
    assert rows["hed_full"][2:6] == ["22,096,316", "—", "20.0", "0.400"]
    assert rows["unet"][4:6] == ["15.0", "0.250"]
    assert "cracks: `hed_lora` 0.350 vs `hed_full` 0.400 test split mIoU (-0.050), after 6 vs 6 epochs" in section
    no_hed = build_report(DATA, train, evals, BASELINES, model_source="small", rungs=["unet"])
    assert "pretrained HED-VGG16 rungs" not in no_hed
