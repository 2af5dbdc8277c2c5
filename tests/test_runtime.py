"""promptseg.score.runtime (stage runtime@<rung>) and the report's runtime table."""

import json

import numpy as np
import pytest
from test_report import BASELINES, DATA, EVAL, TRAIN, row, section

from promptseg.score import runtime
from promptseg.score.report import build_report


def test_best_rates_warms_up_once_then_keeps_each_paths_fastest_round(monkeypatch):
    clock, calls = [0.0], []
    durations = {"a": iter([9.0, 2.0, 4.0]), "b": iter([9.0, 5.0, 1.0])}  # warm-up, round 1, round 2

    def path(name):
        def run(warmup):
            calls.append((name, warmup))
            clock[0] += next(durations[name])

        return run

    monkeypatch.setattr(runtime.time, "perf_counter", lambda: clock[0])
    rates = runtime.best_rates({"a": path("a"), "b": path("b")}, n_images=4, rounds=2)
    assert rates == {"a": 4 / 2.0, "b": 4 / 1.0}
    assert calls == [("a", True), ("b", True), ("a", False), ("b", False), ("a", False), ("b", False)]


def test_folder_mb_and_peak_rss(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.bin").write_bytes(b"x" * 1500)
    (tmp_path / "sub" / "b.bin").write_bytes(b"x" * 500)
    assert runtime.folder_mb(tmp_path) == 2000 / 1e6
    assert runtime.folder_mb(tmp_path / "a.bin") == 1500 / 1e6
    before = runtime.peak_rss_mb()
    block = np.ones(40_000_000, np.uint8)  # 40 MB touched
    assert runtime.peak_rss_mb() >= before and runtime.peak_rss_mb() > 40 and block.sum() == 40_000_000


def test_measure_runtime_on_a_tiny_saved_model(tmp_path, processed_root):
    from promptseg.modeling.clipseg import build_small_model

    from conftest import PROMPTS, TINY_MODEL

    model_dir = tmp_path / "tiny"
    model, processor = build_small_model(TINY_MODEL, 64, 0)
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    (model_dir / "promptseg.json").write_text(json.dumps({"rung": "tiny", "prompts": PROMPTS}))
    images, prompts = runtime.runtime_images(processed_root, PROMPTS, 3)
    assert len(images) == 3 and prompts == ["segment crack", "segment joint tape", "segment crack"]
    figures = runtime.measure_runtime(model_dir, images, prompts, rounds=1, batch_size=2, threads=1, onnx=True)
    assert figures["images"] == 3 and figures["threads"] == 1 and figures["device"] == "cpu"
    assert figures["model_mb"] == round(runtime.folder_mb(model_dir), 3) > 0
    assert not (model_dir / "onnx").exists()  # exported to a temporary folder, never into the model folder
    assert 0 < figures["torch_ms_per_image"] < 60_000 and 0 < figures["onnx_ms_per_image"] < 60_000
    check = figures["onnx_check"]  # the export's check, recorded: an untrained tiny model exports to within 1e-5
    assert 0 <= check["max_probability_difference"] < 1e-5 and 0 <= check["max_logit_difference"] < 1e-4
    assert 0 <= check["mask_difference_share"] < 1e-3
    assert figures["peak_rss_onnx_mb"] >= figures["peak_rss_mb"] > 0 and figures["onnx_mb"] > 0
    with pytest.raises(ValueError, match="no images to time"):
        runtime.measure_runtime(model_dir, [], [], onnx=False)


def test_report_runtime_table():
    timings = {
        "lora": {
            "images": 6,
            "threads": 2,
            "batch_size": 16,
            "device": "cpu",
            "torch_ms_per_image": 41.26,
            "onnx_ms_per_image": 20.04,
            "model_mb": 36.71,
            "onnx_mb": 35.2,
            "peak_rss_mb": 712.4,
            "peak_rss_onnx_mb": 801.6,
        },
        "zeroshot": {"skipped": "no pretrained weights"},
    }
    text = build_report(DATA, TRAIN, EVAL, BASELINES, model_source="small", rungs=["lora", "full"], runtime=timings)
    table = section(text, "runtime and footprint")
    assert row(table, "lora")[1:] == ["41.3", "20.0", "36.7", "35.2", "712", "802", "6", "cpu, 2 threads, batch 16"]
    assert "no metrics/runtime/full.json yet" in table
    assert "runtime and footprint" not in build_report(
        DATA, TRAIN, EVAL, BASELINES, model_source="small", rungs=["lora"]
    )
