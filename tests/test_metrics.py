import numpy as np
import pytest
import torch

from promptseg.metrics import (
    boundary_f1,
    choose_threshold,
    cl_dice,
    confusion_counts,
    iou_dice,
    iou_dice_from_counts,
    lit_fraction,
    score_masks,
    threshold_sweep_counts,
)


def blank(h=32, w=64):
    return np.zeros((h, w), dtype=bool)


# --------------------------------------------------------------- IoU / Dice


def test_iou_dice_known_fractions():
    pred, gt = blank(), blank()
    pred[5, 10:14] = True  # 4 px
    gt[5, 10:12] = True  # 2 px, inside the prediction
    assert confusion_counts(pred, gt) == (2, 2, 0)
    iou, dice = iou_dice(pred, gt)
    assert iou == pytest.approx(2 / 4)
    assert dice == pytest.approx(2 * 2 / (4 + 2))

    # 4 px vs 4 px, 2 px overlap: IoU 2/6, Dice 4/8
    gt2 = blank()
    gt2[5, 12:16] = True
    assert confusion_counts(pred, gt2) == (2, 2, 2)
    iou, dice = iou_dice(pred, gt2)
    assert iou == pytest.approx(1 / 3)
    assert dice == pytest.approx(1 / 2)


def test_iou_dice_accepts_uint8_0_255():
    pred, gt = blank(), blank()
    pred[0:4, 0:4] = True
    gt[2:6, 0:4] = True
    as255 = lambda m: m.astype(np.uint8) * 255  # noqa: E731
    assert iou_dice(as255(pred), as255(gt)) == iou_dice(pred, gt)
    assert iou_dice(as255(pred), as255(gt)) == pytest.approx((8 / 24, 16 / 32))


def test_iou_dice_empty_rules():
    empty, some = blank(), blank()
    some[3, 3] = True
    assert iou_dice(empty, empty) == (1.0, 1.0)
    assert iou_dice(empty, empty, empty_score=0.0) == (0.0, 0.0)
    assert iou_dice(empty, some) == (0.0, 0.0)
    assert iou_dice(some, empty) == (0.0, 0.0)


def test_empty_prediction_on_thin_line_scores_zero():
    """Regression: the score is over the whole 2-D mask, not averaged over rows."""
    gt = blank(64, 64)
    gt[31, 4:60] = True  # a thin horizontal crack
    pred = blank(64, 64)
    assert iou_dice(pred, gt) == (0.0, 0.0)

    # What a row-averaged score (empty row pair counted as 1) would have said:
    row_scores = [iou_dice(pred[r : r + 1], gt[r : r + 1])[0] for r in range(64)]
    assert np.mean(row_scores) > 0.5


def test_iou_dice_matches_torchmetrics():
    # Imported here: torchmetrics takes ~3 s to import.
    from torchmetrics.functional.classification import binary_f1_score, binary_jaccard_index

    rng = np.random.default_rng(0)
    for density in (0.05, 0.3, 0.7):
        pred = rng.random((40, 50)) < density
        gt = rng.random((40, 50)) < 0.3
        iou, dice = iou_dice(pred, gt)
        p = torch.from_numpy(pred.astype(np.int64)).flatten()
        g = torch.from_numpy(gt.astype(np.int64)).flatten()
        assert iou == pytest.approx(binary_jaccard_index(p, g).item(), abs=1e-6)
        assert dice == pytest.approx(binary_f1_score(p, g).item(), abs=1e-6)


def test_micro_iou_dice_sums_the_counts_over_images():
    a_pred, a_gt = blank(), blank()
    a_pred[0, 0:4] = True
    a_gt[0, 0:2] = True  # (2, 2, 0)
    b_pred, b_gt = blank(), blank()
    b_gt[1, 0:6] = True  # (0, 0, 6)
    assert confusion_counts(a_pred, a_gt) == (2, 2, 0) and confusion_counts(b_pred, b_gt) == (0, 0, 6)
    scores = score_masks([a_pred, b_pred], [a_gt, b_gt], empty_score=1.0, tolerance_px=2, thin=False)
    assert scores["micro_iou"] == pytest.approx(2 / (2 + 2 + 6))
    assert scores["micro_dice"] == pytest.approx(4 / (4 + 2 + 6))
    assert scores["miou"] == pytest.approx((0.5 + 0.0) / 2) and scores["images"] == 2
    empty = score_masks([blank(), blank()], [blank(), blank()], empty_score=0.0, tolerance_px=2, thin=True)
    assert (empty["micro_iou"], empty["micro_dice"], empty["boundary_f1"]) == (0.0, 0.0, 1.0)


