"""Single-pass vs sliding-window (tiled) inference on one processed split: scores and images/s.

    .venv/bin/python benchmarks/tiled_inference.py --model models/unet --dataset cracks --split test
    .venv/bin/python benchmarks/tiled_inference.py --model models/unet --processed /path/to/data/processed

Both paths use the threshold chosen on val for the dataset (metrics/eval/<rung>.json; --threshold
overrides) and the same open/close; every image is scored with every prompt of the dataset (params.yaml).
Prints a markdown table: mIoU, Dice, boundary F1, clDice, images/s (prediction only, one prompt pass).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from promptseg.images import load_split
from promptseg.infer.tiling import predict_probabilities_tiled
from promptseg.infer.torch_engine import load_trained_model
from promptseg.metrics import postprocess_probabilities, score_masks
from promptseg.params import load_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/unet")
    parser.add_argument("--dataset", default="cracks")
    parser.add_argument("--split", default="test")
    parser.add_argument("--processed", default="data/processed")
    parser.add_argument("--threshold", type=float, default=None)
    parser.add_argument("--upscales", default="1.0", help="comma-separated tiling upscale factors")
    parser.add_argument("--overlap", type=float, default=0.25)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    params = load_params()
    prompts = params["data"][args.dataset]["prompts"]
    trained = load_trained_model(args.model)
    threshold = args.threshold
    if threshold is None:
        eval_path = Path("metrics/eval") / f"{Path(args.model).name}.json"
        threshold = json.loads(eval_path.read_text())[args.dataset]["threshold"] if eval_path.exists() else 0.5
    ev = params["eval"]
    scoring = {"tolerance_px": int(ev["boundary_tolerance_px"]), "empty_score": float(ev["empty_score"]), "thin": True}
    data = load_split(Path(args.processed), args.dataset, args.split)
    n = len(data.images)

    paths = {"single pass": lambda images, ps: trained.whole_image_probabilities(images, ps)}
    for upscale in (float(u) for u in args.upscales.split(",")):
        paths[f"tiled x{upscale:g} (overlap {args.overlap:g})"] = lambda images, ps, u=upscale: (
            predict_probabilities_tiled(trained, images, ps, upscale=u, overlap=args.overlap)
        )
    print(
        f"{args.model} on {args.dataset}/{args.split}: {n} images, {len(prompts)} prompts, threshold {threshold:g}, "
        f"model input {trained.image_size} px, {torch.get_num_threads()} threads\n"
    )
    print("| inference | mIoU | Dice | boundary F1 | clDice | images/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, predict in paths.items():
        scores, seconds = [], 0.0
        for prompt in prompts:
            started = time.perf_counter()
            probs = predict(data.images, [prompt] * n)
            seconds += time.perf_counter() - started
            masks = [postprocess_probabilities(p, threshold) for p in probs]
            scores.append(score_masks(masks, data.truths, **scoring))
        mean = {k: sum(s[k] for s in scores) / len(scores) for k in ("miou", "dice", "boundary_f1", "cl_dice")}
        print(
            f"| {name} | {mean['miou']:.3f} | {mean['dice']:.3f} | {mean['boundary_f1']:.3f} | "
            f"{mean['cl_dice']:.3f} | {n * len(prompts) / seconds:.1f} |"
        )


if __name__ == "__main__":
    main()
