import math

import pytest
import torch
import torch.nn.functional as F

from promptseg.losses import bce_dice_loss, soft_dice_loss

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
