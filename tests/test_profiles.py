"""The paper profile: overrides of params.yaml, the dvc -S flags, and a fast clear failure offline."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from promptseg.params import ParamsError, load_params
from promptseg.profiles import apply_profile, dvc_set_flags, flatten_overrides, load_profile, profile_changes

ROOT = Path(__file__).resolve().parents[1]


def paper_params():
    return apply_profile(load_params(ROOT / "params.yaml"), load_profile("paper", ROOT / "profiles"))


def test_paper_profile_sets_the_reports_configuration():
    p = paper_params()
    assert p["model"]["source"] == "CIDAS/clipseg-rd64-refined"
    common = p["train"]["common"]
    assert (
        common["image_size"],
        common["epochs"],
        common["batch_size"],
        common["lr"],
        common["weight_decay"],
        common["seed"],
    ) == (352, 40, 4, 1e-4, 0.01, 42)
    lora = p["train"]["rungs"]["lora"]
    assert (lora["r"], lora["alpha"], lora["dropout"], lora["targets"], lora["train_decoder"]) == (
        16,
        32,
        0.05,
        ["q_proj", "v_proj"],
        False,
    )
    full = p["train"]["rungs"]["full"]
    assert full["datasets"] == ["cracks"]
    # a rung's own schedule overrides train.common, so the profile must set it for the rung too
    assert (full.get("epochs", common["epochs"]), full.get("lr", common["lr"])) == (40, 1e-4)
    clipseg = {n: v for n, v in p["train"]["rungs"].items() if v["architecture"] == "clipseg"}
    assert all(v.get("epochs", 40) == 40 and v.get("lr", 1e-4) == 1e-4 for v in clipseg.values()), clipseg
    assert all(
        v.get("image_size", 352) == 352 for n, v in p["train"]["rungs"].items() if v["architecture"] == "clipseg"
    )
    assert p["infer"]["threshold_grid"] == [0.3, 0.4, 0.5, 0.6, 0.7]
    for dataset, (workspace, project, version) in {
        "cracks": ("fyp-ny1jt", "cracks-3ii36", 1),
        "drywall": ("objectdetect-pu6rn", "drywall-join-detect", 2),
    }.items():
        d = p["data"][dataset]
        assert d["source"] == "roboflow" and d["split"] == "as_exported"
        assert (d["roboflow"]["workspace"], d["roboflow"]["project"], d["roboflow"]["version"]) == (
            workspace,
            project,
            version,
        )


def test_only_the_profiles_keys_differ_from_the_default():
    default, paper = load_params(ROOT / "params.yaml"), paper_params()
    differing = {k for k, v in flatten_overrides(paper).items() if flatten_overrides(default).get(k) != v}
    assert differing and differing <= set(flatten_overrides(load_profile("paper", ROOT / "profiles")))


def test_dvc_flags_round_trip_through_the_override_grammar_dvc_uses():
    """Parsed by Hydra's override parser (what `dvc exp run -S` applies), the flags give back the profile: a
    leaf per key params.yaml has, and each rung the profile adds as one `++` (add or override) of its whole body."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = load_params(ROOT / "params.yaml")
    for name in ("paper", "clipseg-small", "real-cpu"):
        overrides = load_profile(name, ROOT / "profiles")
        flags = dvc_set_flags(overrides, params)
        assert flags[0::2] == ["-S"] * (len(flags) // 2)
        assert all(" " not in f for f in flags)
        parsed = OverridesParser.create().parse_overrides(flags[1::2])
        added = {o.key_or_group: o.value() for o in parsed if o.is_force_add()}
        leaves = {o.key_or_group: o.value() for o in parsed if not o.is_force_add()}
        assert not any(o.is_add() or o.is_delete() for o in parsed)
        assert {**leaves, **added} == {k: v for k, v, _ in profile_changes(params, overrides)}
        assert set(added) == {f"train.rungs.{r}" for r in overrides.get("train", {}).get("rungs", {})} - {
            f"train.rungs.{r}" for r in params["train"]["rungs"]
        }
    assert set(added) == set()  # real-cpu (the last) only changes rungs params.yaml has


def test_the_default_ladder_leaves_the_clipseg_rungs_to_the_profiles_that_add_them():
    default = load_params(ROOT / "params.yaml")["train"]["rungs"]
    assert {v["architecture"] for v in default.values()} == {"hed", "unet"}
    for name in ("paper", "clipseg-small"):
        rungs = apply_profile(load_params(ROOT / "params.yaml"), load_profile(name, ROOT / "profiles"))["train"][
            "rungs"
        ]
        assert list(rungs) == [*default, "zeroshot", "decoder", "lora", "full"]  # appended, as dvc exp run does
        assert all(rungs[r]["architecture"] == "clipseg" for r in ("zeroshot", "decoder", "lora", "full"))


def test_a_profile_key_params_lacks_is_an_error():
    with pytest.raises(ParamsError, match="train.common.epochz"):
        apply_profile(load_params(ROOT / "params.yaml"), {"train": {"common": {"epochz": 3}}})
    with pytest.raises(ParamsError, match="known profiles: clipseg-small, paper"):
        load_profile("papr", ROOT / "profiles")
    # a rung params.yaml lacks is a typo unless the profile gives its whole definition
    with pytest.raises(ParamsError, match=r"no rung 'hed_ful'.*method, architecture missing"):
        apply_profile(load_params(ROOT / "params.yaml"), {"train": {"rungs": {"hed_ful": {"epochs": 10}}}})
    with pytest.raises(ParamsError, match=r"no section 'trian'"):
        apply_profile(load_params(ROOT / "params.yaml"), {"trian": {"rungs": {"x": {"method": "full"}}}})


def test_paper_profile_offline_fails_fast_at_download_with_the_roboflow_message(tmp_path):
    shutil.copytree(ROOT / "stages", tmp_path / "stages")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(paper_params()))
    env = {k: v for k, v in os.environ.items() if k != "ROBOFLOW_API_KEY"}
    env["PYTHONPATH"] = str(ROOT / "src")
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "stages/download.py", "drywall"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert time.perf_counter() - started < 30
    assert done.returncode != 0
    assert "ROBOFLOW_API_KEY" in done.stderr and "download@drywall" in done.stderr
    assert not (tmp_path / "data" / "raw" / "drywall").exists()


