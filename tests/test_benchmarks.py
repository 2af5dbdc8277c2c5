"""The benchmarks that issue 23's figures come from (train_step.py, bf16.py, inference_engines.py, flops.py) run
end to end on a tiny setup. Nothing here is timed: the tests are there so that a change to the settings, the
training code or the engines that breaks a benchmark fails in `make test`. Three benchmarks broke unnoticed
after one such change."""

import importlib.util
import re
from pathlib import Path

import pytest
import torch
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
    tiny models and 64 px U-Net views), data/processed (the tiny fixture tree), profiles/ and the vendored BPE."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["model"]["clipseg"] = TINY_MODEL["clipseg"]
    params["model"]["unet"] = TINY_UNET
    params["train"]["common"].update(image_size=64, batch_size=4)
    params["train"]["rungs"]["unet"].update(image_size=64, crop={"size": 64, "share": 0.0})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "processed").symlink_to(processed_root)
    (tmp_path / "vendor").symlink_to(ROOT / "vendor")
    (tmp_path / "profiles").symlink_to(ROOT / "profiles")  # the benchmarks add the CLIPSeg rungs from a profile
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


def test_bf16_benchmark_shares_and_640_px_rows_on_the_tiny_unet(tiny_repository):
    bf16 = _benchmark("bf16")
    params = yaml.safe_load((tiny_repository / "params.yaml").read_text())
    row = bf16.train_step_share("unet", params, 1, peak=100.0)
    assert row["rung"] == "unet" and row["size"] == 64 and row["batch"] == 4
    assert row["gflop"] > 0 and row["fp32_s"] > 0 and row["bf16_s"] > 0 and row["share"] > 0
    engines = bf16.predict_640(params, rounds=1)
    assert [name for name, _, _ in engines] == ["torch fp32", "torch bf16", "onnx fp32 (exported at 640 px)"]
    assert all(rate > 0 for _, rate, _ in engines)


def test_inference_engines_benchmark_rows_and_onnx_agreement(tiny_repository, monkeypatch, tmp_path, capsys):
    engines = _benchmark("inference_engines")
    monkeypatch.setitem(engines.PLAN, "small", {**engines.PLAN["small"], "images": 4, "rounds": 1})
    params = yaml.safe_load((tiny_repository / "params.yaml").read_text())
    params["synthetic"]["image_size"] = 96
    rows = engines.bench_model("small", params, tmp_path / "models", threads=1, extras=False)
    assert [r["path"] for r in rows] == [
        "naive loop (processor + library forward, per image)",
        "torch predict_probabilities, batch 16",
        "onnx OnnxSegmenter, batch 1",
        "onnx OnnxSegmenter, batch 16",
    ]
    assert rows[0]["speedup"] == 1.0 and all(r["rate"] > 0 for r in rows)
    printed = capsys.readouterr().out
    diff = float(re.search(r"max \|p_onnx - p_torch\| on 8 images: (\S+)$", printed, re.M).group(1))
    assert diff < 1e-4  # the exported graph computes the torch engine's probabilities
    assert "ONNX engine at batch 1" in printed


def test_flops_benchmark_rates():
    flops = _benchmark("flops")
    assert flops.matmul_gflops(n=64, products=2) > 0
    assert flops.matmul_gflops(n=64, products=2, dtype=torch.bfloat16) > 0
    assert flops.conv_gflops("bf16", shape=(2, 8, 16, 16), calls=1) > 0
