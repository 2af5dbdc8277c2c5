"""Training step time and peak memory per rung, and whether data loading is the bottleneck.

    .venv/bin/python benchmarks/train_step.py                 # the default rungs on data/processed
    .venv/bin/python benchmarks/train_step.py --rd64          # also the rd64-refined shape (352 px, batch 4; slow)

For each rung (each in its own process, so peak memory is its own): the median time of a full optimiser
step (forward with gradients reaching the encoders, BCE + Dice, backward, AdamW, scheduler) on
  - one fixed batch already in memory ("model only"), and
  - batches from the real training DataLoader over data/processed (resize cache warm: the first pass
    over the data is not timed),
and the peak resident memory of the process. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

RUNGS = ["decoder", "lora", "full", "unet"]


def measure(variant: str, rd64: bool, steps: int) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from promptseg.data import EpochShuffleSampler, collate
    from promptseg.losses import bce_dice_loss
    from promptseg.model import apply_variant, build_clip_tokenizer, make_processor, rd64_refined_config
    from promptseg.params import load_params
    from promptseg.settings import train_settings
    from promptseg.train import TrainSetup, build_datasets, load_base_model
    from promptseg.model import segmentation_logits

    params = load_params()
    if rd64:
        params["train"]["common"].update(image_size=352, batch_size=4)
    settings = train_settings(params, variant)
    model_cfg = settings.model
    setup = TrainSetup(settings=settings, processed_root=Path("data/processed"), model_dir=Path("/tmp/unused"),
                       metrics_dir=Path("/tmp/unused"), checkpoint_dir=Path("/tmp/unused"))
    torch.manual_seed(0)
    if rd64:
        from transformers import CLIPSegForImageSegmentation

        base = CLIPSegForImageSegmentation(rd64_refined_config())
        processor = make_processor(build_clip_tokenizer(), 352, model_cfg.image_mean, model_cfg.image_std)
    else:
        base, processor = load_base_model(model_cfg, setup.image_size, 0, setup.architecture)
    module = apply_variant(base, settings.rung.method, settings.rung.lora).train()
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    train_set = build_datasets(setup, processor, "train", training=True)
    batch_size = settings.rung.train.batch_size
    loader = DataLoader(train_set, batch_size=batch_size, sampler=EpochShuffleSampler(len(train_set), 0),
                        collate_fn=collate, num_workers=settings.rung.train.num_workers)
    for _ in loader:  # warm the resize cache, as every epoch after the first
        pass

    def step(pixel_values, targets, prompts):
        tokens = processor.tokenizer(list(prompts), padding=True, return_tensors="pt")
        logits = segmentation_logits(module, pixel_values, tokens["input_ids"], tokens["attention_mask"])
        loss = bce_dice_loss(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()

    fixed = next(iter(loader))
    step(*fixed[:3])  # warm-up
    model_only = []
    for _ in range(steps):
        started = time.perf_counter()
        step(*fixed[:3])
        model_only.append(time.perf_counter() - started)
    with_loader, it = [], iter(loader)
    for _ in range(steps):
        started = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        step(*batch[:3])
        with_loader.append(time.perf_counter() - started)
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return {"rung": variant + (" (rd64-refined shape)" if rd64 else ""), "image_size": 352 if rd64 else setup.image_size,
            "batch": batch_size, "trainable": trainable, "model_only_s": statistics.median(model_only),
            "with_loader_s": statistics.median(with_loader),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rd64", action="store_true", help="also the rd64-refined shape (lora, full) at 352 px")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "RD64"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1] == "1", args.steps)))
        return
    jobs = [(v, "0") for v in RUNGS] + ([("lora", "1"), ("full", "1")] if args.rd64 else [])
    print("| rung | input px | batch | trainable params | step, model only (s) | step with DataLoader (s) | loader overhead | peak RSS (GB) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for variant, rd64 in jobs:
        steps = min(args.steps, 3) if rd64 == "1" else args.steps
        out = subprocess.run([sys.executable, __file__, "--steps", str(steps), "--child", variant, rd64],
                             capture_output=True, text=True)
        if out.returncode != 0:
            print(f"| {variant} | failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode} |")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        overhead = r["with_loader_s"] / r["model_only_s"] - 1
        print(f"| {r['rung']} | {r['image_size']} | {r['batch']} | {r['trainable']:,} | {r['model_only_s']:.3f} | "
              f"{r['with_loader_s']:.3f} | {overhead:+.0%} | {r['peak_rss_gb']:.2f} |")


if __name__ == "__main__":
    main()
