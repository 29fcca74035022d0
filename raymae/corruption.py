"""Pixel-level corruption of normal images: the fake anomalies of ISSTAD stage 2.

A normal image ``(H, W, 3) uint8`` becomes a :class:`CorruptedSample`: the
corrupted image, the clean original and a boolean mask ``(H, W)`` of the pixels
labelled anomalous. Two families of corruption are used (see
:class:`raymae.config.CorruptionConfig`):

* **self-sourced** ("self"): an augmented copy of the same image (colour jitter,
  blur, flip/rotation, noise, shift) is pasted into 1..``max_shapes`` random
  rectangles, ellipses or polygons, optionally restricted to the estimated
  object foreground;
* **Perlin** ("perlin", as in DRAEM): a rotated, thresholded 2-D Perlin noise
  field gives the mask, and a texture (the augmented image or colourised Perlin
  noise) is blended in with opacity ``beta``;
* **lines** ("line"): 1..``max_lines`` thin, smooth random curves (scratches,
  cracks), darker or brighter than the surface, with anti-aliased edges;
* **regions** ("region"): a large area behind a wavy, slightly soft boundary
  (uneven shading, stains, worn surface) whose brightness, contrast and
  sharpness change gently; its inside varies at low frequency;
* **natural** ("natural", NSA: Schlueter et al., "Natural Synthetic Anomalies for
  Self-Supervised Anomaly Detection and Localization", ECCV 2022): patches of
  random size and aspect cut from *another* normal image (the ``donor``),
  rescaled, and Poisson-blended (an exact sine-transform solve with SciPy) into random places,
  so the fake defect has no edge; only what really changed is labelled.

Optionally the image first gets another **exposure** (``exposure_share``: its
brightness times one factor, clipped at 255 as a camera clips) and normal
**lighting variation** (``variation_share``: a smooth gain over the whole image,
sometimes a soft highlight band). Both are applied to the clean image as well and
never labelled: they teach stage 2 that exposure, shading and glare are normal.

Mask invariant
--------------
``mask`` marks *exactly* the pixels that differ from the clean image:

* every pixel outside the mask is bit-identical to ``clean``;
* every pixel inside the mask differs from ``clean`` by at least
  :data:`MIN_CHANGE` grey levels in some channel.

The natural family is the one exception to the first rule: Poisson blending
spreads a faint, smooth change over the whole patch, and cutting it back at the
label's edge would draw the very seam the blending avoids. There the mask is
where the change is visible -- the 3x3 mean of the channel-mean change exceeds
``natural_label_threshold`` -- and the faint rest of the patch stays as blended,
unlabelled (NSA's thresholded labels).

After a corruption is drawn, mask pixels whose largest absolute channel change
is below :data:`MIN_CHANGE` are dropped from the mask *and restored* to their
clean value (so a faint, invisible change is never labelled anomalous). If the
mask ends up empty the corruption is drawn again, at most :data:`MAX_ATTEMPTS`
times, before the sample falls back to "clean".

Pure numpy / PIL / scipy.ndimage; no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw
from scipy import fft, ndimage, special

from raymae.config import MIN_LABEL_CHANGE, CorruptionConfig

MIN_CHANGE = MIN_LABEL_CHANGE  # smallest max-abs channel change (grey levels) that counts as changed
MAX_ATTEMPTS = 8      # corruption draws before falling back to a clean sample
MIN_PERLIN_CELL = 4   # Perlin cells are kept at least this many pixels wide
MIN_FOREGROUND = 0.01  # foreground share below which the whole image counts as object


@dataclass
class CorruptedSample:
    """One training sample of stage 2.

    image: (H, W, 3) uint8, the corrupted image.
    clean: (H, W, 3) uint8, the original.
    mask: (H, W) bool, True exactly where ``image`` differs from ``clean``.
    kind: "clean" | "self" | "perlin" | "line" | "region".
    """

    image: np.ndarray
    clean: np.ndarray
    mask: np.ndarray
    kind: str


# --------------------------------------------------------------------------- public API


def corrupt(image: np.ndarray, cfg: CorruptionConfig, rng: np.random.Generator,
            donor: np.ndarray | None = None) -> CorruptedSample:
    """Corrupt one ``(H, W, 3) uint8`` image, or leave it clean with ``cfg.clean_share``.

    ``donor`` is another normal image of the same set (same shape) that natural
    anomalies cut their patches from; without one they come from the image itself.
    """
    clean = _as_rgb_uint8(image)
    donor = clean if donor is None else _as_rgb_uint8(donor)
    if donor.shape != clean.shape:
        raise ValueError(f"the donor image {donor.shape} must have the image's shape {clean.shape}")
    if cfg.exposure_share > 0 and rng.random() < cfg.exposure_share:
        clean = exposure_change(clean, rng.uniform(*cfg.exposure_gain))
    if cfg.variation_share > 0 and rng.random() < cfg.variation_share:
        clean = lighting_variation(clean, cfg, rng)
    if rng.random() < cfg.clean_share:
        return _clean_sample(clean)
    kind = _pick_kind(cfg, rng.random())
    grey = _is_grey(clean)
    for _ in range(MAX_ATTEMPTS):
        if kind == "natural":
            out, mask = natural_anomaly(clean, donor, cfg, rng)
        else:
            out, mask = _CORRUPTIONS[kind](clean, cfg, rng)
        if grey:  # a grey camera never sees colour: colour would be a trivial cue
            out = _to_grey(out)
        if kind == "natural":
            mask = _label_natural(clean, out, mask, cfg.natural_label_threshold)
        else:
            out, mask = _enforce_mask_invariant(clean, out, mask)
        if mask.any():
            return CorruptedSample(image=out, clean=clean, mask=mask, kind=kind)
    return _clean_sample(clean)


def _pick_kind(cfg: CorruptionConfig, u: float) -> str:
    """The corruption family for a uniform draw ``u``: perlin, line, region, natural, else self."""
    for kind, share in (("perlin", cfg.perlin_share), ("line", cfg.line_share),
                        ("region", cfg.region_share), ("natural", cfg.natural_share)):
        if u < share:
            return kind
        u -= share
    return "self"


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """A Generator that depends only on ``(seed, index)`` (order/worker independent)."""
    return np.random.default_rng(np.random.SeedSequence(entropy=int(seed), spawn_key=(int(index),)))


def corrupt_seeded(image: np.ndarray, cfg: CorruptionConfig, seed: int, index: int,
                   donor: np.ndarray | None = None) -> CorruptedSample:
    """:func:`corrupt` with the Generator derived from ``(seed, index)``: reproducible."""
    return corrupt(image, cfg, sample_rng(seed, index), donor)


def donor_index(seed: int, index: int, count: int) -> int:
    """Which other image of ``count`` lends sample ``index`` its natural-anomaly patches.

    Depends only on ``(seed, index)``, like the sample's own Generator, and never is
    ``index`` itself when there is another image to choose.
    """
    if count < 2:
        return index
    rng = np.random.default_rng(np.random.SeedSequence(entropy=int(seed), spawn_key=(int(index), 1)))
    return (index + 1 + int(rng.integers(count - 1))) % count


def corrupt_batch(images: np.ndarray, cfg: CorruptionConfig, seed: int,
                  indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Corrupt a batch ``(B, H, W, 3) uint8``; sample ``b`` uses ``(seed, indices[b])``.

    Natural anomalies take their patches from another image of the batch.
    Returns (corrupted (B, H, W, 3) uint8, clean (B, H, W, 3) uint8, masks (B, H, W) bool).
    """
    if len(images) != len(indices):
        raise ValueError(f"{len(images)} images but {len(indices)} indices")
    samples = [corrupt_seeded(img, cfg, seed, idx, images[donor_index(seed, b, len(images))])
               for b, (img, idx) in enumerate(zip(images, indices))]
    return (np.stack([s.image for s in samples]), np.stack([s.clean for s in samples]),
            np.stack([s.mask for s in samples]))


