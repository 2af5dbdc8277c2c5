"""A dataset whose export has no test split (the official drywall exports: train + valid) is evaluated and
reported on val, labelled as optimistic (``eval.missing_test_split: report_val``), or stops with a message
(``error``); every declared figure is written either way."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from promptseg.params import NO_TEST_SPLIT_NOTE
from promptseg.score.baselines import write_baselines
from promptseg.score.evaluate import EvalConfig, evaluate_rung
from promptseg.score.figures import qualitative_figure
from promptseg.score.report import write_report

from conftest import PROMPTS, TINY_MODEL, tiny_eval_config


@pytest.fixture(scope="module")
def no_drywall_test(processed_root, tmp_path_factory):
    """The shared processed tree with drywall's test split removed (as `split: as_exported` leaves it)."""
    root = tmp_path_factory.mktemp("no_test") / "processed"
    shutil.copytree(processed_root, root)
    shutil.rmtree(root / "drywall" / "test")
    return root


@pytest.fixture(scope="module")
def trained():
    from promptseg.infer.torch_engine import TorchSegmenter
    from promptseg.modeling.clipseg import build_small_model

    model, processor = build_small_model(TINY_MODEL, 64, seed=0)
    return TorchSegmenter(model, processor)


def _cfg(policy="report_val"):
    return tiny_eval_config(threshold_grid=(0.3, 0.5, 0.7), figure_images=2, missing_test_split=policy)


def test_report_val_scores_val_and_labels_it(trained, no_drywall_test):
    results, _ = evaluate_rung(trained, no_drywall_test, PROMPTS, _cfg())
    drywall, cracks = results["drywall"], results["cracks"]
    assert drywall["reported_split"] == "val" and drywall["reported_split_note"] == NO_TEST_SPLIT_NOTE
    assert "test" not in drywall and drywall["val"]["images"] == 4
    assert set(drywall["val"]["prompts"]) == set(PROMPTS["drywall"])
    assert cracks["reported_split"] == "test" and "reported_split_note" not in cracks and cracks["test"]["images"] == 4
    # the test averages are cracks' alone, and say that drywall is left out
    assert results["overall"]["test_dice"] == pytest.approx(cracks["test"]["all_prompts"]["dice"])
    assert "drywall" in results["overall"]["test_averages_exclude"]


def test_error_policy_names_the_dataset_and_the_fix(trained, no_drywall_test):
    with pytest.raises(ValueError, match=r"drywall: no test images.*split: grouped.*missing_test_split: report_val"):
        evaluate_rung(trained, no_drywall_test, PROMPTS, _cfg("error"))


def test_unknown_policy_is_refused():
    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    assert EvalConfig.from_params(params).eval.missing_test_split == "report_val"
    params["eval"]["missing_test_split"] = "pretend"
    with pytest.raises(ValueError, match="eval.missing_test_split"):
        EvalConfig.from_params(params)


def test_figures_exist_for_the_scored_split_and_for_an_empty_one(trained, no_drywall_test, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    titles = []
    monkeypatch.setattr(Figure, "suptitle", lambda self, text, **kw: titles.append(text))
    val_png, empty_png = tmp_path / "val.png", tmp_path / "empty.png"
    qualitative_figure(
        trained,
        no_drywall_test,
        "drywall",
        "segment joint tape",
        _cfg().recipe("drywall"),
        2,
        val_png,
        split="val",
        note=NO_TEST_SPLIT_NOTE,
    )
    qualitative_figure(
        trained, no_drywall_test, "drywall", "segment joint tape", _cfg().recipe("drywall"), 2, empty_png, split="test"
    )
    assert val_png.stat().st_size > 1000 and empty_png.stat().st_size > 100
    assert titles == [f"drywall, val split ({NO_TEST_SPLIT_NOTE})"]


def test_report_states_the_split_situation_and_scores_baselines_on_val(trained, no_drywall_test, tmp_path):
    results, _ = evaluate_rung(trained, no_drywall_test, PROMPTS, _cfg())
    metrics = tmp_path / "metrics"
    (metrics / "eval").mkdir(parents=True)
    (metrics / "eval" / "lora.json").write_text(json.dumps(results))
    out = metrics / "report.md"
    write_baselines(no_drywall_test, metrics / "eval" / "baselines.json", missing_test_split="report_val")
    write_report(metrics, out, rungs=["lora"], model_source="small")
    text = out.read_text()
    assert f"**drywall: reported on val, {NO_TEST_SPLIT_NOTE}.**" in text
    assert f"## Table 3: drywall ladder (val split; {NO_TEST_SPLIT_NOTE}, mean over prompts)" in text
    assert f"drywall, val split; {NO_TEST_SPLIT_NOTE}, per prompt" in text
    assert "## Table 2: cracks ladder (test split, mean over prompts)" in text
    ladder = text.split("drywall ladder")[1].split("## Table")[0]
    lora = next(line for line in ladder.splitlines() if line.startswith("| lora"))
    assert lora.split("|")[6].strip() == f"{results['drywall']['val']['all_prompts']['dice']:.3f}"
    # the no-learning baselines were scored on drywall's 4 val images (the per-prompt table's images column)
    per_prompt = text.split("drywall, val split")[1].split("## Table")[0]
    all_ones = next(line for line in per_prompt.splitlines() if line.startswith("| no learning: all ones"))
    assert all_ones.rstrip(" |").endswith(" 4")


def test_progress_bars_count_every_image_of_every_prompt_pass(trained, no_drywall_test, monkeypatch):
    from promptseg.score import evaluate

    closed = []

    class Recording:  # what evaluate_dataset asks of tqdm (a real bar is disabled when not on a terminal)
        def __init__(self, total, desc, **_):
            self.total, self.desc, self.n = total, desc, 0

        def set_postfix_str(self, text):
            pass

        def update(self, n):
            self.n += n

        def close(self):
            closed.append((self.desc, self.n, self.total))

    monkeypatch.setattr(evaluate, "tqdm", Recording)
    cfg = tiny_eval_config(
        measure_inference_options=True,
        prompt_ensemble=True,
        unrelated_prompts=["segment door"],
        paraphrases={"cracks": ["find the crack"]},
    )
    evaluate_rung(trained, no_drywall_test, PROMPTS, cfg)
    # cracks val: 2 prompts + 3 other + 1 unrelated + 1 paraphrase + options 2 * (2 + 1) + 2 + ensemble 2 = 17 passes
    assert ("evaluate cracks val", 17 * 4, 17 * 4) in closed
    assert ("evaluate cracks test", 8 * 4, 8 * 4) in closed  # 2 + 3 + 1 + 1 + ensemble 1
    assert ("evaluate drywall val", 19 * 4, 19 * 4) in closed  # 3 + 2 + 1 + options 2 * 4 + 3 + ensemble 2
    assert all(n == total for _, n, total in closed) and len(closed) == 3
