"""Turning the two stage-2 outputs into one anomaly map and one image score.

R is the per-pixel reconstruction error, P the per-pixel anomaly probability.
The paper multiplies P by the per-image min-max normalised R and smooths the
result with a Gaussian (sigma = 4); other rules are here for comparison.
All functions take and return torch tensors of shape (N, H, W).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from raymae.config import AnomalyMapConfig

COMBINATIONS = ("product", "prob", "recon", "mean")
SCORE_RULES = ("max", "mean", "topk")


def minmax_per_image(x: torch.Tensor) -> torch.Tensor:
    """Scale each (H, W) map of a (N, H, W) batch to [0, 1]."""
    flat = x.flatten(1)
    lo = flat.min(dim=1).values[:, None, None]
    hi = flat.max(dim=1).values[:, None, None]
    return (x - lo) / (hi - lo).clamp(min=1e-12)


def combine(recon_error: torch.Tensor, prob: torch.Tensor, combination: str) -> torch.Tensor:
    """(N, H, W) R and P -> (N, H, W) raw anomaly map."""
    if combination == "product":
        return prob * minmax_per_image(recon_error)
    if combination == "prob":
        return prob
    if combination == "recon":
        return recon_error
    if combination == "mean":
        return 0.5 * (prob + minmax_per_image(recon_error))
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


def image_score(maps: torch.Tensor, rule: str, topk_fraction: float = 0.01) -> torch.Tensor:
    """(N, H, W) maps -> (N,) image scores."""
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
    maps = gaussian_smooth(combine(recon_error, prob, cfg.combination), cfg.sigma)
    return maps, image_score(maps, cfg.score_rule, cfg.topk_fraction)
