import math

import pytest
import torch
import torch.nn.functional as F

from promptseg.train.losses import bce_dice_loss, soft_dice_loss

BIG = 50.0  # sigmoid(50) == 1.0 in float64, sigmoid(-50) ~ 2e-22


def t64(rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_soft_dice_2x2_by_hand():
    # p = sigmoid(0) = 0.5 everywhere; t has one foreground pixel.
    logits = torch.zeros(1, 2, 2, dtype=torch.float64)
    target = t64([[[1.0, 0.0], [0.0, 0.0]]])
    # dice = (2 * 0.5 + 1) / (4 * 0.5 + 1 + 1) = 2 / 4
    assert soft_dice_loss(logits, target).item() == pytest.approx(0.5, abs=1e-15)
    # eps = 0: dice = (2 * 0.5) / (2 + 1) = 1/3
    assert soft_dice_loss(logits, target, eps=0.0).item() == pytest.approx(2 / 3, abs=1e-15)


def test_soft_dice_soft_target_by_hand():
    logits = torch.zeros(1, 2, 2, dtype=torch.float64)
    target = torch.full((1, 2, 2), 0.5, dtype=torch.float64)
    # inter = 4 * 0.25 = 1, sum p = sum t = 2: dice = (2 + 1) / (4 + 1) = 0.6
    assert soft_dice_loss(logits, target).item() == pytest.approx(0.4, abs=1e-15)


def test_soft_dice_saturated_logits():
    target = t64([[[1.0, 1.0], [0.0, 0.0]]])
    perfect = BIG * (2 * target - 1)  # +50 on foreground, -50 on background
    assert soft_dice_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-12)

    # Predict nothing on a one-pixel target: p ~ 0, dice = (0 + 1) / (0 + 1 + 1).
    target1 = t64([[[0.0, 0.0], [0.0, 1.0]]])
    nothing = torch.full((1, 2, 2), -BIG, dtype=torch.float64)
    assert soft_dice_loss(nothing, target1).item() == pytest.approx(0.5, abs=1e-12)
    assert soft_dice_loss(nothing, target1, eps=0.0).item() == pytest.approx(1.0, abs=1e-12)
    # BCE: one pixel costs 50 (log(1 + e^50) ~ 50), three cost ~0 -> mean 12.5.
    total = bce_dice_loss(nothing, target1)
    assert total.item() == pytest.approx(12.5 + 0.5, abs=1e-12)


def test_soft_dice_is_mean_over_images():
    logits = torch.stack(
        [torch.zeros(2, 2, dtype=torch.float64), torch.full((2, 2), math.log(3.0), dtype=torch.float64)]
    )  # p = 0.5 and p = 0.75
    target = t64([[[1.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]])
    # image 0: 1 - 2/4 = 0.5; image 1: dice = (2*3 + 1) / (3 + 4 + 1) = 7/8 -> 1/8
    assert soft_dice_loss(logits, target).item() == pytest.approx((0.5 + 0.125) / 2, abs=1e-12)


def test_bce_dice_2x2_by_hand_and_weights():
    logits = torch.zeros(1, 2, 2, dtype=torch.float64)
    target = t64([[[1.0, 0.0], [0.0, 0.0]]])
    # BCE at p = 0.5 is log 2 for every pixel, whatever the target.
    assert bce_dice_loss(logits, target).item() == pytest.approx(math.log(2) + 0.5, abs=1e-15)
    got = bce_dice_loss(logits, target, bce_weight=2.0, dice_weight=3.0).item()
    assert got == pytest.approx(2 * math.log(2) + 3 * 0.5, abs=1e-15)
    assert bce_dice_loss(logits, target, bce_weight=0.0).item() == pytest.approx(0.5, abs=1e-15)


def test_empty_target_gives_exactly_bce():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 8, 8, generator=g)
    target = torch.zeros(3, 8, 8)
    assert soft_dice_loss(logits, target).item() == 0.0
    expected = F.binary_cross_entropy_with_logits(logits, target)
    assert torch.equal(bce_dice_loss(logits, target), expected)
    assert torch.equal(bce_dice_loss(logits, target, bce_weight=0.5), 0.5 * expected)


