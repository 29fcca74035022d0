"""Combining reconstruction error and anomaly probability into one map and score."""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from raymae.anomaly_map import combine, gaussian_smooth, image_score, make_anomaly_map, minmax_per_image
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
