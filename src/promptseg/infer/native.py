"""Inference on the whole photo at its own resolution (no resize, no tiles): the U-Net's path for thin cracks.

The U-Net is fully convolutional: its encoder pads any (H, W) to a multiple of 32 and its logits are
cropped back to (H, W); FiLM scales channels whatever the size, and the presence gate pools the
bottleneck (mean and max) over whatever area there is. A crack a few pixels wide in a 640 px photo
stays a few pixels wide, where the 224 px resize of the plain path
thins it below a pixel. Trained on native-resolution crops (``train.rungs.unet.crop``), the model has
seen that scale. ``infer.native_resolution.<dataset>`` (``Recipe.native_resolution``) turns it on per dataset; CLIPSeg
rungs (a ViT with learnt position embeddings for one input size) keep the resize path
(``promptseg.infer.segmenter.Segmenter.probabilities`` decides).
"""

from __future__ import annotations

import numpy as np
import torch

from promptseg.cache import digest
from promptseg.infer.logits import average_prompts_and_flips
from promptseg.modeling.preprocessing import normalize

__all__ = ["predict_probabilities_native"]


@torch.no_grad()
def predict_probabilities_native(
    segmenter,
    images: list[np.ndarray],
    prompt_sets: list[list[str]],
    *,
    batch_size=16,
    hflip_tta=False,
    precision="fp32",
) -> list[np.ndarray]:
    """Probability maps, one per (image, prompt set) pair, computed at each image's own size (a prompt set of
    several prompts is an ensemble whose logits are averaged; ``hflip_tta`` averages with the mirrored image).
    Images of the same size are batched together (up to ``batch_size``). ``segmenter``: an engine that runs any
    size (``runs_any_size``), its ``encoded_logits`` the model's two halves with the image half cached in its
    ``encodings``."""
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
            key = ("native", digest([images[i] for i in chunk]))
            pixel_values = segmenter.encodings.get(
                ("pixels", key),
                lambda chunk=chunk: torch.stack(
                    [
                        normalize(np.ascontiguousarray(images[i]), segmenter.mean, segmenter.std, segmenter.per_image)
                        for i in chunk
                    ]
                ),
            )
            averaged = average_prompts_and_flips(
                lambda view, rows, ps, flipped: segmenter.encoded_logits(
                    view, rows, ps, cache_key=(key, flipped), precision=precision
                ),
                pixel_values,
                [prompt_sets[i] for i in chunk],
                hflip_tta,
                lambda x: torch.flip(x, dims=[-1]),
                torch.zeros,
            )
            for j, i in enumerate(chunk):
                out[i] = torch.sigmoid(averaged[j]).numpy()
    return out
