"""Per-image scores (metrics/eval/per_image/<rung>.csv) are the numbers metrics/eval/<rung>.json averages, and the
worst-image gallery shows the lowest-Dice images with the masks evaluation scored; the report links both."""

import csv

import cv2
import numpy as np
import pytest

from promptseg.paths import prompt_slug
from promptseg.score import figures
from promptseg.score.evaluate import PER_IMAGE_COLUMNS, evaluate_rung, write_per_image_csv, write_skipped_outputs
from promptseg.score.figures import worst_images_figure
from promptseg.score.report import write_report

from conftest import PROMPTS, TINY_MODEL, tiny_eval_config


@pytest.fixture(scope="module")
def evaluated(processed_root, tmp_path_factory):
    """A tiny evaluation (random small CLIPSeg) with its per-image rows, its CSV and its written masks."""
    from promptseg.infer.torch_engine import TorchSegmenter
    from promptseg.modeling.clipseg import build_small_model

    model, processor = build_small_model(TINY_MODEL, 64, seed=0)
    trained = TorchSegmenter(model, processor)
    out = tmp_path_factory.mktemp("per_image")
    rows: list[dict] = []
    cfg = tiny_eval_config(threshold_grid=(0.45, 0.5, 0.55), morphology=False, worst_images=3)
    results, _ = evaluate_rung(trained, processed_root, PROMPTS, cfg, out / "predictions", per_image=rows)
    write_per_image_csv(out / "per_image.csv", rows)
    with (out / "per_image.csv").open() as handle:
        read = list(csv.DictReader(handle))
    return results, rows, read, out


def test_per_image_means_are_the_json_means(evaluated):
    results, rows, read, _ = evaluated
    assert len(rows) == len(read) == 2 * 4 * (2 + 3)  # (val, test) x 4 images x the dataset's prompts
    assert list(read[0]) == PER_IMAGE_COLUMNS
    for dataset, prompts in PROMPTS.items():
        for split in ("val", "test"):
            for prompt in prompts:
                mine = [r for r in read if (r["dataset"], r["split"], r["prompt"]) == (dataset, split, prompt)]
                assert len(mine) == 4 and {r["reported"] for r in mine} == {"1" if split == "test" else "0"}
                block = results[dataset][split]["prompts"][prompt]
                assert np.mean([float(r["dice"]) for r in mine]) == pytest.approx(block["dice"], abs=1e-6)
                assert np.mean([float(r["iou"]) for r in mine]) == pytest.approx(block["miou"], abs=1e-6)
                if dataset == "cracks":
                    bf1 = np.mean([float(r["boundary_f1"]) for r in mine])
                    assert bf1 == pytest.approx(block["boundary_f1"], abs=1e-6)
                else:
                    assert {r["boundary_f1"] for r in mine} == {""}
            # the predicted foreground share averages to the JSON's in-prompt lit fraction
            lit = np.mean([r["pred_share"] for r in rows if (r["dataset"], r["split"]) == (dataset, split)])
            assert lit == pytest.approx(results[dataset][split]["in_prompt_lit"], abs=1e-12)


def test_a_row_matches_the_written_mask_scored_by_hand(evaluated, processed_root):
    _, rows, _, out = evaluated
    mine = [r for r in rows if (r["dataset"], r["split"], r["prompt"]) == ("cracks", "test", "segment crack")]
    assert len(mine) == 4
    for row in mine:
        pred = cv2.imread(str(out / "predictions" / "cracks" / "test" / f"{row['stem']}__segment-crack.png"), 0) > 0
        truth = cv2.imread(str(processed_root / "cracks" / "test" / "masks" / f"{row['stem']}.png"), 0) > 0
        tp, fp, fn = (pred & truth).sum(), (pred & ~truth).sum(), (~pred & truth).sum()
        dice = 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
        assert row["dice"] == pytest.approx(dice, abs=1e-12)
        assert row["pred_share"] == pytest.approx(pred.mean()) and row["true_share"] == pytest.approx(truth.mean())


