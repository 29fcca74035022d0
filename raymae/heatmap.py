"""Anomaly maps as small 8-bit PNGs that any tool can read, and back.

Each map is area-downsampled to ``size`` x ``size`` and divided by its own
maximum, which is stored next to the PNG (``heatmap_max``), so

    anomaly_map ~= png_pixels / 255 * heatmap_max

recovers the map's values to 1/255 of that image's maximum. The PNG covers the
whole image (it was resized to a square for the model); resize it to the
original ``width`` x ``height`` to overlay it.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def downsample(maps: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W) float maps -> (N, size, size) float32 by area averaging (never upsampled)."""
    if maps.shape[-1] <= size and maps.shape[-2] <= size:
        return maps.astype(np.float32)
    import torch  # only the model actor downsamples; PNG-encoding tasks stay light
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32)).unsqueeze(1)
    return F.interpolate(x, size=(size, size), mode="area").squeeze(1).numpy()


def encode(heatmap: np.ndarray) -> tuple[bytes, float]:
    """(h, w) float map -> (8-bit grayscale PNG bytes, the map's maximum)."""
    top = float(max(heatmap.max(), 0.0))
    scaled = heatmap / top if top > 0 else np.zeros_like(heatmap)
    pixels = np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue(), top


def decode(png: bytes, heatmap_max: float) -> np.ndarray:
    """PNG bytes and the row's ``heatmap_max`` -> (h, w) float32 anomaly map."""
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float32)
    return pixels / 255.0 * np.float32(heatmap_max)
