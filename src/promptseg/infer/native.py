"""Inference on the whole photo at its own resolution (no resize, no tiles): the U-Net's path for thin cracks.

The U-Net is fully convolutional: its encoder pads any (H, W) to a multiple of 32 and its logits are
cropped back to (H, W); FiLM scales channels whatever the size, and the presence gate pools the
bottleneck (mean and max) over whatever area there is. A crack a few pixels wide in a 640 px photo
stays a few pixels wide, where the 224 px resize of :func:`promptseg.infer.torch_engine.predict_probabilities`
thins it below a pixel. Trained on native-resolution crops (``train.rungs.unet.crop``), the model has
seen that scale. ``infer.native_resolution.<dataset>`` turns it on per dataset in evaluation; CLIPSeg
rungs (a ViT with learnt position embeddings for one input size) keep the resize path.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["supports_native_resolution", "predict_probabilities_native"]


def supports_native_resolution(trained) -> bool:
    """Whether the loaded model runs at any input size: the text-conditioned U-Net."""
    return hasattr(trained.model, "encode_image")


@torch.no_grad()
def predict_probabilities_native(
    trained, images: list[np.ndarray], prompts: list, *, batch_size: int = 16, hflip_tta: bool = False
) -> list[np.ndarray]:
    """Probability maps, one per (image, prompt) pair, computed at each image's own size (same contract as
    :func:`promptseg.infer.torch_engine.predict_probabilities`: a prompt may be a list, an ensemble whose logits are
    averaged; ``hflip_tta`` averages with the mirrored image). Images of the same size are batched together
    (up to ``batch_size``); their encodings go through ``trained.encodings``."""
    from promptseg.infer.torch_engine import EncodingCache, _model_logits
    from promptseg.modeling.preprocessing import normalize

    if not supports_native_resolution(trained):
        raise ValueError(
            "native-resolution inference needs the U-Net (architecture: unet); CLIPSeg runs at its "
            "input size: set infer.native_resolution to false for this model."
        )
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts: pass one prompt per image.")
    prompt_sets = [[p] if isinstance(p, str) else list(p) for p in prompts]
    if any(not ps for ps in prompt_sets):
        raise ValueError("an empty prompt list was given for an image: pass at least one prompt.")
    by_shape: dict[tuple, list[int]] = {}
    for i, image in enumerate(images):
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"images must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
        by_shape.setdefault(image.shape, []).append(i)
    out: list[np.ndarray | None] = [None] * len(images)
    for indices in by_shape.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            key = ("native", EncodingCache.digest([images[i] for i in chunk]))
            pixel_values = trained.encodings.get_or_compute(
                ("pixels", key),
                lambda chunk=chunk: torch.stack(
                    [
                        normalize(np.ascontiguousarray(images[i]), trained.mean, trained.std, trained.per_image)
                        for i in chunk
                    ]
                ),
            )
            views = [(pixel_values, False)] + ([(torch.flip(pixel_values, dims=[-1]), True)] if hflip_tta else [])
            sets = [prompt_sets[i] for i in chunk]
            total, count = torch.zeros(len(chunk), *pixel_values.shape[-2:]), torch.zeros(len(chunk), 1, 1)
            for k in range(max(len(ps) for ps in sets)):
                rows = [j for j, ps in enumerate(sets) if k < len(ps)]
                for view, flipped in views:
                    logits = _model_logits(trained, view, rows, [sets[j][k] for j in rows], cache_key=(key, flipped))
                    total[rows] += torch.flip(logits, dims=[-1]) if flipped else logits
                    count[rows] += 1
            for j, i in enumerate(chunk):
                out[i] = torch.sigmoid(total[j] / count[j]).numpy()
    return out