def perlin_noise(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D gradient (Perlin) noise of ``shape`` (H, W) with ``res`` (ry, rx) cells per axis.

    Uses the fade 6t^5 - 15t^4 + 10t^3. Sizes not divisible by ``res`` are generated
    at the next multiple and cropped. Returns (H, W) float32 in about [-1, 1]
    (scaled by sqrt(2), as in DRAEM).
    """
    h, w = shape
    ry, rx = max(1, int(res[0])), max(1, int(res[1]))
    ph, pw = -(-h // ry) * ry, -(-w // rx) * rx
    cy, cx = ph // ry, pw // rx                                   # pixels per cell
    fy = ((np.arange(ph) % cy) / cy).astype(np.float32)[:, None]  # position inside the cell, (ph, 1)
    fx = ((np.arange(pw) % cx) / cx).astype(np.float32)[None, :]  # (1, pw)
    angles = 2 * np.pi * rng.random((ry + 1, rx + 1))
    # unit gradients at the cell corners, (ry+1, rx+1): the y and x components
    grad_y, grad_x = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)

    def cells(g: np.ndarray, dy: int, dx: int) -> np.ndarray:
        """The gradient component of each pixel's (dy, dx) cell corner, (ph, pw)."""
        return np.repeat(np.repeat(g[dy:dy + ry, dx:dx + rx], cy, axis=0), cx, axis=1)

    def corner(dy: int, dx: int) -> np.ndarray:
        return cells(grad_y, dy, dx) * (fy - dy) + cells(grad_x, dy, dx) * (fx - dx)

    ty, tx = _fade(fy), _fade(fx)
    top = corner(0, 0) * (1 - tx) + corner(0, 1) * tx
    bottom = corner(1, 0) * (1 - tx) + corner(1, 1) * tx
    noise = np.float32(np.sqrt(2)) * (top * (1 - ty) + bottom * ty)
    return noise[:h, :w]


def estimate_foreground(image: np.ndarray) -> np.ndarray:
    """Object foreground of an ``(H, W, 3) uint8`` image as an (H, W) bool mask.

    Each pixel's colour distance to the median border colour is Otsu-thresholded
    and cleaned with a binary opening and closing. If the result is (nearly)
    empty, the whole image is returned.
    """
    img = image.astype(np.float64)
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])  # (2H+2W, 3)
    dist = np.linalg.norm(img - np.median(border, axis=0), axis=-1)     # (H, W)
    whole = np.ones(dist.shape, dtype=bool)
    if dist.max() - dist.min() < 1e-6:
        return whole
    fg = dist > _otsu_threshold(dist)
    fg = ndimage.binary_opening(fg, iterations=1)
    fg = ndimage.binary_closing(fg, iterations=2, border_value=0)
    fg = ndimage.binary_fill_holes(fg)
    return fg if fg.mean() >= MIN_FOREGROUND else whole


