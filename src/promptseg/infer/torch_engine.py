"""Inference helpers: resizing logits and turning probabilities into masks."""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import cv2
import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "postprocess_probabilities",
    "upsample_logits",
    "TrainedModel",
    "load_trained_model",
    "predict_probabilities",
    "predict_masks",
]


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
class EncodingCache:
    """The prompt-independent part of inference for recently seen batches of images: their
    preprocessed pixels and the image half of the model (CLIPSeg's vision activations, the U-Net's encoder
    features). Evaluation runs ten or so prompts over
    the same images; with this cache each image is resized, normalised and encoded once. Keyed by a
    digest of the images' bytes (never by object identity); least recently used entries are dropped
    beyond ``max_bytes``. Results are the same as without it (tested)."""

    def __init__(self, max_bytes: int = 512 * 2**20):
        self.max_bytes, self.used = int(max_bytes), 0
        self._entries: OrderedDict = OrderedDict()

    @staticmethod
    def digest(images: list[np.ndarray]) -> bytes:
        h = hashlib.blake2b(digest_size=16)
        for image in images:
            h.update(repr(image.shape).encode())
            h.update(np.ascontiguousarray(image).data)
        return h.digest()

    def get_or_compute(self, key, compute):
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key][0]
        value = compute()
        tensors = value if isinstance(value, list) else [value]
        size = sum(t.element_size() * t.nelement() for t in tensors)
        if self.max_bytes and size <= self.max_bytes:
            self._entries[key] = (value, size)
            self.used += size
            while self.used > self.max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self.used -= dropped
        return value


