"""Sliding-window inference: tile offsets, blend window, seam-free blending, the tiled predictor."""

import numpy as np
import pytest
import torch

from promptseg.infer.tiling import blend_window, predict_probabilities_tiled, tile_origins, tiled_logits

from conftest import TINY_MODEL

SIZES = [(64, 64), (100, 130), (129, 65), (37, 200), (20, 30), (5, 3), (1, 1)]


@pytest.mark.parametrize(
    "length,tile,stride",
    [(64, 64, 48), (100, 64, 48), (65, 64, 48), (640, 352, 264), (1000, 224, 168), (10, 64, 48), (7, 4, 1), (12, 4, 4)],
)
def test_tile_origins_cover_exactly(length, tile, stride):
    origins = tile_origins(length, tile, stride)
    assert origins[0] == 0
    if length <= tile:
        assert origins == [0]
        return
    assert origins[-1] == length - tile
    assert all(b > a for a, b in zip(origins, origins[1:]))
    assert all(b - a <= stride for a, b in zip(origins, origins[1:]))  # no gaps
    covered = np.zeros(length, dtype=int)
    for o in origins:
        covered[o : o + tile] += 1
    assert covered.min() >= 1


def test_tile_origins_by_hand_and_errors():
    assert tile_origins(100, 64, 48) == [0, 36]
    assert tile_origins(160, 64, 48) == [0, 48, 96]
    assert tile_origins(161, 64, 48) == [0, 48, 96, 97]
    with pytest.raises(ValueError):
        tile_origins(100, 64, 65)  # gaps
    with pytest.raises(ValueError):
        tile_origins(100, 64, 0)


@pytest.mark.parametrize("kind", ["hann", "ramp", "uniform"])
@pytest.mark.parametrize("tile", [1, 2, 7, 64])
def test_blend_window_positive_symmetric(kind, tile):
    w = blend_window(tile, kind)
    assert w.shape == (tile, tile)
    assert (w > 0).all() and w.max() <= 1.0
    np.testing.assert_allclose(w, w.T)
    np.testing.assert_allclose(w, w[::-1, ::-1])
    if kind != "uniform" and tile >= 7:
        assert w[tile // 2, tile // 2] > w[0, tile // 2] >= w[0, 0]  # borders count less than the centre
    if kind == "ramp" and tile == 64:
        assert (w[16:48, 16:48] == 1.0).all()  # flat away from the 16-px ramps


def test_blend_window_bad_kind():
    with pytest.raises(ValueError):
        blend_window(8, "gauss")


@pytest.mark.parametrize("height,width", SIZES)
@pytest.mark.parametrize("window", ["hann", "ramp"])
def test_constant_logits_reconstructed_without_seams(height, width, window):
    calls = []

    def logits_fn(batch):
        calls.append(batch.shape)
        return torch.full((batch.shape[0], batch.shape[2], batch.shape[3]), 3.25)

    image = torch.randn(3, height, width, generator=torch.Generator().manual_seed(0))
    out = tiled_logits(logits_fn, image, tile=16, overlap=0.25, batch_size=3, window=window)
    assert out.shape == (height, width) and out.dtype == torch.float32
    assert torch.equal(out, torch.full((height, width), 3.25))
    assert all(shape[0] <= 3 and shape[1:] == (3, 16, 16) for shape in calls)


@pytest.mark.parametrize("height,width", SIZES)
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.9])
def test_position_dependent_logits_reconstructed(height, width, overlap):
    """Tiles of a known image passed through identity on channel 0: the blend gives back the image."""
    yy, xx = torch.meshgrid(
        torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij"
    )
    ramp = torch.sin(0.3 * yy) * 5 + 0.01 * xx * yy - 0.2 * xx  # varies along both axes, not linear
    image = torch.stack([ramp, torch.zeros_like(ramp), torch.ones_like(ramp)])
    out = tiled_logits(lambda b: b[:, 0], image, tile=16, overlap=overlap, batch_size=4)
    torch.testing.assert_close(out, ramp, rtol=1e-6, atol=1e-6)


