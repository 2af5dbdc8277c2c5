"""A photo as the networks take it: resized (PIL bilinear, as the CLIPSeg image processor) and normalised."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def resize_rgb(rgb: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize with PIL: matches what the CLIPSeg image processor does."""
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR))


def normalize(rgb_resized: np.ndarray, mean, std, per_image: bool = False) -> torch.Tensor:
    """(S, S, 3) uint8 -> (3, S, S) float32 normalised with the model's mean/std.

    ``per_image``: then standardise the whole tensor to zero mean, unit std (used by the randomly
    initialised ``small`` model; see ``promptseg.modeling.clipseg.uses_per_image_standardization``).
    """
    x = torch.from_numpy(np.array(rgb_resized, dtype=np.float32)).div_(255.0).permute(2, 0, 1)
    x = (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    if per_image:
        x = (x - x.mean()) / (x.std() + 1e-6)
    return x


def preprocess_image(rgb: np.ndarray, size: int, mean, std, per_image: bool = False) -> torch.Tensor:
    return normalize(resize_rgb(rgb, size), mean, std, per_image)
