import numpy as np
import pytest
import torch

from promptseg.infer.logits import upsample_logits
from promptseg.metrics import confusion_counts, postprocess_probabilities, threshold_sweep_counts


def test_isolated_pixel_removed():
    probs = np.zeros((32, 32), dtype=np.float32)
    probs[10, 10] = 0.9
    out = postprocess_probabilities(probs, 0.5)
    assert not out.any()
    kept = postprocess_probabilities(probs, 0.5, morphology=False)
    assert kept[10, 10] == 255 and np.count_nonzero(kept) == 1


def test_one_pixel_gap_in_thick_bar_filled():
    full = np.zeros((32, 48), dtype=np.float32)
    full[10:13, 8:40] = 0.9  # 3 px thick bar
    gapped = full.copy()
    gapped[10:13, 24] = 0.0  # 1 px gap across the bar
    out = postprocess_probabilities(gapped, 0.5)
    np.testing.assert_array_equal(out, np.where(full > 0.5, 255, 0).astype(np.uint8))
    assert (postprocess_probabilities(gapped, 0.5, morphology=False)[10:13, 24] == 0).all()


def test_threshold_is_strict():
    probs = np.zeros((16, 16), dtype=np.float32)
    probs[2:10, 2:10] = 0.5
    probs[2:10, 10:14] = 0.3  # float32(0.3) is not > 0.3 either
    assert not postprocess_probabilities(probs, 0.5).any()
    assert not postprocess_probabilities(probs, 0.5, morphology=False).any()
    out = postprocess_probabilities(probs, 0.3, morphology=False)
    assert np.count_nonzero(out) == 64
    out = postprocess_probabilities(probs, np.nextafter(np.float32(0.5), np.float32(0)))
    assert np.count_nonzero(out) == 64


def test_output_dtype_and_values():
    rng = np.random.default_rng(0)
    probs = rng.random((40, 30)).astype(np.float32)
    for morph in (True, False):
        out = postprocess_probabilities(probs, 0.4, morphology=morph)
        assert out.dtype == np.uint8 and out.shape == (40, 30)
        assert set(np.unique(out)) <= {0, 255}
    np.testing.assert_array_equal(
        postprocess_probabilities(probs, 0.4, kernel_size=1),
        postprocess_probabilities(probs, 0.4, morphology=False),
    )
    with pytest.raises(ValueError):
        postprocess_probabilities(probs, 0.4, kernel_size=0)
    with pytest.raises(ValueError):
        postprocess_probabilities(probs[None], 0.4)


def test_raw_threshold_agrees_with_sweep():
    rng = np.random.default_rng(1)
    probs = (rng.integers(0, 11, (24, 24)) / 10).astype(np.float32)
    gt = rng.random((24, 24)) < 0.5
    grid = [0.2, 0.3, 0.5, 0.7]
    sweep = threshold_sweep_counts(probs, gt, grid)
    for t, row in zip(grid, sweep):
        raw = postprocess_probabilities(probs, t, morphology=False)
        assert confusion_counts(raw, gt) == tuple(row)


def test_upsample_constant_and_shapes():
    x = torch.full((2, 7, 9), 3.5)
    y = upsample_logits(x, (20, 31))
    assert y.shape == (2, 20, 31) and y.dtype == x.dtype
    assert torch.allclose(y, torch.full_like(y, 3.5))
    y2 = upsample_logits(x[0], (5, 4))
    assert y2.shape == (5, 4)
    assert torch.allclose(y2, torch.full_like(y2, 3.5))


def test_upsample_align_corners_false():
    x = torch.tensor([[0.0, 1.0]])
    # half-pixel centres: output x-coords map to -0.25, 0.25, 0.75, 1.25 (clamped)
    y = upsample_logits(x, (1, 4))
    assert torch.allclose(y, torch.tensor([[0.0, 0.25, 0.75, 1.0]]))


def test_prompt_ensemble_and_flip_tta_give_masks_of_each_images_shape():
    from promptseg.infer.recipe import Recipe
    from promptseg.infer.torch_engine import TorchSegmenter
    from promptseg.modeling.clipseg import build_small_model

    from conftest import TINY_MODEL

    model, processor = build_small_model(TINY_MODEL, 64, 0)
    trained = TorchSegmenter(model, processor, {"per_image_standardization": True})
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 56, 3), dtype=np.uint8), rng.integers(0, 256, (70, 33, 3), dtype=np.uint8)]
    ensemble = ["segment crack", "segment wall crack"]
    masks = trained.masks(images, [ensemble, "segment crack"], Recipe(threshold=0.5, hflip_tta=True))
    assert [m.shape for m in masks] == [(40, 56), (70, 33)]
    # the ensemble is the mean of the members' logits: sigmoid^-1 of the ensemble = mean of the logits
    single = [trained.whole_image_probabilities(images[:1], [p])[0] for p in ensemble]
    both = trained.whole_image_probabilities(images[:1], [ensemble])[0]
    logit = lambda p: np.log(p) - np.log1p(-p)
    assert np.allclose(logit(both), (logit(single[0]) + logit(single[1])) / 2, atol=1e-4)
    # flip TTA of a mirrored image is the mirror of flip TTA of the image
    flipped = trained.whole_image_probabilities([images[0][:, ::-1].copy()], ["segment crack"], hflip_tta=True)[0]
    plain = trained.whole_image_probabilities(images[:1], ["segment crack"], hflip_tta=True)[0]
    assert np.allclose(flipped, plain[:, ::-1], atol=1e-5)
