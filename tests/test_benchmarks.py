"""benchmarks/train_step.py runs end to end on a tiny setup. Nothing here is timed: the test is there so
that a change to the settings or the training code that breaks the benchmark fails in `make test`.
Three benchmarks broke unnoticed after one such change."""

import importlib.util
from pathlib import Path

import pytest
import yaml

from conftest import TINY_MODEL, TINY_UNET

ROOT = Path(__file__).resolve().parents[1]


def _benchmark(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def tiny_repository(tmp_path, processed_root, monkeypatch):
    """A working directory the benchmark reads as the repository root: params.yaml (the repository's, with the
    tiny models and 64 px U-Net views), data/processed (the tiny fixture tree) and the vendored BPE."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["model"]["clipseg"] = TINY_MODEL["clipseg"]
    params["model"]["unet"] = TINY_UNET
    params["train"]["common"].update(image_size=64, batch_size=4)
    params["train"]["rungs"]["unet"].update(image_size=64, crop={"size": 64, "share": 0.0})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "processed").symlink_to(processed_root)
    (tmp_path / "vendor").symlink_to(ROOT / "vendor")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_train_step_benchmark_times_every_setting_of_the_unet(tiny_repository):
    train_step = _benchmark("train_step")
    medians = train_step.interleaved("unet", 1)
    settings = [
        "fp32",
        "bf16 contiguous",
        "bf16 channels_last (training)",
        "fp32, for-loop AdamW (training's step until stop 26)",
        "fp32, foreach AdamW",
        "bf16 channels_last, foreach AdamW",
    ]
    assert list(medians) == [f"{s} {kind}" for s in settings for kind in ("model only", "with loader")]
    assert all(seconds > 0 for seconds in medians.values())
    row = train_step.measure("unet", False, 1, "bf16", "channels_last")
    assert row["rung"] == "unet" and row["image_size"] == 64 and row["batch"] == 4
    assert row["trainable"] > 0 and row["model_only_s"] > 0 and row["with_loader_s"] > 0
