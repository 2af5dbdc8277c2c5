"""How a U-Net's presence gate opens: sigmoid(gate logit) for every test image with every prompt of its own
dataset and of the other one, as quantiles and as the share of (image, prompt) pairs it closes (< 0.5).

    python benchmarks/presence_gate.py [models/unet] [split]

Reads ``params.yaml`` (the prompts), the model folder and ``data/processed/<dataset>/<split>`` (default
test) of the current workspace (``dvc repro`` first); writes nothing. A gate that works is open (near 1)
for its own dataset's prompts and closed (near 0) for the other dataset's; one that stays open for both
leaves the prompt switching to FiLM alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from promptseg.images import list_split, read_rgb
from promptseg.infer.torch_engine import load_trained_model  # noqa: E402
from promptseg.params import DATASETS, load_params  # noqa: E402


def gate_probabilities(trained, images: list[np.ndarray], prompt: str) -> np.ndarray:
    """sigmoid(presence logit) for each image with one prompt, (N,): the gate's outputs, read by a forward
    hook while ``predict_probabilities`` runs the usual inference path (batches in image order)."""
    gate = getattr(trained.model, "presence", None)
    if gate is None:
        raise SystemExit("this model has no presence gate (model.unet.presence_gate: false, or a CLIPSeg rung)")
    outputs = []
    handle = gate.register_forward_hook(lambda module, args, output: outputs.append(torch.sigmoid(output[:, 0])))
    try:
        trained.whole_image_probabilities(images, [prompt] * len(images))
    finally:
        handle.remove()
    return torch.cat(outputs).numpy()


def main(model_dir: str = "models/unet", split: str = "test") -> None:
    params = load_params()
    trained = load_trained_model(model_dir)
    prompts = {name: params["data"][name]["prompts"] for name in DATASETS}
    print(f"{model_dir}, {split} split: sigmoid(gate) quantiles 10/50/90 % and share of pairs closed (< 0.5)")
    for dataset in DATASETS:
        images = [read_rgb(image) for image, _ in list_split(Path("data/processed"), dataset, split)]
        for owner in DATASETS:
            gates = np.concatenate([gate_probabilities(trained, images, p) for p in prompts[owner]])
            q10, q50, q90 = np.quantile(gates, [0.1, 0.5, 0.9])
            label = "own" if owner == dataset else "other dataset's"
            print(
                f"  {dataset} photos ({len(images)}), {label} prompts ({owner}): {q10:.3f} / {q50:.3f} / {q90:.3f}, "
                f"closed {float((gates < 0.5).mean()):.3f}"
            )


if __name__ == "__main__":
    torch.set_num_threads(2)
    main(*sys.argv[1:])