# --------------------------------------------------------------- boundary F1


def hline(row, c0=8, c1=56, shape=(32, 64)):
    m = blank(*shape)
    m[row, c0:c1] = True
    return m


def test_boundary_f1_shifted_line():
    gt = hline(10)
    assert boundary_f1(gt, gt) == 1.0
    assert boundary_f1(hline(11), gt, tolerance_px=2) == 1.0
    assert boundary_f1(hline(12), gt, tolerance_px=2) == 1.0
    assert boundary_f1(hline(15), gt, tolerance_px=2) == 0.0
    assert boundary_f1(hline(11), gt, tolerance_px=0) == 0.0


def test_boundary_f1_partial_by_hand():
    gt = hline(10, 8, 56)  # 48 px
    pred = hline(10, 8, 32)  # 24 px, all on the GT
    # precision 1; recall: GT pixels within 2 px of the prediction = 24 + 2 = 26 of 48
    r = 26 / 48
    assert boundary_f1(pred, gt) == pytest.approx(2 * r / (1 + r))


def test_boundary_f1_empty_rules():
    assert boundary_f1(blank(), blank()) == 1.0
    assert boundary_f1(hline(3), blank()) == 0.0
    assert boundary_f1(blank(), hline(3)) == 0.0


# --------------------------------------------------------------- clDice


def test_cl_dice_line_vs_itself_and_far_line():
    line = hline(8)
    assert cl_dice(line, line) == 1.0
    assert cl_dice(hline(24), line) == 0.0


def test_cl_dice_sub_line_by_hand():
    long_line = hline(10, 8, 56)  # 48 px, its own skeleton
    short_line = hline(10, 8, 32)  # 24 px on top of it
    # pred = long, gt = short: Tprec = 24/48, Tsens = 24/24 -> 2 * 0.5 / 1.5
    assert cl_dice(long_line, short_line) == pytest.approx(2 / 3)
    assert cl_dice(short_line, long_line) == pytest.approx(2 / 3)


def test_cl_dice_ignores_thickness():
    bar = blank()
    bar[10:15, 8:56] = True  # 5 px thick, 240 px
    band = blank()
    band[11:14, 8:56] = True  # centre 3 px of it, 144 px
    # Both skeletons run along the middle, inside the other mask: Tprec = Tsens = 1.
    assert cl_dice(bar, band) == pytest.approx(1.0)
    # ... while Dice = 2 * 144 / (240 + 144) = 0.75.
    assert iou_dice(bar, band)[1] == pytest.approx(0.75)

    # Bar vs its 1-px centre line: Tsens = 1 exactly (the line is its own
    # skeleton and lies in the bar); Tprec = share of the bar's skeleton on the
    # centre row, all but the few end pixels of the Zhang skeleton.
    centre = hline(12, 8, 56)
    assert cl_dice(bar, centre) > 0.95
    assert iou_dice(bar, centre)[1] == pytest.approx(2 * 48 / (240 + 48))


def test_cl_dice_empty_rules():
    assert cl_dice(blank(), blank()) == 1.0
    assert cl_dice(hline(3), blank()) == 0.0
    assert cl_dice(blank(), hline(3)) == 0.0


# --------------------------------------------------------------- misc


def test_lit_fraction():
    m = blank(10, 10)
    assert lit_fraction(m) == 0.0
    m[0, :5] = True
    assert lit_fraction(m) == pytest.approx(0.05)
    assert lit_fraction(m.astype(np.uint8) * 255) == pytest.approx(0.05)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        iou_dice(blank(4, 4), blank(4, 5))
    with pytest.raises(ValueError):
        iou_dice(np.zeros((1, 4, 4), bool), np.zeros((1, 4, 4), bool))


