"""One inference recipe: `promptseg predict` writes the masks evaluation wrote, for several recipes and both engines."""

import json

import cv2
import numpy as np
import pytest

from promptseg.cli import main
from promptseg.evaluate import evaluate_rung, prompt_slug
from promptseg.recipe import Recipe, load_recipe, override

from conftest import PROMPTS, TINY_MODEL, tiny_eval_config

PROMPT = PROMPTS["cracks"][1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """An untrained tiny model saved like models/<rung>, and its ONNX export in <model>/onnx."""
    from promptseg.model import build_small_model
    from promptseg.onnx_engine import export_model_dir

    d = tmp_path_factory.mktemp("model") / "tiny"
    model, processor = build_small_model(TINY_MODEL, 64, 0)
    model.save_pretrained(d)
    processor.save_pretrained(d)
    (d / "promptseg.json").write_text(json.dumps({"rung": "tiny", "prompts": PROMPTS}))
    export_model_dir(d)
    return d


@pytest.fixture(scope="module")
def mid_threshold(model_dir, processed_root):
    """A threshold inside the untrained model's probabilities on the test images, so masks are neither empty
    nor full and a one-pixel difference between two recipes shows (tiled: its own probabilities)."""
    from promptseg.evaluate import load_split
    from promptseg.inference import load_trained_model, predict_probabilities
    from promptseg.tiling import predict_probabilities_tiled

    data, trained = load_split(processed_root, "cracks", "test"), load_trained_model(model_dir)
    prompts = [PROMPT] * len(data.images)
    probs = {
        "single pass": predict_probabilities(trained, data.images, prompts),
        "tiled": predict_probabilities_tiled(trained, data.images, prompts, upscale=TILE_UPSCALE, hflip_tta=True),
    }
    return {k: float(np.round(np.median(np.concatenate([p.ravel() for p in v])), 4)) for k, v in probs.items()}


TILE_UPSCALE = 1.5  # 128 px test photos at 192 px: 4 x 4 tiles of the model's 64 px
RECIPES = {
    "default": {},
    "kernel5": {"kernel_size": 5},
    "no_morphology": {"morphology": False},
    "hflip_tta": {"hflip_tta": True},
    # tiles of the export's size; no opening: the untrained model's tiles at the photo's scale are pixel noise
    "tiled_hflip": {"tiled": {"cracks": True}, "tile_upscale": TILE_UPSCALE, "hflip_tta": True, "morphology": False},
}


@pytest.mark.parametrize("name", list(RECIPES))
def test_predict_writes_the_masks_evaluation_wrote(name, model_dir, processed_root, mid_threshold, tmp_path, capsys):
    from promptseg.inference import load_trained_model

    mid_threshold = mid_threshold["tiled" if "tiled" in RECIPES[name] else "single pass"]
    cfg = tiny_eval_config(thresholds=[mid_threshold], **RECIPES[name])
    results, _ = evaluate_rung(
        load_trained_model(model_dir), processed_root, {"cracks": PROMPTS["cracks"]}, cfg, tmp_path / "predictions"
    )
    eval_json = tmp_path / "tiny.json"
    eval_json.write_text(json.dumps(results, indent=2) + "\n")  # as stages/evaluate.py writes it
    recipe = results["cracks"]["recipe"]
    assert recipe["threshold"] == mid_threshold and recipe["kernel"] == cfg.kernel_size
    assert recipe["morphology"] == cfg.morphology and recipe["hflip_tta"] == cfg.hflip_tta
    assert recipe["tiled"] == cfg.tiled.get("cracks", False) and recipe["tile_upscale"] == cfg.tile_upscale

    evaluated = sorted((tmp_path / "predictions" / "cracks" / "test").glob(f"*__{prompt_slug(PROMPT)}.png"))
    assert len(evaluated) >= 3
    lit = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE).mean() / 255 for p in evaluated]
    assert 0.002 < np.mean(lit) < 0.998  # not trivial masks (a 5x5 opening leaves about 1% of this noise)

    for engine in ("torch", "onnx"):
        out = tmp_path / f"out_{engine}"
        rc = main(
            [
                "predict",
                "--model",
                str(model_dir),
                "--prompt",
                PROMPT,
                str(processed_root / "cracks" / "test" / "images"),
                "--out",
                str(out),
                "--eval-metrics",
                str(eval_json),
                "--engine",
                engine,
                "--quiet",
            ]
        )
        printed = capsys.readouterr().out
        assert rc == 0
        assert (
            f"recipe: threshold {mid_threshold:g}" in printed and "evaluation's recipe for dataset 'cracks'" in printed
        )
        assert "overridden" not in printed
        for path in evaluated:
            mine = cv2.imread(str(out / path.name), cv2.IMREAD_UNCHANGED)
            theirs = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            assert mine is not None and np.array_equal(mine, theirs), f"{engine}: {path.name} differs"


