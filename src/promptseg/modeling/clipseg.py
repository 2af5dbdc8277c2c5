"""Build or load CLIPSeg, wrap it for a training rung, and run a forward that really trains the encoders.

Architectures (``train.rungs.<v>.architecture``): ``clipseg`` (default) or ``unet``, the
text-conditioned U-Net of :mod:`promptseg.modeling.unet` (random init, sized by ``model.unet``), which learns on a
CPU budget where a ViT from random weights does not.

Model sources (``params.yaml: model.source``, for CLIPSeg):
- ``small``: the CLIPSeg architecture from a ``CLIPSegConfig`` sized by params, random weights, with the
  real CLIP BPE tokenizer built offline from ``vendor/clip/bpe_simple_vocab_16e6.txt.gz``.
- a local directory written by ``save_pretrained`` (model + processor).
- a Hugging Face id such as ``CIDAS/clipseg-rd64-refined`` (needs network or a warm HF cache).

TRAP (why ``segmentation_logits`` exists): ``CLIPSegForImageSegmentation.forward`` computes the vision
and text embeddings under ``torch.no_grad()``, so LoRA adapters in the encoders (and "full" fine-tuning
of the encoders) never receive a gradient through it. ``segmentation_logits`` runs the same computation
with gradients; in eval mode it returns exactly the library forward's logits (tested).
"""

from __future__ import annotations

import gzip
import os
import socket
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn
from transformers import (
    CLIPSegConfig,
    CLIPSegForImageSegmentation,
    CLIPSegProcessor,
    CLIPTokenizer,
    ViTImageProcessor,
)

from promptseg.settings import ClipSegSettings, LoraSettings, ModelSettings, model_settings, to_plain

CLIP_BPE_PATH = Path(os.environ.get("PROMPTSEG_CLIP_BPE", "vendor/clip/bpe_simple_vocab_16e6.txt.gz"))
# The decoder modules that transformers 5.24 initialises with std 1.0 when built from a config.
_DECODER_PLAIN_LAYERS = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)


class ModelSourceError(RuntimeError):
    """The configured model cannot be loaded; the message names the source and the fix."""


# ----------------------------------------------------------------------------------------- tokenizer
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable unicode table (the BPE alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


@lru_cache(maxsize=2)
def build_clip_tokenizer(bpe_path: str | Path = CLIP_BPE_PATH) -> CLIPTokenizer:
    """The CLIP tokenizer (49,408 tokens) built from the BPE merges file that open_clip ships.

    Same construction as CLIP's own SimpleTokenizer: 256 byte symbols, the same with ``</w>``,
    48,894 merges, then ``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407).
    """
    bpe_path = Path(bpe_path)
    if not bpe_path.exists():
        raise ModelSourceError(
            f"CLIP BPE vocabulary not found at {bpe_path}. Run `make install` (it fetches it from the "
            "open_clip_torch wheel) or set PROMPTSEG_CLIP_BPE to the file."
        )
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    alphabet = list(_bytes_to_unicode().values())
    tokens = alphabet + [a + "</w>" for a in alphabet] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=merges)


# ----------------------------------------------------------------------------------------- configs
def small_config(small: ClipSegSettings) -> CLIPSegConfig:
    """A small CLIPSeg with the rd64-refined layout sized by ``model.clipseg``.

    The complex transposed convolution (two x(patch/4) up-convolutions) restores the input size only
    for patch 16; any other patch size gets the plain single up-convolution of stride ``patch_size``.
    """
    return CLIPSegConfig(
        text_config={**to_plain(small.text), "max_position_embeddings": 77},
        vision_config={**to_plain(small.vision), "image_size": 224},
        projection_dim=small.projection_dim,
        reduce_dim=small.reduce_dim,
        extract_layers=list(small.extract_layers),
        decoder_num_attention_heads=small.decoder_num_attention_heads,
        use_complex_transposed_convolution=small.vision.patch_size == 16,
    )


def rd64_refined_config() -> CLIPSegConfig:
    """The shape of ``CIDAS/clipseg-rd64-refined`` (150,747,746 parameters), without its weights."""
    return CLIPSegConfig(
        vision_config={"patch_size": 16},
        reduce_dim=64,
        extract_layers=[3, 6, 9],
        use_complex_transposed_convolution=True,
    )


