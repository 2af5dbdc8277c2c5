"""Shared fixtures: a tiny processed tree made by the real pipeline (synthetic export -> parser -> masks)."""

import os
import warnings

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
warnings.filterwarnings("ignore", category=FutureWarning)

TINY_MODEL = {
    "source": "small",
    "clipseg": {
        "vision": {
            "hidden_size": 64,
            "num_hidden_layers": 3,
            "num_attention_heads": 2,
            "intermediate_size": 128,
            "patch_size": 16,
        },
        "text": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
        "projection_dim": 32,
        "reduce_dim": 16,
        "extract_layers": [0, 1, 2],
        "decoder_num_attention_heads": 2,
        "per_image_standardization": False,
    },
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
}
TINY_UNET = {
    "widths": [8, 16, 32, 64],
    "freeze_text": False,
    "presence_gate": True,
    "text": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
}
# a whole train.common block (params.yaml's keys, tiny values): settings have no defaults
TINY_COMMON = {
    "seed": 42,
    "image_size": 64,
    "epochs": 3,
    "batch_size": 4,
    "lr": 3e-3,
    "weight_decay": 0.01,
    "warmup_steps": 0,
    "negative_prompt_prob": 0.0,
    "unrelated_negative_prompts": [],
    "unrelated_negative_share": 0.5,
    "dice_weight": 1.0,
    "bce_weight": 1.0,
    "targets": {"cracks": "mask", "drywall": "box_fill"},
    "box_projection": {"outside_weight": 1.0, "pairwise_weight": 0.0},
    "hflip_prob": 0.5,
    "rot90_prob": 0.0,
    "color_jitter": 0.0,
    "adamw": "fused",
    "dataset_repeats": {"cracks": 1, "drywall": 1},
    "num_workers": 0,
    "precision": "fp32",
}
# The ladder's rungs as the tests train them (tiny LoRA: r 4); each test file takes what it needs.
TINY_RUNGS = {
    "full": {"method": "full", "architecture": "clipseg", "datasets": ["cracks", "drywall"]},
    "lora": {
        "method": "lora",
        "architecture": "clipseg",
        "r": 4,
        "alpha": 8,
        "dropout": 0.1,
        "targets": ["q_proj", "v_proj"],
        "train_decoder": True,
        "datasets": ["cracks", "drywall"],
    },
    "unet": {"method": "full", "architecture": "unet", "presence_weight": 0.3, "datasets": ["cracks", "drywall"]},
}
PROMPTS = {
    "cracks": ["segment crack", "segment wall crack"],
    "drywall": ["segment joint tape", "segment drywall seam", "segment taping area"],
}


@pytest.fixture(scope="session")
def processed_root(tmp_path_factory):
    """data/processed-like tree for both datasets: 8 train, 4 val, 4 test images of 128 px each."""
    from promptseg.ingest.exports import read_export
    from promptseg.ingest.masks import build_processed_dataset
    from promptseg.ingest.synthetic import write_synthetic_export

    root = tmp_path_factory.mktemp("pipeline")
    for dataset in ("cracks", "drywall"):
        raw = root / "raw" / dataset
        write_synthetic_export(
            dataset, raw, seed=3, image_size=128, counts={"train": 8, "valid": 4, "test": 4}, negative_share=0.1
        )
        build_processed_dataset(read_export(raw), root / "processed" / dataset)
    return root / "processed"


def tiny_train_settings(
    rung: str,
    rung_params: dict,
    common: dict | None = None,
    model: dict | None = None,
    mlflow: dict | None = None,
    empty_score: float = 1.0,
):
    """TrainSettings as the train stage builds them, from small dicts (validated like params.yaml)."""
    from promptseg.settings import MlflowSettings, build, check_rung_against_model, model_settings, resolve_rung

    resolved = resolve_rung(rung, rung_params, {**TINY_COMMON, **(common or {})})
    model_cfg = model_settings({"model": model or {**TINY_MODEL, "unet": TINY_UNET}}, resolved.architecture)
    check_rung_against_model(resolved, model_cfg)
    from promptseg.settings import TrainSettings

    return TrainSettings(
        resolved,
        model_cfg,
        {d: tuple(p) for d, p in PROMPTS.items()},
        empty_score,
        None if mlflow is None else build(MlflowSettings, mlflow, "mlflow"),
    )