# --------------------------------------------------------------------------- helpers


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Check that ``image`` is (H, W, 3) uint8 and return it as a contiguous array."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    return np.ascontiguousarray(image)


def _shift_intensity(image: np.ndarray, mask: np.ndarray, shift_range: tuple[float, float],
                     rng: np.random.Generator) -> np.ndarray:
    """Darken or brighten the masked pixels by a random amount in ``shift_range`` grey levels.

    Real surface defects (holes, cracks, stains, uneven regions) mostly differ in
    intensity from their surroundings; a pasted copy of the same texture often does not.
    """
    lo, hi = shift_range
    if hi <= 0:
        return image
    delta = rng.uniform(lo, hi) * (1 if rng.random() < 0.5 else -1)
    out = image.astype(np.float32)
    out[mask] += delta
    return _to_uint8(out)


def _is_grey(image: np.ndarray) -> bool:
    """True when all three channels of an (H, W, 3) image are equal (a grayscale photo)."""
    return bool(np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2]))


def _to_grey(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> the same with every channel set to the channel mean."""
    grey = np.rint(_channel_mean(image)).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def _channel_mean(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) -> (H, W) float32 mean of the channels (faster than mean(axis=-1))."""
    r, g, b = (image[..., c].astype(np.float32) for c in range(3))
    return (r + g + b) / 3


def _clean_sample(clean: np.ndarray) -> CorruptedSample:
    """The uncorrupted sample: same image, empty mask."""
    return CorruptedSample(image=clean.copy(), clean=clean,
                           mask=np.zeros(clean.shape[:2], dtype=bool), kind="clean")


def _enforce_mask_invariant(clean: np.ndarray, out: np.ndarray,
                            mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Make ``mask`` == pixels changed by >= MIN_CHANGE; restore all other pixels.

    clean, out: (H, W, 3) uint8; mask: (H, W) bool. Returns (image, mask).
    """
    diff = np.abs(out.astype(np.int16) - clean.astype(np.int16))
    change = np.maximum(np.maximum(diff[..., 0], diff[..., 1]), diff[..., 2])  # faster than max(axis=-1)
    mask = mask & (change >= MIN_CHANGE)
    result = clean.copy()
    result[mask] = out[mask]
    return result, mask


def _fade(t: np.ndarray) -> np.ndarray:
    """Perlin's quintic fade 6t^5 - 15t^4 + 10t^3."""
    return t * t * t * (t * (t * 6 - 15) + 10)


def _otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a float array (maximises between-class variance)."""
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * centres)
    m0 = s0 / np.maximum(w0, 1)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """Round and clip a float array to uint8."""
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- augmentation


def _jitter_colour(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random brightness, contrast, saturation and hue of an (H, W, 3) float32 image."""
    img = img * rng.uniform(0.6, 1.4) + rng.uniform(-30, 30)           # brightness
    mean = img.mean()
    img = (img - mean) * rng.uniform(0.6, 1.5) + mean                  # contrast
    grey = _channel_mean(img)[..., None]
    img = (img - grey) * rng.uniform(0.3, 1.7) + grey                  # saturation
    return _rotate_hue(img, rng.uniform(-np.pi / 3, np.pi / 3))


def _rotate_hue(img: np.ndarray, angle: float) -> np.ndarray:
    """Rotate colours about the grey axis by ``angle`` radians (a hue shift)."""
    axis = np.ones(3) / np.sqrt(3)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rot = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)  # Rodrigues
    return img @ rot.T.astype(img.dtype)


def _blur(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur of an (H, W, 3) float image with a random sigma."""
    sigma = rng.uniform(0.5, 2.5)
    return ndimage.gaussian_filter(img, sigma=(sigma, sigma, 0))


def _flip_or_rotate(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Horizontal/vertical flip, or a 90-degree rotation for square images."""
    choices = ["h", "v"] + (["r90", "r270"] if img.shape[0] == img.shape[1] else [])
    op = choices[rng.integers(len(choices))]
    if op == "h":
        return img[:, ::-1]
    if op == "v":
        return img[::-1]
    return np.rot90(img, k=1 if op == "r90" else 3)


def _add_noise(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian noise with a random standard deviation (grey levels)."""
    return img + rng.uniform(5, 25) * rng.standard_normal(img.shape, dtype=np.float32)


def _shift(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Cyclic shift by up to a quarter of the image in each axis."""
    h, w = img.shape[:2]
    dy = int(rng.integers(-(h // 4), h // 4 + 1))
    dx = int(rng.integers(-(w // 4), w // 4 + 1))
    return np.roll(img, (dy, dx), axis=(0, 1))


_AUGMENTATIONS: tuple[Callable[[np.ndarray, np.random.Generator], np.ndarray], ...] = (
    _jitter_colour, _blur, _flip_or_rotate, _add_noise, _shift)


def augmented_copy(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random non-empty combination of augmentations of an (H, W, 3) uint8 image."""
    chosen = rng.random(len(_AUGMENTATIONS)) < 0.5
    if not chosen.any():
        chosen[rng.integers(len(_AUGMENTATIONS))] = True
    img = image.astype(np.float32)
    for aug, use in zip(_AUGMENTATIONS, chosen):
        if use:
            img = aug(img, rng)
    return _to_uint8(img)


# --------------------------------------------------------------------------- shapes


def _shape_size(area: float, rng: np.random.Generator) -> tuple[float, float]:
    """Height and width of a box of ``area`` pixels with a random aspect ratio."""
    aspect = np.exp(rng.uniform(np.log(1 / 3), np.log(3)))
    return np.sqrt(area * aspect), np.sqrt(area / aspect)


def _polygon_points(centre: tuple[float, float], area: float,
                    rng: np.random.Generator) -> list[tuple[float, float]]:
    """A random star-shaped polygon around ``centre`` (y, x) of about ``area`` pixels."""
    n = int(rng.integers(3, 9))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = rng.uniform(0.4, 1.0, n)
    xs, ys = radii * np.cos(angles), radii * np.sin(angles)
    unit_area = 0.5 * abs(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1)))
    scale = np.sqrt(area / max(unit_area, 1e-6))
    return [(centre[1] + scale * x, centre[0] + scale * y) for x, y in zip(xs, ys)]


def random_shape_mask(shape: tuple[int, int], area_range: tuple[float, float],
                      rng: np.random.Generator, centre: tuple[float, float] | None = None) -> np.ndarray:
    """One random rectangle, ellipse or polygon as an (H, W) bool mask.

    Its area is a fraction in ``area_range`` of the image; ``centre`` (y, x)
    defaults to a uniformly random point.
    """
    h, w = shape
    area = rng.uniform(*area_range) * h * w
    cy, cx = centre if centre is not None else (rng.uniform(0, h), rng.uniform(0, w))
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    kind = int(rng.integers(3))
    if kind == 2:
        draw.polygon(_polygon_points((cy, cx), area, rng), fill=1)
    else:
        sh, sw = _shape_size(area * (4 / np.pi if kind == 1 else 1.0), rng)
        box = (cx - sw / 2, cy - sh / 2, cx + sw / 2, cy + sh / 2)
        (draw.ellipse if kind == 1 else draw.rectangle)(box, fill=1)
    return np.asarray(canvas, dtype=bool)


def _shapes_mask(clean: np.ndarray, cfg: CorruptionConfig, rng: np.random.Generator) -> np.ndarray:
    """Union of 1..max_shapes random shapes (H, W) bool, ∩ foreground when asked."""
    shape = clean.shape[:2]
    allowed = estimate_foreground(clean) if cfg.foreground_only else np.ones(shape, dtype=bool)
    ys, xs = np.nonzero(allowed)
    mask = np.zeros(shape, dtype=bool)
    for _ in range(int(rng.integers(1, max(1, cfg.max_shapes) + 1))):
        pick = int(rng.integers(len(ys)))
        centre = (ys[pick] + rng.uniform(0, 1), xs[pick] + rng.uniform(0, 1))
        mask |= random_shape_mask(shape, cfg.shape_area, rng, centre)
    return mask & allowed


# --------------------------------------------------------------------------- corruptions


def _self_corruption(clean: np.ndarray, cfg: CorruptionConfig,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Paste an augmented copy into random shapes, then shift its intensity. Returns (image, mask (H, W))."""
    source = augmented_copy(clean, rng)
    mask = _shapes_mask(clean, cfg, rng)
    out = clean.copy()
    out[mask] = source[mask]
    return _shift_intensity(out, mask, cfg.intensity_shift, rng), mask


def _perlin_scale(size: int, cfg: CorruptionConfig, rng: np.random.Generator) -> int:
    """Cells per axis: 2 ** randint(min, max), capped so cells stay >= MIN_PERLIN_CELL px."""
    return _capped_cells(2 ** int(rng.integers(cfg.perlin_min_scale, cfg.perlin_max_scale + 1)), size)


def _capped_cells(cells: int, size: int) -> int:
    """``cells`` Perlin cells along an axis of ``size`` px, capped so each is >= MIN_PERLIN_CELL px."""
    return max(1, min(cells, size // MIN_PERLIN_CELL))


def perlin_mask(shape: tuple[int, int], cfg: CorruptionConfig, rng: np.random.Generator) -> np.ndarray:
    """Rotated Perlin noise thresholded at ``cfg.perlin_threshold``: (H, W) bool."""
    h, w = shape
    res = (_perlin_scale(h, cfg, rng), _perlin_scale(w, cfg, rng))
    noise = perlin_noise(shape, res, rng)
    angle = rng.uniform(-90, 90)
    noise = ndimage.rotate(noise, angle, reshape=False, order=1, mode="reflect")
    return noise > cfg.perlin_threshold


def perlin_texture(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Colourised Perlin noise: (H, W, 3) uint8 between two random colours plus colour noise."""
    h, w = shape
    res = (_capped_cells(2 ** int(rng.integers(1, 5)), h), _capped_cells(2 ** int(rng.integers(1, 5)), w))
    t = (perlin_noise(shape, res, rng)[..., None] + 1) / 2               # (H, W, 1) in ~[0, 1]
    low, high = rng.uniform(0, 255, 3).astype(np.float32), rng.uniform(0, 255, 3).astype(np.float32)
    detail = np.stack([perlin_noise(shape, res, rng) for _ in range(3)], axis=-1)
    return _to_uint8(low + (high - low) * t + 40 * detail)


def _perlin_corruption(clean: np.ndarray, cfg: CorruptionConfig,
                       rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Blend a texture into a Perlin mask with opacity beta, then shift its intensity. Returns (image, mask)."""
    shape = clean.shape[:2]
    mask = perlin_mask(shape, cfg, rng)
    texture = augmented_copy(clean, rng) if rng.random() < 0.5 else perlin_texture(shape, rng)
    beta = rng.uniform(*cfg.blend_range)
    m = mask[..., None].astype(np.float32)
    out = clean * (1 - beta * m) + texture * (beta * m)
    return _shift_intensity(_to_uint8(out), mask, cfg.intensity_shift, rng), mask


def _side(clean: np.ndarray) -> int:
    """The shorter side of an (H, W, ...) image: line and region sizes are fractions of it."""
    return min(clean.shape[:2])


def _rotated_coordinates(image: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates along and across direction ``angle``, in shorter sides: two (H, W) float32."""
    h, w = image.shape[:2]
    yy, xx = np.mgrid[:h, :w].astype(np.float32) / _side(image)
    return np.cos(angle) * xx + np.sin(angle) * yy, -np.sin(angle) * xx + np.cos(angle) * yy


def random_curve(shape: tuple[int, int], length: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth random curve of about ``length`` pixels: (n, 2) x, y points.

    The heading follows a smoothed random walk, so the curve bends like a crack or a
    scratch rather than zig-zagging. Its middle point lies uniformly inside ``shape``
    (H, W), so at least about half of it is in the image.
    """
    h, w = shape
    n = max(2, int(length))
    turns = ndimage.gaussian_filter1d(rng.normal(0.0, 0.25, n), sigma=max(1.0, n / 12), mode="nearest")
    heading = rng.uniform(0, 2 * np.pi) + np.cumsum(turns)
    x, y = np.cumsum(np.cos(heading)), np.cumsum(np.sin(heading))
    x += rng.uniform(0, w) - x[n // 2]
    y += rng.uniform(0, h) - y[n // 2]
    return np.stack([x, y], axis=1)


def _line_corruption(clean: np.ndarray, cfg: CorruptionConfig,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw 1..max_lines thin curves, darker or brighter. Returns (image, mask (H, W))."""
    h, w = clean.shape[:2]
    side = _side(clean)
    scale = 4  # drawn at 4x and averaged down: anti-aliased, sub-pixel widths
    canvas = Image.new("L", (w * scale, h * scale), 0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(1, max(1, cfg.max_lines) + 1))):
        points = random_curve((h, w), rng.uniform(*cfg.line_length) * side, rng)
        width = max(1.0, rng.uniform(*cfg.line_width) * side)
        draw.line([(float(x) * scale, float(y) * scale) for x, y in points],
                  fill=255, width=max(1, int(round(width * scale))), joint="curve")
    cover = np.asarray(canvas, dtype=np.float32).reshape(h, scale, w, scale).mean(axis=(1, 3)) / 255
    delta = rng.uniform(*cfg.line_contrast) * (-1 if rng.random() < 0.75 else 1)  # cracks are mostly dark
    out = clean.astype(np.float32) + (delta * cover)[..., None]
    return _to_uint8(out), cover > 0


def _region_corruption(clean: np.ndarray, cfg: CorruptionConfig,
                       rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Change brightness, contrast and sharpness behind a wavy boundary. Returns (image, mask)."""
    h, w = clean.shape[:2]
    side = _side(clean)
    ramp, _ = _rotated_coordinates(clean, rng.uniform(0, 2 * np.pi))     # (H, W), ~1 per image side
    res = (_capped_cells(int(rng.integers(1, 4)), h), _capped_cells(int(rng.integers(1, 4)), w))
    field = ramp + rng.uniform(0.05, 0.4) * perlin_noise((h, w), res, rng)  # a wavy, sometimes closed boundary
    level = np.quantile(field, 1 - rng.uniform(*cfg.region_area))
    softness = max(0.5, rng.uniform(*cfg.region_edge) * side) / side
    alpha = special.expit((field - level) / softness)                      # (H, W) in (0, 1)
    inner = 1 + 0.3 * perlin_noise((h, w), (2, 2), rng)                    # strength varies inside
    img = clean.astype(np.float32)
    target = (img - img.mean()) * rng.uniform(0.8, 1.2) + img.mean()       # contrast
    texture = rng.random()
    if texture < 0.25:                                                     # softer surface
        target = _blur(target, rng)
    elif texture < 0.5:                                                    # coarser surface
        detail = target - ndimage.gaussian_filter(target, sigma=(1.5, 1.5, 0))
        target = target + rng.uniform(0.5, 1.5) * detail
    target += rng.uniform(*cfg.region_offset) * (1 if rng.random() < 0.5 else -1) * inner[..., None]
    out = img + alpha[..., None] * (target - img)
    return _to_uint8(out), alpha > 0.02


def exposure_change(image: np.ndarray, gain: float) -> np.ndarray:
    """``(H, W, 3) uint8`` with its brightness multiplied by ``gain``, rounded and clipped to 0-255."""
    return np.clip(np.rint(image.astype(np.float32) * gain), 0, 255).astype(np.uint8)


def lighting_variation(image: np.ndarray, cfg: CorruptionConfig, rng: np.random.Generator) -> np.ndarray:
    """Normal lighting change of a whole ``(H, W, 3) uint8`` image, with no edges.

    The image is multiplied by a smooth gain, as a change of illumination does:
    ``1 + a * f`` with ``f`` in [-1, 1] varying slowly (a linear gradient across the image,
    or half a cycle to two cycles of broad bands, in a random direction) and
    ``a`` from ``cfg.variation_gain``; half the time plus a soft, elongated highlight
    (glare) that brightens its centre by a share from ``cfg.variation_glare``.
    Equal in every channel, so a grey image stays grey.
    """
    along, across = _rotated_coordinates(image, rng.uniform(0, 2 * np.pi))
    t = (along - along.min()) / max(float(np.ptp(along)), 1e-6)            # (H, W) in [0, 1]
    if rng.random() < 0.5:                                                 # gradient
        f = 2 * t - 1
    else:                                                                  # broad bands
        f = np.cos(2 * np.pi * rng.uniform(0.5, 2.0) * t + rng.uniform(0, 2 * np.pi))
    gain = 1 + rng.uniform(*cfg.variation_gain) * f
    if rng.random() < 0.5:                                                 # glare
        width, length = rng.uniform(0.03, 0.15), rng.uniform(0.3, 1.0)
        d_along = along - rng.uniform(along.min(), along.max())
        d_across = across - rng.uniform(across.min(), across.max())
        glare = np.exp(-0.5 * ((d_along / width) ** 2 + (d_across / length) ** 2))
        gain += rng.uniform(*cfg.variation_glare) * glare
    return _to_uint8(image.astype(np.float32) * gain[..., None])


# --------------------------------------------------------------------------- natural anomalies


def _natural_patch_size(side: int, cfg: CorruptionConfig, rng: np.random.Generator) -> int:
    """One side of a natural patch in pixels: log-uniform in ``natural_size`` (small ones more often)."""
    lo, hi = np.log(np.array(cfg.natural_size) * side)
    return max(NATURAL_MIN_SIDE, min(side - 2, int(round(np.exp(rng.uniform(lo, hi))))))


def _random_point(allowed: np.ndarray, lo: tuple[int, int], hi: tuple[int, int],
                  rng: np.random.Generator) -> tuple[int, int] | None:
    """A random (y, x) with lo <= (y, x) < hi where ``allowed`` (H, W) is True, or None."""
    window = np.zeros_like(allowed)
    window[lo[0]:hi[0], lo[1]:hi[1]] = True
    ys, xs = np.nonzero(allowed & window)
    if not len(ys):
        return None
    pick = int(rng.integers(len(ys)))
    return int(ys[pick]), int(xs[pick])


def natural_anomaly(clean: np.ndarray, donor: np.ndarray, cfg: CorruptionConfig,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Blend 1..natural_patches patches of ``donor`` into ``clean`` (both (H, W, 3) uint8).

    Each patch has its own height and width, is cut where its centre falls on the donor's
    foreground (``foreground_only``; else anywhere), rescaled by a factor in
    ``natural_scale`` and Poisson-blended (:func:`poisson_blend`) with its centre on the
    clean image's foreground. Returns (blended image, (H, W) bool union of the patches),
    the label still to be cut down to where the change is visible (:func:`_label_natural`).
    """
    h, w = clean.shape[:2]
    side = min(h, w)
    whole = np.ones((h, w), dtype=bool)
    fg_dest = estimate_foreground(clean) if cfg.foreground_only else whole
    fg_src = estimate_foreground(donor) if cfg.foreground_only else whole
    out = clean.astype(np.float64)
    placed = np.zeros((h, w), dtype=bool)
    for _ in range(int(rng.integers(1, cfg.natural_patches + 1))):
        ph, pw = _natural_patch_size(side, cfg, rng), _natural_patch_size(side, cfg, rng)
        scale = rng.uniform(*cfg.natural_scale)
        sh, sw = min(h, max(2, round(ph / scale))), min(w, max(2, round(pw / scale)))  # cut this much
        src = _random_point(fg_src, (sh // 2, sw // 2), (h - (sh - sh // 2) + 1, w - (sw - sw // 2) + 1), rng)
        dst = _random_point(fg_dest, (ph // 2, pw // 2), (h - (ph - ph // 2) + 1, w - (pw - pw // 2) + 1), rng)
        if src is None or dst is None:
            continue
        y0, x0 = src[0] - sh // 2, src[1] - sw // 2
        patch = np.asarray(Image.fromarray(np.ascontiguousarray(donor[y0:y0 + sh, x0:x0 + sw]))
                           .resize((pw, ph), Image.Resampling.BILINEAR))
        if cfg.natural_intensity[1] > 0:
            patch = _soft_blob_shift(patch, cfg.natural_intensity, rng)
        top, left = dst[0] - ph // 2, dst[1] - pw // 2
        out[top:top + ph, left:left + pw] = poisson_blend(out[top:top + ph, left:left + pw], patch)
        placed[top + 1:top + ph - 1, left + 1:left + pw - 1] = True  # the border keeps its pixels
    return _to_uint8(out), placed & fg_dest


def poisson_blend(target: np.ndarray, source: np.ndarray) -> np.ndarray:
    """Seamless cloning (Perez et al. 2003) of ``source`` into ``target``, both (h, w, C).

    Returns (h, w, C) float64 equal to ``target`` on the rectangle's one-pixel border and,
    inside, the field whose discrete Laplacian is ``source``'s: the source's texture,
    carried by a smooth membrane that meets the target's values at the border, so no
    edge appears. On a rectangle the 5-point Laplacian is diagonal in the type-I sine
    transform, so one forward and one inverse transform solve all channels exactly.
    """
    h, w, chans = source.shape
    ih, iw = h - 2, w - 2
    if ih < 1 or iw < 1:
        return target.astype(np.float64)
    src = source.astype(np.float64)
    lap = 4 * src[1:-1, 1:-1] - src[:-2, 1:-1] - src[2:, 1:-1] - src[1:-1, :-2] - src[1:-1, 2:]
    out = target.astype(np.float64)  # a copy: its border stays, its inside is solved for
    out[1:-1, 1:-1] = 0.0  # the known border values, moved to the right-hand side
    known = out[:-2, 1:-1] + out[2:, 1:-1] + out[1:-1, :-2] + out[1:-1, 2:]
    eigen = _second_difference_eigenvalues(ih)[:, None, None] + _second_difference_eigenvalues(iw)[None, :, None]
    out[1:-1, 1:-1] = fft.idstn(fft.dstn(lap + known, type=1, axes=(0, 1)) / eigen, type=1, axes=(0, 1))
    return out


def _second_difference_eigenvalues(n: int) -> np.ndarray:
    """Eigenvalues (n,) of the (n, n) matrix of -f[i-1] + 2 f[i] - f[i+1] (zero outside),
    in the order of the type-I sine transform's frequencies."""
    return 2.0 - 2.0 * np.cos(np.pi * np.arange(1, n + 1) / (n + 1))


def _soft_blob_shift(patch: np.ndarray, shift_range: tuple[float, float],
                     rng: np.random.Generator) -> np.ndarray:
    """Darken (3 times in 4) or brighten a soft-edged ellipse inside an (h, w, 3) uint8 patch.

    The ellipse fills 40-90 % of each axis; its edge is blurred over about a tenth of
    the patch, so after Poisson blending the patch reads as a textured spot, not a stamp.
    """
    h, w = patch.shape[:2]
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    ry, rx = rng.uniform(0.2, 0.45) * h, rng.uniform(0.2, 0.45) * w
    cy, cx = h / 2 + rng.uniform(-0.5, 0.5) * (h / 2 - ry), w / 2 + rng.uniform(-0.5, 0.5) * (w / 2 - rx)
    blob = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).astype(np.float32)
    blob = ndimage.gaussian_filter(blob, sigma=max(0.7, 0.1 * min(h, w)))
    delta = rng.uniform(*shift_range) * (-1 if rng.random() < 0.75 else 1)
    return _to_uint8(patch.astype(np.float32) + (delta * blob)[..., None])


NATURAL_MIN_SIDE = 4  # smallest natural patch side (pixels), its one-pixel border included


def _label_natural(clean: np.ndarray, out: np.ndarray, placed: np.ndarray,
                   threshold: float) -> np.ndarray:
    """(H, W) bool: where a blended patch visibly changed the image.

    Inside the patches, the channel-mean absolute change averaged over 3x3 pixels must
    exceed ``threshold`` grey levels, and the pixel itself must have changed by at least
    :data:`MIN_CHANGE`: a label always sits on a changed pixel.
    """
    diff = np.abs(out.astype(np.int16) - clean.astype(np.int16))
    change = np.maximum(np.maximum(diff[..., 0], diff[..., 1]), diff[..., 2])
    visible = ndimage.uniform_filter(_channel_mean(diff), size=3, mode="nearest") > threshold
    return placed & visible & (change >= MIN_CHANGE)


_CORRUPTIONS: dict[str, Callable[[np.ndarray, CorruptionConfig, np.random.Generator],
                                 tuple[np.ndarray, np.ndarray]]] = {
    "self": _self_corruption, "perlin": _perlin_corruption,
    "line": _line_corruption, "region": _region_corruption}
