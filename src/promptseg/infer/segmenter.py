"""THE Segmenter: images and prompts in, probabilities or masks out, the way a :class:`Recipe` says.

Every caller (evaluation, ``promptseg predict``, the app, the pyfunc model, the runtime stage, the figures)
goes through :meth:`Segmenter.probabilities` / :meth:`Segmenter.masks`; this is the only place that decides
between the three paths:

1. native resolution (``recipe.native_resolution`` on an engine that runs any input size: the torch U-Net):
   the whole photo at its own size (:mod:`promptseg.infer.native`);
2. tiled (``recipe.tiled``): overlapping windows of the model's input size, blended
   (:mod:`promptseg.infer.tiling`);
3. plain: the photo resized to the model's input size, logits upsampled back (the engine's own
   ``whole_image_probabilities``).

An engine (``promptseg.infer.torch_engine.TorchSegmenter``, ``promptseg.infer.onnx_engine.OnnxSegmenter``)
subclasses :class:`Segmenter` and supplies its logits: ``whole_image_probabilities`` (path 3), ``window_logits``
(path 2's tiles) and, where it runs any size, ``encoded_logits`` (path 1). Load one with
``promptseg.infer.engines.load_segmenter``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from promptseg.infer.logits import prompt_sets
from promptseg.infer.native import predict_probabilities_native
from promptseg.infer.recipe import Recipe
from promptseg.infer.tiling import predict_probabilities_tiled
from promptseg.modeling.registry import ARCHITECTURES

__all__ = ["Segmenter"]


class Segmenter:
    """The interface every engine offers (see the module docstring); attributes set by the engine."""

    engine: str = ""  # torch | onnx
    architecture: str = "unknown"  # a row of promptseg.modeling.registry.ARCHITECTURES
    card: dict
    image_size: int
    mean: list[float]
    std: list[float]
    per_image: bool
    export_dir: Path | None = None  # the ONNX export's folder (its recipe.json travels with it)
    runs_any_size: bool = False  # path 1 (native resolution) runs on this engine
    stale: str | None = None  # why an ONNX export may not match the weights beside it (None: it does)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    # ----------------------------------------------------------------------- what an engine supplies
    def whole_image_probabilities(self, images, prompts, *, batch_size=16, hflip_tta=False, precision="fp32"):
        raise NotImplementedError

    def window_logits(self, pixel_values: torch.Tensor, prompts: list[str], precision: str) -> torch.Tensor:
        raise NotImplementedError

    def forget_encodings(self) -> None:
        """Drop any images' encodings held for reuse across prompts (evaluation, at a new split); none by default."""

    # ----------------------------------------------------------------------- the one dispatch
    def cannot_follow(self, recipe: Recipe) -> str | None:
        """Why this engine cannot run ``recipe`` (None if it can): a model that runs each photo at its own size
        (the U-Net), asked to, on an engine traced at one size (its ONNX export). A CLIPSeg resizes on every
        engine (as evaluation did), so a native-resolution recipe runs its plain or tiled path."""
        row = ARCHITECTURES.get(self.architecture)
        if recipe.native_resolution and row is not None and row.any_size and not self.runs_any_size:
            return (
                "this recipe runs the U-Net on each photo at its own size, which runs on the torch engine: use "
                "--engine torch, or --no-native-resolution to run the ONNX engine at the export's size (not the "
                "recipe evaluation scored)"
            )
        return None

    def probabilities(self, images: list[np.ndarray], prompts, recipe: Recipe) -> list[np.ndarray]:
        """Probability maps (float32 (H, W) in [0, 1]) at each image's own size, one per (image, prompt) pair.
        ``prompts``: one per image, each a string or a list (a prompt ensemble, logits averaged); a single
        string is used for every image. ValueError when the engine cannot follow the recipe."""
        if isinstance(prompts, str):
            prompts = [prompts] * len(images)
        sets = prompt_sets(images, prompts)
        why = self.cannot_follow(recipe)
        if why is not None:
            raise ValueError(why)
        if recipe.native_resolution and self.runs_any_size:  # as evaluation: before tiling
            return predict_probabilities_native(
                self, images, sets, batch_size=recipe.batch_size, hflip_tta=recipe.hflip_tta, precision=recipe.precision
            )
        if recipe.tiled:
            return predict_probabilities_tiled(
                self,
                images,
                sets,
                upscale=recipe.tile_upscale,
                overlap=recipe.tile_overlap,
                batch_size=recipe.batch_size,
                hflip_tta=recipe.hflip_tta,
                precision=recipe.precision,
            )
        return self.whole_image_probabilities(
            images, sets, batch_size=recipe.batch_size, hflip_tta=recipe.hflip_tta, precision=recipe.precision
        )

    def masks(self, images: list[np.ndarray], prompts, recipe: Recipe, threshold: float | None = None):
        """{0,255} uint8 masks: :meth:`probabilities`, then ``threshold`` (default the recipe's), the recipe's
        open/close and boxes (:meth:`Recipe.mask`)."""
        return [recipe.mask(p, threshold) for p in self.probabilities(images, prompts, recipe)]
