"""A small synthetic MVTec-AD-style dataset, for tests and demo runs.

Normal images are one procedural family of woven textures (same periods and
colours, random phase, shading and noise per image), so a tiny model can learn
the "normal" class at 32-64 px. Defects ("scratch", "spot", "stain") are drawn
on top with an exact mask: True exactly where pixels changed, every pixel
outside it untouched.

:func:`write_mvtec_dataset` writes the usual layout::

    root/train/good/000.png
    root/test/good/000.png
    root/test/<type>/000.png
    root/ground_truth/<type>/000_mask.png   (0/255 uint8 grayscale)
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

DEFECT_TYPES: tuple[str, ...] = ("scratch", "spot", "stain")

_BASE_COLOUR = np.array([150.0, 120.0, 90.0])   # warm fabric brown
_WEAVE_COLOUR = np.array([-35.0, -25.0, -15.0])  # darker threads
_PERIODS = 8.0                                   # weave periods across the image


def make_texture(rng: np.random.Generator, size: int | tuple[int, int]) -> np.ndarray:
    """A normal woven texture, (H, W, 3) uint8 with values in about [50, 200].

    Periodic horizontal/vertical threads with a random phase, a gentle linear
    shading with random direction and mild Gaussian noise.
    """
    h, w = (size, size) if isinstance(size, int) else size
    y = np.arange(h)[:, None] / h
    x = np.arange(w)[None, :] / w
    py, px = rng.uniform(0, 2 * np.pi, 2)
    weave = 0.5 * (np.sin(2 * np.pi * _PERIODS * y + py) + np.sin(2 * np.pi * _PERIODS * x + px))
    direction = rng.uniform(0, 2 * np.pi)
    shading = 12.0 * ((y - 0.5) * np.sin(direction) + (x - 0.5) * np.cos(direction))
    img = _BASE_COLOUR + weave[..., None] * _WEAVE_COLOUR + shading[..., None]
    img = img + rng.normal(0.0, 3.0, size=(h, w, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _scratch_mask(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A thin polyline of 2-4 segments crossing a good part of the image, (H, W) bool."""
    h, w = shape
    canvas = Image.new("L", (w, h), 0)
    n = int(rng.integers(2, 5))
    start = rng.uniform(0.2, 0.8, 2) * (w, h)
    angle = rng.uniform(0, 2 * np.pi)
    step = rng.uniform(0.12, 0.22) * min(h, w)
    points = [tuple(start)]
    for _ in range(n):
        angle += rng.uniform(-0.6, 0.6)
        points.append((points[-1][0] + step * np.cos(angle), points[-1][1] + step * np.sin(angle)))
    ImageDraw.Draw(canvas).line(points, fill=1, width=max(1, min(h, w) // 32))
    return np.asarray(canvas, dtype=bool)


def _blob_mask(shape: tuple[int, int], rng: np.random.Generator,
               radius: tuple[float, float], vertices: int) -> np.ndarray:
    """A random star-shaped blob inside the image, radii a fraction of the size, (H, W) bool."""
    h, w = shape
    r = rng.uniform(*radius) * min(h, w)
    cy, cx = rng.uniform(r, h - r), rng.uniform(r, w - r)
    angles = np.sort(rng.uniform(0, 2 * np.pi, vertices))
    radii = r * rng.uniform(0.7, 1.0, vertices)
    points = [(cx + a * np.cos(t), cy + a * np.sin(t)) for a, t in zip(radii, angles)]
    canvas = Image.new("L", (w, h), 0)
    ImageDraw.Draw(canvas).polygon(points, fill=1)
    return np.asarray(canvas, dtype=bool)


def _scratch(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Mask and pixel values (N, 3) of a bright or dark thin line."""
    mask = _scratch_mask(image.shape[:2], rng)
    value = 245.0 if rng.random() < 0.5 else 15.0
    return mask, np.full((int(mask.sum()), 3), value)


def _spot(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Mask and pixel values (N, 3) of a dark or bright blob."""
    mask = _blob_mask(image.shape[:2], rng, (0.06, 0.12), vertices=10)
    value = 20.0 if rng.random() < 0.5 else 235.0
    return mask, value + rng.normal(0.0, 4.0, size=(int(mask.sum()), 3))


def _stain(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Mask and pixel values (N, 3) of a colour-shifted irregular patch."""
    mask = _blob_mask(image.shape[:2], rng, (0.1, 0.2), vertices=7)
    shift = np.array([-50.0, 45.0, 55.0]) * rng.choice([-1.0, 1.0])
    return mask, image[mask].astype(np.float64) + shift


_DEFECTS: dict[str, Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]] = {
    "scratch": _scratch, "spot": _spot, "stain": _stain}


def draw_defect(image: np.ndarray, rng: np.random.Generator, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Draw a defect on a copy of an (H, W, 3) uint8 image.

    Returns (image (H, W, 3) uint8, mask (H, W) bool). The mask is True exactly
    where pixels changed: mask pixels that would keep their value are dropped.
    """
    if kind not in _DEFECTS:
        raise ValueError(f"unknown defect {kind!r}; choose one of {sorted(_DEFECTS)}")
    mask, values = _DEFECTS[kind](image, rng)
    out = image.copy()
    out[mask] = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    changed = (out != image).any(axis=-1)
    return out, mask & changed


def _save_png(array: np.ndarray, path: Path) -> None:
    """Write an (H, W, 3) or (H, W) uint8 array as PNG, creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _image_rng(seed: int, split: int, index: int) -> np.random.Generator:
    """A Generator that depends only on (seed, split, index)."""
    return np.random.default_rng(np.random.SeedSequence(entropy=int(seed), spawn_key=(split, index)))


def write_mvtec_dataset(root: str | Path, n_train: int = 40, n_test_good: int = 10,
                        n_test_defect_per_type: int = 5, size: int = 64, seed: int = 0,
                        defect_types: Sequence[str] = DEFECT_TYPES) -> Path:
    """Write a synthetic category in MVTec AD layout under ``root``; deterministic for a seed.

    Returns ``Path(root)``.
    """
    unknown = [k for k in defect_types if k not in _DEFECTS]
    if unknown:
        raise ValueError(f"unknown defect type(s) {unknown}; choose from {sorted(_DEFECTS)}")
    root = Path(root)
    for i in range(n_train):
        _save_png(make_texture(_image_rng(seed, 0, i), size), root / "train" / "good" / f"{i:03d}.png")
    for i in range(n_test_good):
        _save_png(make_texture(_image_rng(seed, 1, i), size), root / "test" / "good" / f"{i:03d}.png")
    for kind in defect_types:
        for i in range(n_test_defect_per_type):
            rng = _image_rng(seed, 2 + DEFECT_TYPES.index(kind), i)
            image, mask = draw_defect(make_texture(rng, size), rng, kind)
            _save_png(image, root / "test" / kind / f"{i:03d}.png")
            _save_png(mask.astype(np.uint8) * 255, root / "ground_truth" / kind / f"{i:03d}_mask.png")
    return root
