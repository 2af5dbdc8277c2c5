"""One inference recipe: `promptseg predict` writes the masks evaluation wrote, for several recipes and both engines."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from promptseg.infer.recipe import Recipe, load_recipe, override
from promptseg.paths import prompt_slug
from promptseg.score.evaluate import evaluate_rung
from promptseg.serve.cli import main

from conftest import PROMPTS, TINY_MODEL, predict_argv, tiny_eval_config

PROMPT = PROMPTS["cracks"][1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """An untrained tiny model saved like models/<rung>, and its ONNX export in <model>/onnx."""
    from promptseg.infer.onnx_engine import export_model_dir
    from promptseg.modeling.clipseg import build_small_model

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
    from promptseg.images import load_split
    from promptseg.infer.tiling import predict_probabilities_tiled
    from promptseg.infer.torch_engine import load_trained_model

    data, trained = load_split(processed_root, "cracks", "test"), load_trained_model(model_dir)
    prompts = [PROMPT] * len(data.images)
    probs = {
        "single pass": trained.whole_image_probabilities(data.images, prompts),
        "tiled": predict_probabilities_tiled(trained, data.images, prompts, upscale=TILE_UPSCALE, hflip_tta=True),
    }
    return {k: float(np.round(np.median(np.concatenate([p.ravel() for p in v])), 4)) for k, v in probs.items()}


def _predict(model, images, out, eval_json, engine):
    """`promptseg predict` of PROMPT on a folder with a recipe file and an engine; its exit code."""
    return main(
        predict_argv(
            str(model),
            str(images),
            out=str(out),
            prompt=PROMPT,
            extra=["--eval-metrics", str(eval_json), "--engine", engine, "--quiet"],
        )
    )


TILE_UPSCALE = 1.5  # 128 px test photos at 192 px: 4 x 4 tiles of the model's 64 px
RECIPES = {
    "default": {},
    "kernel5": {"kernel": 5},
    "no_morphology": {"morphology": False},
    "hflip_tta": {"hflip_tta": True},
    "boxes": {"mask_shape": {"cracks": "boxes"}, "kernel": 5},  # what a 5 x 5 opening leaves, filled to boxes
    # the same, each horizontal and vertical run of at least 0.05 x 128 px (7 px) boxed on its own: strip_length
    # travels in the JSON to both engines
    "strips": {"mask_shape": {"cracks": "strips"}, "kernel": 5, "strip_length": 0.05},
    # tiles of the export's size; no opening: the untrained model's tiles at the photo's scale are pixel noise
    "tiled_hflip": {"tiled": {"cracks": True}, "tile_upscale": TILE_UPSCALE, "hflip_tta": True, "morphology": False},
}


@pytest.mark.parametrize("name", list(RECIPES))
def test_predict_writes_the_masks_evaluation_wrote(name, model_dir, processed_root, mid_threshold, tmp_path, capsys):
    from promptseg.infer.torch_engine import load_trained_model

    mid_threshold = mid_threshold["tiled" if "tiled" in RECIPES[name] else "single pass"]
    cfg = tiny_eval_config(threshold_grid=(mid_threshold,), **RECIPES[name])
    results, _ = evaluate_rung(
        load_trained_model(model_dir), processed_root, {"cracks": PROMPTS["cracks"]}, cfg, tmp_path / "predictions"
    )
    eval_json = tmp_path / "tiny.json"
    eval_json.write_text(json.dumps(results, indent=2) + "\n")  # as stages/evaluate.py writes it
    recipe = results["cracks"]["recipe"]  # the settings' recipe, field for field, with the val threshold
    assert recipe == Recipe.from_settings(cfg.infer, "cracks", threshold=mid_threshold).to_dict()
    assert recipe["threshold"] == mid_threshold and recipe["kernel"] == RECIPES[name].get("kernel", 3)
    assert recipe["tiled"] == ("tiled" in RECIPES[name])
    assert recipe["boxes"] == ("mask_shape" in RECIPES[name])

    evaluated = sorted((tmp_path / "predictions" / "cracks" / "test").glob(f"*__{prompt_slug(PROMPT)}.png"))
    assert len(evaluated) >= 3
    lit = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE).mean() / 255 for p in evaluated]
    assert 0.002 < np.mean(lit) < 0.998  # not trivial masks (a 5x5 opening leaves about 1% of this noise)

    for engine in ("torch", "onnx"):
        out = tmp_path / f"out_{engine}"
        rc = _predict(model_dir, processed_root / "cracks" / "test" / "images", out, eval_json, engine)
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
        predict_argv(
            str(model_dir),
            str(image),
            out=str(tmp_path / "o"),
            prompt=PROMPT,
            extra=[
                "--eval-metrics",
                str(eval_json),
                "--kernel-size",
                "3",
                "--boxes",
                "--hflip-tta",
                "--native-resolution",
                "--quiet",
            ],
        )
    )
    printed = capsys.readouterr().out
    assert rc == 0
    assert "overridden by flags: kernel 3, boxes True, hflip_tta True, native_resolution True" in printed
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


@pytest.fixture(scope="module")
def unet_dir(tmp_path_factory):
    """An untrained tiny U-Net saved like models/unet (config, weights, processor, promptseg.json) and its ONNX
    export in <model>/onnx."""
    from promptseg.infer.onnx_engine import export_model_dir
    from promptseg.modeling.unet import build_unet_model

    from conftest import TINY_UNET

    d = tmp_path_factory.mktemp("unet") / "unet"
    model, processor = build_unet_model({**TINY_MODEL, "unet": TINY_UNET}, 64, 0)
    model.save_pretrained(d)
    processor.save_pretrained(d)
    (d / "promptseg.json").write_text(json.dumps({"rung": "unet", "architecture": "unet", "prompts": PROMPTS}))
    export_model_dir(d)
    return d


def test_a_native_resolution_recipe_is_refused_on_a_unet_export_and_resized_on_a_clipseg_one(
    unet_dir, model_dir, processed_root, tmp_path, capsys
):
    """A U-Net's ONNX export is traced at one size: it refuses a whole-photo-at-its-own-size recipe it would not
    follow. A CLIPSeg resizes on the torch engine too (evaluation did), so its export runs the recipe, with the
    torch engine's masks. (A tiled recipe runs on both: test_predict_writes_the_masks_evaluation_wrote.)"""
    images = processed_root / "cracks" / "test" / "images"
    eval_json = tmp_path / "native.json"
    recipe = Recipe(threshold=0.5, morphology=False, native_resolution=True)
    eval_json.write_text(json.dumps({"cracks": {"threshold": 0.5, "recipe": recipe.to_dict()}}))

    assert _predict(unet_dir, images, tmp_path / "unet_onnx", eval_json, "onnx") == 2
    assert "at its own size" in capsys.readouterr().err
    assert _predict(unet_dir, images, tmp_path / "unet_torch", eval_json, "torch") == 0

    for engine in ("onnx", "torch"):
        assert _predict(model_dir, images, tmp_path / f"clipseg_{engine}", eval_json, engine) == 0
    written = sorted((tmp_path / "clipseg_torch").glob("*.png"))
    assert len(written) >= 3
    for path in written:
        theirs = cv2.imread(str(tmp_path / "clipseg_onnx" / path.name), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), theirs), path.name


