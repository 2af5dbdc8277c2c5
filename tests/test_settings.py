"""Typed settings: params.yaml validated once per stage; every rung resolves; stages exit with one message."""

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from promptseg.params import ParamsError
from promptseg.profiles import apply_profile, load_profile, params_with_profiles
from promptseg.settings import (
    download_settings,
    evaluate_settings,
    resolve_rung,
    train_settings,
    validate_params,
    zeroshot_skip_reason,
)

ROOT = Path(__file__).resolve().parents[1]


def params():
    """params.yaml with the CLIPSeg rungs its default ladder leaves out (profiles/clipseg-small.yaml adds them)."""
    return params_with_profiles("clipseg-small", params_path=ROOT / "params.yaml")


def test_params_yaml_and_every_profile_validate():
    validate_params(params())
    for profile in sorted(p.stem for p in (ROOT / "profiles").glob("*.yaml")):
        validate_params(apply_profile(params(), load_profile(profile, ROOT / "profiles")))


def test_a_typo_names_the_nearest_key():
    p = params()
    p["data"]["cracks"]["sorce"] = "local"
    with pytest.raises(ParamsError, match=r"^data\.cracks\.sorce: unknown key; did you mean 'source'\?$"):
        download_settings(p, "cracks")
    p = params()
    p["train"]["rungs"]["unet"]["presence_weigth"] = 0.3
    with pytest.raises(
        ParamsError, match=r"train\.rungs\.unet\.presence_weigth: unknown key; did you mean 'presence_weight'"
    ):
        train_settings(p, "unet")
    p = params()
    p["infer"]["morphology"]["kernal"] = 3
    with pytest.raises(ParamsError, match=r"infer\.morphology\.kernal: unknown key; did you mean 'kernel'"):
        evaluate_settings(p)
    with pytest.raises(ParamsError, match=r"params\.evall: unknown key; did you mean 'eval'"):
        validate_params({**params(), "evall": {}})


def test_a_missing_key_and_a_wrong_type_are_named():
    p = params()
    del p["data"]["cracks"]["source"]
    with pytest.raises(ParamsError, match=r"^data\.cracks\.source: missing key"):
        download_settings(p, "cracks")
    p = params()
    del p["train"]["common"]["warmup_steps"]
    with pytest.raises(ParamsError, match=r"^train\.common\.warmup_steps: missing key"):
        train_settings(p, "full")
    p = params()
    p["train"]["common"]["batch_size"] = "eight"
    with pytest.raises(ParamsError, match=r"^train\.common\.batch_size: expected an integer, got 'eight'"):
        train_settings(p, "full")
    p = params()
    p["data"]["cracks"]["source"] = "kaggle"
    with pytest.raises(
        ParamsError, match=r"^data\.cracks\.source: 'kaggle' is not one of 'synthetic', 'local', 'roboflow'"
    ):
        download_settings(p, "cracks")
    p = params()
    del p["train"]["rungs"]["lora"]["alpha"]
    with pytest.raises(ParamsError, match=r"^train\.rungs\.lora\.alpha: missing key"):
        train_settings(p, "lora")


def test_a_renamed_key_names_its_new_name():
    """params.yaml files written before the ladder's steps were called rungs everywhere still say `variants`."""
    p = params()
    p["train"]["variants"] = p["train"].pop("rungs")
    with pytest.raises(ParamsError, match=r"^train\.variants: renamed; call it train\.rungs \(same contents\)$"):
        train_settings(p, "unet")
    with pytest.raises(ParamsError, match=r"^train\.variants: renamed; call it train\.rungs"):
        validate_params(p)


def test_every_rung_resolves_with_its_overrides_of_train_common():
    p = params()
    common = p["train"]["common"]
    for name, raw in p["train"]["rungs"].items():
        rung = train_settings(p, name).rung
        for key in ("epochs", "lr", "image_size", "batch_size", "seed"):
            assert getattr(rung.train, key) == raw.get(key, common[key]), (name, key)
        assert rung.datasets == tuple(raw["datasets"]) and rung.method == raw["method"]
        assert (rung.lora is not None) == (raw["method"] == "lora")
        assert rung.text_lr == raw.get("text_lr") and rung.presence_weight == raw.get("presence_weight")
    unet = train_settings(p, "unet")
    assert (unet.rung.train.lr, unet.rung.text_lr, unet.rung.train.image_size) == (0.002, 0.0003, 224)
    assert unet.model.clipseg is None and unet.model.unet is not None  # reads only its own architecture's block
    assert train_settings(p, "zeroshot").rung.epochs == 0
    assert zeroshot_skip_reason("zeroshot", "clipseg", "small") and not zeroshot_skip_reason("zeroshot", "clipseg", "x")


