"""metrics/report.md from hand-written metrics dicts, and the trivial baselines on hand-made masks."""
import json

import cv2
import numpy as np
import pytest

from promptseg.report import build_report, trivial_baseline_scores, write_report


def scores(miou, dice, thin=False, images=4):
    s = {"miou": miou, "dice": dice, "micro_iou": miou, "micro_dice": dice, "images": images}
    if thin:
        s.update(boundary_f1=0.25, cl_dice=0.125)
    return s


def split_block(prompt_scores, thin, paraphrase):
    keys = [k for k in next(iter(prompt_scores.values())) if k != "images"]
    mean = {k: float(np.mean([s[k] for s in prompt_scores.values()])) for k in keys}
    return {"prompts": prompt_scores, "all_prompts": mean, "images": 4, "in_prompt_lit": 0.04,
            "cross_prompt_lit": 0.0123, "unrelated_prompt_lit": 0.2, "paraphrases": {paraphrase: scores(0.3, 0.456, thin)}}


def eval_file(crack_miou, wall_miou):
    cracks = {"segment crack": scores(crack_miou, 0.6, True), "segment wall crack": scores(0.2, 0.3, True)}
    drywall = {"segment joint tape": scores(wall_miou, 0.7), "segment drywall seam": scores(0.4, 0.5)}
    return {"cracks": {"threshold": 0.4, "threshold_chosen_on": "val", "val": split_block(cracks, True, "p1"),
                       "test": split_block(cracks, True, "segment the crack in the wall")},
            "drywall": {"threshold": 0.6, "threshold_chosen_on": "val", "val": split_block(drywall, False, "p2"),
                        "test": split_block(drywall, False, "find the drywall tape")},
            "overall": {"test_miou": 0.3}}


DATA = {name: {"problems": 0, **{split: {"images": 4, "with_foreground": 3, "without_foreground": 1,
                                           "mean_foreground_fraction": 0.0525, "annotations": 9,
                                           "clipped_boxes": 2 if name == "drywall" else 0, "corrupt_image": 1,
                                           "unknown_category": 0}
                                   for split in ("train", "val", "test")}} for name in ("cracks", "drywall")}
TRAIN = {"lora": {"method": "lora", "trainable_params": 995328, "total_params": 150747746, "seconds_per_epoch": 12.5},
         "full": {"method": "full", "trainable_params": 150747746, "total_params": 150747746, "seconds_per_epoch": 20.0}}
EVAL = {"lora": eval_file(0.512, 0.61), "full": eval_file(0.333, 0.444)}
BASELINES = {"cracks": {"all zeros": scores(0.25, 0.25, True), "all ones": scores(0.011, 0.021, True)},
             "drywall": {"all zeros": scores(0.25, 0.25), "all ones": scores(0.2, 0.3)}}


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
    return text[start:end if end > 0 else None]


def test_report_tables_hold_the_numbers_in_the_right_rows():
    text = build_report(DATA, TRAIN, EVAL, BASELINES, model_source="small", variants=["lora", "full"])
    cracks, drywall = section(text, "cracks, test split"), section(text, "drywall, test split")
    r = row(cracks, '"segment crack"', "lora")
    assert r[2:7] == ["0.400", "0.512", "0.600", "0.250", "0.125"]
    assert row(cracks, '"segment crack"', "full")[3] == "0.333"
    assert row(cracks, "trivial: all ones")[3:7] == ["0.011", "0.021", "0.250", "0.125"]
    assert row(cracks, "mean over prompts", "lora")[3] == "0.356"  # (0.512 + 0.2) / 2
    assert "boundary F1" in cracks and "boundary F1" not in drywall
    assert row(drywall, '"segment joint tape"', "full")[2:5] == ["0.600", "0.444", "0.700"]
    assert row(drywall, "trivial: all zeros")[3:5] == ["0.250", "0.250"]
    comparison = section(text, "variant comparison")
    assert row(comparison, "lora")[1:5] == ["lora", "995,328", "150,747,746", "0.660"]
    assert row(comparison, "full")[-1] == "20.000"
    switching = section(text, "prompt switching")
    assert row(switching, "lora", "cracks")[2:] == ["0.052", "0.040", "0.012", "0.200",
                                                   '"segment the crack in the wall" 0.456']
    data = section(text, "Table 1")
    assert row(data, "drywall", "test")[2:] == ["4", "3", "1", "5.250", "3 (clipped_boxes 2, corrupt_image 1)"]
    assert row(data, "cracks", "val")[-1] == "1 (corrupt_image 1)"
    assert "meaningless for a randomly initialised model" in text
    assert "both empty scores 1" in text and "chosen on val only" in text
    assert "<" not in text.replace("<=", "")  # no HTML


def test_missing_variant_and_zeroshot_for_pretrained_source():
    text = build_report(DATA, {"lora": TRAIN["lora"]}, {"lora": EVAL["lora"]}, BASELINES,
                        model_source="CIDAS/clipseg-rd64-refined", variants=["lora", "full"])
    assert "`full`: not evaluated yet" in text
    assert "meaningless" not in text and "no metrics/eval/zeroshot.json" in text
    with_zs = build_report(DATA, TRAIN, {**EVAL, "zeroshot": eval_file(0.05, 0.06)}, BASELINES,
                           model_source="CIDAS/clipseg-rd64-refined", variants=["lora", "full"])
    assert row(section(with_zs, "cracks, test split"), '"segment crack"', "zeroshot")[3] == "0.050"
    assert row(section(with_zs, "variant comparison"), "zeroshot")[1] == "zero-shot (no training)"
    small = build_report(DATA, TRAIN, {**EVAL, "zeroshot": eval_file(0.05, 0.06)}, BASELINES, model_source="small")
    assert "zeroshot" not in small
    empty = build_report({}, {}, {}, {}, model_source="small", variants=["lora"])
    assert "metrics/data/cracks.json is missing" in empty and "`lora`" in empty


def test_variant_not_beating_a_trivial_mask_is_flagged():
    weak = eval_file(0.1, 0.1)
    weak["drywall"]["test"]["all_prompts"]["dice"] = 0.3
    text = build_report(DATA, TRAIN, {"lora": weak}, BASELINES, model_source="small", variants=["lora"])
    assert "`lora` on drywall (mean Dice 0.300) does not beat the trivial 'all ones' mask" in text
    assert "`lora` on cracks" not in text


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
    for sub, name, payload in (("data", "cracks", DATA["cracks"]), ("train", "lora", TRAIN["lora"]),
                               ("eval", "lora", EVAL["lora"])):
        (metrics / sub).mkdir(parents=True, exist_ok=True)
        (metrics / sub / f"{name}.json").write_text(json.dumps(payload))
    (metrics / "eval" / "figures").mkdir()
    (metrics / "eval" / "figures" / "lora_cracks.png").write_bytes(b"png")
    half = np.zeros((10, 20), np.uint8)
    half[:, :10] = 255
    write_split(tmp_path / "processed", "cracks", "test", [half])
    out = metrics / "report.md"
    write_report(metrics, tmp_path / "processed", out, variants=["lora", "full"], model_source="small")
    text = out.read_text()
    assert "(eval/figures/lora_cracks.png)" in text and "lora_drywall" not in text
    assert row(section(text, "cracks, test split"), "trivial: all ones")[3] == "0.500"
    assert "`full`: not evaluated yet" in text and "metrics/data/drywall.json is missing" in text
    assert "No trivial baselines for drywall" in text
