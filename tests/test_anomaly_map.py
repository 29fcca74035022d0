"""Combining reconstruction error and anomaly probability into one map and score."""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from raymae.anomaly_map import (combine, gaussian_smooth, image_score, make_anomaly_map, minmax_per_image,
                                normal_quantiles)
from raymae.config import AnomalyMapConfig


def test_the_papers_rule_multiplies_probability_by_normalised_error():
    recon = torch.tensor([[[0.0, 2.0], [4.0, 4.0]]])
    prob = torch.tensor([[[1.0, 1.0], [0.5, 0.0]]])
    assert torch.allclose(combine(recon, prob, "product"), torch.tensor([[[0.0, 0.5], [0.5, 0.0]]]))
    assert torch.equal(combine(recon, prob, "prob"), prob)
    assert torch.equal(combine(recon, prob, "recon"), recon)


def test_minmax_is_per_image():
    maps = torch.stack([torch.full((4, 4), 3.0), torch.arange(16.0).reshape(4, 4)])
    out = minmax_per_image(maps)
    assert torch.all(out[0] == 0) and out[1].min() == 0 and out[1].max() == 1


def test_smoothing_matches_scipys_gaussian_filter():
    x = np.random.default_rng(0).random((2, 40, 40)).astype(np.float32)
    ours = gaussian_smooth(torch.from_numpy(x), 2.0).numpy()
    ref = np.stack([gaussian_filter(m, 2.0, mode="reflect", truncate=4.0) for m in x])
    # scipy's "reflect" repeats the edge pixel (torch's "symmetric"): compare the interior
    assert np.allclose(ours[:, 10:-10, 10:-10], ref[:, 10:-10, 10:-10], atol=1e-5)


def test_score_rules():
    maps = torch.zeros(1, 10, 10)
    maps[0, 0, :5] = 1.0
    assert image_score(maps, "max").item() == 1.0
    assert image_score(maps, "mean").item() == pytest.approx(0.05)
    assert image_score(maps, "topk", 0.1).item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="score rule"):
        image_score(maps, "median")


def test_make_anomaly_map_gives_one_score_per_image():
    recon, prob = torch.rand(3, 16, 16), torch.rand(3, 16, 16)
    maps, scores = make_anomaly_map(recon, prob, AnomalyMapConfig(sigma=1.0, score_rule="topk"))
    assert maps.shape == (3, 16, 16) and scores.shape == (3,)


def test_the_pool_rule_scores_a_hot_area_above_a_single_hot_pixel():
    spot, area = torch.zeros(1, 25, 25), torch.zeros(1, 25, 25)
    spot[0, 12, 12] = 1.0
    area[0, 10:15, 10:15] = 0.5
    assert image_score(spot, "max") > image_score(area, "max")
    assert image_score(spot, "pool", pool_fraction=0.2) < image_score(area, "pool", pool_fraction=0.2)
    assert image_score(area, "pool", pool_fraction=0.2).item() == pytest.approx(0.5)  # 5 x 5 window


def test_the_isstad_map_is_the_product_of_the_smoothed_maps():
    recon, prob = torch.rand(2, 32, 32), torch.rand(2, 32, 32)
    expected = gaussian_smooth(prob, 4.0) * gaussian_smooth(recon, 4.0)
    assert torch.allclose(combine(recon, prob, "isstad"), expected)


def test_normal_referenced_maps_measure_r_and_p_in_units_of_normal_images():
    normal_r, normal_p = torch.rand(4, 16, 16) * 0.01, torch.rand(4, 16, 16) * 0.5
    cfg = AnomalyMapConfig(combination="normal_mean", normal_recon=normal_quantiles(normal_r),
                           normal_prob=normal_quantiles(normal_p))
    low, high = cfg.normal_recon
    assert (low, high) == pytest.approx(tuple(np.quantile(normal_r.numpy(), [0.9, 0.995])))
    # R, hundreds of times smaller than P, counts as much once both are in units of normal maps
    r_only = combine(torch.full((1, 4, 4), high), torch.full((1, 4, 4), cfg.normal_prob[0]), "normal_mean", cfg)
    p_only = combine(torch.full((1, 4, 4), low), torch.full((1, 4, 4), cfg.normal_prob[1]), "normal_mean", cfg)
    assert torch.allclose(r_only, p_only) and torch.allclose(r_only, torch.tensor(0.05))
    both = combine(torch.full((1, 4, 4), high), torch.full((1, 4, 4), cfg.normal_prob[1]), "normal_max", cfg)
    assert torch.allclose(both, torch.tensor(0.1))


def test_a_normal_referenced_map_without_the_normal_quantiles_is_refused():
    with pytest.raises(ValueError, match="normal-map quantiles"):
        make_anomaly_map(torch.rand(1, 8, 8), torch.rand(1, 8, 8), AnomalyMapConfig(combination="normal_mean"))