class TrainedModel:
    """A trained rung loaded from ``models/<rung>/`` (merged weights + processor + promptseg.json)."""

    def __init__(self, model, processor, card: dict | None = None):
        self.model = model.eval()
        self.processor = processor
        self.card = card or {}
        image_processor = processor.image_processor
        size = image_processor.size
        self.image_size = int(size["height"] if not isinstance(size, int) else size)
        self.mean, self.std = list(image_processor.image_mean), list(image_processor.image_std)
        # inputs standardised per image after mean/std (the small model; promptseg.modeling.clipseg explains why)
        self.per_image = bool(self.card.get("per_image_standardization", False))
        self.encodings = EncodingCache(max_bytes=0)  # off; evaluation turns it on (many prompts, same images)
        self.precision = (
            "fp32"  # auto | fp32 | bf16 (promptseg.modeling.precision): infer.precision, predict --precision
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def load_trained_model(model_dir) -> TrainedModel:
    """Load ``models/<rung>`` (or any CLIPSeg ``save_pretrained`` folder)."""
    import json
    from pathlib import Path

    from promptseg.modeling.clipseg import load_pretrained

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(
            f"model directory {model_dir} not found: train it first (`dvc repro train`) "
            "or pass --model with a folder written by save_pretrained."
        )
    model, processor = load_pretrained(str(model_dir))
    card_path = model_dir / "promptseg.json"
    card = json.loads(card_path.read_text()) if card_path.exists() else {}
    return TrainedModel(model, processor, card)


def _model_logits(
    trained: TrainedModel, pixel_values: torch.Tensor, rows: list[int], prompts: list[str], cache_key=None
) -> torch.Tensor:
    """Logits (len(rows), h, w) at the model's input size for images ``pixel_values[rows]``, one prompt
    each. The model runs in two halves: the image half (CLIPSeg's vision activations, the U-Net's
    encoder), which does not depend on the prompt, then the prompt half (text encoder, FiLM decoder).
    The image half of the whole batch comes from ``trained.encodings`` under ``cache_key`` (computed on
    first use); ``cache_key=None`` computes it for ``rows`` afresh."""
    from promptseg.modeling.clipseg import decode_prompts, encode_images
    from promptseg.modeling.precision import model_autocast

    model, device = trained.model, trained.device
    tokens = trained.processor.tokenizer(list(prompts), padding=True, return_tensors="pt")
    ids, mask = tokens["input_ids"].to(device), tokens["attention_mask"].to(device)
    with model_autocast(trained):
        if cache_key is None:
            features = encode_images(model, pixel_values[rows].to(device))
        else:
            features = trained.encodings.get_or_compute(
                ("encoded", cache_key), lambda: encode_images(model, pixel_values.to(device))
            )
            if len(rows) != len(pixel_values):
                features = [f[rows] for f in features]
        return decode_prompts(model, features, ids, mask, tuple(pixel_values.shape[-2:])).float().cpu()


def average_prompts_and_flips(logits_of, pixel_values, prompt_sets: list[list[str]], hflip_tta: bool, flip, zeros):
    """THE prompt-ensemble and flip-TTA average, shared by the single-pass (:func:`predict_probabilities`),
    tiled (``promptseg.infer.tiling``) and ONNX (``promptseg.infer.onnx_engine``) paths, torch or NumPy alike.

    ``pixel_values``: a batch (B, C, h, w); ``prompt_sets[i]``: the prompts of row i (one, or an ensemble).
    ``logits_of(view, rows, prompts, flipped)`` -> logits (len(rows), h', w') for ``view[rows]`` with one
    prompt per row; ``flip(x)`` mirrors the last axis; ``zeros(shape)`` makes the accumulator. Per row: the
    mean of the logits over its prompts and, with ``hflip_tta``, over the image and its mirror (whose
    logits are flipped back), summed in that order (prompt-major) and divided once."""
    views = [(pixel_values, False)] + ([(flip(pixel_values), True)] if hflip_tta else [])
    total = count = None
    for k in range(max(len(ps) for ps in prompt_sets)):
        rows = [i for i, ps in enumerate(prompt_sets) if k < len(ps)]
        for view, flipped in views:
            logits = logits_of(view, rows, [prompt_sets[i][k] for i in rows], flipped)
            if total is None:
                total, count = zeros((len(prompt_sets), *logits.shape[1:])), zeros((len(prompt_sets), 1, 1))
            total[rows] += flip(logits) if flipped else logits
            count[rows] += 1
    return total / count


@torch.no_grad()
def predict_probabilities(
    trained: TrainedModel, images: list[np.ndarray], prompts: list, *, batch_size: int = 16, hflip_tta: bool = False
) -> list[np.ndarray]:
    """Probability maps at each image's OWN size, one per (image, prompt) pair.

    ``images[i]`` is an (H, W, 3) uint8 RGB array paired with ``prompts[i]``: a string, or a list of
    strings for a PROMPT ENSEMBLE (the logits of every prompt of the list are averaged). Steps per batch:
    resize + normalise -> logits at the model's input size (averaged over the ensemble and, with
    ``hflip_tta``, over the image and its horizontal mirror flipped back) -> bilinear upsample of the
    logits to (H, W) -> sigmoid. Returns float32 (H, W) arrays in [0, 1].
    """
    from promptseg.modeling.preprocessing import preprocess_image

    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts: pass one prompt per image.")
    prompt_sets = [[p] if isinstance(p, str) else list(p) for p in prompts]
    if any(not ps for ps in prompt_sets):
        raise ValueError("an empty prompt list was given for an image: pass at least one prompt.")
    out: list[np.ndarray] = []
    for start in range(0, len(images), batch_size):
        chunk, chunk_sets = images[start : start + batch_size], prompt_sets[start : start + batch_size]
        key = EncodingCache.digest(chunk)
        pixel_values = trained.encodings.get_or_compute(
            ("pixels", key),
            lambda: torch.stack(
                [preprocess_image(im, trained.image_size, trained.mean, trained.std, trained.per_image) for im in chunk]
            ),
        )
        averaged = average_prompts_and_flips(
            lambda view, rows, ps, flipped: _model_logits(trained, view, rows, ps, cache_key=(key, flipped)),
            pixel_values,
            chunk_sets,
            hflip_tta,
            lambda x: torch.flip(x, dims=[-1]),
            torch.zeros,
        )
        for image, logit in zip(chunk, averaged):
            out.append(torch.sigmoid(upsample_logits(logit, image.shape[:2])).numpy())
    return out


def predict_masks(
    trained: TrainedModel,
    images: list[np.ndarray],
    prompts: list,
    *,
    threshold: float,
    morphology: bool = True,
    kernel_size: int = 3,
    batch_size: int = 16,
    hflip_tta: bool = False,
) -> list[np.ndarray]:
    """{0,255} uint8 masks at each image's own size: probabilities -> threshold -> open/close."""
    probs = predict_probabilities(trained, images, prompts, batch_size=batch_size, hflip_tta=hflip_tta)
    return [postprocess_probabilities(p, threshold, morphology=morphology, kernel_size=kernel_size) for p in probs]
