"""Every architecture in one table: how to build it for training, load a trained folder, and run its two halves.

``train.rungs.<rung>.architecture`` names a row of :data:`ARCHITECTURES`. A row gives:

- ``any_size``: whether it runs on a photo at its own size (fully convolutional: native resolution);
- ``config_file``: the file that marks a trained folder of this architecture (its ``save_pretrained``);
- ``model_class``: the class of its loaded model (how a model object is recognised);
- ``build(model_settings, image_size, seed, method) -> (model, processor)``: the base model a rung trains;
- ``load(folder) -> model``: a trained folder's model (the processor is always ``CLIPSegProcessor``: the
  CLIP tokenizer plus the image size and mean/std);
- ``encode(model, pixel_values) -> features``: the prompt-independent half (cached across prompts);
- ``decode(model, features, input_ids, attention_mask, size, with_presence=) -> logits (B, H, W)``, or
  ``(logits, presence logits or None)`` with ``with_presence``;
- ``apply_method(model, method, lora) -> module``: what a rung's ``method`` trains.

Adding an architecture is one module with those functions and one row here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

from promptseg.modeling.clipseg import (
    ModelSourceError,
    build_clipseg,
    clipseg_decode,
    clipseg_vision_activations,
    load_pretrained,
    unwrap,
)
from promptseg.modeling.clipseg import apply_method as apply_method_clipseg_unet
from promptseg.modeling.hed import CONFIG_NAME as HED_CONFIG
from promptseg.modeling.hed import TextConditionedHED, apply_method_hed, build_hed_model, hed_decode
from promptseg.modeling.unet import CONFIG_NAME as UNET_CONFIG
from promptseg.modeling.unet import TextConditionedUNet, build_unet_model, unet_decode
from promptseg.settings import ModelSettings

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "architecture_of",
    "folder_architecture",
    "build_model",
    "apply_method",
    "load_model_folder",
    "encode_images",
    "decode_prompts",
    "segmentation_logits",
]


@dataclass(frozen=True)
class Architecture:
    name: str
    any_size: bool
    config_file: str
    model_class: type
    build: Callable
    load: Callable
    encode: Callable
    decode: Callable
    apply_method: Callable


def _clipseg_load(folder: Path) -> CLIPSegForImageSegmentation:
    try:
        return CLIPSegForImageSegmentation.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"{folder} is not a CLIPSeg save_pretrained directory ({exc}).") from None


ARCHITECTURES: dict[str, Architecture] = {
    "clipseg": Architecture(
        "clipseg",
        False,  # a ViT with learnt position embeddings for one input size
        "config.json",
        CLIPSegForImageSegmentation,
        lambda model, image_size, seed, method: build_clipseg(model, image_size, seed),
        _clipseg_load,
        clipseg_vision_activations,
        clipseg_decode,
        apply_method_clipseg_unet,
    ),
    "unet": Architecture(
        "unet",
        True,
        UNET_CONFIG,
        TextConditionedUNet,
        lambda model, image_size, seed, method: build_unet_model(model, image_size, seed),
        TextConditionedUNet.from_pretrained,
        lambda model, pixel_values: model.encode_image(pixel_values),
        unet_decode,
        apply_method_clipseg_unet,
    ),
    "hed": Architecture(  # pretrained HED-VGG16 (ImageNet, then BSDS500 edges): promptseg.modeling.hed
        "hed",
        True,
        HED_CONFIG,
        TextConditionedHED,
        build_hed_model,
        TextConditionedHED.from_pretrained,
        lambda model, pixel_values: model.encode_image(pixel_values),
        hed_decode,
        apply_method_hed,
    ),
}


def _row(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r} in train.rungs: use {' or '.join(ARCHITECTURES)}.")
    return ARCHITECTURES[name]


def architecture_of(model: nn.Module) -> str:
    """The registry name of a loaded model (a PeftModel is looked through)."""
    for name, row in ARCHITECTURES.items():  # a LoRA-injected model carries peft_config too: the model first
        if isinstance(model, row.model_class):
            return name
    for name, row in ARCHITECTURES.items():
        if isinstance(unwrap(model), row.model_class):
            return name
    raise TypeError(f"{type(model).__name__} is not a registered architecture ({', '.join(ARCHITECTURES)})")


def folder_architecture(folder: str | Path) -> str | None:
    """The architecture whose config file ``folder`` holds (the first row that matches), else None."""
    return next((name for name, row in ARCHITECTURES.items() if (Path(folder) / row.config_file).is_file()), None)


def build_model(model: ModelSettings | Mapping, image_size: int, seed: int, architecture: str, method: str = "full"):
    """The base model and processor a rung of ``architecture`` and ``method`` trains."""
    return _row(architecture).build(model, image_size, seed, method)


def apply_method(model: nn.Module, method: str, lora=None) -> nn.Module:
    """Make the parameters of one training rung trainable (the architecture's own rule); returns the module."""
    return ARCHITECTURES[architecture_of(model)].apply_method(model, method, lora)


def load_model_folder(source: str | Path) -> tuple[nn.Module, CLIPSegProcessor]:
    """Model + processor of a trained folder (its architecture by its config file, the U-Net's checked first
    as a U-Net folder also holds processor files), or of a Hugging Face id (CLIPSeg, :func:`load_pretrained`)."""
    folder = Path(source).expanduser()
    if not folder.is_dir():
        return load_pretrained(str(source))
    name = "unet" if (folder / UNET_CONFIG).is_file() else (folder_architecture(folder) or "clipseg")
    model = ARCHITECTURES[name].load(folder)
    try:
        processor = CLIPSegProcessor.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"{folder} has no readable processor files ({exc}).") from None
    return model, processor


def encode_images(model: nn.Module, pixel_values: torch.Tensor) -> list[torch.Tensor]:
    """The prompt-independent half of any architecture: inference over many prompts computes it once per image."""
    return ARCHITECTURES[architecture_of(model)].encode(model, pixel_values)


def decode_prompts(model, features, input_ids, attention_mask, size, *, with_presence: bool = False):
    """The prompt half: logits (B, H, W) from :func:`encode_images`' features and one prompt per image.
    ``with_presence``: ``(logits, presence logits (B,))`` where the model has a presence gate, else
    ``(logits, None)``."""
    row = ARCHITECTURES[architecture_of(model)]
    return row.decode(model, features, input_ids, attention_mask, size, with_presence=with_presence)


def segmentation_logits(module: nn.Module, pixel_values, input_ids, attention_mask=None, *, with_presence=False):
    """Logits (B, H, W) with gradients reaching every encoder: :func:`encode_images`, then
    :func:`decode_prompts`. For CLIPSeg these are the steps of ``CLIPSegForImageSegmentation.forward``
    without its ``no_grad``; for the U-Net, its own forward. ``with_presence``: see :func:`decode_prompts`."""
    model = unwrap(module)
    return decode_prompts(
        model,
        encode_images(model, pixel_values),
        input_ids,
        attention_mask,
        tuple(pixel_values.shape[-2:]),
        with_presence=with_presence,
    )
