"""The one scoring primitive (counts once -> IoU/Dice with one empty rule) equals the functions it replaced."""

import numpy as np
import pytest
import torch

from promptseg.metrics import iou_dice, iou_dice_from_counts, pixel_counts, threshold_sweep_counts


def old_iou_dice(pred, gt, empty_score):
    """The per-image rule as metrics.iou_dice computed it before (Python ints)."""
    p, g = pred != 0, gt != 0
    tp = int(np.count_nonzero(p & g))
    fp, fn = int(np.count_nonzero(p)) - tp, int(np.count_nonzero(g)) - tp
    if tp + fp + fn == 0:
        return float(empty_score), float(empty_score)
    return tp / (tp + fp + fn), 2.0 * tp / (2 * tp + fp + fn)


def old_sweep(counts, empty_score):
    """evaluate.sweep_thresholds' former inline formulas over (N, T, 3) counts."""
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    denom, union = 2 * tp + fp + fn, tp + fp + fn
    dice = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), empty_score).mean(axis=0)
    iou = np.where(union > 0, tp / np.maximum(union, 1), empty_score).mean(axis=0)
    return iou, dice


def old_validation_dice(logits, targets):
    """train.run_epoch_validation's former Dice (empty = 1 whatever eval.empty_score said)."""
    pred, gt = logits > 0, targets > 0.5
    inter = (pred & gt).sum((1, 2)).float()
    denom = (pred.sum((1, 2)) + gt.sum((1, 2))).float()
    return torch.where(denom > 0, 2 * inter / denom.clamp(min=1), torch.ones_like(denom))


def random_masks(rng, n=40, shape=(17, 23)):
    """Random pairs with every empty case: both empty, one empty, sparse, dense."""
    preds, gts = [], []
    for _ in range(n):
        density_p, density_g = rng.choice([0.0, 0.01, 0.3, 0.9]), rng.choice([0.0, 0.02, 0.5])
        preds.append(rng.random(shape) < density_p)
        gts.append(rng.random(shape) < density_g)
    return np.stack(preds), np.stack(gts)


@pytest.mark.parametrize("empty_score", [1.0, 0.0, 0.5])
def test_primitive_equals_the_old_per_image_and_micro_scores(empty_score):
    preds, gts = random_masks(np.random.default_rng(0))
    assert any(not p.any() and not g.any() for p, g in zip(preds, gts))  # the empty case is exercised
    counts = pixel_counts(preds, gts)
    ious, dices = iou_dice_from_counts(counts, empty_score)
    for k, (p, g) in enumerate(zip(preds, gts)):
        assert (ious[k], dices[k]) == old_iou_dice(p, g, empty_score)  # bit-equal, not approximately
        assert iou_dice(p, g, empty_score=empty_score) == old_iou_dice(p, g, empty_score)
    micro = tuple(float(s) for s in iou_dice_from_counts(counts.sum(axis=0), empty_score))  # score_masks' micro
    assert micro == old_iou_dice(np.concatenate(preds), np.concatenate(gts), empty_score)
    assert iou_dice_from_counts(np.zeros((0, 3), np.int64), empty_score)[0].shape == (0,)


@pytest.mark.parametrize("empty_score", [1.0, 0.0])
def test_primitive_equals_the_old_sweep(empty_score):
    rng = np.random.default_rng(1)
    _, gts = random_masks(rng, n=12)
    probs = rng.random(gts.shape)
    probs[0] = 0.0  # an all-below-threshold map on an (possibly) empty truth
    grid = [0.2, 0.5, 0.8]
    counts = np.stack([threshold_sweep_counts(p, g, grid) for p, g in zip(probs, gts)])
    new = tuple(scores.mean(axis=0) for scores in iou_dice_from_counts(counts, empty_score))
    old = old_sweep(counts, empty_score)
    assert all(np.array_equal(a, b) for a, b in zip(new, old))


def test_torch_counts_give_the_validation_dice_and_honour_empty_score():
    torch.manual_seed(0)
    logits = torch.randn(6, 9, 9)
    logits[0] = -5.0  # nothing predicted
    targets = (torch.rand(6, 9, 9) > 0.7).float()
    targets[0] = 0.0  # nothing there: the empty case
    counts = pixel_counts(logits > 0, targets > 0.5)
    assert counts.dtype == torch.int64 and counts.shape == (6, 3)
    dice = iou_dice_from_counts(counts, 1.0)[1]
    assert torch.allclose(dice.float(), old_validation_dice(logits, targets), atol=1e-7)
    assert iou_dice_from_counts(counts, 0.0)[1][0] == 0.0 and dice[0] == 1.0
    np_dice = iou_dice_from_counts(pixel_counts((logits > 0).numpy(), (targets > 0.5).numpy()), 1.0)[1]
    assert np.array_equal(dice.numpy(), np_dice)


def test_the_mask_scorer_gives_the_old_means():
    from promptseg.metrics import score_masks

    preds, gts = random_masks(np.random.default_rng(2), n=15)
    masks = [p.astype(np.uint8) * 255 for p in preds]
    scores = score_masks(masks, list(gts), empty_score=1.0, tolerance_px=2, thin=False)
    old = [old_iou_dice(p, g, 1.0) for p, g in zip(preds, gts)]
    assert scores["miou"] == float(np.mean([i for i, _ in old])) and scores["dice"] == float(
        np.mean([d for _, d in old])
    )
    assert (scores["micro_iou"], scores["micro_dice"]) == old_iou_dice(np.concatenate(preds), np.concatenate(gts), 1.0)
