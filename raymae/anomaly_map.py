"""Turning the two stage-2 outputs into one anomaly map and one image score.

R is the per-pixel reconstruction error, P the per-pixel anomaly probability.
The paper multiplies P by the per-image min-max normalised R and smooths the
result with a Gaussian (sigma = 4); other rules are here for comparison.

The ``normal_*`` combinations are referenced to normal images (EfficientAD,
arXiv 2303.14535): R and P are each rescaled so that the 0.9 and 0.995 quantiles
of the held-back normal images' maps become 0 and 0.1, then averaged or the
larger taken. Unlike a per-image min-max, this keeps how far an image as a whole
lies from normal. Calibration measures those quantiles and stores them in the
:class:`AnomalyMapConfig` (``normal_recon``, ``normal_prob``).
All functions take and return torch tensors of shape (N, H, W).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from raymae.config import AnomalyMapConfig

COMBINATIONS = ("product", "prob", "recon", "mean", "isstad", "normal_mean", "normal_max")
NORMAL_QUANTILES = (0.9, 0.995)  # EfficientAD's: where normal maps sit, and where they rarely reach
SCORE_RULES = ("max", "mean", "topk", "pool")

ISSTAD_SIGMA = 4.0  # the released ISSTAD code smooths P, R and their product with sigma 4 each


def minmax_per_image(x: torch.Tensor) -> torch.Tensor:
    """Scale each (H, W) map of a (N, H, W) batch to [0, 1]."""
    flat = x.flatten(1)
    lo = flat.min(dim=1).values[:, None, None]
    hi = flat.max(dim=1).values[:, None, None]
    return (x - lo) / (hi - lo).clamp(min=1e-12)


def normal_quantiles(maps: torch.Tensor | np.ndarray) -> tuple[float, float]:
    """The NORMAL_QUANTILES of all pixels of normal images' (N, H, W) maps."""
    values = np.asarray(maps, dtype=np.float64).ravel()
    low, high = np.quantile(values, NORMAL_QUANTILES)
    return float(low), float(high)


def scale_to_normal(x: torch.Tensor, quantiles: tuple[float, float]) -> torch.Tensor:
    """(N, H, W) map in units of normal images: their quantiles become 0 and 0.1 (EfficientAD)."""
    low, high = quantiles
    return 0.1 * (x - low) / max(high - low, 1e-12)


def combine(recon_error: torch.Tensor, prob: torch.Tensor, combination: str,
            cfg: AnomalyMapConfig | None = None) -> torch.Tensor:
    """(N, H, W) R and P -> (N, H, W) raw anomaly map.

    The ``normal_*`` combinations need ``cfg`` with the normal-map quantiles set.
    """
    if combination in ("normal_mean", "normal_max"):
        if cfg is None or cfg.normal_recon is None or cfg.normal_prob is None:
            raise ValueError(f"the {combination!r} map needs the normal-map quantiles that calibration "
                             "stores (anomaly_map.normal_recon and normal_prob)")
        r, p = scale_to_normal(recon_error, cfg.normal_recon), scale_to_normal(prob, cfg.normal_prob)
        return 0.5 * (r + p) if combination == "normal_mean" else torch.maximum(r, p)
    if combination == "product":
        return prob * minmax_per_image(recon_error)
    if combination == "prob":
        return prob
    if combination == "recon":
        return recon_error
    if combination == "mean":
        return 0.5 * (prob + minmax_per_image(recon_error))
    if combination == "isstad":  # G(P) * G(R), smoothed once more by make_anomaly_map
        return gaussian_smooth(prob, ISSTAD_SIGMA) * gaussian_smooth(recon_error, ISSTAD_SIGMA)
    raise ValueError(f"unknown combination {combination!r}; choose one of {COMBINATIONS}")


def gaussian_smooth(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, H, W) maps, kernel radius 4 sigma, reflect padding."""
    if sigma <= 0:
        return maps
    radius = max(1, int(math.ceil(4 * sigma)))
    radius = min(radius, maps.shape[-1] - 1, maps.shape[-2] - 1)
    xs = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (xs / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = maps.unsqueeze(1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    return x.squeeze(1)


def image_score(maps: torch.Tensor, rule: str, topk_fraction: float = 0.01,
                pool_fraction: float = 0.08) -> torch.Tensor:
    """(N, H, W) maps -> (N,) image scores.

    max, mean, topk (mean of the top ``topk_fraction`` of pixels), or pool: the largest
    mean over a square window ``pool_fraction`` of the side wide (DRAEM's 21 x 21 average
    pool at 256 px), so one hot pixel counts less than a hot area.
    """
    if rule == "pool":
        k = max(1, int(round(pool_fraction * maps.shape[-1]))) | 1  # odd, so the window is centred
        pooled = F.avg_pool2d(maps.unsqueeze(1), k, stride=1, padding=k // 2, count_include_pad=False)
        return pooled.flatten(1).max(dim=1).values
    flat = maps.flatten(1)
    if rule == "max":
        return flat.max(dim=1).values
    if rule == "mean":
        return flat.mean(dim=1)
    if rule == "topk":
        k = max(1, int(round(flat.shape[1] * topk_fraction)))
        return flat.topk(k, dim=1).values.mean(dim=1)
    raise ValueError(f"unknown image-score rule {rule!r}; choose one of {SCORE_RULES}")


def make_anomaly_map(recon_error: torch.Tensor, prob: torch.Tensor,
                     cfg: AnomalyMapConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """R, P -> (smoothed anomaly maps (N, H, W), image scores (N,))."""
    maps, scores = maps_and_scores(recon_error, prob, cfg, (cfg.score_rule,))
    return maps, scores[cfg.score_rule]


def maps_and_scores(recon_error: torch.Tensor, prob: torch.Tensor, cfg: AnomalyMapConfig,
                    score_rules=SCORE_RULES) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """R, P -> (smoothed maps (N, H, W) of ``cfg.combination``, {rule: image scores (N,)} for each
    of ``score_rules``): the map is made and smoothed once for all of them."""
    maps = gaussian_smooth(combine(recon_error, prob, cfg.combination, cfg), cfg.sigma)
    return maps, {rule: image_score(maps, rule, cfg.topk_fraction, cfg.pool_fraction) for rule in score_rules}