# --------------------------------------------------------------- threshold sweep


def naive_sweep(probs, gt, thresholds):
    return np.array([confusion_counts(probs > t, gt) for t in thresholds], dtype=np.int64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_threshold_sweep_matches_naive_loop(dtype):
    rng = np.random.default_rng(123)
    thresholds = [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    for _ in range(5):
        probs = rng.random((37, 53)).astype(dtype)
        # Put many pixels exactly on the thresholds to exercise the strict '>'.
        on_grid = rng.random((37, 53)) < 0.3
        probs[on_grid] = (rng.integers(0, 11, on_grid.sum()) / 10).astype(dtype)
        gt = rng.random((37, 53)) < 0.4
        got = threshold_sweep_counts(probs, gt, thresholds)
        assert got.dtype == np.int64 and got.shape == (7, 3)
        np.testing.assert_array_equal(got, naive_sweep(probs, gt, thresholds))
        # float64 thresholds are still compared in the dtype of probs.
        got64 = threshold_sweep_counts(probs, gt, np.asarray(thresholds, dtype=np.float64))
        np.testing.assert_array_equal(got64, got)


def test_threshold_sweep_unsorted_duplicates_and_edges():
    rng = np.random.default_rng(5)
    probs = rng.random((20, 20)).astype(np.float32)
    probs[0, :4] = [0.0, 1.0, 0.5, 0.5]
    gt = rng.random((20, 20)) < 0.5
    thresholds = [0.9, 0.5, 0.0, 0.5, 1.0, 0.25]
    got = threshold_sweep_counts(probs, gt, thresholds)
    np.testing.assert_array_equal(got, naive_sweep(probs, gt, thresholds))
    assert got[4, 0] == 0 and got[4, 1] == 0  # nothing is > 1.0
    np.testing.assert_array_equal(got.sum(axis=1) - got[:, 1], np.full(6, gt.sum()))  # tp + fn
    assert threshold_sweep_counts(probs, gt, []).shape == (0, 3)


def test_threshold_sweep_all_bg_and_all_fg():
    probs = np.linspace(0, 1, 100, dtype=np.float32).reshape(10, 10)
    np.testing.assert_array_equal(
        threshold_sweep_counts(probs, np.zeros((10, 10), bool), [0.5]),
        naive_sweep(probs, np.zeros((10, 10), bool), [0.5]),
    )
    np.testing.assert_array_equal(
        threshold_sweep_counts(probs, np.ones((10, 10), bool), [0.5]),
        naive_sweep(probs, np.ones((10, 10), bool), [0.5]),
    )


def test_choose_threshold():
    rng = np.random.default_rng(9)
    gt = blank(40, 40)
    gt[10:30, 10:30] = True
    # Foreground mostly in (0.35, 0.65], background mostly below 0.35: best t = 0.3.
    probs = np.where(gt, rng.uniform(0.35, 0.65, gt.shape), rng.uniform(0.0, 0.29, gt.shape))
    probs = probs.astype(np.float32)
    grid = [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    counts = threshold_sweep_counts(probs, gt, grid)
    scores = {t: float(iou_dice_from_counts(c, 1.0)[0]) for t, c in zip(grid, counts)}
    assert scores[0.3] == 1.0
    assert choose_threshold(scores) == 0.3


def test_choose_threshold_ties():
    assert choose_threshold({0.2: 0.5, 0.4: 0.9, 0.7: 0.9}) == 0.4  # closest to 0.5
    assert choose_threshold({0.3: 0.9, 0.7: 0.9, 0.5: 0.1}) == 0.3  # equidistant -> lower
    assert choose_threshold({0.4: 0.9, 0.6: 0.9}) == 0.4
    assert choose_threshold({0.8: 0.7, 0.2: float("nan")}) == 0.8
    with pytest.raises(ValueError):
        choose_threshold({})
