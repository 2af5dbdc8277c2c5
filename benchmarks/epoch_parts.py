"""Where a rung's training epoch goes on this machine: training's own step on real batches, and the per-epoch
validation in fp32 and in the training's precision (what the loop runs since session 14).

    .venv/bin/python benchmarks/epoch_parts.py hed_decoder hed_lora hed_full --profiles real-cpu --steps 12

Reads the workspace's ``params.yaml`` (with ``--profiles`` laid over it, as ``make repro-real`` does) and
``data/processed`` (a workspace that ran the real sample's data stages, for real-photo figures); writes nothing.
Each rung is built as training builds it (``promptseg.train.loop.build_run``: model, method, data, AdamW, schedule)
and stepped with ``train_step``, the function every training epoch runs, on batches from its own DataLoader (the
images are decoded and cached when the datasets are built). The first two steps are not timed. The validation is
``run_epoch_validation`` over the whole val set, once per precision, fp32 first. An epoch's estimate is
steps per epoch x the median step + the validation in the training's precision. Time alone: two torch jobs on
2 cores thrash.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def measure(rung: str, profiles: list[str], steps: int) -> dict:
    import torch

    from promptseg.profiles import params_with_profiles
    from promptseg.settings import train_settings
    from promptseg.train.loop import TrainSetup, build_run, run_epoch_validation, train_step

    settings = train_settings(params_with_profiles(*profiles), rung)
    unused = Path("/tmp/promptseg-epoch-parts")
    setup = TrainSetup(
        settings=settings,
        processed_root=Path("data/processed"),
        model_dir=unused / "model",
        metrics_dir=unused / "metrics",
        checkpoint_dir=unused / "checkpoints",
    )
    run = build_run(setup)
    run.train_set.set_epoch(0)
    run.sampler.set_epoch(0)
    batches, times = iter(run.train_loader), []
    for index in range(steps + 2):
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(run.train_loader)
            batch = next(batches)
        started = time.perf_counter()
        train_step(setup, run, batch)
        if index >= 2:
            times.append(time.perf_counter() - started)
    validation = {}
    for precision in ("fp32", run.precision):
        if precision in validation:
            continue
        started = time.perf_counter()
        run_epoch_validation(
            run.module, run.processor, run.val_loader, run.device, setup.rung.train, settings.empty_score, precision
        )
        validation[precision] = time.perf_counter() - started
    step = statistics.median(times)
    out = {
        "rung": rung,
        "image_size": setup.image_size,
        "batch": setup.rung.train.batch_size,
        "precision": run.precision,
        "threads": torch.get_num_threads(),
        "step_s": step,
        "steps_per_epoch": run.steps_per_epoch,
        "val_images": len(run.val_loader.dataset),
        "val_fp32_s": validation["fp32"],
        "val_training_s": validation[run.precision],
        "epoch_s": run.steps_per_epoch * step + validation[run.precision],
    }
    del run
    gc.collect()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rungs", nargs="+", help="rungs of params.yaml (after --profiles)")
    parser.add_argument("--profiles", nargs="*", default=[], help="profiles laid over params.yaml, in order")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per rung (after two untimed)")
    args = parser.parse_args()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    print(
        "| rung | px | batch | precision | threads | step (s, median) | steps per epoch | val images "
        "| validation fp32 (s) | validation in training precision (s) | epoch estimate (s) |"
    )
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for rung in args.rungs:
        r = measure(rung, args.profiles, args.steps)
        print(
            f"| {r['rung']} | {r['image_size']} | {r['batch']} | {r['precision']} | {r['threads']} | {r['step_s']:.2f} "
            f"| {r['steps_per_epoch']} | {r['val_images']} | {r['val_fp32_s']:.1f} | {r['val_training_s']:.1f} "
            f"| {r['epoch_s']:.0f} |",
            flush=True,
        )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