def test_the_app_on_engine_auto_runs_a_unet_native_recipe_on_torch(unet_dir, processed_root, tmp_path):
    """`promptseg app` (engine auto) picks the ONNX export, and switches to PyTorch for a recipe the export cannot
    run: the page gets the torch engine's mask and says why, instead of an error."""
    from promptseg.images import load_split
    from promptseg.infer.torch_engine import load_trained_model
    from promptseg.serve.app import load_app_model, segment

    image = load_split(processed_root, "cracks", "test").images[0]
    path = tmp_path / "wall.png"
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    recipe = Recipe(threshold=0.5, morphology=False, native_resolution=True)
    eval_json = tmp_path / "native.json"
    eval_json.write_text(json.dumps({"cracks": {"threshold": 0.5, "recipe": recipe.to_dict()}}))

    app = load_app_model(unet_dir, engine="auto", eval_path=eval_json, images=tmp_path, threads=2)
    assert app.engine_name == "onnx"
    shown = segment(app, str(path), PROMPT, 0.5, 0.5, None, tmp_path / "out")
    assert "error" not in shown, shown.get("error")
    assert "engine torch (the recipe runs the photo at its own size" in shown["summary"]
    expected = load_trained_model(unet_dir).masks([image], PROMPT, recipe)[0]
    assert np.array_equal(shown["mask"], expected)
    assert json.loads(Path(shown["json_path"]).read_text())["engine"] == "torch"

    strict = load_app_model(unet_dir, engine="onnx", eval_path=eval_json, images=tmp_path, threads=2)
    assert "at its own size" in segment(strict, str(path), PROMPT, 0.5, 0.5, None, tmp_path / "o2")["error"]


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
    rc = _predict(copy, processed_root / "cracks" / "test" / "images", tmp_path / "o", tmp_path / "absent.json", "onnx")
    printed = capsys.readouterr().out
    assert rc == 0 and "threshold 0.45" in printed and "k=5" in printed and "onnx/recipe.json" in printed


def test_predict_measure_writes_the_measurements_of_the_masks_it_wrote(model_dir, processed_root, tmp_path, capsys):
    from promptseg.serve.measure import measure_mask

    images = processed_root / "drywall" / "test" / "images"
    out = tmp_path / "o"
    rc = main(
        predict_argv(
            str(model_dir),
            str(images),
            out=str(out),
            prompt="segment joint tape",
            extra=[
                "--eval-metrics",
                str(tmp_path / "absent.json"),
                "--threshold",
                "0.5",
                "--measure",
                "--mm-per-px",
                "0.5",
                "--quiet",
            ],
        )
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