def reset_decoder_plain_layers(model: CLIPSegForImageSegmentation) -> None:
    """Give the decoder's plain Linear/Conv layers PyTorch's default init.

    From a config, transformers 5.24 initialises ``film_mul``, ``film_add``, ``reduces`` and the
    transposed convolutions with std 1.0 (the config has no top-level ``initializer_range``): logits
    come out around +-1000 and training collapses to empty masks. Pretrained weights are unaffected.
    """
    for name, module in model.decoder.named_modules():
        if isinstance(module, _DECODER_PLAIN_LAYERS) and ".layers." not in f".{name}.":
            module.reset_parameters()


def make_processor(tokenizer: CLIPTokenizer, image_size: int, mean, std) -> CLIPSegProcessor:
    image_processor = ViTImageProcessor(
        do_resize=True,
        size={"height": image_size, "width": image_size},
        resample=2,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(mean),
        image_std=list(std),
    )
    return CLIPSegProcessor(image_processor=image_processor, tokenizer=tokenizer)


def as_model_settings(model: ModelSettings | Mapping, architecture: str | None = None) -> ModelSettings:
    """``model`` as settings: a plain ``params.yaml: model`` mapping (tests, benchmarks) is validated here."""
    return model if isinstance(model, ModelSettings) else model_settings({"model": model}, architecture)


def build_small_model(
    model: ModelSettings | Mapping, image_size: int, seed: int
) -> tuple[CLIPSegForImageSegmentation, CLIPSegProcessor]:
    model = as_model_settings(model, "clipseg")
    torch.manual_seed(seed)
    clipseg = CLIPSegForImageSegmentation(small_config(model.clipseg))
    reset_decoder_plain_layers(clipseg)
    processor = make_processor(build_clip_tokenizer(), image_size, model.image_mean, model.image_std)
    return clipseg, processor


def uses_per_image_standardization(model: ModelSettings | Mapping, architecture: str) -> bool:
    """Whether inputs are standardised per image after the mean/std normalisation.

    Only for the randomly initialised ``small`` model (``model.clipseg.per_image_standardization``).
    Why: CLIP's patch embedding has no bias and is followed by a LayerNorm, so a uniform patch's token
    is the same whatever its brightness; on bright, low-contrast walls a random ViT then sees almost
    no difference between a tape band and the wall. Measured: 135 steps on 8 drywall images gave
    train Dice 0.00 with ImageNet mean/std alone and 0.91 with per-image standardisation.
    Pretrained weights were trained with the plain mean/std and keep it; so does the U-Net, whose
    zero-padded convolutions and batch norm see absolute brightness.
    """
    if architecture != "clipseg":
        return False
    model = as_model_settings(model, architecture)
    return model.source == "small" and model.clipseg.per_image_standardization


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def load_pretrained(source: str) -> tuple[CLIPSegForImageSegmentation, CLIPSegProcessor]:
    """Load model + processor from a local ``save_pretrained`` directory or a Hugging Face id.

    Offline, a hub id first tries the local HF cache; if it is not there, one clear error is raised
    within seconds (no retry loop).
    """
    local = Path(source).expanduser()
    if local.is_dir():
        try:
            return (CLIPSegForImageSegmentation.from_pretrained(local), CLIPSegProcessor.from_pretrained(local))
        except (OSError, ValueError) as exc:
            raise ModelSourceError(f"{local} is not a CLIPSeg save_pretrained directory ({exc}).") from None
    fix = (
        f"Fix: on a machine with network, run CLIPSegForImageSegmentation.from_pretrained({source!r}) and "
        f"CLIPSegProcessor.from_pretrained({source!r}), save_pretrained both into one folder, and set "
        "model.source to that folder; or allow network access (unset HF_HUB_OFFLINE); or use model.source: small."
    )
    try:  # a warm cache works offline
        return (
            CLIPSegForImageSegmentation.from_pretrained(source, local_files_only=True),
            CLIPSegProcessor.from_pretrained(source, local_files_only=True),
        )
    except (OSError, ValueError):
        pass
    if not _hub_reachable():
        raise ModelSourceError(
            f"cannot load model {source!r}: the Hugging Face hub is unreachable (offline) "
            f"and it is not in the local cache. {fix}"
        )
    try:
        return CLIPSegForImageSegmentation.from_pretrained(source), CLIPSegProcessor.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"cannot load model {source!r} from the Hugging Face hub ({exc}). {fix}") from None


