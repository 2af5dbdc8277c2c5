"""bf16 on the CPU: each rung's training step against the bf16 peak, and U-Net inference on 640 px photos.

    .venv/bin/python benchmarks/bf16.py [--rungs decoder,lora,full,unet] [--steps 5] [--threads 2]

1. The bf16 peak: torch bf16 matmul, 2048 x 2048 (``flops.matmul_gflops``), and fp32 for comparison.
2. Per rung (params.yaml's sizes, its image size, ``train.common.batch_size``, random inputs): the FLOPs of
   one training step (forward + backward, ``FlopCounterMode``: matmuls, convolutions, attention), the
   median seconds of a step (forward under bf16 autocast, BCE + Dice on float logits, backward, AdamW) and
   of the same step in fp32, and the achieved share of the bf16 matmul rate.
3. The U-Net (params.yaml's ``model.unet``, random weights: speed does not depend on them) predicting
   640 x 640 photos at their own size (``promptseg.infer.native``) in torch fp32 and bf16, and the same forward
   exported to ONNX at 640 px in onnxruntime (fp32); batch 1, images/s including pre- and post-processing.
``--agreement models/unet``: instead, per-image IoU of bf16 vs fp32 masks of that trained rung on the test
images. The machine is shared: the load average is printed with every figure.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flops import matmul_gflops  # noqa: E402

warnings.filterwarnings("ignore")


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def train_step_share(rung: str, params: dict, steps: int, peak: float) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from promptseg.modeling.precision import autocast
    from promptseg.modeling.registry import apply_method, build_model, segmentation_logits
    from promptseg.settings import train_settings
    from promptseg.train.loop import make_optimizer
    from promptseg.train.losses import bce_dice_loss

    settings = train_settings(params, rung).rung  # typed, with the rung's overrides of train.common
    size, batch = settings.train.image_size, settings.train.batch_size
    base, processor = build_model(train_settings(params, rung).model, size, 0, settings.architecture, settings.method)
    module = apply_method(base, settings.method, settings.lora).train()
    optimizer = make_optimizer(
        module, settings.train, settings.text_lr, settings.encoder_lr
    )  # training's AdamW (train.common.adamw)
    pixels, targets = torch.randn(batch, 3, size, size), (torch.rand(batch, size, size) > 0.9).float()
    tokens = processor.tokenizer(
        ["segment crack", "segment joint tape"] * (batch // 2), padding=True, return_tensors="pt"
    )

    def step(precision: str):
        with autocast(precision, "cpu"):
            logits = segmentation_logits(module, pixels, tokens["input_ids"], tokens["attention_mask"])
        loss = bce_dice_loss(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    with FlopCounterMode(display=False) as counter:
        step("fp32")
    flops = counter.get_total_flops()
    times = {"fp32": [], "bf16": []}
    step("bf16")
    for _ in range(steps):  # interleaved: the load drifts
        for precision in times:
            started = time.perf_counter()
            step(precision)
            times[precision].append(time.perf_counter() - started)
    fp32, bf16 = statistics.median(times["fp32"]), statistics.median(times["bf16"])
    return {
        "rung": rung,
        "size": size,
        "batch": batch,
        "gflop": flops / 1e9,
        "fp32_s": fp32,
        "bf16_s": bf16,
        "share": flops / bf16 / 1e9 / peak,
        "load": load(),
    }


def predict_640(params: dict, rounds: int) -> list[tuple[str, float, str]]:
    from promptseg.infer.onnx_engine import _make_session, export_onnx, logits_module, preprocess, sigmoid
    from promptseg.infer.recipe import Recipe
    from promptseg.infer.torch_engine import TorchSegmenter
    from promptseg.modeling.unet import build_unet_model

    model, processor = build_unet_model(params["model"], int(params["train"]["rungs"]["unet"]["image_size"]), 0)
    trained = TorchSegmenter(model, processor, {})
    photos = [np.random.default_rng(i).integers(0, 256, (640, 640, 3), dtype=np.uint8) for i in range(rounds)]
    results = []
    for precision in ("fp32", "bf16"):
        native = Recipe(native_resolution=True, batch_size=1, precision=precision)
        trained.probabilities(photos[:1], ["segment crack"], native)  # warm-up
        started = time.perf_counter()
        for photo in photos:
            trained.probabilities([photo], ["segment crack"], native)
        results.append((f"torch {precision}", len(photos) / (time.perf_counter() - started), load()))
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(
            logits_module(model), Path(tmp) / "unet640.onnx", image_size=640, tokenizer=processor.tokenizer
        )
        session = _make_session(path, threads=torch.get_num_threads(), optimization="all")
        tokens = processor.tokenizer(["segment crack"], return_tensors="np")
        mean, std = processor.image_processor.image_mean, processor.image_processor.image_std

        def run(photo):
            feeds = {
                "pixel_values": preprocess(photo, 640, mean, std)[None],
                "input_ids": tokens["input_ids"].astype(np.int64),
                "attention_mask": tokens["attention_mask"].astype(np.int64),
            }
            return sigmoid(session.run(["logits"], feeds)[0][0])

        run(photos[0])
        started = time.perf_counter()
        for photo in photos:
            run(photo)
        results.append(("onnx fp32 (exported at 640 px)", len(photos) / (time.perf_counter() - started), load()))
    return results


def agreement(model_dir: str, params: dict) -> None:
    """Per-image IoU of bf16 vs fp32 masks of a trained rung on data/processed test images, every prompt of
    each dataset, at the threshold its evaluation chose (metrics/eval/<rung>.json), with infer.morphology."""
    import json

    from promptseg.images import load_split
    from promptseg.infer.torch_engine import load_trained_model
    from promptseg.metrics import postprocess_probabilities
    from promptseg.params import DATASETS

    trained = load_trained_model(model_dir)
    scores = json.loads((Path("metrics/eval") / f"{Path(model_dir).name}.json").read_text())
    morph = params["infer"]["morphology"]
    print(
        f"\n| {model_dir}: dataset | threshold | pairs | min IoU | share >= 0.99 | mean IoU | load |\n|---|---:|---:|---:|---:|---:|---|"
    )
    for dataset in DATASETS:
        data, threshold = load_split(Path("data/processed"), dataset, "test"), scores[dataset]["threshold"]
        ious = []
        for prompt in params["data"][dataset]["prompts"]:
            masks = {}
            for precision in ("fp32", "bf16"):
                probs = trained.whole_image_probabilities(data.images, [prompt] * len(data.images), precision=precision)
                masks[precision] = [
                    postprocess_probabilities(p, threshold, morphology=morph["enabled"], kernel_size=morph["kernel"])
                    > 0
                    for p in probs
                ]
            for a, b in zip(masks["fp32"], masks["bf16"]):
                union = (a | b).sum()
                ious.append(1.0 if union == 0 else float((a & b).sum() / union))
        ious = np.array(ious)
        print(
            f"| {dataset} | {threshold} | {len(ious)} | {ious.min():.4f} | {(ious >= 0.99).mean():.0%} | {ious.mean():.4f} | {load()} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rungs", default="decoder,lora,full,unet")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--images", type=int, default=6, help="640 px photos per engine")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--agreement", metavar="MODEL_DIR", help="only: bf16 vs fp32 masks of a trained rung")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from promptseg.params import load_params

    params = load_params()
    if args.agreement:
        agreement(args.agreement, params)
        return
    fp32_peak, peak = matmul_gflops(), matmul_gflops(dtype=torch.bfloat16)
    print(
        f"matmul 2048, {args.threads} threads: fp32 {fp32_peak:.0f} GFLOP/s, bf16 {peak:.0f} GFLOP/s (load {load()})\n"
    )
    if args.rungs:
        print(
            "| rung | px | batch | GFLOP / step | fp32 step (s) | bf16 step (s) | speed-up | share of bf16 peak | load |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
        for rung in args.rungs.split(","):
            r = train_step_share(rung, params, args.steps, peak)
            print(
                f"| {r['rung']} | {r['size']} | {r['batch']} | {r['gflop']:.1f} | {r['fp32_s']:.3f} | {r['bf16_s']:.3f} "
                f"| {r['fp32_s'] / r['bf16_s']:.2f}x | {r['share']:.0%} | {r['load']} |",
                flush=True,
            )
    if args.images:
        print("\n| U-Net predict, 640 x 640 at its own size, batch 1 | images/s | load |\n|---|---:|---|")
        for name, per_s, at in predict_640(params, args.images):
            print(f"| {name} | {per_s:.2f} | {at} |", flush=True)


if __name__ == "__main__":
    main()
