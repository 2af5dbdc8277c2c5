"""Inference helpers: resizing logits and turning probabilities into masks."""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["postprocess_probabilities", "upsample_logits", "TrainedModel", "load_trained_model", "predict_probabilities", "predict_masks"]


def postprocess_probabilities(
    probs: np.ndarray,
    threshold: float,
    *,
    morphology: bool = True,
    kernel_size: int = 3,
) -> np.ndarray:
    """Binarise an ``(H, W)`` probability map into a ``uint8`` ``{0, 255}`` mask.

    Steps:

    1. ``probs > threshold`` (strict; compared in the dtype of ``probs``, the
       same rule as :func:`promptseg.metrics.threshold_sweep_counts`);
    2. if ``morphology``: ``cv2.morphologyEx`` OPEN, then CLOSE, both with a
       ``kernel_size x kernel_size`` rectangular kernel. OPEN removes specks
       smaller than the kernel, CLOSE fills gaps narrower than it.
       ``kernel_size == 1`` is a no-op.

    Note that OPEN with a ``k x k`` kernel also deletes any structure thinner
    than ``k`` px (e.g. a 1-px-wide crack with ``k = 3``); pass
    ``morphology=False`` to keep such structures.

    Args:
        probs: ``(H, W)`` float map (float32 expected) in ``[0, 1]``.
        threshold: probability threshold.
        morphology: apply OPEN then CLOSE.
        kernel_size: side of the square structuring element, ``>= 1``.

    Returns:
        ``(H, W)`` ``uint8`` array with values in ``{0, 255}``.
    """
    probs = np.asarray(probs)
    if probs.ndim != 2:
        raise ValueError(f"probs must be (H, W), got shape {probs.shape}")
    if not np.issubdtype(probs.dtype, np.floating):
        probs = probs.astype(np.float64)
    if int(kernel_size) != kernel_size or kernel_size < 1:
        raise ValueError(f"kernel_size must be a positive integer, got {kernel_size}")
    thr = np.asarray(threshold, dtype=probs.dtype)
    mask = np.where(probs > thr, 255, 0).astype(np.uint8)
    if morphology and kernel_size > 1:
        k = int(kernel_size)
        kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (k, k))
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    return mask


def upsample_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize logits (``align_corners=False``) to ``size = (H, W)``.

    Args:
        logits: ``(B, h, w)`` or ``(h, w)`` float tensor.
        size: target ``(H, W)``.

    Returns:
        ``(B, H, W)`` or ``(H, W)`` tensor (same rank and dtype as ``logits``).
        Resizing logits rather than probabilities keeps the sigmoid after the
        interpolation.
    """
    if logits.ndim not in (2, 3):
        raise ValueError(f"logits must be (B, h, w) or (h, w), got {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating tensor, got {logits.dtype}")
    out_size = (int(size[0]), int(size[1]))
    squeeze = logits.ndim == 2
    x = logits[None, None] if squeeze else logits[:, None]
    y = F.interpolate(x, size=out_size, mode="bilinear", align_corners=False)
    return y[0, 0] if squeeze else y[:, 0]


# --------------------------------------------------------------------------- running a trained model
class TrainedModel:
    """A trained variant loaded from ``models/<variant>/`` (merged weights + processor + promptseg.json)."""

    def __init__(self, model, processor, card: dict | None = None):
        self.model = model.eval()
        self.processor = processor
        self.card = card or {}
        image_processor = processor.image_processor
        size = image_processor.size
        self.image_size = int(size["height"] if not isinstance(size, int) else size)
        self.mean, self.std = list(image_processor.image_mean), list(image_processor.image_std)
        # inputs standardised per image after mean/std (the small model; promptseg.model explains why)
        self.per_image = bool(self.card.get("per_image_standardization", False))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def load_trained_model(model_dir) -> TrainedModel:
    """Load ``models/<variant>`` (or any CLIPSeg ``save_pretrained`` folder)."""
    import json
    from pathlib import Path

    from promptseg.model import load_pretrained

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory {model_dir} not found: train it first (`dvc repro train`) "
                                "or pass --model with a folder written by save_pretrained.")
    model, processor = load_pretrained(str(model_dir))
    card_path = model_dir / "promptseg.json"
    card = json.loads(card_path.read_text()) if card_path.exists() else {}
    return TrainedModel(model, processor, card)


def _model_logits(trained: TrainedModel, pixel_values: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """Logits (B, h, w) at the model's input size for a batch of images, one prompt per image."""
    from promptseg.model import segmentation_logits

    device = trained.device
    tokens = trained.processor.tokenizer(list(prompts), padding=True, return_tensors="pt")
    return segmentation_logits(trained.model, pixel_values.to(device), tokens["input_ids"].to(device),
                               tokens["attention_mask"].to(device)).float().cpu()


@torch.no_grad()
def predict_probabilities(trained: TrainedModel, images: list[np.ndarray], prompts: list,
                          *, batch_size: int = 16, hflip_tta: bool = False) -> list[np.ndarray]:
    """Probability maps at each image's OWN size, one per (image, prompt) pair.

    ``images[i]`` is an (H, W, 3) uint8 RGB array paired with ``prompts[i]``: a string, or a list of
    strings for a PROMPT ENSEMBLE (the logits of every prompt of the list are averaged). Steps per batch:
    resize + normalise -> logits at the model's input size (averaged over the ensemble and, with
    ``hflip_tta``, over the image and its horizontal mirror flipped back) -> bilinear upsample of the
    logits to (H, W) -> sigmoid. Returns float32 (H, W) arrays in [0, 1].
    """
    from promptseg.data import preprocess_image

    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts: pass one prompt per image.")
    prompt_sets = [[p] if isinstance(p, str) else list(p) for p in prompts]
    if any(not ps for ps in prompt_sets):
        raise ValueError("an empty prompt list was given for an image: pass at least one prompt.")
    out: list[np.ndarray] = []
    for start in range(0, len(images), batch_size):
        chunk, chunk_sets = images[start:start + batch_size], prompt_sets[start:start + batch_size]
        pixel_values = torch.stack([preprocess_image(im, trained.image_size, trained.mean, trained.std, trained.per_image)
                                    for im in chunk])
        views = [(pixel_values, False)] + ([(torch.flip(pixel_values, dims=[-1]), True)] if hflip_tta else [])
        n_prompts = max(len(ps) for ps in chunk_sets)
        total, count = torch.zeros(len(chunk), *pixel_values.shape[-2:]), torch.zeros(len(chunk), 1, 1)
        for k in range(n_prompts):
            rows = [i for i, ps in enumerate(chunk_sets) if k < len(ps)]
            for view, flipped in views:
                logits = _model_logits(trained, view[rows], [chunk_sets[i][k] for i in rows])
                total[rows] += torch.flip(logits, dims=[-1]) if flipped else logits
                count[rows] += 1
        for image, logit in zip(chunk, total / count):
            out.append(torch.sigmoid(upsample_logits(logit, image.shape[:2])).numpy())
    return out


def predict_masks(trained: TrainedModel, images: list[np.ndarray], prompts: list, *, threshold: float,
                  morphology: bool = True, kernel_size: int = 3, batch_size: int = 16,
                  hflip_tta: bool = False) -> list[np.ndarray]:
    """{0,255} uint8 masks at each image's own size: probabilities -> threshold -> open/close."""
    probs = predict_probabilities(trained, images, prompts, batch_size=batch_size, hflip_tta=hflip_tta)
    return [postprocess_probabilities(p, threshold, morphology=morphology, kernel_size=kernel_size) for p in probs]
