"""The training Dataset: prompt sampling, negative prompts, flips, and reproducibility per epoch."""

import numpy as np
import pytest
import torch

from promptseg.images import list_split
from promptseg.modeling.preprocessing import normalize
from promptseg.train.data import EpochShuffleSampler, PromptedSegmentation

from conftest import PROMPTS

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def make(processed_root, **kwargs):
    return PromptedSegmentation(
        list_split(processed_root, "cracks", "train"),
        "cracks",
        PROMPTS["cracks"],
        image_size=64,
        mean=MEAN,
        std=STD,
        seed=42,
        **kwargs,
    )


def test_negative_prompts_come_at_the_configured_rate_with_zero_targets(processed_root):
    dataset = make(processed_root, negative_prompts=PROMPTS["drywall"], negative_prompt_prob=0.3)
    negatives, total = 0, 0
    for epoch in range(40):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            _, target, prompt, _ = dataset[index]
            total += 1
            if prompt in PROMPTS["drywall"]:
                negatives += 1
                assert torch.count_nonzero(target) == 0
            else:
                assert prompt in PROMPTS["cracks"]
    assert total == 40 * len(dataset)
    assert 0.22 < negatives / total < 0.38


def test_without_negatives_every_prompt_is_the_datasets_own(processed_root):
    dataset = make(processed_root)
    prompts = {dataset[i][2] for e in range(10) for i in range(len(dataset)) if dataset.set_epoch(e) is None}
    assert prompts == set(PROMPTS["cracks"])


def test_samples_are_a_pure_function_of_seed_epoch_and_index(processed_root):
    a, b = make(processed_root, hflip_prob=0.5), make(processed_root, hflip_prob=0.5)
    a.set_epoch(3), b.set_epoch(3)
    for i in range(len(a)):
        xa, ya, pa, _ = a[i]
        xb, yb, pb, _ = b[i]
        assert pa == pb and torch.equal(xa, xb) and torch.equal(ya, yb)
    order = lambda epoch: (lambda s: (s.set_epoch(epoch), list(s))[1])(EpochShuffleSampler(16, 42))
    assert order(1) == order(1) and order(1) != order(2)


def test_flip_moves_image_and_mask_together(processed_root):
    plain, flipped = make(processed_root), make(processed_root, hflip_prob=1.0)
    x0, y0, _, _ = plain[0]
    x1, y1, _, _ = flipped[0]
    assert torch.equal(x1, x0.flip(-1)) and torch.equal(y1, y0.flip(-1))


def test_rotation_turns_image_and_mask_together_and_leaves_other_draws_alone(processed_root):
    """rot90_prob 1.0: every sample is its unrotated self turned by 90, 180 or 270 degrees (image and mask
    alike, prompt unchanged), all three turns occur; and the flip and prompt draws are those of 0.0."""
    plain = make(processed_root, hflip_prob=0.5, negative_prompts=PROMPTS["drywall"], negative_prompt_prob=0.3)
    turned = make(
        processed_root, hflip_prob=0.5, rot90_prob=1.0, negative_prompts=PROMPTS["drywall"], negative_prompt_prob=0.3
    )
    seen = set()
    for epoch in range(3):
        plain.set_epoch(epoch), turned.set_epoch(epoch)
        for i in range(len(plain)):
            x0, y0, p0, _ = plain[i]
            x1, y1, p1, _ = turned[i]
            turns = [k for k in (1, 2, 3) if torch.equal(x1, torch.rot90(x0, k, dims=(1, 2)))]
            assert p1 == p0 and len(turns) == 1, (epoch, i)
            assert torch.equal(y1, torch.rot90(y0, turns[0], dims=(0, 1)))
            seen.add(turns[0])
    assert seen == {1, 2, 3}


def test_jitter_colors_scales_brightness_contrast_and_saturation_as_defined():
    from promptseg.train.data import jitter_colors

    rgb = np.array([[[100, 50, 20], [200, 180, 160]]], dtype=np.uint8)
    assert np.array_equal(jitter_colors(rgb, 1.0, 1.0, 1.0), rgb)
    assert jitter_colors(rgb, 1.5, 1.0, 1.0).tolist() == [[[150, 75, 30], [255, 255, 240]]]  # scaled, clipped
    luma = rgb.astype(np.float64) @ [0.299, 0.587, 0.114]
    assert np.allclose(luma, [61.53, 183.70])  # mean gray 122.615
    assert jitter_colors(rgb, 1.0, 0.0, 1.0).tolist() == [[[123] * 3, [123] * 3]]  # all at the mean gray
    assert jitter_colors(rgb, 1.0, 1.0, 0.0).tolist() == [[[62] * 3, [184] * 3]]  # each pixel its own gray
    # saturation 2: each channel twice as far from its pixel's gray (100 -> 2 * 100 - 61.53 = 138.47)
    assert jitter_colors(rgb, 1.0, 1.0, 2.0).tolist() == [[[138, 38, 0], [216, 176, 136]]]


