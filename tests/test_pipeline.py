"""`dvc repro` end to end in a temporary copy of the repository, on tiny params."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import copy_repository, write_tiny_pipeline_params

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SECRET = "rf_" + "TEST_SECRET_never_logged_" + str(6 * 7)  # assembled, so this file does not contain it


def run(args, cwd, **env):
    full_env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        "HF_HUB_OFFLINE": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        **env,
    }
    full_env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory):
    """The tracked files of this repository (as committed or staged) plus the vendored BPE, with tiny params."""
    dest = copy_repository(tmp_path_factory.mktemp("repo"))
    # the CLIPSeg rungs as profiles/clipseg-small.yaml adds them, so the DVC path runs every architecture; the
    # pretrained VGG16 is the slowest model here: hed_decoder and hed_full are covered by test_hed
    write_tiny_pipeline_params(dest, add_clipseg_rungs=True, drop_rungs=("hed_decoder", "hed_full"))
    run(["git", "init", "-q"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base"], dest)
    return dest


def test_data_stages_run_then_do_nothing_the_second_time(repo_copy):
    run(["dvc", "repro", "masks@cracks", "masks@drywall"], repo_copy, ROBOFLOW_API_KEY=SECRET)
    for dataset in ("cracks", "drywall"):
        summary = json.loads((repo_copy / "metrics" / "data" / f"{dataset}.json").read_text())
        split = summary["split"]
        assert (
            split["as_exported"]["train"]["images"] == 8 and split["as_exported"]["val"]["images"] == 3
        )  # 6 + 2 copies
        assert sum(summary[s]["images"] for s in ("train", "val", "test")) == 14
        assert all(v["leak_by_group"] == 0 for v in split["written"].values())  # grouped: no photo in two splits
        assert any((repo_copy / "data" / "processed" / dataset / "train" / "masks").glob("*.png"))
    again = run(["dvc", "repro", "masks@cracks", "masks@drywall"], repo_copy)
    assert "didn't change" in again and "Running stage" not in again


def test_whole_pipeline_and_metrics_diff_after_a_param_change(repo_copy):
    run(["dvc", "repro"], repo_copy, ROBOFLOW_API_KEY=SECRET)
    report = (repo_copy / "metrics" / "report.md").read_text()
    assert "segment wall crack" in report and "segment taping area" in report
    assert json.loads((repo_copy / "metrics" / "eval" / "zeroshot.json").read_text()).keys() == {"skipped"}
    # the pretrained HED rungs: the pinned weights recorded, scored like every rung, in the report's own table
    for rung in ("hed_zeroshot", "hed_lora"):
        trained = json.loads((repo_copy / "metrics" / "train" / f"{rung}.json").read_text())
        assert trained["pretrained_weights"]["h5_sha256"].startswith("4502df9d0a88")
    assert json.loads((repo_copy / "metrics" / "train" / "hed_zeroshot.json").read_text())["trainable_params"] == 0
    assert "pretrained HED-VGG16 rungs" in report
    for rung in ("decoder", "lora", "full", "hed_zeroshot", "hed_lora", "unet"):
        scores = json.loads((repo_copy / "metrics" / "eval" / f"{rung}.json").read_text())
        assert set(scores["cracks"]["test"]["prompts"]) == {"segment crack", "segment wall crack"}
        assert set(scores["drywall"]["test"]["prompts"]) == {
            "segment joint tape",
            "segment drywall seam",
            "segment taping area",
        }
        for dataset in ("cracks", "drywall"):
            for prompt_scores in scores[dataset]["test"]["prompts"].values():
                assert all(0.0 <= v <= 1.0 for k, v in prompt_scores.items() if k != "images")
    # per-image scores (skipped zeroshot: the header alone) and the worst-image galleries the report links
    per_image = (repo_copy / "metrics" / "eval" / "per_image" / "unet.csv").read_text().splitlines()
    unet = json.loads((repo_copy / "metrics" / "eval" / "unet.json").read_text())
    from promptseg.infer.recipe import weights_sha256

    assert unet["scored_model"] == {"rung": "unet", "weights_sha256": weights_sha256(repo_copy / "models" / "unet")}
    scored = [unet[d][s] for d in ("cracks", "drywall") for s in ("val", "test") if s in unet[d]]
    assert len(per_image) == 1 + sum(b["images"] * len(b["prompts"]) for b in scored)  # header + image x prompt
    assert len((repo_copy / "metrics" / "eval" / "per_image" / "zeroshot.csv").read_text().splitlines()) == 1
    for rung in ("zeroshot", "unet"):
        for dataset in ("cracks", "drywall"):
            assert (repo_copy / "metrics" / "eval" / "figures" / f"{rung}_{dataset}_worst.png").stat().st_size > 100
    assert "(eval/figures/unet_cracks_worst.png)" in report
    summary = json.loads((repo_copy / "metrics" / "summary.json").read_text())  # the headline
    assert set(summary) == {"cracks", "drywall", "train_minutes"}
    assert {"decoder", "lora", "full", "unet", "no_learning"} <= set(summary["cracks"])
    assert set(json.loads((repo_copy / "metrics" / "eval" / "baselines.json").read_text())) == {
        "cracks",
        "drywall",
        "scored_splits",
    }
    from promptseg.machine import cpu_model

    for folder in ("train", "eval", "runtime"):  # every metrics file names the machine that made it
        facts = json.loads((repo_copy / "metrics" / folder / "unet.json").read_text())["machine"]
        assert facts["cpu"] == cpu_model() and all(isinstance(v, str) for v in facts.values())
    assert unet["machine"]["precision"] == unet["precision"]
    timing = json.loads((repo_copy / "metrics" / "runtime" / "unet.json").read_text())
    assert timing["torch_ms_per_image"] > 0 and timing["onnx_ms_per_image"] > 0 and timing["model_mb"] > 0
    assert "runtime and footprint" in report
    # DVCLive's per-epoch series: the combined chart has each trained rung's 1 epoch at step 0, the per-rung
    # folders render (the skipped zeroshot's header-only series too: no error), with the val overlay
    plots_json = repo_copy.parent / "plots.json"
    run(["sh", "-c", f"dvc plots show --json > {plots_json}"], repo_copy)
    plots = json.loads(plots_json.read_text())
    # (the chart also names hed_decoder and hed_full, whose rungs this test removed: their files are absent)
    errors = [e for e in plots.get("errors", []) if "metrics/train" in e["source"]]
    assert not [e for e in errors if "hed_decoder" not in e["source"] and "hed_full" not in e["source"]], errors
    rows = plots["data"]["val_dice_per_epoch"][0]["content"]["data"]["values"]
    assert sorted((r["filename"].split("/plots/")[0].split("/")[-1], r["step"]) for r in rows) == [
        ("hed_lora", "0"),
        ("hed_zeroshot", "0"),  # the untrained edge map's val Dice, one point
        ("unet", "0"),
    ]  # the combined chart draws the default ladder; the added CLIPSeg rungs keep their stage-level plots
    assert "metrics/train/unet/plots/images/val_overlay/0.png" in plots["data"]
    from mlflow.tracking import MlflowClient

    registry = MlflowClient(f"sqlite:///{repo_copy / 'mlflow.db'}")
    assert {m.name for m in registry.search_registered_models()} == {
        f"promptseg-{v}" for v in ("decoder", "lora", "full", "hed_zeroshot", "hed_lora", "unet")
    }
    unet_run = registry.search_runs(
        [e.experiment_id for e in registry.search_experiments()], "tags.rung = 'unet'", max_results=1
    )[0]
    assert unet_run.data.tags["machine.cpu"] == unet_run.data.tags["eval_machine.cpu"] == cpu_model()
    run(["git", "add", "-A"], repo_copy)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "run"], repo_copy)
    # the secret that was in the environment during `dvc repro` is nowhere in what it wrote
    for path in repo_copy.rglob("*"):
        if path.is_file() and ".git" not in path.parts and path.stat().st_size < 5_000_000:
            assert SECRET.encode() not in path.read_bytes(), path
    run(["dvc", "repro", "-s", "evaluate@lora"], repo_copy)
    params = yaml.safe_load((repo_copy / "params.yaml").read_text())
    params["infer"]["threshold_grid"] = [0.99]
    (repo_copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = run(["dvc", "status"], repo_copy)
    assert "evaluate@lora" in status and "train@lora" not in status and "masks@cracks" not in status
    run(["dvc", "repro", "evaluate@lora"], repo_copy)
    diff = run(["dvc", "metrics", "diff", "--md"], repo_copy)
    assert "metrics/eval/lora.json" in diff and "cracks.threshold" in diff
    assert "machine." not in diff  # the same machine: its facts (strings) are not in the diff
