"""Runtime and footprint of one trained rung, measured: ``metrics/runtime/<rung>.json`` (stage ``runtime@<rung>``).

Per rung, on a handful of processed test images (each with its dataset's first prompt):

- ``torch_ms_per_image``: ``Segmenter.probabilities`` with the plain recipe (the ``promptseg predict`` /
  evaluation path: preprocessing, forward, upsampling to the image's own size) at ``infer.batch_size``;
- ``onnx_ms_per_image``: the same images through :class:`promptseg.infer.onnx_engine.OnnxSegmenter` (``--engine onnx``)
  when ``runtime.onnx`` is on; the graph is exported (``export_model_dir``, checked against PyTorch) to a
  temporary folder, never into the model folder (a DVC output);
- ``onnx_check``: how far the export's outputs are from PyTorch's on the check's inputs (the largest
  probability and logit differences, the share of mask pixels that differ at threshold 0.5;
  :func:`promptseg.infer.onnx_engine.compare_outputs`); the export fails above the probability tolerance;
- ``machine``: the machine facts (promptseg.machine: CPU, oneDNN's instruction set, versions, threads);
- ``model_mb``: the model folder's size on disk (every file; MB = 10^6 bytes), ``onnx_mb``: the ONNX graph's;
- ``peak_rss_mb``: the process's peak resident memory after loading the model and running the torch path
  (interpreter and libraries included: what a one-model inference process needs), and ``peak_rss_onnx_mb``
  after the ONNX path too; with CUDA, ``peak_cuda_mb``: ``torch.cuda.max_memory_allocated``.

Timing follows ``benchmarks/inference_engines.py`` (:func:`best_rates` is shared with it): one untimed warm-up
call per path, then ``rounds`` interleaved rounds; each path's fastest round counts (this machine is shared).
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from promptseg.images import list_split, read_rgb
from promptseg.infer.engines import load_segmenter
from promptseg.infer.onnx_engine import export_model_dir
from promptseg.infer.recipe import Recipe
from promptseg.machine import MACHINE_KEY, machine_facts
from promptseg.paths import write_json

__all__ = ["best_rates", "folder_mb", "peak_rss_mb", "measure_runtime", "runtime_images"]


def best_rates(paths: dict[str, Callable[[bool], None]], n_images: int, rounds: int) -> dict[str, float]:
    """Images/s of each path: one untimed warm-up call each (``fn(warmup=True)``), then ``rounds`` rounds that
    time every path once in turn (interleaved, so a burst of load from elsewhere hits all paths alike); the
    fastest round counts (the least disturbed one)."""
    for fn in paths.values():
        fn(warmup=True)
    best = {name: float("inf") for name in paths}
    for _ in range(rounds):
        for name, fn in paths.items():
            started = time.perf_counter()
            fn(warmup=False)
            best[name] = min(best[name], time.perf_counter() - started)
    return {name: n_images / seconds for name, seconds in best.items()}


def folder_mb(path: Path) -> float:
    """Total size of the files under ``path`` in MB (10^6 bytes)."""
    path = Path(path)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MB (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e6 if sys.platform == "darwin" else peak * 1024 / 1e6


def runtime_images(processed_root: Path, prompts: dict[str, list[str]], count: int) -> tuple[list, list[str]]:
    """The first ``count`` test images, alternating datasets (``prompts`` order), each with its dataset's first
    prompt; an unreadable image is skipped and named."""
    queues = {d: [img for img, _ in list_split(Path(processed_root), d, "test")] for d in prompts}
    images, chosen = [], []
    while len(images) < count and any(queues.values()):
        for dataset, queue in queues.items():
            if queue and len(images) < count:
                path = queue.pop(0)
                try:
                    images.append(read_rgb(path))
                except ValueError as exc:
                    print(f"[runtime] skipped {exc}")
                    continue
                chosen.append(prompts[dataset][0])
    return images, chosen


def measure_runtime(
    model_dir: Path,
    images: list[np.ndarray],
    prompts: list[str],
    *,
    rounds: int = 3,
    batch_size: int = 16,
    threads: int | None = None,
    onnx: bool = True,
) -> dict:
    """The figures of this module's docstring for one model folder on ``images`` (one prompt each): the plain
    recipe (resize, no tiles, no flip) at ``batch_size`` on each engine."""
    if not images:
        raise ValueError("no images to time: the processed test splits are empty (run `dvc repro masks`)")
    if threads:
        torch.set_num_threads(int(threads))
    model_dir = Path(model_dir)
    recipe = Recipe(batch_size=batch_size)
    trained = load_segmenter(model_dir, "torch")

    def torch_path(warmup: bool) -> None:
        n = min(2, len(images)) if warmup else len(images)
        trained.probabilities(images[:n], prompts[:n], recipe)

    torch_rate = best_rates({"torch": torch_path}, len(images), rounds)["torch"]
    out = {
        "images": len(images),
        "rounds": int(rounds),
        "batch_size": int(batch_size),
        "threads": int(torch.get_num_threads()),
        "device": str(trained.device),
        MACHINE_KEY: machine_facts(recipe.precision, str(trained.device)),  # what made these timings
        "torch_ms_per_image": round(1000.0 / torch_rate, 2),
        "model_mb": round(folder_mb(model_dir), 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    if trained.device.type == "cuda":
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 1e6, 1)
    if onnx:
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            export_dir = export_model_dir(model_dir, Path(tmp) / "onnx")
            out["onnx_export_s"] = round(time.perf_counter() - started, 2)
            check = json.loads((export_dir / "promptseg_onnx.json").read_text())["check"]
            out["onnx_check"] = {  # onnxruntime vs PyTorch on the export check's inputs (mask at threshold 0.5)
                "max_probability_difference": check["max_probability_difference"],
                "max_logit_difference": check["max_logit_difference"],
                "mask_difference_share": check["mask_difference_share"]["default"],
            }
            engine = load_segmenter(export_dir, "onnx", threads=threads)

            def onnx_path(warmup: bool) -> None:
                n = min(2, len(images)) if warmup else len(images)
                engine.probabilities(images[:n], prompts[:n], recipe)

            onnx_rate = best_rates({"onnx": onnx_path}, len(images), rounds)["onnx"]
            out.update(
                onnx_ms_per_image=round(1000.0 / onnx_rate, 2),
                onnx_mb=round(folder_mb(export_dir / "model.onnx"), 3),
                peak_rss_onnx_mb=round(peak_rss_mb(), 1),
            )
    return out


def write_runtime(out_path: Path, figures: dict) -> None:
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_json(out_path, figures)
