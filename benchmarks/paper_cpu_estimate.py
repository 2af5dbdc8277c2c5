"""How long `make repro-paper` would take on this CPU: the paper-path test's tiny model timed, then scaled.

    .venv/bin/python benchmarks/paper_cpu_estimate.py [--threads 2] [--size 352]

1. The tiny CLIPSeg of tests/test_paper_path.py (rd64-refined layout, small widths) and the rd64-refined shape
   (``promptseg.modeling.clipseg.rd64_refined_config``, random weights): forward FLOPs per image
   (``torch.utils.flop_counter.FlopCounterMode`` on ``segmentation_logits``) at ``--size`` px.
2. The tiny model timed: forward (no grad, batch 1) and one LoRA training step (r 16 on q_proj/v_proj, encoders
   get gradients, batch 4), CPU seconds per image, best of 5 (``--threads 1``: CPU seconds = seconds on one core).
3. Scaled by FLOPs: rd64 seconds per image = tiny seconds per image x rd64 FLOPs / tiny FLOPs. The tiny model's
   matmuls are small, so it reaches a lower share of the machine's rate than the rd64 shape does: the scaled
   figure is an upper bound. ``--rd64-time`` also times the rd64 shape directly (slow: a minute or two).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
warnings.filterwarnings("ignore")


def best(fn, rounds: int = 5) -> float:
    """CPU seconds (``time.process_time``: all threads of this process) of the fastest of ``rounds`` calls.
    CPU time, not wall time: the machine is shared, and waiting for a core is not work."""
    fn()
    times = []
    for _ in range(rounds):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return min(times)


def measure(model, size: int, time_it: bool) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from promptseg.modeling.clipseg import apply_method
    from promptseg.modeling.registry import segmentation_logits
    from promptseg.settings import LoraSettings

    ids = torch.tensor([[49406, 15615, 2569, 10334, 49407]])
    one = torch.randn(1, 3, size, size)
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        segmentation_logits(model, one, ids)
    out = {"gflop": counter.get_total_flops() / 1e9}
    if not time_it:
        return out
    with torch.no_grad():
        out["forward_s"] = best(lambda: segmentation_logits(model, one, ids))
    lora = apply_method(
        model, "lora", LoraSettings(r=16, alpha=32, dropout=0.05, targets=("q_proj", "v_proj"), train_decoder=False)
    )
    lora.train()
    four, ids4 = torch.randn(4, 3, size, size), ids.repeat(4, 1)
    optimizer = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-4)

    def step():
        loss = segmentation_logits(lora, four, ids4).float().sigmoid().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    out["lora_step_s_per_image"] = best(step) / 4
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--size", type=int, default=352)
    parser.add_argument("--rd64-time", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import test_paper_path as tiny_spec
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation

    from promptseg.modeling.clipseg import rd64_refined_config, reset_decoder_plain_layers

    torch.manual_seed(0)
    tiny = CLIPSegForImageSegmentation(
        CLIPSegConfig(
            text_config=tiny_spec.TEXT,
            vision_config=tiny_spec.VISION,
            projection_dim=32,
            reduce_dim=tiny_spec.REDUCE_DIM,
            extract_layers=tiny_spec.EXTRACT_LAYERS,
            decoder_num_attention_heads=2,
            use_complex_transposed_convolution=True,
        )
    )
    reset_decoder_plain_layers(tiny)
    t = measure(tiny, args.size, True)
    r = measure(CLIPSegForImageSegmentation(rd64_refined_config()), args.size, args.rd64_time)
    ratio = r["gflop"] / t["gflop"]
    print(f"{args.size} px, {args.threads} threads")
    print(
        f"tiny: {t['gflop']:.3f} GFLOP/image forward; forward {t['forward_s'] * 1e3:.1f} ms/image, "
        f"LoRA step {t['lora_step_s_per_image'] * 1e3:.1f} ms/image (batch 4), CPU time"
    )
    print(f"rd64: {r['gflop']:.1f} GFLOP/image forward; FLOP ratio rd64/tiny {ratio:.0f}")
    print(
        f"scaled to rd64 by FLOPs: forward {t['forward_s'] * ratio:.2f} s/image, "
        f"LoRA step {t['lora_step_s_per_image'] * ratio:.2f} s/image"
    )
    if args.rd64_time:
        print(
            f"rd64 timed (CPU time): forward {r['forward_s']:.2f} s/image, LoRA step {r['lora_step_s_per_image']:.2f} s/image"
        )


if __name__ == "__main__":
    main()