def test_real_cpu_profile_reads_local_exports_and_changes_only_data_sources_and_the_cpu_rungs():
    overrides = load_profile("real-cpu", ROOT / "profiles")
    real = apply_profile(load_params(ROOT / "params.yaml"), overrides)
    assert real["data"]["cracks"]["source"] == real["data"]["drywall"]["source"] == "local"
    assert real["data"]["cracks"]["local"]["path"] == ""  # the folders come from `make repro-real REAL=...`
    assert {k.split(".")[0] for k in flatten_overrides(overrides)} == {"data", "model", "train"}
    assert all(
        k.startswith(
            (
                "data.cracks.source",
                "data.drywall.source",
                "model.unet.presence_gate",
                "model.hed.presence_gate",
                "train.rungs.unet.",
                "train.rungs.hed_",
                "train.common.",
            )
        )
        for k in flatten_overrides(overrides)
    ), overrides
    assert real["model"]["unet"]["presence_gate"] is True and real["model"]["unet"]["widths"]  # merged, not replaced
    assert real["train"]["rungs"]["unet"]["epochs"] >= 12


def test_params_with_profiles_applies_them_in_order(monkeypatch):
    from promptseg.profiles import params_with_profiles

    monkeypatch.chdir(ROOT)
    both = params_with_profiles("clipseg-small", "paper")
    assert both["train"]["rungs"]["lora"]["train_decoder"] is False  # paper's body replaced clipseg-small's keys
    assert both["train"]["rungs"]["decoder"]["epochs"] == 3  # ... and kept the ones paper's body lacks (as ++ does)
    assert list(params_with_profiles()["train"]["rungs"]) == list(load_params(ROOT / "params.yaml")["train"]["rungs"])


