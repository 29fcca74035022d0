"""The one inference path: uint8 images in, anomaly maps and image scores out.

``raymae evaluate``, threshold calibration and nightly scoring all call
:class:`Predictor`, so an image gets the same score whichever of them scores it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from raymae.anomaly_map import make_anomaly_map
from raymae.config import AnomalyMapConfig, RaymaeConfig
from raymae.model import MaskedAutoencoderViT


# Where per-image intensity standardisation puts every image: this mean and spread in [0, 1] units.
PER_IMAGE_MEAN, PER_IMAGE_STD = 0.45, 0.2


def to_model_input(images: np.ndarray | torch.Tensor, mean, std, device="cpu",
                   per_image: bool = False, like: np.ndarray | torch.Tensor | None = None) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32, normalised with mean/std.

    ``per_image`` first standardises each image's intensity -- its mean and spread over
    all pixels and channels become PER_IMAGE_MEAN and PER_IMAGE_STD -- so a global change
    of brightness or contrast (an ageing lamp, another shift's exposure) gives the same
    input. ``like`` takes those statistics from other images of the same shape instead
    (stage 2 scales each clean target as its corrupted input was scaled).
    """
    x = _unit(images, device)
    if per_image:
        ref = x if like is None else _unit(like, device)
        spread = ref.std(dim=(1, 2, 3), keepdim=True).clamp(min=1.0 / 255)
        x = (x - ref.mean(dim=(1, 2, 3), keepdim=True)) / spread * PER_IMAGE_STD + PER_IMAGE_MEAN
    m = torch.tensor(mean, device=device, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


def _unit(images: np.ndarray | torch.Tensor, device) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [0, 1] on ``device``."""
    return torch.as_tensor(images, device=device).permute(0, 3, 1, 2).float().div_(255.0)


def model_input(cfg: RaymaeConfig, images, device="cpu", like=None) -> torch.Tensor:
    """:func:`to_model_input` with the recipe's normalisation (``cfg.intensity``)."""
    return to_model_input(images, cfg.mean, cfg.std, device, cfg.intensity == "per_image", like)


def to_unit_range(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Undo :func:`to_model_input`'s normalisation: (N, 3, H, W) in about [0, 1]."""
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return x * s + m


@dataclass
class RawMaps:
    """Per-pixel outputs before combination, each (N, H, W) float32 on the CPU.

    recon_error: squared error between input and repaired image, mean over channels,
                 in [0, 1] pixel units.
    prob:        probability that the pixel is anomalous.
    """

    recon_error: torch.Tensor
    prob: torch.Tensor


@dataclass
class Prediction:
    """maps: (N, H, W) float32 anomaly maps; scores: (N,) float32 image scores."""

    maps: np.ndarray
    scores: np.ndarray


class Predictor:
    """Runs a stage-2 model on batches of uint8 images."""

    def __init__(self, model: MaskedAutoencoderViT, cfg: RaymaeConfig, device: str | torch.device = "cpu"):
        if not model.stage2:
            raise ValueError("the predictor needs a stage-2 model")
        self.model = model.to(device).eval()
        self.cfg = cfg
        self.device = torch.device(device)

    @property
    def image_size(self) -> int:
        return self.model.cfg.image_size

    @torch.no_grad()
    def raw_maps(self, images: np.ndarray, batch_size: int = 32) -> RawMaps:
        """(N, S, S, 3) uint8 -> R and P maps, computed in batches."""
        self._check(images)
        recon, prob = [], []
        for start in range(0, len(images), batch_size):
            x = model_input(self.cfg, images[start:start + batch_size], self.device)
            out = self.model.forward_stage2(x)
            diff = to_unit_range(out.recon, self.cfg.mean, self.cfg.std) - to_unit_range(x, self.cfg.mean, self.cfg.std)
            recon.append((diff ** 2).mean(dim=1).float().cpu())
            prob.append(out.anomaly_prob.float().cpu())
        return RawMaps(torch.cat(recon), torch.cat(prob))

    def predict(self, images: np.ndarray, batch_size: int = 32,
                map_cfg: AnomalyMapConfig | None = None, raw: RawMaps | None = None) -> Prediction:
        """(N, S, S, 3) uint8 -> combined, smoothed maps and image scores (``raw``: the images'
        R and P maps when they were computed already)."""
        raw = self.raw_maps(images, batch_size) if raw is None else raw
        maps, scores = make_anomaly_map(raw.recon_error, raw.prob, map_cfg or self.cfg.anomaly_map)
        return Prediction(maps.numpy().astype(np.float32), scores.numpy().astype(np.float32))

    def _check(self, images: np.ndarray) -> None:
        s = self.image_size
        if images.ndim != 4 or images.shape[1:] != (s, s, 3) or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 images of shape (N, {s}, {s}, 3), got "
                             f"{images.dtype} {tuple(images.shape)}")
