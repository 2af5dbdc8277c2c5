"""The text-conditioned U-Net: shapes, prompt conditioning, learning, save/load, frozen text encoder."""

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPSegConfig, CLIPSegForImageSegmentation

from promptseg.modeling.clipseg import build_clip_tokenizer
from promptseg.modeling.unet import (
    TextConditionedUNet,
    UNetConfig,
    gate_logits,
    is_unet_directory,
    load_text_encoder_weights,
)
from promptseg.train.losses import presence_loss

TINY_PARAMS = {
    "widths": [8, 16, 32, 64],
    "text": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
    "freeze_text": False,
    "image_size": 64,
}


def tiny_unet(seed: int = 0, **overrides) -> TextConditionedUNet:
    torch.manual_seed(seed)
    return TextConditionedUNet(UNetConfig.from_params({**TINY_PARAMS, **overrides}))


def tokens(prompts):
    encoded = build_clip_tokenizer()(prompts, padding=True, return_tensors="pt")
    return encoded["input_ids"], encoded["attention_mask"]


def perturb_film(model: TextConditionedUNet, seed: int = 1) -> None:
    """FiLM starts as the identity (zero init); give it weights so the prompt matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for film in model.film:
            film.weight.copy_(torch.randn(film.weight.shape, generator=generator) * 0.05)
            film.bias.copy_(torch.randn(film.bias.shape, generator=generator) * 0.05)


def line_batch(n: int = 4, size: int = 64, seed: int = 0):
    """Bright noisy images with one dark 3 px line (horizontal or vertical); target = the line."""
    generator = torch.Generator().manual_seed(seed)
    images = 0.8 + 0.1 * torch.randn(n, 3, size, size, generator=generator)
    targets = torch.zeros(n, size, size)
    for i in range(n):
        at = int(torch.randint(8, size - 8, (1,), generator=generator))
        if i % 2:
            targets[i, :, at : at + 3] = 1
        else:
            targets[i, at : at + 3, :] = 1
    images = images * (1 - 0.6 * targets[:, None])
    return (images - images.mean()) / images.std(), targets


def test_config_from_params_and_defaults():
    config = UNetConfig.from_params(TINY_PARAMS)
    assert config.widths == (8, 16, 32, 64) and config.image_size == 64 and config.freeze_text is False
    assert config.presence_gate is False  # a config saved before the gate existed loads without one
    assert tiny_unet().presence is None and tiny_unet(presence_gate=True).presence is not None
    assert config.text_config().eos_token_id == config.text_config().pad_token_id == 49407
    assert UNetConfig().widths == (64, 128, 256, 512)
    with pytest.raises(ValueError):
        UNetConfig.from_params({"widths": [8, 16, 32]})


@pytest.mark.parametrize("height,width", [(64, 64), (70, 50), (20, 40)])
def test_logits_have_the_input_size_also_when_padding_is_needed(height, width):
    model = tiny_unet().eval()
    input_ids, attention_mask = tokens(["segment crack", "segment joint tape"])
    with torch.no_grad():
        logits = model(torch.randn(2, 3, height, width), input_ids, attention_mask)
    assert logits.shape == (2, height, width)
    assert torch.isfinite(logits).all()


def test_film_is_identity_at_init_so_the_prompt_does_not_matter_yet():
    model = tiny_unet().eval()
    image = torch.randn(1, 3, 64, 64).expand(2, -1, -1, -1)
    with torch.no_grad():
        logits = model(image, *tokens(["segment crack", "segment joint tape"]))
    assert torch.equal(logits[0], logits[1])


def test_prompt_changes_the_output_and_the_same_prompt_does_not():
    model = tiny_unet()
    perturb_film(model)
    model.eval()
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        two = model(image.expand(2, -1, -1, -1), *tokens(["segment crack", "segment joint tape"]))
        alone = model(image, *tokens(["segment crack"]))  # shorter padding than in the pair
        again = model(image, *tokens(["segment crack"]))
    assert (two[0] - two[1]).abs().max() > 1e-3
    # Same prompt, other padding and batch: equal up to the batch-size-dependent conv kernels' rounding.
    torch.testing.assert_close(two[0], alone[0], rtol=1e-4, atol=1e-4)
    assert torch.equal(alone, again)


def test_a_few_adamw_steps_learn_a_dark_line():
    model = tiny_unet(seed=0).train()
    images, targets = line_batch()
    input_ids, attention_mask = tokens(["segment crack"] * len(images))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    losses = []
    for _ in range(30):
        loss = F.binary_cross_entropy_with_logits(model(images, input_ids, attention_mask), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    model.eval()
    with torch.no_grad():
        probabilities = model(images, input_ids, attention_mask).sigmoid()
    # Not just the class prior: line pixels score clearly above the wall.
    assert probabilities[targets == 1].mean() > probabilities[targets == 0].mean() + 0.3


@pytest.mark.parametrize("presence_gate", [False, True])
def test_save_pretrained_then_from_pretrained_gives_identical_logits(tmp_path, presence_gate):
    model = tiny_unet(presence_gate=presence_gate)
    perturb_film(model)
    with torch.no_grad():  # move the BatchNorm running statistics off their init
        model.train()(torch.randn(2, 3, 64, 64), *tokens(["segment crack", "segment joint tape"]))
    model.eval()
    assert not is_unet_directory(tmp_path)
    model.save_pretrained(tmp_path)
    assert is_unet_directory(tmp_path) and (tmp_path / "model.safetensors").is_file()
    loaded = TextConditionedUNet.from_pretrained(tmp_path)
    assert not loaded.training and loaded.config == model.config
    image = torch.randn(2, 3, 64, 64)
    input_ids, attention_mask = tokens(["segment crack", "segment drywall seam"])
    with torch.no_grad():
        assert torch.equal(model(image, input_ids, attention_mask), loaded(image, input_ids, attention_mask))


def test_frozen_pretrained_text_encoder_stays_bit_identical_after_a_step():
    torch.manual_seed(0)  # a CLIPSeg whose text encoder has the U-Net's text sizes
    clipseg = CLIPSegForImageSegmentation(
        CLIPSegConfig(
            text_config=TINY_PARAMS["text"],
            projection_dim=32,
            reduce_dim=16,
            extract_layers=[0],
            vision_config={
                "hidden_size": 32,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "intermediate_size": 64,
            },
        )
    )
    source = {k: v.clone() for k, v in clipseg.clip.text_model.state_dict().items()}
    model = load_text_encoder_weights(tiny_unet(freeze_text=True), source)
    assert all(not p.requires_grad for p in model.text_encoder.parameters())
    for name, value in model.text_encoder.state_dict().items():
        assert torch.equal(value, source[name]), name
    trainable = [p for p in model.parameters() if p.requires_grad]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(trainable, lr=1e-2, weight_decay=0.1)
    images, targets = line_batch(n=2)
    loss = F.binary_cross_entropy_with_logits(model.train()(images, *tokens(["segment crack"] * 2)), targets)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    text_keys = [k for k in after if k.startswith("text_encoder.")]
    assert text_keys and all(torch.equal(after[k], before[k]) for k in text_keys)
    assert not torch.equal(after["head.weight"], before["head.weight"])
    assert not torch.equal(after["stem.0.weight"], before["stem.0.weight"])


def test_gate_logits_is_the_logit_of_the_product_of_probabilities_and_stays_finite():
    generator = torch.Generator().manual_seed(0)
    pixel = torch.randn(2, 4, 5, generator=generator, dtype=torch.float64) * 4
    presence = torch.tensor([-3.0, 2.0], dtype=torch.float64)
    product = pixel.sigmoid() * presence.sigmoid()[:, None, None]
    expected = torch.log(product / (1 - product))
    torch.testing.assert_close(gate_logits(pixel.float(), presence.float()).double(), expected, rtol=1e-5, atol=1e-5)
    saturated = gate_logits(torch.tensor([[[200.0, -200.0, 0.0]]]), torch.tensor([200.0]))
    assert torch.isfinite(saturated).all()
    assert saturated[0, 0, 0] > 80 and saturated[0, 0, 1] == -200.0 and abs(saturated[0, 0, 2]) < 1e-6
    # A closed gate closes every pixel: sigmoid(gate) = 1e-4 caps each pixel's probability at 1e-4.
    assert gate_logits(torch.full((1, 2, 2), 50.0), torch.tensor([-9.21])).sigmoid().max() < 1.01e-4


def test_presence_gate_learns_to_close_for_a_prompt_whose_target_is_absent():
    """Same images twice: with "segment crack" the target is the line, with "segment sky" it is empty.
    Trained as in promptseg.train.loop: pixel loss on the gated logits plus the gate's own presence BCE."""
    model = tiny_unet(seed=0, presence_gate=True).train()
    images, targets = line_batch()
    images, targets = torch.cat([images, images]), torch.cat([targets, torch.zeros_like(targets)])
    input_ids, attention_mask = tokens(["segment crack"] * 4 + ["segment sky"] * 4)
    gate_outputs = []
    model.presence.register_forward_hook(lambda module, args, output: gate_outputs.append(output[:, 0].detach()))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    for _ in range(40):
        logits, presence = model.decode_features(
            model.encode_image(images), model.text_features(input_ids, attention_mask), (64, 64), with_presence=True
        )
        loss = F.binary_cross_entropy_with_logits(logits, targets) + presence_loss(presence, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        probabilities = model(images, input_ids, attention_mask).sigmoid()
    gate = gate_outputs[-1]
    assert gate[:4].min() > gate[4:].max() + 2.0, gate  # open for the crack prompt, closed for the sky
    assert probabilities[4:].max() < 0.5  # nothing lit for "segment sky"
    assert probabilities[:4][targets[:4] == 1].mean() > probabilities[:4][targets[:4] == 0].mean() + 0.3


def test_gated_unet_exports_to_onnx_and_onnxruntime_gives_the_same_logits(tmp_path):
    import onnxruntime as ort

    from promptseg.infer.onnx_engine import export_onnx

    model = tiny_unet(presence_gate=True)
    perturb_film(model)
    model.eval()
    tokenizer = build_clip_tokenizer()
    path = export_onnx(model, tmp_path / "unet.onnx", image_size=64, tokenizer=tokenizer)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    image = torch.randn(3, 3, 64, 64)
    input_ids, attention_mask = tokens(["segment crack", "segment taping area", "segment sky"])
    got = session.run(
        None, {"pixel_values": image.numpy(), "input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}
    )[0]
    with torch.no_grad():
        expected = model(image, input_ids, attention_mask).numpy()
    assert got.shape == (3, 64, 64)
    torch.testing.assert_close(torch.from_numpy(got), torch.from_numpy(expected), rtol=1e-4, atol=1e-4)
