"""How much of the machine's matmul rate the forward reaches, eager PyTorch vs the ONNX engine.

    .venv/bin/python benchmarks/flops.py [--models small,rd64] [--threads 2]

1. The machine's fp32 matmul rate: torch, 2048 x 2048 @ 2048 x 2048, ``--threads`` threads (GFLOP/s,
   2 n^3 FLOPs per product, best of 3 timed runs of 10 products); the same in bf16, and a 3x3 convolution
   (8 x 64 x 112 x 112, channels_last) in fp32 and under bf16 autocast (``promptseg.modeling.precision``).
2. The forward FLOPs per image of each model (``torch.utils.flop_counter.FlopCounterMode`` on
   ``promptseg.modeling.registry.segmentation_logits``: it counts matmuls, convolutions and attention, which is
   nearly all the work; elementwise ops are not counted).
3. For eager (``segmentation_logits`` under ``no_grad``) and ONNX (the exported graph in an onnxruntime
   session, ``promptseg.infer.onnx_engine``), the forward alone at batch 1 and 16 on preprocessed inputs:
   images/s and the achieved share = FLOPs per image x images/s / matmul rate. The machine is shared:
   matmul, eager and ONNX are timed in interleaved rounds and each one's best round counts.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference_engines import load_params, quiet, save_and_export  # noqa: E402

warnings.filterwarnings("ignore")
# per model: interleaved rounds at batch 1 and at batch 16 (the fastest round counts)
PLAN = {"small": {1: 10, 16: 4}, "rd64": {1: 3, 16: 2}}


def matmul_gflops(n: int = 2048, products: int = 10, dtype=torch.float32) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(products):
            torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 * products / best / 1e9


def conv_gflops(precision: str = "fp32", shape=(8, 64, 112, 112), calls: int = 3) -> float:
    """A 3x3 convolution (same width in and out, channels_last) in ``precision`` (bf16: under autocast, as
    training runs): GFLOP/s, 2 x N x C_out x H x W x C_in x 9 FLOPs per call, best of 3 timed runs."""
    from promptseg.modeling.precision import autocast

    n, c, h, w = shape
    conv = torch.nn.Conv2d(c, c, 3, padding=1, bias=False)
    x = torch.randn(*shape).contiguous(memory_format=torch.channels_last)
    conv = conv.to(memory_format=torch.channels_last)
    with torch.no_grad(), autocast(precision, "cpu"):
        conv(x)
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            for _ in range(calls):
                conv(x)
            best = min(best, time.perf_counter() - started)
    return 2 * n * c * h * w * c * 9 * calls / best / 1e9


def best_seconds(calls: dict, rounds: int) -> dict:
    """Seconds per call of each entry: a warm-up call each, then ``rounds`` interleaved rounds; the fastest counts."""
    for fn in calls.values():
        fn()
    best = {name: float("inf") for name in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            started = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - started)
    return best


def inputs(processor, image_size: int, batch: int):
    rng = np.random.default_rng(batch)
    pixel_values = rng.standard_normal((batch, 3, image_size, image_size)).astype(np.float32)
    prompts = [("segment crack", "segment drywall seam")[i % 2] for i in range(batch)]
    tokens = processor.tokenizer(prompts, padding=True, return_tensors="np")
    return {
        "pixel_values": pixel_values,
        "input_ids": tokens["input_ids"].astype(np.int64),
        "attention_mask": tokens["attention_mask"].astype(np.int64),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="small,rd64")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    quiet()
    torch.set_num_threads(args.threads)
    from torch.utils.flop_counter import FlopCounterMode

    from promptseg.infer.onnx_engine import OnnxSegmenter
    from promptseg.modeling.registry import segmentation_logits

    params = load_params()
    print(
        f"load average before: {os.getloadavg()[0]:.2f}; torch {torch.__version__}, {args.threads} threads", flush=True
    )
    rate = matmul_gflops()
    print(f"fp32 matmul rate (2048 x 2048, torch, {args.threads} threads): {rate:.0f} GFLOP/s", flush=True)
    print(f"bf16 matmul rate (same, bf16 tensors): {matmul_gflops(dtype=torch.bfloat16):.0f} GFLOP/s", flush=True)
    print(
        f"3x3 conv 8x64x112x112 channels_last: fp32 {conv_gflops('fp32'):.0f} GFLOP/s, "
        f"bf16 autocast {conv_gflops('bf16'):.0f} GFLOP/s (load average {os.getloadavg()[0]:.2f})\n",
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            model, processor, model_dir, _ = save_and_export(name, params, Path(tmp))
            image_size = int(processor.image_processor.size["height"])
            session = OnnxSegmenter(model_dir, threads=args.threads).session
            one = inputs(processor, image_size, 1)
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                segmentation_logits(
                    model, *(torch.from_numpy(one[k]) for k in ("pixel_values", "input_ids", "attention_mask"))
                )
            flops = counter.get_total_flops()
            print(
                f"{name} ({image_size} px, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters): "
                f"{flops / 1e9:.2f} GFLOP per image",
                flush=True,
            )
            for batch in (1, 16):
                feeds = inputs(processor, image_size, batch)
                tensors = [torch.from_numpy(feeds[k]) for k in ("pixel_values", "input_ids", "attention_mask")]

                def eager(tensors=tensors):
                    with torch.no_grad():
                        segmentation_logits(model, *tensors)

                rates: list[float] = []
                best = best_seconds(
                    {
                        "matmul": lambda: rates.append(matmul_gflops(products=3)),
                        "eager": eager,
                        "onnx": lambda feeds=feeds: session.run(["logits"], feeds),
                    },
                    PLAN[name][batch],
                )
                rate = max(rates)  # the matmul rate measured in the same rounds: the least disturbed one
                for engine in ("eager", "onnx"):
                    per_s = batch / best[engine]
                    rows.append((name, image_size, flops, engine, batch, best[engine], per_s, rate))
                    print(
                        f"  {engine} batch {batch}: {best[engine]:.3f} s per call, {per_s:.1f} images/s "
                        f"(matmul {rate:.0f} GFLOP/s)",
                        flush=True,
                    )
    print(f"\nload average after: {os.getloadavg()[0]:.2f}; matmul rate at the end: {matmul_gflops():.0f} GFLOP/s\n")
    print(
        "| model | GFLOP / image | engine | batch | s / call | images/s | achieved GFLOP/s | matmul GFLOP/s (same rounds) "
        "| share of matmul rate |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, size, flops, engine, batch, seconds, per_s, rate in rows:
        achieved = flops * per_s / 1e9
        print(
            f"| {name} ({size} px) | {flops / 1e9:.2f} | {engine} | {batch} | {seconds:.3f} | {per_s:.1f} | "
            f"{achieved:.0f} | {rate:.0f} | {achieved / rate:.0%} |"
        )


if __name__ == "__main__":
    sys.exit(main())
