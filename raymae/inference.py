"""The one inference path: uint8 images in, anomaly maps and image scores out.

``raymae evaluate``, threshold calibration and nightly scoring all call
:class:`Predictor`, so an image gets the same score whichever of them scores it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from raymae.anomaly_map import make_anomaly_map
from raymae.config import AnomalyMapConfig, Intensity, RaymaeConfig
from raymae.model import MaskedAutoencoderViT


# Where per-image intensity standardisation puts every image: this mean and spread in [0, 1] units.
PER_IMAGE_MEAN, PER_IMAGE_STD = 0.45, 0.2


def to_model_input(images: np.ndarray | torch.Tensor, mean, std, device="cpu",
                   intensity: Intensity = "fixed", like: np.ndarray | torch.Tensor | None = None) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32, normalised with mean/std.

    ``intensity`` first makes each image's intensity independent of the lighting:

    * ``"fixed"``: nothing; the image as it is.
    * ``"per_image"``: its mean and spread over all pixels and channels become
      PER_IMAGE_MEAN and PER_IMAGE_STD, so a global change of brightness or contrast gives
      the same input. A large defect changes the spread too and so flattens the rest.
    * ``"per_image_gain"``: it is divided by its median and multiplied by PER_IMAGE_MEAN.
      Undoes a brighter or darker lamp (a gain) and keeps local contrast: a large defect
      moves the median far less than it inflates the spread.
    * ``"per_image_robust"``: like ``"per_image"`` with the median as centre and the
      interquartile range as spread: a global change of brightness or contrast gives the
      same input, and a defect over less than a quarter of the image hardly moves either.

    ``like`` takes those statistics from other images of the same shape instead
    (stage 2 scales each clean target as its corrupted input was scaled).
    """
    if intensity not in INTENSITIES:
        raise ValueError(f"intensity must be one of {', '.join(INTENSITIES)}, not {intensity!r}")
    x = _unit(images, device)
    if intensity != "fixed":
        ref = x if like is None else _unit(like, device)
        x = INTENSITIES[intensity](x, ref)
    m = torch.tensor(mean, device=device, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


def _standardise(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W): ``ref``'s mean and spread -> PER_IMAGE_MEAN and PER_IMAGE_STD."""
    return _moved(x, ref.mean(dim=(1, 2, 3), keepdim=True), ref.std(dim=(1, 2, 3), keepdim=True))


def _moved(x: torch.Tensor, centre: torch.Tensor, spread: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) with per-image ``centre`` and ``spread`` (N, 1, 1, 1) -> PER_IMAGE_MEAN and
    PER_IMAGE_STD; a flat image's spread counts as one grey level, so it is not blown up."""
    return (x - centre) / spread.clamp(min=1.0 / 255) * PER_IMAGE_STD + PER_IMAGE_MEAN


def _divide_by_median(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W): x * PER_IMAGE_MEAN / median(ref); a black image is not blown up."""
    median = ref.flatten(1).median(dim=1).values.clamp(min=8.0 / 255).view(-1, 1, 1, 1)
    return x * (PER_IMAGE_MEAN / median)


def _standardise_robustly(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W): ``ref``'s median and interquartile range -> PER_IMAGE_MEAN and PER_IMAGE_STD.

    The interquartile range is divided by 1.349, a normal distribution's IQR / std, so a
    Gaussian-looking image is scaled as ``"per_image"`` scales it.
    """
    q = torch.quantile(ref.flatten(1), torch.tensor([0.25, 0.5, 0.75], device=ref.device), dim=1)
    low, median, high = (v.view(-1, 1, 1, 1) for v in q)
    return _moved(x, median, (high - low) / 1.349)


INTENSITIES = {"fixed": None, "per_image": _standardise, "per_image_gain": _divide_by_median,
               "per_image_robust": _standardise_robustly}


def _unit(images: np.ndarray | torch.Tensor, device) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [0, 1] on ``device``."""
    return torch.as_tensor(images, device=device).permute(0, 3, 1, 2).float().div_(255.0)


def model_input(cfg: RaymaeConfig, images, device="cpu", like=None) -> torch.Tensor:
    """:func:`to_model_input` with the recipe's normalisation (``cfg.intensity``)."""
    return to_model_input(images, cfg.mean, cfg.std, device, cfg.intensity, like)


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


PRECISIONS = ("auto", "fp32", "bf16")
# bf16 autocast moves an image score by at most this share of the spread (max - min) of the
# scores of the images scored together, against fp32 (measured on CPU with bf16 support:
# docs/gpu-suite.md; tests/test_inference.py holds it to this).
BF16_SCORE_TOLERANCE = 0.02


def resolve_precision(precision: str, device: torch.device) -> str:
    """"fp32" or "bf16": ``auto`` is bf16 on CUDA, fp32 everywhere else."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown inference precision {precision!r}; choose one of {PRECISIONS}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


class Predictor:
    """Runs a stage-2 model on batches of uint8 images.

    On a GPU the whole path after decoding runs there, batch by batch: the
    intensity normalisation, the network, the reconstruction error, the map
    combination, the smoothing, the image score and (``map_size``) the heatmap
    downsampling; only maps and scores come back to the CPU. The uint8
    batches go up through reused pinned buffers with non-blocking copies, so the
    CPU prepares the next batch while the GPU works on this one.

    ``precision``: "fp32", "bf16" (autocast for the network only; the maps and
    scores are computed in float32) or "auto": bf16 on CUDA, fp32 elsewhere.
    """

    def __init__(self, model: MaskedAutoencoderViT, cfg: RaymaeConfig, device: str | torch.device = "cpu",
                 precision: str = "auto"):
        if not model.stage2:
            raise ValueError("the predictor needs a stage-2 model")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.cfg = cfg
        self.precision = resolve_precision(precision, self.device)
        self._pinned: list[torch.Tensor] = []        # reused host staging buffers (CUDA)
        self._copied: list = []                       # the event after each buffer's last copy

    @property
    def image_size(self) -> int:
        return self.model.cfg.image_size

    @torch.no_grad()
    def raw_maps(self, images: np.ndarray, batch_size: int = 32) -> RawMaps:
        """(N, S, S, 3) uint8 -> R and P maps, computed in batches."""
        self._check(images)
        recon, prob = [], []
        for x in self._device_batches(images, batch_size):
            r, p = self._raw(x)
            recon.append(r)
            prob.append(p)
        return RawMaps(_to_cpu(recon), _to_cpu(prob))

    @torch.no_grad()
    def predict(self, images: np.ndarray, batch_size: int = 32, map_cfg: AnomalyMapConfig | None = None,
                raw: RawMaps | None = None, map_size: int | None = None) -> Prediction:
        """(N, S, S, 3) uint8 (a numpy array, or a tensor on any device) -> combined, smoothed maps
        and image scores.

        ``raw``: the images' R and P maps when they were computed already (the maps are then
        made on the CPU, where ``raw`` is). On a GPU the maps are made batch by batch there. ``map_size``: the maps come back area-downsampled
        to ``map_size`` x ``map_size`` (never upsampled), as :func:`raymae.heatmap.downsample`.
        """
        map_cfg = map_cfg or self.cfg.anomaly_map
        if raw is None and self.device.type == "cpu":
            # on the CPU the maps are made from all the images' R and P at once, as always:
            # the same numbers to the last bit whatever the batch size
            raw = self.raw_maps(images, batch_size)
        if raw is not None:
            maps, scores = make_anomaly_map(raw.recon_error, raw.prob, map_cfg)
            return Prediction(_downsample(maps, map_size).numpy().astype(np.float32),
                              scores.numpy().astype(np.float32))
        return self._predict_by_batch(images, batch_size, map_cfg, map_size)

    @torch.no_grad()
    def _predict_by_batch(self, images: np.ndarray | torch.Tensor, batch_size: int, map_cfg: AnomalyMapConfig,
                          map_size: int | None) -> Prediction:
        """:meth:`predict` with the maps made on the device batch by batch: only they come back."""
        self._check(images)
        maps, scores = [], []
        for x in self._device_batches(images, batch_size):
            m, s = make_anomaly_map(*self._raw(x), map_cfg)
            maps.append(_downsample(m, map_size))
            scores.append(s)
        return Prediction(_to_cpu(maps).numpy().astype(np.float32), _to_cpu(scores).numpy().astype(np.float32))

    def _raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, S, S, 3) uint8 on the device -> (R, P), each (n, S, S) float32 on the device."""
        x = model_input(self.cfg, x, self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            out = self.model.forward_stage2(x)
        recon, prob = out.recon.float(), out.anomaly_prob.float()
        diff = to_unit_range(recon, self.cfg.mean, self.cfg.std) - to_unit_range(x, self.cfg.mean, self.cfg.std)
        return (diff ** 2).mean(dim=1), prob

    def _device_batches(self, images: np.ndarray | torch.Tensor, batch_size: int):
        """The images in batches of uint8 tensors on the device (no copy on the CPU)."""
        if isinstance(images, torch.Tensor):  # decoded on the device already (raymae.jpeg)
            for start in range(0, len(images), batch_size):
                yield images[start:start + batch_size].to(self.device, non_blocking=True)
            return
        if self.device.type != "cuda":
            for start in range(0, len(images), batch_size):
                yield torch.as_tensor(images[start:start + batch_size])
            return
        if not self._pinned or self._pinned[0].shape[1:] != images.shape[1:] or len(self._pinned[0]) < batch_size:
            self._pinned = [torch.empty((batch_size, *images.shape[1:]), dtype=torch.uint8).pin_memory()
                            for _ in range(2)]
            self._copied = [None, None]
        for k, start in enumerate(range(0, len(images), batch_size)):
            chunk = images[start:start + batch_size]
            i = k % 2
            if self._copied[i] is not None:
                self._copied[i].synchronize()  # the GPU has read what this buffer held before
            host = self._pinned[i][:len(chunk)]
            host.numpy()[...] = chunk
            x = host.to(self.device, non_blocking=True)
            self._copied[i] = torch.cuda.Event()
            self._copied[i].record()
            yield x

    def _check(self, images: np.ndarray | torch.Tensor) -> None:
        s = self.image_size
        uint8 = images.dtype == (torch.uint8 if isinstance(images, torch.Tensor) else np.uint8)
        if images.ndim != 4 or tuple(images.shape[1:]) != (s, s, 3) or not uint8:
            raise ValueError(f"expected uint8 images of shape (N, {s}, {s}, 3), got "
                             f"{images.dtype} {tuple(images.shape)}")


def _downsample(maps: torch.Tensor, size: int | None) -> torch.Tensor:
    """(N, H, W) -> (N, size, size) by area averaging on the maps' device (never upsampled)."""
    if size is None or (maps.shape[-1] <= size and maps.shape[-2] <= size):
        return maps
    return F.interpolate(maps.unsqueeze(1), size=(size, size), mode="area").squeeze(1)


def _to_cpu(parts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenated on their device, then one copy to the CPU (float32)."""
    if not parts:
        return torch.zeros(0)
    return torch.cat(parts).float().cpu()
