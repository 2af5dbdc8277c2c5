"""The report's mIoU intervals (promptseg.score.intervals): whole source photos resampled, exact on hand-made
cases, the mean equal to evaluation's, and the paired LoRA-minus-full interval in the report."""

import csv

import numpy as np
import pytest

from promptseg.score.evaluate import PER_IMAGE_COLUMNS
from promptseg.score.intervals import grouped_interval, paired_interval, read_groups, read_scored_rows, score_interval
from promptseg.score.report import write_report
from promptseg.settings import BootstrapParams

OPTIONS = {"resamples": 2000, "seed": 42}


def test_two_groups_of_unequal_size_give_the_exact_resampled_means():
    """Group A = two rows scoring 0, group B = one row scoring 1. Two groups drawn with replacement: AA (mean 0,
    probability 1/4), AB (1/3, 1/2), BB (1, 1/4). The 95 % interval spans [0, 1]; the central 40 % is 1/3 alone;
    the mean is over rows (1/3), as evaluation averages (image, prompt) rows, not groups (1/2)."""
    values, groups = [0.0, 0.0, 1.0], ["A", "A", "B"]
    wide = grouped_interval(values, groups, level=0.95, **OPTIONS)
    assert (wide.mean, wide.low, wide.high) == (pytest.approx(1 / 3), 0.0, 1.0)
    assert (wide.groups, wide.rows, wide.level) == (2, 3, 0.95)
    narrow = grouped_interval(values, groups, level=0.4, **OPTIONS)
    assert narrow.low == pytest.approx(1 / 3) and narrow.high == pytest.approx(1 / 3)


def test_copies_of_one_photo_are_resampled_together_so_the_interval_is_wider_than_treating_them_apart():
    """Ten source photos, each in five copies scoring alike: resampling rows as if independent understates the
    spread by about sqrt(5); resampling the photos does not."""
    values = np.repeat(np.linspace(0.0, 0.9, 10), 5)
    photos = np.repeat([f"p{i}" for i in range(10)], 5)
    grouped = grouped_interval(values, photos, level=0.95, **OPTIONS)
    apart = grouped_interval(values, [str(i) for i in range(50)], level=0.95, **OPTIONS)
    assert grouped.mean == pytest.approx(0.45) and apart.mean == pytest.approx(0.45)
    assert grouped.groups == 10 and apart.groups == 50
    ratio = (grouped.high - grouped.low) / (apart.high - apart.low)
    assert 1.7 < ratio < 2.9  # sqrt(5) = 2.24, up to resampling noise
    again = grouped_interval(values, photos, level=0.95, **OPTIONS)
    assert (again.low, again.high) == (grouped.low, grouped.high)  # seeded


def test_one_group_has_no_spread_to_resample_and_mismatched_inputs_are_refused():
    one = grouped_interval([0.2, 0.4], ["A", "A"], level=0.95, **OPTIONS)
    assert (one.low, one.high, one.groups) == (pytest.approx(0.3), pytest.approx(0.3), 1)
    with pytest.raises(ValueError, match="no rows"):
        grouped_interval([], [], level=0.95, **OPTIONS)
    with pytest.raises(ValueError, match="3 values but 2 group keys"):
        grouped_interval([0.1, 0.2, 0.3], ["A", "B"], level=0.95, **OPTIONS)


def _rows(scores: dict[tuple[str, str], float], dataset="cracks", split="test"):
    return [
        {"dataset": dataset, "split": split, "stem": stem, "prompt": prompt, "iou": str(v)}
        for (stem, prompt), v in scores.items()
    ]


def test_paired_interval_is_the_difference_on_shared_rows_only():
    """b scores every shared row exactly 0.1 above a: the paired difference is -0.1 with no spread, however much
    the photos differ from each other; a row only one rung scored is left out."""
    a = {(f"s{i}", p): 0.1 * i for i in range(6) for p in ("segment crack", "segment wall crack")}
    b = {k: v + 0.1 for k, v in a.items()} | {("extra", "segment crack"): 1.0}
    groups = {f"s{i}": f"g{i // 2}" for i in range(6)}
    found = paired_interval(_rows(a), _rows(b), groups, level=0.95, **OPTIONS)
    assert found.mean == pytest.approx(-0.1) and found.low == pytest.approx(-0.1) and found.high == pytest.approx(-0.1)
    assert (found.rows, found.groups) == (12, 3)
    assert paired_interval(_rows(a), _rows({("other", "x"): 0.5}), groups, level=0.95, **OPTIONS) is None
    # a stem the index lacks is its own group
    alone = score_interval(_rows(a), {}, level=0.95, **OPTIONS)
    assert alone.groups == 6 and alone.mean == pytest.approx(0.25)