# ----------------------------------------------------------------------------------------- rungs
def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def apply_method(model: CLIPSegForImageSegmentation, method: str, lora: LoraSettings | None = None) -> nn.Module:
    """Make the parameters of one training rung trainable; returns the module to train.

    - ``zeroshot``: nothing (the pretrained model as it is).
    - ``full``: every parameter (for the U-Net: all but a frozen text encoder when ``freeze_text``).
    - ``decoder``: the decoder only (encoders frozen): what the library forward trains.
    - ``lora``: peft LoRA on ``targets`` in vision, text and decoder attention; plus the whole decoder
      when ``train_decoder`` is true. Returns the ``PeftModel``. ``lora``: the rung's LoRA settings
      (:class:`promptseg.settings.LoraSettings`), required for ``lora``.
    """
    if method == "full":
        model.requires_grad_(True)
        if getattr(getattr(model, "config", None), "freeze_text", False):  # the U-Net with pretrained text weights
            model.text_encoder.requires_grad_(False)
        return model
    if not hasattr(model, "clip"):
        raise ValueError(f"method {method!r} applies to CLIPSeg only; the U-Net trains with method: full.")
    if method == "zeroshot":
        model.requires_grad_(False)
        return model
    if method == "decoder":
        model.requires_grad_(False)
        model.decoder.requires_grad_(True)
        return model
    if method == "lora":
        from peft import LoraConfig, get_peft_model  # noqa: PLC0415 (heavy, optional: peft pulls in accelerate)

        if lora is None:
            raise ValueError(
                "method 'lora' needs the rung's LoRA settings (r, alpha, dropout, targets, train_decoder)."
            )
        config = LoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(lora.targets), bias="none"
        )
        peft_model = get_peft_model(model, config)
        if lora.train_decoder:
            peft_model.base_model.model.decoder.requires_grad_(True)
        return peft_model
    raise ValueError(f"unknown training method {method!r} in train.rungs: use full, decoder or lora.")


def lora_parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for n, p in module.named_parameters() if "lora_" in n)


def unwrap(module: nn.Module) -> CLIPSegForImageSegmentation:
    """The CLIPSegForImageSegmentation inside a PeftModel (or the model itself)."""
    return module.base_model.model if hasattr(module, "peft_config") else module


def merged_model(module: nn.Module) -> CLIPSegForImageSegmentation:
    """A plain CLIPSeg with any LoRA weights merged in (for saving and export)."""
    if hasattr(module, "peft_config"):
        return module.merge_and_unload()
    return module


# ----------------------------------------------------------------------------------------- forward
def clipseg_vision_activations(model: CLIPSegForImageSegmentation, pixel_values: torch.Tensor) -> list[torch.Tensor]:
    """The vision hidden states the decoder reads: ``[i + 1 for i in extract_layers]`` (index 0 is the
    embeddings). They do not depend on the prompt, so inference over many prompts can reuse them."""
    vision = model.clip.vision_model(
        pixel_values=pixel_values, output_hidden_states=True, interpolate_pos_encoding=True
    )
    return [vision.hidden_states[i + 1] for i in model.extract_layers]


def clipseg_decode(
    model: CLIPSegForImageSegmentation,
    activations: list[torch.Tensor],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    size: tuple[int, int],
    *,
    with_presence: bool = False,
):
    """Logits (B, H, W) from vision activations and prompts: pooled text features projected to
    ``projection_dim``, then the FiLM-conditioned decoder; ``size`` is the input image's (H, W).
    ``with_presence``: ``(logits, None)`` (CLIPSeg has no presence gate)."""
    text = model.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output
    logits = model.decoder(activations, text).logits.reshape(input_ids.shape[0], *size)
    return (logits, None) if with_presence else logits


def build_clipseg(model: ModelSettings | Mapping, image_size: int, seed: int):
    """CLIPSeg to train: the random ``small`` one, or the pretrained ``model.source`` (a folder or a hub id)."""
    model = as_model_settings(model, "clipseg")
    if model.source == "small":
        return build_small_model(model, image_size, seed)
    return load_pretrained(model.source)