def tiny_eval_config(**changes):
    """promptseg.score.evaluate.EvalConfig with params.yaml's evaluation values (the settings have no defaults of
    their own), ``changes`` replacing fields of ``infer`` or ``eval`` by name; ``morphology`` (bool), ``kernel``,
    ``tile_upscale`` and ``tile_overlap`` reach into the nested settings."""
    import dataclasses

    from promptseg.score.evaluate import EvalConfig
    from promptseg.settings import EvalSettings, InferSettings, MorphologySettings, TilingSettings

    infer = InferSettings(
        batch_size=16,
        threshold_grid=(0.5,),
        morphology=MorphologySettings(enabled=True, kernel=3),
        hflip_tta=False,
        prompt_ensemble=False,
        tiled={},
        tiling=TilingSettings(upscale=1.0, overlap=0.25),
        precision="fp32",
        native_resolution={},
        mask_shape={},
        strip_length=0.125,
        boxes_switching_limit=0.25,
    )
    ev = EvalSettings(
        boundary_tolerance_px=2,
        empty_score=1.0,
        figure_images=3,
        unrelated_prompts=(),
        measure_inference_options=False,
        paraphrases={},
        missing_test_split="report_val",
        worst_images=4,
    )
    nested = {
        "morphology": lambda v: {"morphology": dataclasses.replace(infer.morphology, enabled=v)},
        "kernel": lambda v: {"morphology": dataclasses.replace(infer.morphology, kernel=v)},
        "tile_upscale": lambda v: {"tiling": dataclasses.replace(infer.tiling, upscale=v)},
        "tile_overlap": lambda v: {"tiling": dataclasses.replace(infer.tiling, overlap=v)},
    }
    infer_names = {f.name for f in dataclasses.fields(InferSettings)}
    for key, value in changes.items():
        if key in nested:
            infer = dataclasses.replace(infer, **nested[key](value))
        elif key in infer_names:
            infer = dataclasses.replace(infer, **{key: value})
        else:
            ev = dataclasses.replace(ev, **{key: value})
    return EvalConfig(infer, ev)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """An untrained tiny CLIPSeg saved like models/<rung> (weights + processor + promptseg.json); read-only
    for the tests that share it (copy it before changing anything)."""
    import json

    from promptseg.modeling.clipseg import build_small_model

    d = tmp_path_factory.mktemp("model") / "tiny"
    model, processor = build_small_model(TINY_MODEL, 64, 0)
    model.save_pretrained(d)
    processor.save_pretrained(d)
    (d / "promptseg.json").write_text(json.dumps({"rung": "tiny", "prompts": PROMPTS}))
    return d


def copy_repository(dest):
    """The repository's tracked files (as committed or staged) and untracked, not ignored ones, plus the vendored
    BPE, copied into ``dest`` without the pipeline's generated ``dvc.lock`` and ``metrics/`` (a fresh run)."""
    import shutil
    import subprocess
    from pathlib import Path

    repo, dest = Path(__file__).resolve().parents[1], Path(dest)
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, files):
        if (repo / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo / name, dest / name)
    shutil.copytree(repo / "vendor", dest / "vendor")
    for generated in ("dvc.lock", "metrics"):
        path = dest / generated
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    return dest


def write_tiny_pipeline_params(repo, *, add_clipseg_rungs: bool = False, drop_rungs=()) -> None:
    """The pipeline tests' tiny profile, written to ``repo/params.yaml``: 12 synthetic images per dataset at 96 px
    (6 train + 2 copies, 3 val, 3 test), the tiny CLIPSeg and U-Net, every rung 1 epoch at 64 px.
    ``add_clipseg_rungs``: the CLIPSeg rungs the default ladder leaves out, appended as profiles/clipseg-small.yaml
    adds them (LoRA at r 2); ``drop_rungs``: rungs taken out of the ladder."""
    from pathlib import Path

    import yaml

    from promptseg.profiles import params_with_profiles

    repo = Path(repo)
    params = params_with_profiles(*(["clipseg-small"] if add_clipseg_rungs else []), params_path=repo / "params.yaml")
    if add_clipseg_rungs:
        params["train"]["rungs"]["lora"]["r"] = 2
    params["synthetic"].update(image_size=96, counts={"train": 6, "valid": 3, "test": 3})
    params["model"] = {**params["model"], **TINY_MODEL, "unet": dict(TINY_UNET)}
    params["train"]["common"].update(image_size=64, epochs=1, batch_size=4, warmup_steps=0)
    for rung in drop_rungs:
        params["train"]["rungs"].pop(rung)
    for rung in params["train"]["rungs"].values():
        for key in ("epochs", "image_size"):
            rung.pop(key, None)
    params["data"]["drywall"]["source"] = "synthetic"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def predict_argv(model, *inputs, out, prompt: str = "segment crack", extra=()) -> list[str]:
    """``promptseg predict`` arguments: the model folder, one prompt, the input files or folders, the output
    folder, then ``extra`` options."""
    return ["predict", "--model", str(model), "--prompt", prompt, *(str(i) for i in inputs), "--out", str(out), *extra]