def test_blend_is_a_weighted_average_of_tiles():
    """Per-tile constant logits: single-tile pixels get their tile's value, overlaps lie in between."""
    seen = []

    def logits_fn(batch):
        vals = torch.arange(len(seen), len(seen) + batch.shape[0], dtype=torch.float32)
        seen.extend(vals.tolist())
        return vals[:, None, None].expand(-1, 16, 16)

    out = tiled_logits(logits_fn, torch.zeros(3, 16, 28), tile=16, overlap=0.25, batch_size=1)
    assert seen == [0.0, 1.0]  # x origins 0 and 12
    assert (out[:, :12] == 0).all() and (out[:, 16:] == 1).all()
    mid = out[:, 12:16]
    assert ((mid > 0) & (mid < 1)).all() and (mid[:, 1:] >= mid[:, :-1]).all()  # smooth hand-over


def test_tiled_logits_checks():
    img = torch.zeros(3, 20, 20)
    with pytest.raises(ValueError):
        tiled_logits(lambda b: b[:, 0], img, tile=16, overlap=1.0, batch_size=2)
    with pytest.raises(ValueError):
        tiled_logits(lambda b: b[:, 0, :8], img, tile=16, overlap=0.25, batch_size=2)  # wrong shape
    with pytest.raises(ValueError):
        tiled_logits(lambda b: b[:, 0], img[0], tile=16, overlap=0.25, batch_size=2)


@pytest.fixture(scope="module")
def trained():
    from promptseg.infer.torch_engine import TorchSegmenter
    from promptseg.modeling.clipseg import build_small_model

    model, processor = build_small_model(TINY_MODEL, 64, 0)
    return TorchSegmenter(model, processor, {"per_image_standardization": True})


def test_predict_probabilities_tiled_shapes_and_range(trained):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((40, 56, 3), (90, 75, 3))]
    prompts = ["segment crack", "segment joint tape"]
    # at 1.0, 40 x 56 is padded up to the 64-px tile and 90 x 75 is 2 x 2 tiles; at 1.5, 60 x 84 is 1 x 2 tiles
    for upscale, n in ((1.0, 2), (1.5, 1)):
        probs = predict_probabilities_tiled(
            trained, images[:n], prompts[:n], upscale=upscale, overlap=0.25, batch_size=3
        )
        assert len(probs) == n
        for image, p in zip(images, probs):
            assert p.shape == image.shape[:2] and p.dtype == np.float32
            assert np.isfinite(p).all() and p.min() >= 0.0 and p.max() <= 1.0
    with pytest.raises(ValueError):
        predict_probabilities_tiled(trained, images, prompts[:1])


def test_single_tile_matches_whole_image_prediction(trained):
    """An image exactly one tile large at upscale 1 is one forward: the same as the plain path."""
    image = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    tiled = predict_probabilities_tiled(trained, [image], ["segment crack"])[0]
    whole = trained.whole_image_probabilities([image], ["segment crack"])[0]
    np.testing.assert_allclose(tiled, whole, rtol=1e-5, atol=1e-6)


def test_prompt_ensemble_and_hflip_tta_match_whole_image_prediction(trained):
    """Same options as the plain path (a prompt ensemble, flip TTA); on a one-tile image the results agree."""
    image = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    prompts = [["segment crack", "segment wall crack"]]
    tiled = predict_probabilities_tiled(trained, [image], prompts, hflip_tta=True)[0]
    whole = trained.whole_image_probabilities([image], prompts, hflip_tta=True)[0]
    np.testing.assert_allclose(tiled, whole, rtol=1e-5, atol=1e-6)
    single = predict_probabilities_tiled(trained, [image], ["segment crack"])[0]
    assert not np.allclose(tiled, single)
    with pytest.raises(ValueError):
        predict_probabilities_tiled(trained, [image], [[]])
