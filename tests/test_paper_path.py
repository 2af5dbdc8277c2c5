"""The paper profile's path (``make repro-paper``) end to end, on every CI run, in about a minute.

What is real: every key of ``profiles/paper.yaml`` as ``python -m promptseg.profiles paper`` prints it and
``dvc exp run -S`` applies it (352 px, batch 4, lr 1e-4, no negative prompts, LoRA without the decoder, the
full rung on cracks only, the inference options measured, the threshold grid, ``split: as_exported``), a
``save_pretrained`` folder in the format of ``CIDAS/clipseg-rd64-refined`` as ``model.source`` (its layout:
vision patch 16, complex transposed convolution, features from vision layers 3, 6 and 9; its processor:
352 px, ImageNet mean/std, bicubic resample 2, the CLIP tokenizer), and Roboflow exports in the official
layouts (cracks: COCO segmentation with train/valid/test and the real quirks; drywall: COCO boxes with
train and valid only, as the official drywall-join-detect v1 and v2 exports are).

What is shrunk (the only keys changed from the profile): the model's widths (vision 32 x 10 layers, text
32 x 2, reduce_dim 16, random weights), the exports' size (a few 96 px images), the data source (``local``
instead of ``roboflow``: no network; the Roboflow landing is tests/test_roboflow_sdk.py), 1 epoch per rung,
the U-Net rung's widths and input (64 px), and the image size: 224 px instead of the paper's 352 (train and
processor alike; the complex transposed convolution restores any multiple of 16). At 352 the tiny model costs
27 ms of CPU per image and prompt against 6 ms at 224, and evaluation predicts about 140 image-prompt pairs per
rung: 352 made the test about 30 s slower on 2 cores for no other path covered.
"""

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import copy_repository
from fixtures_exports import rf_name, write_coco_export

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
IMAGE_SIZE = 224  # the paper's 352, shrunk (module docstring)
VISION = {
    "hidden_size": 32,
    "num_hidden_layers": 10,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "patch_size": 16,
    "image_size": 224,
}
TEXT = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 77,
}
EXTRACT_LAYERS, REDUCE_DIM = [3, 6, 9], 16


def run(args, cwd, **env):
    full_env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        "HF_HUB_OFFLINE": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "OMP_NUM_THREADS": "1",
        **env,
    }  # the tiny model's ops are too small to share; no spinning threads
    full_env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout + done.stderr


def save_pretrained_format_model(folder: Path) -> None:
    """A tiny CLIPSeg of the rd64-refined LAYOUT and its processor, written as a hub download would be."""
    import torch
    from transformers import (
        CLIPSegConfig,
        CLIPSegForImageSegmentation,
        CLIPSegProcessor,
        ViTImageProcessor,
    )

    from promptseg.modeling.clipseg import build_clip_tokenizer, reset_decoder_plain_layers

    torch.manual_seed(0)
    config = CLIPSegConfig(
        text_config=TEXT,
        vision_config=VISION,
        projection_dim=32,
        reduce_dim=REDUCE_DIM,
        extract_layers=EXTRACT_LAYERS,
        decoder_num_attention_heads=2,
        use_complex_transposed_convolution=True,
    )
    model = CLIPSegForImageSegmentation(config)
    reset_decoder_plain_layers(
        model
    )  # a config-built decoder starts at std 1.0 (promptseg.modeling.clipseg); weights are "trained"
    model.save_pretrained(folder)
    image_processor = ViTImageProcessor(
        do_resize=True,
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        resample=2,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=MEAN,
        image_std=STD,
    )
    tokenizer = build_clip_tokenizer(REPO / "vendor" / "clip" / "bpe_simple_vocab_16e6.txt.gz")
    CLIPSegProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)


def crack(i: int, copy: int = 0):
    """A 96 px crack photo with a thin diagonal polygon (flat float list) and its Roboflow name."""
    o = 8 + 6 * i
    return (
        rf_name(f"crack{i:03d}", 100 * i + copy),
        96,
        96,
        [("poly", [o + 0.5, 10.0, o + 4.5, 10.0, o + 40.0, 80.5, o + 36.0, 80.5])],
    )


