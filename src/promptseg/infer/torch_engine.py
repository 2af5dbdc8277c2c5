"""The PyTorch engine: a trained model folder loaded as a :class:`TorchSegmenter`.

Its plain path (``whole_image_probabilities``) resizes each photo to the model's input size, runs the model in
two halves (the image half, cached across prompts in ``encodings``; then the prompt half), upsamples the
logits back to the photo's size and applies the sigmoid. Its ``window_logits`` feed the tiled path and its
``encoded_logits`` the native-resolution path (promptseg.infer.segmenter decides which runs).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from promptseg.cache import ByteBudgetCache, digest
from promptseg.infer.logits import average_prompts_and_flips, prompt_sets, upsample_logits
from promptseg.infer.segmenter import Segmenter
from promptseg.modeling.precision import autocast, resolve_precision
from promptseg.modeling.preprocessing import preprocess_image
from promptseg.modeling.registry import ARCHITECTURES, architecture_of, decode_prompts, encode_images, load_model_folder
from promptseg.paths import MODEL_CARD

__all__ = ["TorchSegmenter", "load_trained_model"]


class TorchSegmenter(Segmenter):
    """A trained rung (merged weights + processor + promptseg.json) on the PyTorch engine.

    ``cache_bytes``: the size of ``encodings``, the cache of the prompt-independent half (preprocessed pixels and
    the image half of the model) keyed by a digest of the images' bytes; 0 (the default) keeps nothing.
    Evaluation, which runs ten or so prompts over each split in turn, turns it on and calls
    :meth:`forget_encodings` at each new split. What fits is kept (``ByteBudgetCache`` policy ``keep``): the
    prompts scan a split cyclically, and a split larger than the budget (flip TTA on HED doubles it) then still
    hits on what is held, where least-recently-used would hit nothing. Results are the same with or without it
    (tested)."""

    engine = "torch"

    def __init__(self, model, processor, card: dict | None = None, *, cache_bytes: int = 0):
        self.model = model.eval()
        self.processor = processor
        self.card = card or {}
        image_processor = processor.image_processor
        size = image_processor.size
        self.image_size = int(size["height"] if not isinstance(size, int) else size)
        self.mean, self.std = list(image_processor.image_mean), list(image_processor.image_std)
        # inputs standardised per image after mean/std (the small model; promptseg.modeling.clipseg explains why)
        self.per_image = bool(self.card.get("per_image_standardization", False))
        self.architecture = architecture_of(model)
        self.runs_any_size = ARCHITECTURES[self.architecture].any_size
        self.encodings = ByteBudgetCache(cache_bytes, policy="keep")
        self._tokens: dict[tuple[str, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def forget_encodings(self) -> None:
        self.encodings.clear()

    def _autocast(self, precision: str):
        """The forward's context: ``precision`` (auto | fp32 | bf16, promptseg.modeling.precision) on this device."""
        return autocast(resolve_precision(precision, self.device, "the recipe's precision"), self.device)

    def _tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        key = tuple(prompts)
        if key not in self._tokens:
            if len(self._tokens) > 256:
                self._tokens.clear()
            tokens = self.processor.tokenizer(list(prompts), padding=True, return_tensors="pt")
            self._tokens[key] = (tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device))
        return self._tokens[key]

    def encoded_logits(self, pixel_values, rows: list[int], prompts: list[str], cache_key=None, precision="fp32"):
        """Logits (len(rows), h, w) at the input's size for images ``pixel_values[rows]``, one prompt each. The
        model runs in two halves: the image half, which does not depend on the prompt, then the prompt half.
        The image half of the whole batch comes from ``encodings`` under ``cache_key`` (computed on first use);
        ``cache_key=None`` computes it for ``rows`` afresh."""
        model, device = self.model, self.device
        tokens = self.processor.tokenizer(list(prompts), padding=True, return_tensors="pt")
        ids, mask = tokens["input_ids"].to(device), tokens["attention_mask"].to(device)
        with self._autocast(precision):
            if cache_key is None:
                features = encode_images(model, pixel_values[rows].to(device))
            else:
                features = self.encodings.get(
                    ("encoded", cache_key), lambda: encode_images(model, pixel_values.to(device))
                )
                if len(rows) != len(pixel_values):
                    features = [f[rows] for f in features]
            return decode_prompts(model, features, ids, mask, tuple(pixel_values.shape[-2:])).float().cpu()

    def window_logits(self, pixel_values: torch.Tensor, prompts: list[str], precision: str) -> torch.Tensor:
        """Logits (N, t, t) of a batch of tiles, one prompt per tile (the tiles of one image share a prompt: it is
        tokenised once and expanded)."""
        n = pixel_values.shape[0]
        if len(set(prompts)) == 1:
            ids, mask = self._tokenize([prompts[0]])
            ids, mask = ids.expand(n, -1), mask.expand(n, -1)
        else:
            ids, mask = self._tokenize(prompts)
        model = self.model
        with self._autocast(precision):
            features = encode_images(model, pixel_values)
            return decode_prompts(model, features, ids, mask, tuple(pixel_values.shape[-2:])).float()

    @torch.no_grad()
    def whole_image_probabilities(self, images, prompts, *, batch_size=16, hflip_tta=False, precision="fp32"):
        """Probability maps at each image's OWN size, one per (image, prompt) pair: per batch, resize +
        normalise -> logits at the model's input size (averaged over a prompt ensemble and, with ``hflip_tta``,
        over the image and its horizontal mirror flipped back) -> bilinear upsample of the logits to (H, W) ->
        sigmoid. Returns float32 (H, W) arrays in [0, 1]."""
        sets = prompt_sets(images, prompts)
        out: list[np.ndarray] = []
        for start in range(0, len(images), batch_size):
            chunk, chunk_sets = images[start : start + batch_size], sets[start : start + batch_size]
            key = digest(chunk)
            pixel_values = self.encodings.get(
                ("pixels", key),
                lambda: torch.stack(
                    [preprocess_image(im, self.image_size, self.mean, self.std, self.per_image) for im in chunk]
                ),
            )
            averaged = average_prompts_and_flips(
                lambda view, rows, ps, flipped: self.encoded_logits(
                    view, rows, ps, cache_key=(key, flipped), precision=precision
                ),
                pixel_values,
                chunk_sets,
                hflip_tta,
                lambda x: torch.flip(x, dims=[-1]),
                torch.zeros,
            )
            for image, logit in zip(chunk, averaged):
                out.append(torch.sigmoid(upsample_logits(logit, image.shape[:2])).numpy())
        return out


def load_trained_model(model_dir, *, cache_bytes: int = 0) -> TorchSegmenter:
    """Load ``models/<rung>`` (or any ``save_pretrained`` folder of a registered architecture)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(
            f"model directory {model_dir} not found: train it first (`dvc repro train`) "
            "or pass --model with a folder written by save_pretrained."
        )
    model, processor = load_model_folder(model_dir)
    card_path = model_dir / MODEL_CARD
    card = json.loads(card_path.read_text()) if card_path.exists() else {}
    return TorchSegmenter(model, processor, card, cache_bytes=cache_bytes)