def test_readers_take_one_dataset_and_split_and_the_index_groups(tmp_path):
    index = tmp_path / "index.csv"
    index.write_text("stem,split,group\nwall_1_a,test,wall_1\nwall_1_b,test,wall_1\nwall_2,test,\n")
    assert read_groups(index) == {"wall_1_a": "wall_1", "wall_1_b": "wall_1", "wall_2": "wall_2"}
    assert read_groups(tmp_path / "missing.csv") == {}
    per_image = tmp_path / "lora.csv"
    with per_image.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, PER_IMAGE_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for split in ("val", "test"):
            for dataset in ("cracks", "drywall"):
                writer.writerow({"dataset": dataset, "split": split, "stem": "wall_2", "prompt": "p", "iou": 0.5})
    assert [(r["dataset"], r["split"]) for r in read_scored_rows(per_image, "cracks", "test")] == [("cracks", "test")]
    assert read_scored_rows(tmp_path / "none.csv", "cracks", "test") == []


def _write_rung(metrics, rung, method, scores):
    """metrics/train/<rung>.json, metrics/eval/<rung>.json and its per-image CSV for cracks test."""
    import json

    (metrics / "train").mkdir(parents=True, exist_ok=True)
    (metrics / "eval" / "per_image").mkdir(parents=True, exist_ok=True)
    train = {"rung": rung, "method": method, "architecture": "hed", "trainable_params": 10, "epochs": 2}
    (metrics / "train" / f"{rung}.json").write_text(json.dumps(train))
    mean = float(np.mean(list(scores.values())))
    block = {"all_prompts": {"miou": mean, "dice": mean}, "prompts": {}, "images": len(scores)}
    (metrics / "eval" / f"{rung}.json").write_text(json.dumps({"cracks": {"threshold": 0.5, "test": block}}))
    with (metrics / "eval" / "per_image" / f"{rung}.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, PER_IMAGE_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in _rows(scores):
            writer.writerow({**row, "reported": 1, "dice": row["iou"]})


def test_the_report_states_each_rungs_interval_and_whether_lora_and_full_differ(tmp_path):
    metrics = tmp_path / "metrics"
    full = {(f"s{i}", "segment crack"): 0.2 + 0.1 * i for i in range(6)}
    _write_rung(metrics, "hed_full", "full", full)
    _write_rung(metrics, "hed_lora", "lora", {k: v - 0.05 for k, v in full.items()})
    groups = {"cracks": {f"s{i}": f"g{i // 2}" for i in range(6)}}
    bootstrap = BootstrapParams(resamples=2000, level=0.9, seed=42)
    text = write_report(
        metrics,
        metrics / "report.md",
        rungs=["hed_lora", "hed_full"],
        model_source="small",
        datasets=["cracks"],
        groups=groups,
        bootstrap=bootstrap,
    )
    expected = score_interval(_rows(full), groups["cracks"], resamples=2000, level=0.9, seed=42)
    row = next(line for line in text.splitlines() if line.startswith("| hed_full ") and "full / hed" in line)
    assert "mIoU 90 % interval" in text and f"[{expected.low:.3f}, {expected.high:.3f}]" in row
    assert "over whole source photos (3 groups of the test split" in text
    assert (
        "paired on the same 6 (image, prompt) rows: -0.050, 90 % interval [-0.050, -0.050] over 3 source photos: "
        "`hed_lora` is below `hed_full`" in text
    )
    plain = write_report(
        metrics, metrics / "plain.md", rungs=["hed_lora", "hed_full"], model_source="small", datasets=["cracks"]
    )
    assert "interval" not in plain and "paired" not in plain