def write_exports(root: Path) -> tuple[Path, Path]:
    """cracks: COCO segmentation train/valid/test with Roboflow's quirks; drywall: COCO boxes, train + valid only."""
    cracks = root / "cracks-export"
    write_coco_export(
        cracks,
        {
            # two augmented copies of one photo, an empty segmentation with only a bbox, a two-part polygon,
            # an image with no annotation, a box overrunning the image by 1 px
            "train": [
                crack(0),
                crack(0, 1),
                crack(1),
                crack(2),
                (rf_name("crack010", 7), 96, 96, [("empty", [20, 20, 10, 30])]),
                (
                    rf_name("crack011", 8),
                    96,
                    96,
                    [("poly", [[5, 5, 30, 5, 30, 9, 5, 9], [60, 60, 90, 60, 90, 64, 60, 64]])],
                ),
                (rf_name("crack012", 9), 96, 96, []),
                (rf_name("crack013", 10), 96, 96, [("box", [80, 40, 17, 8])]),
            ],
            "valid": [crack(3), crack(4), (rf_name("crack014", 11), 96, 96, [])],
            "test": [crack(5), crack(6), crack(7)],
        },
    )
    drywall = root / "drywall-export"
    boxes = {
        "train": [
            (rf_name(f"2000x1500_{i}_resized", 200 + i), 96, 96, [("box", [10 + 5 * i, 0, 8, 96])]) for i in range(6)
        ],
        "valid": [
            (rf_name(f"2000x1500_{10 + i}_resized", 300 + i), 96, 96, [("box", [30 + 5 * i, 0, 8, 96])])
            for i in range(3)
        ],
    }
    write_coco_export(
        drywall,
        boxes,
        categories=[
            {"id": 0, "name": "drywall-join", "supercategory": "none"},
            {"id": 1, "name": "drywall-join", "supercategory": "drywall-join"},
        ],
    )
    for export in (cracks, drywall):
        (export / "README.roboflow.txt").write_text("exported via roboflow.com\n")
    return cracks, drywall


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory):
    """A copy of the repository, the model folder and the exports; then `dvc exp run` with the paper profile."""
    tmp = tmp_path_factory.mktemp("paper")
    repo = copy_repository(tmp / "repo")
    save_pretrained_format_model(tmp / "clipseg-rd64-layout")
    cracks, drywall = write_exports(tmp)
    run(["git", "init", "-q"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base"], repo)

    profile = run(
        [str(BIN / "python"), "-m", "promptseg.profiles", "paper"], repo, PYTHONPATH=str(repo / "src")
    ).split()
    flags = dict(f.split("=", 1) for f in profile if f != "-S")
    shrunk = {
        "data.cracks.source": "local",
        "data.cracks.local.path": str(cracks),
        "data.drywall.source": "local",
        "data.drywall.local.path": str(drywall),
        "model.source": str(tmp / "clipseg-rd64-layout"),
        "train.common.image_size": str(IMAGE_SIZE),
        "train.common.epochs": "1",
        # the added rungs take train.common's epochs; a key their bodies lack is added with `++` too
        **{f"++train.rungs.{m}.epochs": "1" for m in ("decoder", "lora", "full")},
        "train.rungs.unet.epochs": "1",
        "train.rungs.unet.image_size": "64",
        **{f"train.rungs.hed_{m}.image_size": "64" for m in ("zeroshot", "decoder", "lora", "full")},
        **{f"train.rungs.hed_{m}.epochs": "1" for m in ("decoder", "lora", "full")},
        "model.unet.widths": "[8,16,32,64]",
        "model.unet.text.hidden_size": "32",
        "model.unet.text.num_hidden_layers": "1",
        "model.unet.text.intermediate_size": "64",
    }
    kept = {k: v for k, v in flags.items() if k not in shrunk}
    assert set(flags) - set(kept) == {
        "data.cracks.source",
        "data.drywall.source",
        "model.source",
        "train.common.image_size",
        "train.common.epochs",
    }
    # the profile ADDS the CLIPSeg rungs (one `++` each); the shrunk epochs above are applied after them
    assert [k for k in flags if k.startswith("++")] == [
        f"++train.rungs.{r}" for r in ("zeroshot", "decoder", "lora", "full")
    ]
    args = [a for k, v in {**kept, **shrunk}.items() for a in ("-S", f"{k}={v}")]
    start, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    log = run(["dvc", "exp", "run", "-n", "paper", *args], repo, PYTHONPATH=str(repo / "src"))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return repo, log, (time.perf_counter() - start, after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime)


def test_every_rung_evaluation_and_report_complete(paper_run):
    repo, _, (seconds, cpu_seconds) = paper_run
    print(f"dvc exp run (paper profile, tiny model): {seconds:.1f} s wall, {cpu_seconds:.1f} s CPU")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["data"]["drywall"]["split"] == "as_exported" and params["train"]["common"]["image_size"] == IMAGE_SIZE
    rungs = list(params["train"]["rungs"])
    assert rungs == [
        "hed_zeroshot",
        "hed_decoder",
        "hed_lora",
        "hed_full",
        "unet",
        "zeroshot",
        "decoder",
        "lora",
        "full",
    ]
    for rung in rungs:
        for dataset in ("cracks", "drywall"):
            assert (repo / "metrics" / "eval" / "figures" / f"{rung}_{dataset}.png").stat().st_size > 1000
        scores = json.loads((repo / "metrics" / "eval" / f"{rung}.json").read_text())
        assert "skipped" not in scores
        assert scores["cracks"]["reported_split"] == "test" and scores["cracks"]["test"]["images"] == 3
        assert scores["drywall"]["reported_split"] == "val" and "test" not in scores["drywall"]
        assert scores["drywall"]["val"]["images"] == 3 and "options_val" in scores["drywall"]
    assert not (repo / "data" / "processed" / "drywall" / "test" / "images").exists() or not any(
        (repo / "data" / "processed" / "drywall" / "test" / "images").iterdir()
    )
    assert (repo / "metrics" / "report.md").exists()


def test_zeroshot_scores_the_untouched_pretrained_format_model(paper_run):
    repo, _, _ = paper_run
    train = json.loads((repo / "metrics" / "train" / "zeroshot.json").read_text())
    assert train["trainable_params"] == 0 and train["epochs"] == 0 and "skipped" not in train
    scores = json.loads((repo / "metrics" / "eval" / "zeroshot.json").read_text())
    for prompt_scores in scores["cracks"]["test"]["prompts"].values():
        assert 0.0 <= prompt_scores["dice"] <= 1.0 and prompt_scores["images"] == 3
    report = (repo / "metrics" / "report.md").read_text()
    ladder = report.split("cracks ladder")[1].split("## Table")[0]
    assert any(line.startswith("| zeroshot") and "skipped" not in line for line in ladder.splitlines())


def test_lora_count_follows_the_formula_for_this_shape(paper_run):
    """r * (in + out) for every q_proj and v_proj: vision and text encoder layers, and the decoder's layers."""
    repo, _, _ = paper_run
    r = yaml.safe_load((repo / "params.yaml").read_text())["train"]["rungs"]["lora"]["r"]
    per_layer = lambda width: 2 * r * (width + width)  # q_proj and v_proj are width x width
    expected = (
        VISION["num_hidden_layers"] * per_layer(VISION["hidden_size"])
        + TEXT["num_hidden_layers"] * per_layer(TEXT["hidden_size"])
        + len(EXTRACT_LAYERS) * per_layer(REDUCE_DIM)
    )
    train = json.loads((repo / "metrics" / "train" / "lora.json").read_text())
    assert train["lora_params"] == expected == train["trainable_params"]  # paper: train_decoder false, LoRA only
    full = json.loads((repo / "metrics" / "train" / "full.json").read_text())
    assert full["trainable_params"] == full["total_params"] == train["total_params"] - expected


def test_report_states_drywall_has_no_test_split(paper_run):
    repo, _, _ = paper_run
    report = (repo / "metrics" / "report.md").read_text()
    note = "no test split: threshold chosen on the same images, optimistic"
    assert f"**drywall: reported on val, {note}.**" in report
    assert f"drywall ladder (val split; {note}, mean over prompts)" in report
    assert "cracks ladder (test split, mean over prompts)" in report