def test_empty_images_dropped_from_dice_term():
    logits = torch.zeros(2, 2, 2, dtype=torch.float64)
    logits[1] = 3.0  # whatever the negative-prompt image predicts ...
    target = t64([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    # ... the Dice term only sees image 0 (loss 0.5), not the mean with image 1.
    assert soft_dice_loss(logits, target).item() == pytest.approx(0.5, abs=1e-15)
    bce = F.binary_cross_entropy_with_logits(logits, target)  # over all 8 pixels
    assert bce_dice_loss(logits, target).item() == pytest.approx(bce.item() + 0.5, abs=1e-15)


@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_gradients_finite(scale):
    g = torch.Generator().manual_seed(1)
    logits = (scale * torch.randn(4, 16, 16, generator=g)).requires_grad_()
    target = (torch.rand(4, 16, 16, generator=g) > 0.7).float()
    target[2] = 0.0  # a negative prompt in the batch
    loss = bce_dice_loss(logits, target)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


def test_all_empty_batch_backward():
    logits = torch.randn(2, 4, 4).requires_grad_()
    dice = soft_dice_loss(logits, torch.zeros(2, 4, 4))
    dice.backward()
    assert dice.item() == 0.0
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_shape_checks():
    with pytest.raises(ValueError):
        soft_dice_loss(torch.zeros(2, 2), torch.zeros(2, 2))
    with pytest.raises(ValueError):
        bce_dice_loss(torch.zeros(1, 2, 2), torch.zeros(1, 2, 3))


# --------------------------------------------------------------------------- box_projection_loss
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from promptseg.train.losses import box_components, box_projection_loss  # noqa: E402


def logit(p):
    p = torch.as_tensor(p, dtype=torch.float64)
    return torch.log(p / (1 - p))


def slanted_band(h=64, w=64):
    """A 3-px tape band drawn at a slant, and its tight bounding box as a filled mask."""
    band = np.zeros((h, w), np.uint8)
    cv2.line(band, (8, 20), (56, 31), 1, thickness=3)
    ys, xs = np.nonzero(band)
    box = np.zeros_like(band)
    box[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = 1
    # the band touches every row and column of its box but fills only a fraction of it
    assert band[ys.min() : ys.max() + 1].any(axis=1).all() and band[:, xs.min() : xs.max() + 1].any(axis=0).all()
    assert band.sum() < 0.5 * box.sum()
    return torch.from_numpy(band).double()[None], torch.from_numpy(box).double()[None]


def test_box_projection_by_hand():
    # box: columns 1-2 of both rows; p chosen as exact probabilities
    box = t64([[[0, 1, 1], [0, 1, 1]]])
    logits = logit([[[0.5, 0.75, 0.25], [0.25, 0.5, 0.5]]])
    # column profile (max over rows): p [0.5, 0.75, 0.5] vs b [0, 1, 1]: dice = (2*1.25 + 1) / (1.75 + 2 + 1) = 14/19
    # row profile (max over columns): p [0.75, 0.5] vs b [1, 1]:        dice = (2*1.25 + 1) / (1.25 + 2 + 1) = 14/17
    proj = 5 / 19 + 3 / 17
    assert box_projection_loss(logits, box, outside_weight=0.0).item() == pytest.approx(proj, abs=1e-12)
    # eps = 0: 1 - 2.5/3.75 = 1/3 and 1 - 2.5/3.25 = 3/13
    got = box_projection_loss(logits, box, outside_weight=0.0, eps=0.0).item()
    assert got == pytest.approx(1 / 3 + 3 / 13, abs=1e-12)
    # outside term: column 0 (p = 0.5, 0.25) -> mean(-log(1 - p)) = (log 2 + log 4/3) / 2
    outside = (math.log(2) + math.log(4 / 3)) / 2
    assert box_projection_loss(logits, box, projection_weight=0.0).item() == pytest.approx(outside, abs=1e-12)
    got = box_projection_loss(logits, box, projection_weight=2.0, outside_weight=3.0).item()
    assert got == pytest.approx(2 * proj + 3 * outside, abs=1e-12)


def test_box_projection_band_vs_box_fill():
    band, box = slanted_band()
    band_logits = 20.0 * (2 * band - 1)
    box_logits = 20.0 * (2 * box - 1)
    empty = torch.full_like(band, -20.0)
    loss_band = box_projection_loss(band_logits, box).item()
    assert loss_band < 0.05
    assert box_projection_loss(empty, box).item() > 0.5
    # the projections of a band and of the full box are the same: the projection cannot tell them apart
    assert box_projection_loss(box_logits, box).item() < 0.05
    # lighting pixels outside the box costs, through the outside term and the column profile
    spill = band_logits.clone()
    spill[0, 50:60, 2:20] = 20.0
    assert box_projection_loss(spill, box).item() > loss_band + 0.5
    # for contrast: the box-fill target punishes the correct band prediction heavily
    assert bce_dice_loss(band_logits, box).item() > 1.0


def test_box_projection_empty_boxes_use_outside_term_only():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 8, 8, generator=g, dtype=torch.float64)
    zeros = torch.zeros_like(logits)
    expected = F.binary_cross_entropy_with_logits(logits, zeros)
    assert box_projection_loss(logits, zeros).item() == pytest.approx(expected.item(), abs=1e-12)
    # a negative image in a batch adds no projection term: only the positive image's projection counts
    box = zeros.clone()
    box[0, 2:5, 2:6] = 1.0
    alone = box_projection_loss(logits[:1], box[:1], outside_weight=0.0).item()
    assert box_projection_loss(logits, box, outside_weight=0.0).item() == pytest.approx(alone, abs=1e-12)
    assert box_projection_loss(logits, zeros, outside_weight=0.0).item() == 0.0


def test_box_projection_per_component_is_stricter_than_union():
    # two boxes stacked over the same columns; the prediction fills box A and lights one pixel of box B
    box = torch.zeros(1, 5, 3, dtype=torch.float64)
    box[0, 0:2] = 1.0
    box[0, 3:5] = 1.0
    pred = torch.full_like(box, -40.0)
    pred[0, 0:2] = 40.0
    pred[0, 3, 0] = 40.0
    comps = box_components(box)
    assert comps.dtype == torch.int64 and comps.max().item() == 2
    assert torch.equal(comps > 0, box > 0)
    # union: column profile [1,1,1] matches; row profile [1,1,0,1,0] vs [1,1,0,1,1]: 1 - 7/8
    union = box_projection_loss(pred, box, outside_weight=0.0).item()
    assert union == pytest.approx(1 / 8, abs=1e-9)
    # per box: A is perfect; B: columns [1,0,0] vs [1,1,1] -> 1 - 3/5, rows [1,0] vs [1,1] -> 1 - 3/4
    per_box = box_projection_loss(pred, box, outside_weight=0.0, components=comps).item()
    assert per_box == pytest.approx((0.0 + (2 / 5 + 1 / 4)) / 2, abs=1e-9)
    # no components at all: projection term is 0
    assert (
        box_projection_loss(pred, torch.zeros_like(box), outside_weight=0.0, components=torch.zeros_like(comps)).item()
        == 0.0
    )


def test_box_projection_pairwise_prefers_band_over_box_fill():
    band, box = slanted_band()
    wall, tape = 0.0, 2.0  # the tape differs in colour from the wall; the wall is uniform
    images = (wall + (tape - wall) * band)[:, None].expand(1, 3, 64, 64).clone()
    band_logits = 20.0 * (2 * band - 1)
    box_logits = 20.0 * (2 * box - 1)
    kw = {"pairwise_weight": 1.0, "images": images}
    pair_band = box_projection_loss(band_logits, box, projection_weight=0, outside_weight=0, **kw).item()
    pair_box = box_projection_loss(box_logits, box, projection_weight=0, outside_weight=0, **kw).item()
    # band: labels change only across the tape edge (dissimilar colours): free
    assert pair_band < 1e-6
    # box fill: wall inside the box is "on", same-coloured wall just outside it is "off": penalised
    assert pair_box > 0.1
    assert box_projection_loss(box_logits, box, **kw).item() > box_projection_loss(band_logits, box, **kw).item() + 0.1
    # checkerboard noise inside a uniform box: -log(p_i p_j + (1 - p_i)(1 - p_j)) on each disagreeing pair
    checker = 20.0 * (2 * ((torch.arange(8)[:, None] + torch.arange(8)[None]) % 2) - 1).double()[None]
    flat = torch.zeros(1, 3, 8, 8, dtype=torch.float64)
    got = box_projection_loss(
        checker,
        torch.ones(1, 8, 8, dtype=torch.float64),
        projection_weight=0,
        outside_weight=0,
        pairwise_weight=1.0,
        images=flat,
        dilation=1,
    ).item()
    # dilation 1: right/down pairs differ, -log(2 sigmoid(20) sigmoid(-20)) = 20 - log 2 (to 1e-8);
    # diagonal pairs agree (cost ~0): 56 + 56 of 56 + 56 + 49 + 49 = 210 pairs
    assert got == pytest.approx((20.0 - math.log(2)) * 112 / 210, rel=1e-7)
    with pytest.raises(ValueError):
        box_projection_loss(band_logits, box, pairwise_weight=1.0)


def test_box_projection_gradients_finite():
    g = torch.Generator().manual_seed(2)
    logits = (30 * torch.randn(3, 16, 16, generator=g)).requires_grad_()
    box = torch.zeros(3, 16, 16)
    box[0, 3:9, 2:14] = 1.0
    box[1, 1:4, 1:4] = 1.0
    box[1, 10:15, 5:12] = 1.0
    images = torch.randn(3, 3, 16, 16, generator=g) * 0.05
    loss = box_projection_loss(logits, box, pairwise_weight=1.0, images=images, components=box_components(box))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert loss.dtype == torch.float32


def test_presence_loss_is_bce_against_whether_the_target_has_any_pixel():
    from promptseg.train.losses import presence_loss

    target = torch.zeros(3, 4, 4)
    target[0, 1, 2] = 1.0  # present: one pixel
    target[2] = 0.4  # soft values at or below 0.5 do not count as present
    logits = torch.tensor([2.0, -1.0, 0.5])
    expected = (
        -(
            math.log(torch.sigmoid(torch.tensor(2.0)).item())
            + math.log(1 - torch.sigmoid(torch.tensor(-1.0)).item())
            + math.log(1 - torch.sigmoid(torch.tensor(0.5)).item())
        )
        / 3
    )
    assert presence_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="must be"):
        presence_loss(torch.zeros(2), target)
