"""Training step time and peak memory per rung, and whether data loading is the bottleneck.

    .venv/bin/python benchmarks/train_step.py                 # the default rungs on data/processed
    .venv/bin/python benchmarks/train_step.py --rd64          # also the rd64-refined shape (352 px, batch 4; slow)
    .venv/bin/python benchmarks/train_step.py --rungs unet --precisions fp32,bf16 --layouts contiguous,channels_last

For each rung (each in its own process, so peak memory is its own): the median time of a full optimiser
step (forward with gradients reaching the encoders, BCE + Dice, backward, AdamW, scheduler) on
  - one fixed batch already in memory ("model only"), and
  - batches from the real training DataLoader over data/processed (resize cache warm: the first pass
    over the data is not timed),
and the peak resident memory of the process, per precision (``promptseg.modeling.precision``: fp32, or bf16 autocast
with the loss on float logits, as in training) and, for the U-Net, per activation layout (``channels_last``,
the default, or ``contiguous``; ``channels_last+weights`` also converts the conv weights). Prints a markdown
table and the load average before and after (the machine is shared).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

RUNGS = ["decoder", "lora", "full", "unet"]


def measure(rung: str, rd64: bool, steps: int, precision: str = "fp32", layout: str = "channels_last") -> dict:
    import torch
    from torch.utils.data import DataLoader

    from promptseg.modeling.clipseg import apply_method, build_clip_tokenizer, make_processor, rd64_refined_config
    from promptseg.modeling.precision import autocast
    from promptseg.modeling.registry import build_model, segmentation_logits
    from promptseg.profiles import params_with_profiles
    from promptseg.settings import train_settings
    from promptseg.train.data import EpochShuffleSampler, collate
    from promptseg.train.loop import TrainSetup, build_datasets, make_optimizer
    from promptseg.train.losses import bce_dice_loss

    params = params_with_profiles("clipseg-small")  # the default ladder + the CLIPSeg rungs it leaves out
    if rd64:
        params["train"]["common"].update(image_size=352, batch_size=4)
    settings = train_settings(params, rung)
    model_cfg = settings.model
    setup = TrainSetup(
        settings=settings,
        processed_root=Path("data/processed"),
        model_dir=Path("/tmp/unused"),
        metrics_dir=Path("/tmp/unused"),
        checkpoint_dir=Path("/tmp/unused"),
    )
    torch.manual_seed(0)
    if rd64:
        from transformers import CLIPSegForImageSegmentation

        base = CLIPSegForImageSegmentation(rd64_refined_config())
        processor = make_processor(build_clip_tokenizer(), 352, model_cfg.image_mean, model_cfg.image_std)
    else:
        base, processor = build_model(model_cfg, setup.image_size, 0, setup.architecture)
    module = apply_method(base, settings.rung.method, settings.rung.lora).train()
    if hasattr(base, "channels_last"):  # the U-Net
        base.channels_last = layout != "contiguous"
        if layout == "channels_last+weights":
            module = module.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(module, settings.rung.train, settings.rung.text_lr)  # training's AdamW
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    train_set = build_datasets(setup, processor, "train", training=True)
    batch_size = settings.rung.train.batch_size
    loader = DataLoader(
        train_set,
        batch_size=batch_size,
        sampler=EpochShuffleSampler(len(train_set), 0),
        collate_fn=collate,
        num_workers=settings.rung.train.num_workers,
    )
    for _ in loader:  # warm the resize cache, as every epoch after the first
        pass

    def step(pixel_values, targets, prompts):
        tokens = processor.tokenizer(list(prompts), padding=True, return_tensors="pt")
        with autocast(precision, "cpu"):
            logits = segmentation_logits(module, pixel_values, tokens["input_ids"], tokens["attention_mask"])
        loss = bce_dice_loss(logits.float(), targets)
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
    return {
        "rung": rung + (" (rd64-refined shape)" if rd64 else ""),
        "precision": precision,
        "layout": layout if hasattr(base, "channels_last") else "-",
        "image_size": 352 if rd64 else setup.image_size,
        "batch": batch_size,
        "trainable": trainable,
        "model_only_s": statistics.median(model_only),
        "with_loader_s": statistics.median(with_loader),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
    }


def interleaved(rung: str, steps: int) -> dict:
    """fp32, bf16 and bf16 + channels_last steps of ONE model, in interleaved rounds (a shared machine's load
    drifts: each round times every setting once), model only and with the DataLoader; medians per setting.
    AdamW is training's (``promptseg.train.loop.make_optimizer``: ``train.common.adamw``, fused by default); more
    rows time it with the ``foreach`` kernels and the per-tensor for-loop that is PyTorch's default on a CPU
    (training's AdamW until stop 26)."""
    import torch
    from torch.utils.data import DataLoader

    from promptseg.modeling.clipseg import apply_method
    from promptseg.modeling.precision import autocast
    from promptseg.modeling.registry import segmentation_logits
    from promptseg.profiles import params_with_profiles
    from promptseg.settings import train_settings
    from promptseg.train.data import EpochShuffleSampler, collate
    from promptseg.train.loop import (
        TrainSetup,
        build_datasets,
        build_model,
        make_optimizer,
        optimizer_param_groups,
    )
    from promptseg.train.losses import bce_dice_loss

    settings_ = train_settings(params_with_profiles("clipseg-small"), rung)
    setup = TrainSetup(
        settings=settings_,
        processed_root=Path("data/processed"),
        model_dir=Path("/tmp/unused"),
        metrics_dir=Path("/tmp/unused"),
        checkpoint_dir=Path("/tmp/unused"),
    )
    torch.manual_seed(0)
    base, processor = build_model(settings_.model, setup.image_size, 0, setup.architecture)
    module = apply_method(base, settings_.rung.method, settings_.rung.lora).train()
    train, text_lr = settings_.rung.train, settings_.rung.text_lr
    optimizers = {  # training's AdamW, the same with the foreach kernels, and the for-loop implementation
        "training": make_optimizer(module, train, text_lr),
        "foreach": make_optimizer(module, dataclasses.replace(train, adamw="foreach"), text_lr),
        "for-loop": torch.optim.AdamW(
            optimizer_param_groups(module, train.lr, text_lr), weight_decay=train.weight_decay, foreach=False
        ),
    }
    train_set = build_datasets(setup, processor, "train", training=True)
    loader = DataLoader(
        train_set,
        batch_size=settings_.rung.train.batch_size,
        sampler=EpochShuffleSampler(len(train_set), 0),
        collate_fn=collate,
        num_workers=settings_.rung.train.num_workers,
    )
    for _ in loader:  # warm the resize cache, as every epoch after the first
        pass
    settings = {  # name: (precision, channels_last, AdamW kernels)
        "fp32": ("fp32", True, "training"),
        "bf16 contiguous": ("bf16", False, "training"),
        "bf16 channels_last (training)": ("bf16", True, "training"),
        "fp32, for-loop AdamW (training's step until stop 26)": ("fp32", True, "for-loop"),
        "fp32, foreach AdamW": ("fp32", True, "foreach"),
        "bf16 channels_last, foreach AdamW": ("bf16", True, "foreach"),
    }
    if not hasattr(base, "channels_last"):
        settings = {"fp32": ("fp32", True, "training"), "bf16 (training)": ("bf16", True, "training")}

    def step(batch, precision, channels_last, adamw):
        optimizer = optimizers[adamw]
        if hasattr(base, "channels_last"):
            base.channels_last = channels_last
        pixel_values, targets, prompts = batch[:3]
        tokens = processor.tokenizer(list(prompts), padding=True, return_tensors="pt")
        with autocast(precision, "cpu"):
            logits = segmentation_logits(module, pixel_values, tokens["input_ids"], tokens["attention_mask"])
        loss = bce_dice_loss(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    fixed, it = next(iter(loader)), iter(loader)
    times = {f"{name} {kind}": [] for name in settings for kind in ("model only", "with loader")}
    for _name, (precision, cl, adamw) in settings.items():
        step(fixed, precision, cl, adamw)  # warm-up
    for _ in range(steps):
        for name, (precision, cl, adamw) in settings.items():
            started = time.perf_counter()
            step(fixed, precision, cl, adamw)
            times[f"{name} model only"].append(time.perf_counter() - started)
            started = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                it = iter(loader)
                batch = next(it)
            step(batch, precision, cl, adamw)
            times[f"{name} with loader"].append(time.perf_counter() - started)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    import os

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rd64", action="store_true", help="also the rd64-refined shape (lora, full) at 352 px")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rungs", default=",".join(RUNGS), help="comma-separated rungs (default: all)")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16")
    parser.add_argument(
        "--layouts",
        default="channels_last",
        help="U-Net activation layouts: contiguous, channels_last, channels_last+weights",
    )
    parser.add_argument("--child", nargs=4, metavar=("RUNG", "RD64", "PRECISION", "LAYOUT"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--interleaved",
        metavar="RUNG",
        help="one process: fp32 / bf16 / bf16+channels_last steps of RUNG in interleaved rounds",
    )
    args = parser.parse_args()
    if args.interleaved:
        print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
        medians = interleaved(args.interleaved, args.steps)
        reference = medians["fp32 model only"]
        before = medians.get("fp32, for-loop AdamW (training's step until stop 26) model only", reference)
        print(
            f"| {args.interleaved}: setting | median step (s) | speed-up vs fp32 model only "
            "| vs fp32 with the for-loop AdamW |\n|---|---:|---:|---:|"
        )
        for name, seconds in medians.items():
            print(f"| {name} | {seconds:.3f} | {reference / seconds:.2f}x | {before / seconds:.2f}x |")
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        return
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1] == "1", args.steps, args.child[2], args.child[3])))
        return
    rungs = args.rungs.split(",")
    jobs = [(v, "0") for v in rungs] + ([("lora", "1"), ("full", "1")] if args.rd64 else [])
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        "| rung | precision | layout | input px | batch | trainable params | step, model only (s) | step with DataLoader (s) "
        "| loader overhead | peak RSS (GB) |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for rung, rd64 in jobs:
        layouts = args.layouts.split(",") if rung == "unet" else ["channels_last"]
        for precision in args.precisions.split(","):
            for layout in layouts:
                steps = min(args.steps, 3) if rd64 == "1" else args.steps
                out = subprocess.run(
                    [sys.executable, __file__, "--steps", str(steps), "--child", rung, rd64, precision, layout],
                    capture_output=True,
                    text=True,
                )
                if out.returncode != 0:
                    last = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode
                    print(f"| {rung} | {precision} | {layout} | failed: {last} |")
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                overhead = r["with_loader_s"] / r["model_only_s"] - 1
                print(
                    f"| {r['rung']} | {r['precision']} | {r['layout']} | {r['image_size']} | {r['batch']} | {r['trainable']:,} "
                    f"| {r['model_only_s']:.3f} | {r['with_loader_s']:.3f} | {overhead:+.0%} | {r['peak_rss_gb']:.2f} |",
                    flush=True,
                )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
