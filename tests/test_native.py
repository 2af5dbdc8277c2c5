"""Thin cracks at their own scale: the crop sampler, the native-resolution cache, and U-Net inference on the
whole photo at its own size (promptseg.train.data crops, promptseg.infer.native)."""

import cv2
import numpy as np
import pytest
import torch

from promptseg.infer.recipe import Recipe
from promptseg.infer.torch_engine import TorchSegmenter
from promptseg.modeling.clipseg import build_clip_tokenizer, make_processor
from promptseg.modeling.unet import TextConditionedUNet, UNetConfig
from promptseg.train.data import PromptedSegmentation, crop_window

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
TINY_UNET = {
    "widths": [16, 32, 64, 128],
    "presence_gate": True,  # [8, ...] at 224 px: a torch 2.13 CPU crash in backward (channels_last)
    "text": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
}


def test_crop_window_is_a_pure_function_of_seed_epoch_index_and_stays_inside():
    windows = {crop_window(7, epoch, index, 90, 130, 64) for epoch in range(5) for index in range(20)}
    assert all(0 <= y <= 90 - 64 and 0 <= x <= 130 - 64 for y, x in windows)
    assert len(windows) > 50  # they move with epoch and index
    assert crop_window(7, 3, 11, 90, 130, 64) == crop_window(7, 3, 11, 90, 130, 64)
    assert crop_window(7, 3, 11, 90, 130, 64) != crop_window(8, 3, 11, 90, 130, 64)
    assert crop_window(1, 0, 0, 64, 64, 64) == (0, 0)
    with pytest.raises(ValueError, match="does not fit"):
        crop_window(1, 0, 0, 63, 100, 64)


def coded_pairs(tmp_path, shapes):
    """Photos whose red channel IS the mask, green = row % 256, blue = column % 256: a crop's pixels tell
    where it was cut and whether the mask was cut in the same place."""
    rng = np.random.default_rng(0)
    pairs = []
    for i, (h, w) in enumerate(shapes):
        mask = np.where(rng.random((h, w)) < 0.3, 255, 0).astype(np.uint8)
        rows, cols = np.indices((h, w))
        rgb = np.stack([mask, rows % 256, cols % 256], axis=-1).astype(np.uint8)
        image_path, mask_path = tmp_path / f"im{i}.png", tmp_path / f"m{i}.png"
        cv2.imwrite(str(image_path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(mask_path), mask)
        pairs.append((image_path, mask_path))
    return pairs


def raw_rgb(pixel_values: torch.Tensor) -> np.ndarray:
    """Undo normalize(): (3, S, S) -> (S, S, 3) uint8."""
    x = pixel_values * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)
    return np.rint(x.permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def dataset(pairs, **kwargs):
    return PromptedSegmentation(pairs, "cracks", ["segment crack"], image_size=48, mean=MEAN, std=STD, seed=5, **kwargs)


def test_crops_cut_image_and_mask_identically_at_native_resolution(tmp_path):
    pairs = coded_pairs(tmp_path, [(100, 120), (60, 200)])
    data = dataset(pairs, crop_size=48, crop_share=1.0)
    for epoch in range(3):
        data.set_epoch(epoch)
        for index in range(len(pairs)):
            pixel_values, target, _, _ = data[index]
            rgb = raw_rgb(pixel_values)
            y, x = crop_window(5, epoch, index, *cv2.imread(str(pairs[index][0])).shape[:2], 48)
            assert rgb[0, 0, 1] == y % 256 and rgb[0, 0, 2] == x % 256  # cut where crop_window says
            assert np.array_equal(rgb[..., 1], (y + np.arange(48))[:, None].repeat(48, 1) % 256)  # no resize
            assert np.array_equal(target.numpy() * 255, rgb[..., 0].astype(np.float32))  # the same window


def test_crop_share_mixes_crops_with_whole_resized_views(tmp_path):
    pairs = coded_pairs(tmp_path, [(100, 120)] * 40)
    data = dataset(pairs, crop_size=48, crop_share=0.5)
    crops = [data.uses_crop(i) for i in range(40)]
    assert 10 <= sum(crops) <= 30
    whole = data[crops.index(False)][0]
    assert raw_rgb(whole)[-1, 0, 1] > 90  # the whole photo resized: its last row is near row 99
    assert dataset(pairs).uses_crop(0) is False  # no crop settings: whole views only
    with pytest.raises(ValueError, match="crop size"):
        dataset(pairs, crop_share=0.5)


def test_small_photos_are_scaled_up_to_fit_the_crop(tmp_path):
    pairs = coded_pairs(tmp_path, [(30, 60)])
    pixel_values, target, _, _ = dataset(pairs, crop_size=48, crop_share=1.0)[0]
    assert pixel_values.shape == (3, 48, 48) and target.shape == (48, 48)


def test_cached_and_uncached_samples_are_identical(tmp_path):
    pairs = coded_pairs(tmp_path, [(100, 120), (60, 200), (48, 48)])
    cached = dataset(pairs, crop_size=48, crop_share=0.6, hflip_prob=0.5)
    uncached = dataset(pairs, crop_size=48, crop_share=0.6, hflip_prob=0.5, native_cache_bytes=0)
    kinds = set()
    for epoch in range(4):
        for data in (cached, uncached):
            data.set_epoch(epoch)
        for index in range(len(pairs)):
            a, b = cached[index], uncached[index]
            kinds.add(cached.uses_crop(index))
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2:] == b[2:]
            assert torch.equal(cached[index][0], a[0])  # read again from the cache
    assert kinds == {True, False}
    assert cached._native.used > 0 and uncached._native.used == 0


def test_a_unet_trained_at_224_predicts_a_320x288_photo_at_its_own_size():
    torch.manual_seed(0)
    model = TextConditionedUNet(UNetConfig.from_params({**TINY_UNET, "image_size": 224}))
    tokenizer = build_clip_tokenizer()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    images = torch.randn(2, 3, 224, 224)
    targets = (images[:, 0] > 0.5).float()
    tokens = tokenizer(["segment crack", "segment joint tape"], padding=True, return_tensors="pt")
    for _ in range(3):  # a few steps at 224 px (FiLM leaves its zero init)
        logits = model(images, tokens["input_ids"], tokens["attention_mask"])
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    trained = TorchSegmenter(model, make_processor(tokenizer, 224, MEAN, STD), {})
    photo = np.random.default_rng(1).integers(0, 256, (320, 288, 3), dtype=np.uint8)
    gates = []
    model.presence.register_forward_hook(lambda module, args, out: gates.append(out[:, 0].clone()))
    native = Recipe(native_resolution=True)
    assert trained.runs_any_size  # the torch U-Net: Segmenter.probabilities takes the native path
    crack, tape = trained.probabilities([photo, photo], ["segment crack", "segment joint tape"], native)
    assert crack.shape == tape.shape == (320, 288) and crack.dtype == np.float32
    assert not np.allclose(crack, tape, atol=1e-4)  # FiLM conditions at this size
    # the presence gate ran once on the 320x288 bottleneck and caps every pixel's probability
    assert len(gates) == 1 and gates[0].shape == (2,)
    for prob, gate in zip((crack, tape), torch.sigmoid(gates[0]).numpy()):
        assert prob.max() <= gate + 1e-6
    with pytest.raises(ValueError, match="one prompt per image"):
        trained.probabilities([photo], [], native)