def test_profiles_laid_over_each_other_reach_dvc_once_per_key_the_later_winning(monkeypatch, capsys):
    """`make repro-real PROFILE="real-cpu real-cpu-60min"`: real-cpu's settings, then the 60-minute budget's epochs
    and evaluation precision; each key reaches `dvc exp run` once, with the last profile's value."""
    from promptseg.profiles import load_profiles, main, merge_overrides

    assert merge_overrides({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"b": 5}, "e": 6}) == {
        "a": {"b": 5, "c": 2},
        "d": 3,
        "e": 6,
    }
    budget = load_profile("real-cpu-60min", ROOT / "profiles")
    assert set(flatten_overrides(budget)) <= {f"train.rungs.{r}.epochs" for r in ("unet", "hed_lora", "hed_full")} | {
        "infer.precision"
    }
    layered = load_profiles(["real-cpu", "real-cpu-60min"], ROOT / "profiles")
    assert layered["train"]["rungs"]["hed_lora"] == {"epochs": 4, "image_size": 320}  # real-cpu's size kept
    assert layered["train"]["rungs"]["hed_lora"]["epochs"] == layered["train"]["rungs"]["hed_full"]["epochs"]
    monkeypatch.chdir(ROOT)
    assert main(["real-cpu", "real-cpu-60min"]) == 0
    flags = capsys.readouterr().out.split()
    keys = [f.split("=")[0] for f in flags[1::2]]
    assert len(keys) == len(set(keys)), keys
    assert "train.rungs.hed_full.epochs=4" in flags and "train.rungs.hed_full.epochs=8" not in flags
    assert "data.cracks.source=local" in flags and "infer.precision=bf16" in flags
    assert main(["real-cpu", "real-cpu-6Omin"]) == 2 and "known profiles" in capsys.readouterr().err


def test_a_rung_may_take_its_own_value_of_a_common_setting_and_a_typo_there_is_still_an_error():
    """real-cpu-drywall-x3 shows each drywall photo three times per epoch, but keeps hed_decoder and the U-Net at
    once: the rungs get their own `dataset_repeats` (params.yaml's rungs lack the key), one `++` of the whole value,
    which Hydra parses back to the same mapping and the settings resolve per rung."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from promptseg.profiles import load_profiles
    from promptseg.settings import validate_params

    params = load_params(ROOT / "params.yaml")
    overrides = load_profiles(["real-cpu", "real-cpu-60min", "real-cpu-drywall-x3"], ROOT / "profiles")
    flags = dvc_set_flags(overrides, params)
    assert "++train.rungs.hed_decoder.dataset_repeats={cracks:1,drywall:1}" in flags
    assert "train.common.dataset_repeats.drywall=3" in flags
    parsed = {o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(flags[1::2])}
    assert parsed["train.rungs.unet.dataset_repeats"] == {"cracks": 1, "drywall": 1}
    train = validate_params(apply_profile(params, overrides))["train"]
    assert {r: dict(train[r].rung.train.dataset_repeats) for r in ("hed_decoder", "hed_lora", "hed_full", "unet")} == {
        "hed_decoder": {"cracks": 1, "drywall": 1},
        "hed_lora": {"cracks": 1, "drywall": 3},
        "hed_full": {"cracks": 1, "drywall": 3},
        "unet": {"cracks": 1, "drywall": 1},
    }
    with pytest.raises(ParamsError, match=r"no section .train.rungs.unet.dataset_repeatz"):
        apply_profile(params, {"train": {"rungs": {"unet": {"dataset_repeatz": {"cracks": 1}}}}})
    with pytest.raises(ParamsError, match=r"train.rungs.unet.epochz.*not in params.yaml"):
        apply_profile(params, {"train": {"rungs": {"unet": {"epochz": 3}}}})