def test_a_flag_overrides_one_field_and_says_so(model_dir, processed_root, tmp_path, capsys):
    eval_json = tmp_path / "tiny.json"
    eval_json.write_text(
        json.dumps({"cracks": {"threshold": 0.4, "recipe": {**Recipe(threshold=0.4, kernel=5).to_dict()}}})
    )
    image = processed_root / "cracks" / "test" / "images"
    rc = main(
        [
            "predict",
            "--model",
            str(model_dir),
            "--prompt",
            PROMPT,
            str(image),
            "--out",
            str(tmp_path / "o"),
            "--eval-metrics",
            str(eval_json),
            "--kernel-size",
            "3",
            "--hflip-tta",
            "--native-resolution",
            "--quiet",
        ]
    )
    printed = capsys.readouterr().out
    assert rc == 0
    assert "overridden by flags: kernel 3, hflip_tta True, native_resolution True" in printed
    assert "threshold 0.4" in printed


def test_recipe_fallbacks_say_why(tmp_path):
    card = {"prompts": PROMPTS}
    recipe, dataset, why = load_recipe(card, "segment a cat", "tiny", tmp_path / "none.json")
    assert recipe == Recipe() and dataset is None and "fallback" in why
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"cracks": {"threshold": 0.3}}))
    recipe, dataset, why = load_recipe(card, PROMPT, "tiny", old)
    assert recipe.threshold == 0.3 and recipe.kernel == 3 and dataset == "cracks" and "records no recipe" in why
    same, said = override(recipe, kernel=3, hflip_tta=None)
    assert same == recipe and said == []


def test_a_native_resolution_recipe_on_the_onnx_engine_is_a_clear_usage_error(
    model_dir, processed_root, tmp_path, capsys
):
    """The ONNX export is traced at one size: it refuses a whole-photo-at-its-own-size recipe it would not
    follow (a tiled one runs: its tiles are the export's size, test_predict_writes_the_masks_evaluation_wrote)."""
    field, said = "native_resolution", "at its own size"
    eval_json = tmp_path / "tiny.json"
    eval_json.write_text(
        json.dumps({"cracks": {"threshold": 0.4, "recipe": Recipe(threshold=0.4, **{field: True}).to_dict()}})
    )
    rc = main(
        [
            "predict",
            "--model",
            str(model_dir),
            "--prompt",
            PROMPT,
            str(processed_root / "cracks" / "test" / "images"),
            "--out",
            str(tmp_path / "o"),
            "--eval-metrics",
            str(eval_json),
            "--engine",
            "onnx",
            "--quiet",
        ]
    )
    assert rc == 2 and said in capsys.readouterr().err


def test_export_carries_the_recipe_for_the_onnx_engine(model_dir, processed_root, tmp_path, capsys):
    import shutil

    eval_json = tmp_path / "tiny.json"
    eval_json.write_text(
        json.dumps({"cracks": {"threshold": 0.45, "recipe": Recipe(threshold=0.45, kernel=5).to_dict()}})
    )
    copy = tmp_path / "tiny"
    shutil.copytree(model_dir, copy, ignore=shutil.ignore_patterns("onnx"))
    assert main(["export", "--model", str(copy), "--eval-metrics", str(eval_json), "--no-check"]) == 0
    assert "recipe: copied from" in capsys.readouterr().out
    rc = main(
        [
            "predict",
            "--model",
            str(copy),
            "--prompt",
            PROMPT,
            str(processed_root / "cracks" / "test" / "images"),
            "--out",
            str(tmp_path / "o"),
            "--eval-metrics",
            str(tmp_path / "absent.json"),
            "--engine",
            "onnx",
            "--quiet",
        ]
    )
    printed = capsys.readouterr().out
    assert rc == 0 and "threshold 0.45" in printed and "k=5" in printed and "onnx/recipe.json" in printed


def test_predict_measure_writes_the_measurements_of_the_masks_it_wrote(model_dir, processed_root, tmp_path, capsys):
    from promptseg.measure import measure_mask

    images = processed_root / "drywall" / "test" / "images"
    out = tmp_path / "o"
    rc = main(
        [
            "predict",
            "--model",
            str(model_dir),
            "--prompt",
            "segment joint tape",
            str(images),
            "--out",
            str(out),
            "--eval-metrics",
            str(tmp_path / "absent.json"),
            "--threshold",
            "0.5",
            "--measure",
            "--mm-per-px",
            "0.5",
            "--quiet",
        ]
    )
    printed = capsys.readouterr().out
    assert rc == 0 and "training labels were boxes" in printed  # a drywall prompt: joints
    data = json.loads((out / "measurements.json").read_text())
    masks = sorted(out.glob("*__segment-joint-tape.png"))
    assert sorted(data) == [p.name for p in masks] and len(masks) >= 3
    for path in masks:
        expected = measure_mask(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE), kind="joint", mm_per_px=0.5)
        assert data[path.name]["image"] == expected["image"] and data[path.name]["kind"] == "joint"
        assert (out / f"{path.stem}_measured.png").exists()
    assert (out / "measurements.csv").read_text().startswith("mask,id,length_px")
