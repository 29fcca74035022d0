"""Behaviour of raymae.metrics: image/pixel AUROC, AP, F1-max and AUPRO."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from raymae.metrics import (
    aupro,
    f1_max,
    image_auroc,
    image_metrics,
    pixel_ap,
    pixel_auroc,
    pixel_metrics,
    pro_curve,
    roc_curve,
)


def _random_images(seed: int, n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    labels[:2] = [0, 1]
    scores = np.round(rng.normal(size=n) + labels, 1)  # rounding makes ties
    return labels, scores


def _random_pixels(seed: int, n: int = 4, size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Blobby masks (several regions of several sizes, one defect-free image) and noisy maps with ties."""
    rng = np.random.default_rng(seed)
    masks = ndimage.uniform_filter(rng.random((n, size, size)), size=(1, 3, 3)) > 0.6
    masks[0, 0, 0], masks[0, -1, -1] = True, False  # at least one of each class
    masks[-1] = False
    maps = np.round(rng.random(masks.shape) + 0.5 * masks, 1)
    return masks, maps


# --- image level and plain pixel metrics -------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_image_auroc_agrees_with_sklearn_and_pairwise_counting(seed):
    labels, scores = _random_images(seed)
    pos, neg = scores[labels == 1], scores[labels == 0]
    # AUROC = P(pos > neg) + P(pos == neg) / 2 over all (positive, negative) pairs.
    pairwise = np.mean((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :]))
    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert image_auroc(labels, scores) == pytest.approx(pairwise, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_f1_max_is_the_best_f1_of_any_threshold(seed):
    labels, scores = _random_images(seed)
    best = 0.0
    for t in np.unique(scores):
        predicted = scores >= t
        tp = np.sum(predicted & (labels == 1))
        fp = np.sum(predicted & (labels == 0))
        fn = np.sum(~predicted & (labels == 1))
        best = max(best, 2 * tp / (2 * tp + fp + fn))
    assert f1_max(labels, scores) == pytest.approx(best, abs=1e-12)


def test_f1_max_of_a_perfect_separation_is_one():
    assert f1_max([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pixel_auroc_and_ap_agree_with_sklearn_over_flattened_pixels(seed):
    masks, maps = _random_pixels(seed)
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    assert pixel_ap(masks, maps) == pytest.approx(
        average_precision_score(masks.ravel(), maps.ravel()), abs=1e-12
    )


def test_pixel_ap_needs_no_normal_pixel_and_agrees_with_sklearn_on_large_maps():
    rng = np.random.default_rng(3)
    masks = rng.random((3, 64, 64)) > 0.97
    maps = np.round(rng.random(masks.shape) + masks * rng.random(masks.shape), 3).astype(np.float32)
    assert pixel_ap(masks, maps) == pytest.approx(average_precision_score(masks.ravel(), maps.ravel()), abs=1e-12)
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    assert pixel_ap(np.ones_like(masks), maps) == 1.0


def test_convenience_functions_bundle_the_metrics():
    labels, scores = _random_images(0)
    masks, maps = _random_pixels(0)
    assert image_metrics(labels, scores) == {
        "image_auroc": image_auroc(labels, scores),
        "image_f1_max": f1_max(labels, scores),
    }
    assert pixel_metrics(masks, maps, fpr_limit=0.2) == {
        "pixel_auroc": pixel_auroc(masks, maps),
        "pixel_ap": pixel_ap(masks, maps),
        "aupro": aupro(masks, maps, fpr_limit=0.2),
    }


# --- AUPRO, hand-computed cases ------------------------------------------------------------


def test_aupro_of_a_perfect_map_is_one():
    masks, _ = _random_pixels(0)
    maps = np.where(masks, 1.0 + np.arange(masks.size).reshape(masks.shape), 0.5)
    assert aupro(masks, maps, fpr_limit=0.3) == pytest.approx(1.0, abs=1e-12)
    assert aupro(masks, maps, fpr_limit=1.0) == pytest.approx(1.0, abs=1e-12)


def test_aupro_of_a_map_ranking_every_normal_pixel_first_is_zero():
    masks, _ = _random_pixels(0)
    maps = np.where(masks, 0.0, 1.0)
    assert aupro(masks, maps, fpr_limit=0.3) == 0.0
    assert aupro(masks, maps, fpr_limit=0.99) == 0.0


def test_aupro_of_a_hand_made_case_with_two_regions_of_different_size():
    mask = np.zeros((4, 4), dtype=bool)
    mask[0, 0] = True  # region A, area 1
    mask[3, 1:4] = True  # region B, area 3
    m = np.full((4, 4), 0.0)  # 9 normal pixels at the bottom
    m[0, 0] = 0.9  # A found first
    m[3, 1] = 0.8  # one pixel of B
    m[1, 1:4] = 0.7  # three normal pixels, tied
    m[3, 2:4] = 0.6  # rest of B
    # 12 normal pixels -> each adds 1/12 FPR; A pixel adds 1/(2*1) PRO, each B pixel 1/(2*3).
    # Curve: (0,0) (0,1/2) (0,2/3) (3/12,2/3) (3/12,1) (1,1).
    # Up to FPR 0.5: 0.25 * 2/3 + 0.25 * 1 = 5/12, normalised: (5/12) / 0.5 = 5/6.
    assert aupro(mask[None], m[None], fpr_limit=0.5) == pytest.approx(5 / 6, abs=1e-12)
    # Up to FPR 1: 0.25 * 2/3 + 0.75 * 1 = 11/12.
    assert aupro(mask[None], m[None], fpr_limit=1.0) == pytest.approx(11 / 12, abs=1e-12)


@pytest.mark.parametrize("maps", [[[0.9, 0.5, 0.5, 0.1]], [[0.5, 0.9, 0.1, 0.5]]])
def test_aupro_moves_tied_pixels_together_whatever_their_order(maps):
    # One region of area 2 in the first two columns; one of its pixels ties with a normal one.
    mask = np.array([[[1, 1, 0, 0]]])
    # Curve: (0,0) (0,1/2) (1/2,1) (1,1): the tie is one diagonal step, not two right angles.
    # Up to FPR 1: 0.5 * (1/2 + 1) / 2 + 0.5 * 1 = 0.375 + 0.5 = 0.875.
    assert aupro(mask, np.array(maps)[None], fpr_limit=1.0) == pytest.approx(0.875, abs=1e-12)


def test_aupro_of_a_constant_map_is_half_the_limit():
    # Everything tied: the curve is the diagonal (0,0) -> (1,1); area up to L is L^2/2, normalised L/2.
    mask = np.array([[[1, 1, 0, 0]]])
    assert aupro(mask, np.zeros((1, 1, 4)), fpr_limit=0.3) == pytest.approx(0.15, abs=1e-12)


def test_aupro_interpolates_the_segment_cut_by_the_fpr_limit():
    mask = np.array([[[1, 1, 0, 0]]])
    maps = np.array([[[0.9, 0.5, 0.5, 0.1]]])
    # Curve: (0,0) (0,1/2) (1/2,1) (1,1). At FPR 0.3 the sloped segment gives PRO 0.5 + 0.3 = 0.8.
    # Area: 0.3 * (0.5 + 0.8) / 2 = 0.195, normalised 0.195 / 0.3 = 0.65.
    # (Dropping the cut segment would give 0; holding PRO at 0.5 would give 0.5.)
    assert aupro(mask, maps, fpr_limit=0.3) == pytest.approx(0.65, abs=1e-12)


@pytest.mark.parametrize("found", ["small", "large"])
def test_aupro_weighs_regions_equally_regardless_of_size(found):
    masks = np.zeros((2, 5, 5), dtype=bool)
    masks[0, 2, 2] = True  # area 1 in image 0
    masks[1, 1:4, 1:4] = True  # area 9 in image 1
    maps = np.where(masks, 0.0, 0.5)
    maps[0 if found == "small" else 1][masks[0 if found == "small" else 1]] = 1.0
    # One of two regions is fully found before any false positive: PRO = 1/2 over the whole range.
    # (A pixel-weighted overlap would give 1/10 or 9/10 instead.)
    assert aupro(masks, maps, fpr_limit=0.3) == pytest.approx(0.5, abs=1e-12)


def test_aupro_joins_diagonal_neighbours_into_one_region():
    mask = np.zeros((4, 4), dtype=bool)
    mask[0, 0] = mask[1, 1] = True  # diagonal pair: one region of area 2
    mask[3, 3] = True  # a separate region of area 1
    maps = np.where(mask, 0.0, 0.5)
    maps[0, 0] = 1.0  # only half of the diagonal region is found before any normal pixel
    # 8-connected: 2 regions, PRO = (1/2) / 2 = 1/4. (4-connected would give 3 regions, 1/3.)
    assert aupro(mask[None], maps[None], fpr_limit=0.3) == pytest.approx(0.25, abs=1e-12)


# --- AUPRO against a slow, direct reference ---------------------------------------------------


def _brute_force_aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float) -> float:
    """Threshold at every distinct score; FPR and mean region overlap computed directly."""
    regions = []
    for i, mask in enumerate(masks):
        labelled, n = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [(i, labelled == r) for r in range(1, n + 1)]
    points = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        predicted = maps >= t
        fpr = np.sum(predicted & ~masks) / np.sum(~masks)
        pro = np.mean([np.sum(predicted[i] & region) / np.sum(region) for i, region in regions])
        points.append((fpr, pro))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        if x0 >= fpr_limit:
            break
        if x1 > fpr_limit:  # cut the segment at the limit
            y1 = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            x1 = fpr_limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / fpr_limit


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("fpr_limit", [0.05, 0.3, 1.0])
def test_aupro_matches_a_brute_force_reference_on_random_inputs(seed, fpr_limit):
    masks, maps = _random_pixels(seed)
    assert aupro(masks, maps, fpr_limit) == pytest.approx(
        _brute_force_aupro(masks, maps, fpr_limit), abs=1e-9
    )


def test_aupro_is_the_same_for_bool_and_integer_masks_and_float32_maps():
    masks, maps = _random_pixels(3)
    expected = aupro(masks, maps)
    assert aupro(masks.astype(np.uint8), maps.astype(np.float32)) == pytest.approx(expected, abs=1e-6)


# --- clear errors for bad inputs ------------------------------------------------------------


GOOD_MASKS = np.array([[[1, 0], [0, 0]]])
GOOD_MAPS = np.array([[[0.9, 0.1], [0.2, 0.3]]])


@pytest.mark.parametrize("metric", [image_auroc, f1_max])
@pytest.mark.parametrize(
    "labels, scores, message",
    [
        ([0, 1, 1], [0.1, 0.2], "differ in length"),
        ([[0, 1]], [[0.1, 0.2]], "must be 1-D"),
        ([0, 0], [0.1, 0.2], "no anomalous images"),
        ([0, 1], [0.1, np.nan], "NaN"),
        ([0, 2], [0.1, 0.2], "only 0/1"),
    ],
)
def test_image_metrics_reject_bad_inputs_clearly(metric, labels, scores, message):
    with pytest.raises(ValueError, match=message):
        metric(labels, scores)


def test_image_auroc_needs_a_normal_image():
    with pytest.raises(ValueError, match="no normal images"):
        image_auroc([1, 1], [0.1, 0.2])


@pytest.mark.parametrize("metric", [pixel_auroc, pixel_ap, aupro])
@pytest.mark.parametrize(
    "masks, maps, message",
    [
        (GOOD_MASKS, GOOD_MAPS[:, :1], "differ in shape"),
        (GOOD_MASKS[0], GOOD_MAPS[0], "must be 3-D"),
        (np.zeros_like(GOOD_MASKS), GOOD_MAPS, "no anomalous pixels"),
        (GOOD_MASKS, np.where(GOOD_MASKS, np.nan, GOOD_MAPS), "NaN"),
        (GOOD_MASKS * 255, GOOD_MAPS, "only 0/1"),
    ],
)
def test_pixel_metrics_reject_bad_inputs_clearly(metric, masks, maps, message):
    with pytest.raises(ValueError, match=message):
        metric(masks, maps)


@pytest.mark.parametrize("metric", [pixel_auroc, aupro])
def test_pixel_auroc_and_aupro_need_a_normal_pixel(metric):
    with pytest.raises(ValueError, match="no normal pixels"):
        metric(np.ones_like(GOOD_MASKS), GOOD_MAPS)


@pytest.mark.parametrize("fpr_limit", [0.0, -0.1, 1.5, np.nan])
def test_aupro_rejects_an_fpr_limit_outside_zero_to_one(fpr_limit):
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(GOOD_MASKS, GOOD_MAPS, fpr_limit)


# --- the curves behind the areas, for plots ---------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_the_roc_curve_runs_from_0_0_to_1_1_and_its_area_is_the_auroc(seed):
    labels, scores = _random_images(seed)
    fpr, tpr = roc_curve(labels, scores)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(image_auroc(labels, scores))


@pytest.mark.parametrize("seed", [0, 1])
def test_the_pro_curve_is_the_one_aupro_integrates(seed):
    masks, maps = _random_pixels(seed)
    fpr, pro = pro_curve(masks, maps)
    assert (fpr[0], pro[0], fpr[-1]) == (0.0, 0.0, 1.0) and pro[-1] == pytest.approx(1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(pro) >= 0)
    assert np.trapezoid(pro, fpr) == pytest.approx(aupro(masks, maps, fpr_limit=1.0))


def test_the_curves_refuse_what_their_metrics_refuse():
    with pytest.raises(ValueError, match="no normal images"):
        roc_curve([1, 1], [0.2, 0.3])
    with pytest.raises(ValueError, match="no anomalous pixels"):
        pro_curve(np.zeros((1, 2, 2)), np.zeros((1, 2, 2)))