def test_color_jitter_changes_the_photo_only_and_leaves_other_draws_alone(processed_root):
    """color_jitter 0.3: every sample's image differs from its unjittered self in light only (same mask,
    prompt, flip), reproducibly; 0.0 is the plain dataset, byte for byte."""
    kwargs = {"hflip_prob": 0.5, "negative_prompts": PROMPTS["drywall"], "negative_prompt_prob": 0.3}
    plain, zero = make(processed_root, **kwargs), make(processed_root, color_jitter=0.0, **kwargs)
    jittered, again = (make(processed_root, color_jitter=0.3, **kwargs) for _ in range(2))
    for epoch in range(2):
        for d in (plain, zero, jittered, again):
            d.set_epoch(epoch)
        for i in range(len(plain)):
            x0, y0, p0, _ = plain[i]
            xz, _, _, _ = zero[i]
            x1, y1, p1, _ = jittered[i]
            assert torch.equal(xz, x0) and p1 == p0 and torch.equal(y1, y0)
            assert not torch.equal(x1, x0) and torch.equal(x1, again[i][0])
            # the same picture: the jitter is monotone in each channel, so the pixel order barely changes
            r0, r1 = x0[0].flatten().argsort().argsort().float(), x1[0].flatten().argsort().argsort().float()
            assert torch.corrcoef(torch.stack([r0, r1]))[0, 1] > 0.9
    with pytest.raises(ValueError, match="color_jitter"):
        make(processed_root, color_jitter=1.0)


def test_per_image_standardisation_gives_zero_mean_unit_std():
    rgb = np.random.default_rng(0).integers(150, 200, size=(32, 32, 3), dtype=np.uint8)
    x = normalize(rgb, MEAN, STD, per_image=True)
    assert abs(float(x.mean())) < 1e-5 and abs(float(x.std()) - 1) < 1e-3
    plain = normalize(rgb, MEAN, STD)
    assert torch.allclose(plain[0], (torch.from_numpy(rgb[..., 0].astype(np.float32)) / 255 - MEAN[0]) / STD[0])


def test_training_loader_never_opens_the_true_masks(processed_root, monkeypatch):
    """The synthetic drywall export's true band masks are for evaluation only: training reads images and
    label masks, nothing under true_masks/ (this test fails if any file there is opened)."""
    import builtins

    import cv2
    from PIL import Image

    from promptseg.images import list_split
    from promptseg.train.data import JointSegmentation, PromptedSegmentation

    true_masks = sorted((processed_root / "drywall").glob("*/true_masks/*.png"))
    assert true_masks, "the fixture export should carry true masks"
    opened = []
    for module, name in ((cv2, "imread"), (Image, "open"), (builtins, "open")):
        original = getattr(module, name)
        monkeypatch.setattr(
            module, name, lambda path, *a, _o=original, **k: (opened.append(str(path)), _o(path, *a, **k))[1]
        )
    parts = [
        PromptedSegmentation(
            list_split(processed_root, d, "train"),
            d,
            PROMPTS[d],
            image_size=32,
            mean=[0.5] * 3,
            std=[0.5] * 3,
            negative_prompts=["x"],
            negative_prompt_prob=0.5,
        )
        for d in ("cracks", "drywall")
    ]
    joint = JointSegmentation(parts)
    for index in range(len(joint)):
        joint[index]
    assert any("masks" in p for p in opened)  # the recorder sees the label masks being read
    assert not [p for p in opened if "true_masks" in p]


def test_repeats_show_each_photo_that_many_times_with_draws_of_their_own(processed_root):
    once, twice = make(processed_root, hflip_prob=0.5), make(processed_root, hflip_prob=0.5, repeats=2)
    n = len(once)
    assert len(twice) == 2 * n and [twice.photo(i) for i in range(2 * n)] == [*range(n), *range(n)]
    for epoch in range(3):
        once.set_epoch(epoch), twice.set_epoch(epoch)
        for i in range(n):  # the first copy is the item a single pass gives, draw for draw
            xa, ya, pa, _ = once[i]
            xb, yb, pb, _ = twice[i]
            assert pa == pb and torch.equal(xa, xb) and torch.equal(ya, yb)
    # the second copy shows the same photo, flipped or not by a draw of its own
    plain = make(processed_root, repeats=2)
    same_photo, draws_differ = True, False
    for epoch in range(4):
        twice.set_epoch(epoch), plain.set_epoch(epoch)
        for i in range(n):
            base = plain[i][0]
            assert torch.equal(plain[i + n][0], base)
            copy = twice[i + n][0]
            same_photo &= torch.equal(copy, base) or torch.equal(copy, base.flip(-1))
            draws_differ |= not torch.equal(copy, twice[i][0])
    assert same_photo and draws_differ


def test_repeats_must_be_at_least_one(processed_root):
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        make(processed_root, repeats=0)