def test_a_gated_unet_needs_presence_weight_and_only_lora_takes_lora_keys():
    p = params()
    p["model"]["unet"]["presence_gate"] = True
    del p["train"]["rungs"]["unet"]["presence_weight"]
    with pytest.raises(ParamsError, match=r"train\.rungs\.unet\.presence_weight: missing key"):
        train_settings(p, "unet")
    with pytest.raises(ParamsError, match=r"train\.rungs\.full\.r: only a method: lora rung"):
        resolve_rung("full", {**params()["train"]["rungs"]["full"], "r": 4}, params()["train"]["common"])


def _stage(tmp_path, script, *args, mutate):
    p = copy.deepcopy(params())
    mutate(p)
    (tmp_path / "stages").mkdir(exist_ok=True)
    (tmp_path / "stages" / script).write_text((ROOT / "stages" / script).read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, f"stages/{script}", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "script,args,mutate,message",
    [
        (
            "download.py",
            ["cracks"],
            lambda p: p["data"]["cracks"].update(sorce="local"),
            "download@cracks: params.yaml: data.cracks.sorce: unknown key; did you mean 'source'?",
        ),
        (
            "masks.py",
            ["drywall"],
            lambda p: p["masks"].pop("min_box_side_px"),
            "masks@drywall: params.yaml: masks.min_box_side_px: missing key; add it",
        ),
        (
            "train.py",
            ["unet"],
            lambda p: p["train"]["common"].update(lr="fast"),
            "train@unet: params.yaml: train.common.lr: expected a number, got 'fast'",
        ),
        (
            "evaluate.py",
            ["full"],
            lambda p: p["eval"].update(empty_scor=1.0),
            "evaluate@full: params.yaml: eval.empty_scor: unknown key; did you mean 'empty_score'?",
        ),
        (
            "baselines.py",
            [],
            lambda p: p["report"].update(darkest_share=None),
            "baselines: params.yaml: report.darkest_share: is null; give it a value",
        ),
        (
            "report.py",
            [],
            lambda p: p["eval"].update(boundary_tolerance_px=None),
            "report: params.yaml: eval.boundary_tolerance_px: is null; give it a value",
        ),
        (
            "runtime.py",
            ["unet"],
            lambda p: p["runtime"].update(round=2),
            "runtime@unet: params.yaml: runtime.round: unknown key; did you mean 'rounds'?",
        ),
    ],
)
def test_stages_exit_with_one_message_and_no_traceback(tmp_path, script, args, mutate, message):
    done = _stage(tmp_path, script, *args, mutate=mutate)
    assert done.returncode == 2, done.stderr
    # the last line (transformers may warn on import before it), and nothing else of ours
    assert done.stderr.strip().splitlines()[-1] == message and "Traceback" not in done.stderr + done.stdout


def test_dataset_repeats_take_a_rungs_override_and_name_an_unknown_dataset():
    p = params()
    assert train_settings(p, "hed_full").rung.train.dataset_repeats == {"cracks": 1, "drywall": 1}
    p["train"]["rungs"]["hed_full"]["dataset_repeats"] = {"cracks": 1, "drywall": 3}
    assert train_settings(p, "hed_full").rung.train.dataset_repeats == {"cracks": 1, "drywall": 3}
    assert train_settings(p, "hed_lora").rung.train.dataset_repeats == {"cracks": 1, "drywall": 1}
    p["train"]["rungs"]["hed_full"]["dataset_repeats"] = {"drywal": 3}
    with pytest.raises(
        ParamsError, match=r"train\.rungs\.hed_full\.dataset_repeats\.drywal: unknown key; did you mean"
    ):
        train_settings(p, "hed_full")
    p["train"]["rungs"]["hed_full"]["dataset_repeats"] = {"drywall": 0}
    with pytest.raises(ParamsError, match=r"dataset_repeats\.drywall: 0 is out of range; allowed: >= 1"):
        train_settings(p, "hed_full")


def test_a_params_file_that_is_not_yaml_is_one_message_naming_the_line(tmp_path, capsys):
    """A hand edit that breaks the YAML (a list item after a key given on its line) stops every stage with one line
    naming the file and the place, exit 2, no parser traceback; so does a file that is not a mapping."""
    from promptseg.settings import load_stage_settings, report_settings

    broken = tmp_path / "params.yaml"
    broken.write_text("report:\n  ceiling_radii:\n  bootstrap: {resamples: 10}\n  - 1\n  - 2\n")
    with pytest.raises(SystemExit) as stop:
        load_stage_settings("report", report_settings, path=broken)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"report: {broken} is not valid YAML at line 4, column 3: expected <block end>, but found '-'; "
        "fix the file there."
    ]
    broken.write_text("- just a list\n")
    with pytest.raises(SystemExit):
        load_stage_settings("report", report_settings, path=broken)
    assert "must be a mapping of sections" in capsys.readouterr().err