def test_worst_gallery_shows_the_lowest_dice_images_and_their_scored_masks(
    evaluated, processed_root, tmp_path, monkeypatch
):
    _, rows, _, out = evaluated
    shown = []
    original = figures.panel_figure

    def recording(panel_rows, labels, heading, path, **kw):
        shown.append((panel_rows, labels, heading))
        original(panel_rows, labels, heading, path, **kw)

    monkeypatch.setattr(figures, "panel_figure", recording)
    png = tmp_path / "lora_cracks_worst.png"
    masks_dir = out / "predictions" / "cracks" / "test"
    stems = worst_images_figure(processed_root, "cracks", "test", "segment crack", rows, masks_dir, 3, png)
    mine = [r for r in rows if (r["dataset"], r["split"], r["prompt"]) == ("cracks", "test", "segment crack")]
    expected = [r["stem"] for r in sorted(mine, key=lambda r: (r["dice"], r["stem"]))[:3]]
    assert stems == expected and png.stat().st_size > 1000
    (panel_rows, labels, heading) = shown[0]
    assert labels == expected and "3 lowest-Dice images with 'segment crack'" in heading
    for panels, row in zip(panel_rows, sorted(mine, key=lambda r: (r["dice"], r["stem"]))[:3]):
        assert f"Dice {row['dice']:.3f}" in panels[0][1]
        mask = cv2.imread(str(masks_dir / f"{row['stem']}__{prompt_slug('segment crack')}.png"), 0)
        truth = cv2.imread(str(processed_root / "cracks" / "test" / "masks" / f"{row['stem']}.png"), 0) > 0
        assert np.array_equal(panels[2][0], mask) and np.array_equal(panels[1][0], truth)
    # nothing to show (k = 0, or no scores for the split): a figure that says so, no gallery
    empty = tmp_path / "empty.png"
    assert worst_images_figure(processed_root, "cracks", "test", "segment crack", rows, masks_dir, 0, empty) == []
    assert worst_images_figure(processed_root, "cracks", "test", "segment crack", [], masks_dir, 3, empty) == []
    assert empty.stat().st_size > 100 and len(shown) == 1


def test_skipped_rung_writes_a_header_only_csv_and_gallery_figures(tmp_path):
    metrics = tmp_path / "eval"
    write_skipped_outputs("zeroshot", "random weights", metrics, tmp_path / "pred", ["cracks", "drywall"])
    assert (metrics / "per_image" / "zeroshot.csv").read_text().strip() == ",".join(PER_IMAGE_COLUMNS)
    for dataset in ("cracks", "drywall"):
        assert (metrics / "figures" / f"zeroshot_{dataset}_worst.png").stat().st_size > 100


def test_report_links_the_gallery_next_to_the_first_images_and_the_csv(tmp_path):
    metrics = tmp_path / "metrics"
    (metrics / "eval" / "figures").mkdir(parents=True)
    (metrics / "eval" / "per_image").mkdir()
    for name in ("lora_cracks", "lora_cracks_worst", "lora_drywall_worst"):
        (metrics / "eval" / "figures" / f"{name}.png").write_bytes(b"png")
    (metrics / "eval" / "per_image" / "lora.csv").write_text(",".join(PER_IMAGE_COLUMNS) + "\n")
    text = write_report(metrics, metrics / "report.md", rungs=["lora"], model_source="small")
    lines = text.splitlines()
    first = lines.index("- lora, cracks: ![lora_cracks](eval/figures/lora_cracks.png)")
    assert lines[first + 1] == "- lora, cracks, worst images: ![lora_cracks_worst](eval/figures/lora_cracks_worst.png)"
    assert "- lora, drywall, worst images: ![lora_drywall_worst](eval/figures/lora_drywall_worst.png)" in lines
    assert "(eval/per_image/lora.csv)" in text and "lowest-Dice images of the reported split" in text


def test_the_reports_interval_is_centred_on_the_json_miou(evaluated):
    """The report's interval (promptseg.score.intervals) averages the per-image CSV's (image, prompt) rows: its
    mean is the evaluation's all-prompts mIoU, each image in its own group here."""
    from promptseg.score.intervals import score_interval

    results, _, read, _ = evaluated
    for dataset in PROMPTS:
        rows = [r for r in read if (r["dataset"], r["split"]) == (dataset, "test")]
        found = score_interval(rows, {}, resamples=200, level=0.95, seed=0)
        assert found.mean == pytest.approx(results[dataset]["test"]["all_prompts"]["miou"], abs=1e-6)
        assert found.low <= found.mean <= found.high and found.groups == 4
