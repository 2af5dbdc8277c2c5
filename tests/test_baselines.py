"""The `baselines` stage (metrics/eval/baselines.json) and the report's headline, metrics/summary.json."""

import json

import pytest
from test_report import BASELINES, DATA, EVAL, TRAIN, row, section

from promptseg.score.baselines import trivial_baseline_scores, write_baselines
from promptseg.score.report import build_report, build_summary, write_report

# Scores of the tiny processed tree (conftest.processed_root) computed by the report's own baseline code before
# it moved to promptseg.score.baselines (promptseg/report.py at bf9a65a): the move must not change a number.
BEFORE = {
    "cracks": {
        "all ones": (0.0247650146484375, 0.048095006490248386, 0.15058436745711679, 0.2),
        "darkest 5%": (0.07661726379738137, 0.12058079840009223, 0.14734395667755396, 0.1031449145391734),
    },
    "drywall": {"all ones": (0.1583251953125, 0.2715580156694078)},
}


def test_baselines_file_has_the_scores_the_report_computed_before(processed_root, tmp_path):
    out = tmp_path / "metrics" / "eval" / "baselines.json"
    written = write_baselines(processed_root, out)
    assert json.loads(out.read_text()) == written
    assert list(written) == ["cracks", "drywall", "scored_splits"] and written["scored_splits"] == {
        "cracks": "test",
        "drywall": "test",
    }
    assert list(written["cracks"]) == ["all zeros", "all ones", "darkest 5%"]
    for dataset, named in BEFORE.items():
        for name, values in named.items():
            keys = ("miou", "dice", "boundary_f1", "cl_dice")[: len(values)]
            assert tuple(written[dataset][name][k] for k in keys) == values
            assert written[dataset][name]["images"] == 4
    assert written["drywall"]["all zeros"]["dice"] == 0.0 and written["cracks"]["all ones"]["lit"] == 1.0
    assert {d: written[d] for d in ("cracks", "drywall")} == {
        d: trivial_baseline_scores(processed_root, d, "test") for d in ("cracks", "drywall")
    }


def test_report_from_the_files_equals_the_report_from_scores_in_memory(processed_root, tmp_path):
    metrics = tmp_path / "metrics"
    for sub, name, payload in (
        ("data", "cracks", DATA["cracks"]),
        ("data", "drywall", DATA["drywall"]),
        ("train", "lora", TRAIN["lora"]),
        ("eval", "lora", EVAL["lora"]),
    ):
        (metrics / sub).mkdir(parents=True, exist_ok=True)
        (metrics / sub / f"{name}.json").write_text(json.dumps(payload))
    write_baselines(processed_root, metrics / "eval" / "baselines.json")
    text = write_report(
        metrics, metrics / "report.md", rungs=["lora"], model_source="small", summary_path=metrics / "summary.json"
    )
    in_memory = {d: trivial_baseline_scores(processed_root, d, "test") for d in ("cracks", "drywall")}
    assert text == build_report(
        DATA,
        {"lora": TRAIN["lora"]},
        {"lora": EVAL["lora"]},
        in_memory,
        model_source="small",
        rungs=["lora"],
        figures={},
        boundary_tolerance_px=2,
    )
    assert row(section(text, "cracks ladder"), "darkest 5%")[4:8] == ["0.077", "0.121", "0.147", "0.103"]
    assert row(section(text, "drywall, test split"), "no learning: all ones")[3:5] == ["0.158", "0.272"]
    summary = json.loads((metrics / "summary.json").read_text())
    assert summary["cracks"]["no_learning"] == {"miou": 0.0766, "dice": 0.1206}  # darkest 5%: the best Dice
    assert summary["drywall"]["no_learning"] == {"miou": 0.1583, "dice": 0.2716}  # all ones


def test_report_without_a_baselines_file_says_so(tmp_path):
    text = write_report(tmp_path / "metrics", tmp_path / "report.md", rungs=["lora"], model_source="small")
    assert "No no-learning baselines for cracks" in text and "No no-learning baselines for drywall" in text


def leaves(tree):
    return sum(leaves(v) if isinstance(v, dict) else 1 for v in tree.values())


def test_summary_holds_the_headline_numbers_only():
    ladder = ["zeroshot", "lora", "full", "unet"]
    evals = {**EVAL, "zeroshot": {"skipped": "no pretrained weights"}}
    evals["lora"]["cracks"]["val"]["all_prompts"]["dice"] = 0.9  # lora is best on VAL; full has the higher test Dice
    train = {**TRAIN, "zeroshot": {"skipped": "no pretrained weights"}}
    train["lora"] = {**train["lora"], "epochs": 4}  # 12.5 s x 4
    train["full"] = {**train["full"], "epochs": 2, "train_seconds": 70.0}  # train_seconds wins over s/epoch x epochs
    summary = build_summary(train, evals, BASELINES, rungs=ladder)
    assert summary["cracks"]["lora"] == {"miou": round((0.512 + 0.2) / 2, 4), "dice": 0.45}
    assert summary["cracks"]["full"] == {"miou": round((0.333 + 0.2) / 2, 4), "dice": 0.45}
    assert "zeroshot" not in summary["cracks"] and "unet" not in summary["cracks"]
    assert summary["cracks"]["no_learning"] == {"miou": 0.25, "dice": 0.25}  # all zeros: best Dice of the three
    assert summary["drywall"]["no_learning"] == {"miou": 0.2, "dice": 0.3}
    assert summary["cracks"]["cross_prompt_lit"] == {"lora": 0.0123}
    assert summary["train_minutes"] == round((50.0 + 70.0) / 60.0, 2)
    assert leaves(summary) == 2 * (2 * 2 + 2 + 1) + 1
    full_ladder = build_summary(
        TRAIN,
        {v: EVAL["lora"] for v in ["decoder", "lora", "full", "unet"]},
        BASELINES,
        rungs=["decoder", "lora", "full", "unet"],
    )
    assert leaves(full_ladder) <= 24  # about 20: the default ladder's whole headline
    assert build_summary({}, {}, {}, rungs=ladder) == {}


@pytest.mark.parametrize("bad", [None, "n/a", float("nan")])
def test_summary_skips_numbers_that_are_not_numbers(bad):
    ev = json.loads(json.dumps(EVAL["lora"]))
    ev["drywall"]["test"]["all_prompts"] = {"miou": bad, "dice": 0.5}
    summary = build_summary({}, {"lora": ev}, {}, rungs=["lora"], datasets=["drywall"])
    assert summary == {"drywall": {"lora": {"dice": 0.5}, "cross_prompt_lit": {"lora": 0.0123}}}
