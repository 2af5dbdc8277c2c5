"""python -m promptseg.score.outside: an outside export, leak-checked against the sample's exports, scored with the
recipe evaluation recorded (exact IoU/Dice from a tiny model whose output is a known constant), and bad input."""

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from promptseg.infer.recipe import Recipe, scored_model
from promptseg.score.outside import main

from conftest import PROMPTS, TINY_MODEL
from fixtures_exports import coco_ann, coco_image, rf_name, write_coco_split, write_garbage

PARAMS = str(Path(__file__).resolve().parents[1] / "params.yaml")
W, H = 64, 48  # 3,072 pixels


def blocks(seed: int) -> np.ndarray:
    """A 64x48 image of 8-px grey blocks: plenty of structure for the dhash and the detail thumbnail."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(H // 8, W // 8), dtype=np.uint8)
    return cv2.cvtColor(cv2.resize(small, (W, H), interpolation=cv2.INTER_NEAREST), cv2.COLOR_GRAY2BGR)


def write_export(root: Path, split: str, items: list[tuple]) -> Path:
    """``items``: (file name, seed or an image array, [x, y, w, h] boxes, extra name or None); JPEG quality 95."""
    images = [coco_image(i, name, W, H, extra) for i, (name, _, _, extra) in enumerate(items)]
    anns = []
    for i, (_, _, boxes, _) in enumerate(items):
        for box in boxes:
            anns.append(coco_ann(len(anns) + 1, i, bbox=box))
    folder = write_coco_split(root, split, images, anns)
    for name, pixels, _, _ in items:  # the fixture writer seeds by index: give every photo its own pixels
        image = blocks(pixels) if isinstance(pixels, int) else pixels
        assert cv2.imwrite(str(folder / name), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return Path(root)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """The sample's export (excluded) and an outside export holding 3 images of 2 photos outside it, one truncated
    image, one photo shared by name, one near-duplicate (the same pixels re-encoded: another file) and a copy of
    that one."""
    root = tmp_path_factory.mktemp("outside")
    sample = write_export(
        root / "sample",
        "valid",
        [(rf_name("shared", 9), 109, [[0, 0, 10, 10]], None), (rf_name("other", 8), 108, [[0, 0, 10, 10]], None)],
    )
    near_copy = cv2.imread(str(sample / "valid" / rf_name("other", 8)))
    outside = write_export(
        root / "outside",
        "test",
        [
            (rf_name("wallA", 1), 1, [[0, 0, 32, 24]], None),  # 768 px: IoU 0.25 when all is lit
            (rf_name("wallA", 2), 2, [[0, 0, 64, 24]], None),  # the same photo, another copy: 1,536 px, 0.5
            (rf_name("wallB", 3), 3, [[0, 0, 16, 12]], None),  # 192 px: 0.0625
            (rf_name("x", 4), 4, [[0, 0, 8, 8]], "shared.jpg"),  # extra.name: the sample's photo 'shared'
            (rf_name("dupe", 5), near_copy, [[0, 0, 8, 8]], None),  # other's pixels, re-encoded below
            (rf_name("dupe", 6), 6, [[0, 0, 8, 8]], None),  # a copy (by name) of the near-duplicate
            (rf_name("wallD", 7), 7, [[0, 0, 8, 8]], None),
        ],
    )
    cv2.imwrite(str(outside / "test" / rf_name("dupe", 5)), near_copy, [cv2.IMWRITE_JPEG_QUALITY, 70])  # another file
    truncated = outside / "test" / rf_name("wallD", 7)  # listed and kept, cut short: skipped when decoded, named
    truncated.write_bytes(truncated.read_bytes()[:400])
    write_garbage(outside / "test" / rf_name("wallC", 7))  # not listed: counted as a read problem, not scored
    assert (outside / "test" / rf_name("dupe", 5)).read_bytes() != (sample / "valid" / rf_name("other", 8)).read_bytes()
    return {"sample": sample, "outside": outside}


@pytest.fixture(scope="module")
def constant_model(tmp_path_factory):
    """A tiny CLIPSeg whose logits are log(0.6 / 0.4) everywhere (the decoder's last layer: zero weights, that
    bias): probability 0.6 on every pixel, whatever the image and the prompt."""
    import torch

    from promptseg.modeling.clipseg import build_small_model

    d = tmp_path_factory.mktemp("model") / "tiny"
    model, processor = build_small_model(TINY_MODEL, 64, 0)
    last = model.decoder.transposed_convolution[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(math.log(0.6 / 0.4))
    model.save_pretrained(d)
    processor.save_pretrained(d)
    (d / "promptseg.json").write_text(json.dumps({"rung": "tiny", "prompts": PROMPTS}))
    return d


def eval_file(path: Path, model_dir: Path, threshold: float, *, rung: str = "tiny") -> Path:
    recipe = Recipe(threshold=threshold, morphology=False, batch_size=2).to_dict()  # 2: three chunks of kept images
    data = {"drywall": {"threshold": threshold, "recipe": recipe}, "scored_model": scored_model(model_dir, rung)}
    path.write_text(json.dumps(data))
    return path


def run(exports, model_dir, out, *extra):
    return main(
        [
            "--model",
            str(model_dir),
            "--dataset",
            "drywall",
            "--export",
            str(exports["outside"]),
            "--exclude",
            str(exports["sample"]),
            "--out",
            str(out),
            "--params",
            PARAMS,
            *extra,
        ]
    )


def test_outside_photos_are_leak_checked_grouped_and_scored_exactly(exports, constant_model, tmp_path, capsys):
    evals = eval_file(tmp_path / "tiny.json", constant_model, 0.5)
    out = tmp_path / "metrics" / "outside" / "tiny_drywall.json"
    assert run(exports, constant_model, out, "--eval-metrics", str(evals)) == 0
    result = json.loads(out.read_text())
    leaks = result["leak_check"]
    assert [(d["image"], d["by"]) for d in leaks["dropped_images"]] == [
        (f"outside/test/{rf_name('x', 4)}", "name"),
        (f"outside/test/{rf_name('dupe', 5)}", "hash"),
        (f"outside/test/{rf_name('dupe', 6)}", "group"),
    ]
    matches = [d["match"] for d in leaks["dropped_images"]]
    assert f"source photo 'shared': sample/valid/{rf_name('shared', 9)}" == matches[0]
    assert (
        matches[1].startswith("near-duplicate (dhash distance ")
        and f"of sample/valid/{rf_name('other', 8)}" in matches[1]
    )
    assert f"of outside/test/{rf_name('dupe', 5)}, dropped by hash" in matches[2]
    assert (leaks["outside_images"], leaks["kept"], leaks["kept_source_photos"]) == (7, 4, 3)
    assert (leaks["dropped_by_name"], leaks["dropped_by_hash"], leaks["dropped_by_group"]) == (1, 1, 1)
    assert (leaks["dhash_max_distance"], leaks["min_correlation"]) == (6, 0.8)  # params.yaml's masks.near_duplicates
    assert result["read_problems"]["export"] == {"unlisted_image": 1}
    assert rf_name("wallC", 7) in result["read_problems"]["export_messages"][0]
    assert result["photos"] == {
        "wallA": [f"outside/test/{rf_name('wallA', 1)}", f"outside/test/{rf_name('wallA', 2)}"],
        "wallB": [f"outside/test/{rf_name('wallB', 3)}"],
    }
    assert (result["images"], result["source_photos"]) == (3, 2)
    assert result["skipped"] == {"truncated_image": 1} and result["render_counts"] == {}
    assert len(result["problems"]) == 1 and rf_name("wallD", 7) in result["problems"][0]
    assert result["recipe"]["threshold"] == 0.5 and result["eval_metrics"] == str(evals)
    # every pixel lit (p = 0.6 > 0.5): IoU = the box's share of the image, Dice = 2 IoU / (1 + IoU)
    ious = [0.25, 0.5, 0.0625]
    dices = [2 * v / (1 + v) for v in ious]
    assert list(result["prompts"]) == PROMPTS["drywall"]  # every prompt of the dataset (params.yaml)
    for scores in [*result["prompts"].values(), result["all_prompts"]]:
        assert scores["miou"] == pytest.approx(np.mean(ious), abs=1e-12)
        assert scores["dice"] == pytest.approx(np.mean(dices), abs=1e-12)
        assert scores["micro_iou"] == pytest.approx(2496 / 9216, abs=1e-12)
        # per source photo: wallA's two copies weigh as one photo
        assert scores["photo_miou"] == pytest.approx(((0.25 + 0.5) / 2 + 0.0625) / 2, abs=1e-12)
        assert scores["photo_dice"] == pytest.approx(((dices[0] + dices[1]) / 2 + dices[2]) / 2, abs=1e-12)
    rows = [r for r in result["per_image"] if r["prompt"] == "segment drywall seam"]
    assert [(r["photo"], round(r["iou"], 12)) for r in rows] == [("wallA", 0.25), ("wallA", 0.5), ("wallB", 0.0625)]
    line = capsys.readouterr().out
    assert (
        "4 of 7 images" in line
        and "3 scored" in line
        and "1 dropped by name, 1 by hash, 1 by group" in line
        and "2 source photos" in line
    )


def test_the_recipe_threshold_from_evaluation_is_the_one_applied(exports, constant_model, tmp_path):
    evals = eval_file(tmp_path / "tiny.json", constant_model, 0.7)  # p = 0.6 is below it: nothing lit
    out = tmp_path / "o.json"
    assert run(exports, constant_model, out, "--eval-metrics", str(evals)) == 0
    result = json.loads(out.read_text())
    assert result["all_prompts"]["miou"] == 0.0 and result["all_prompts"]["dice"] == 0.0
    assert {r["iou"] for r in result["per_image"]} == {0.0}


def test_bad_input_is_one_message_naming_the_path_and_the_fix(exports, constant_model, tmp_path, capsys, monkeypatch):
    evals = eval_file(tmp_path / "tiny.json", constant_model, 0.5)
    out = tmp_path / "o.json"

    missing = tmp_path / "no-such-export"
    rc = main(["--model", str(constant_model), "--dataset", "drywall", "--export", str(missing), "--out", str(out),
               "--params", PARAMS])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and f"--export {missing} is not a folder" in err and "Traceback" not in err

    rc = run(exports, tmp_path / "no-model", out, "--eval-metrics", str(evals))
    err = capsys.readouterr().err
    assert rc == 2 and f"model folder {tmp_path / 'no-model'} not found" in err

    monkeypatch.chdir(tmp_path)  # the default recipe file, metrics/eval/tiny.json, is not there
    rc = run(exports, constant_model, out)
    err = capsys.readouterr().err
    assert rc == 2 and f"no recipe for {constant_model}: {Path('metrics/eval/tiny.json')} not found" in err
    assert "dvc repro evaluate@tiny" in err and "--eval-metrics" in err

    other = eval_file(tmp_path / "other.json", constant_model, 0.5, rung="full")  # scored another rung
    rc = run(exports, constant_model, out, "--eval-metrics", str(other))
    err = capsys.readouterr().err
    assert rc == 2 and "was scored on rung 'full'" in err and "re-run `dvc repro evaluate@tiny`" in err

    everything = write_export(tmp_path / "all-in-sample", "test", [(rf_name("other", 1), 108, [[0, 0, 8, 8]], None)])
    rc = main(["--model", str(constant_model), "--dataset", "drywall", "--export", str(everything), "--exclude",
               str(exports["sample"]), "--out", str(out), "--params", PARAMS, "--eval-metrics", str(evals)])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and f"no image of {everything} is left after the exclusion" in err and "1 by name" in err
    assert not out.exists()
