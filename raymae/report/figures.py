"""Pictures for the reports: anomaly-map overlays and plots, shared by both pages.

Overlays are drawn with numpy and Pillow (matplotlib only lends its colour map);
plots are matplotlib :class:`~matplotlib.figure.Figure` objects rendered by the
Agg canvas, never through pyplot, so nothing global (backend, open figures)
changes in the calling process. Everything returns a :class:`Picture`: encoded
bytes that a page embeds as a ``data:`` URI.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from datetime import date as Date
from typing import Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

DISPLAY_SIZE = 224                 # longest side of every image panel, in pixels
COLOUR_MAP = "inferno"
THRESHOLD_COLOUR = (0, 230, 255)   # outline of map >= threshold (cyan)
TRUTH_COLOUR = (60, 255, 60)       # outline of the ground-truth defect (green)
HEAT_OPACITY = 0.75                # share of the colour-mapped map in an overlay where it is at vmax
JPEG_QUALITY = 90
_PLOT_DPI = 100


@dataclass(frozen=True)
class Picture:
    """An encoded image and its MIME type, ready to embed in a page."""

    data: bytes
    mime: str
    width: int
    height: int

    @property
    def data_uri(self) -> str:
        return f"data:{self.mime};base64,{base64.b64encode(self.data).decode('ascii')}"


@dataclass(frozen=True)
class Panels:
    """One image as the pages show it: the original (None when it cannot be read),
    the colour-mapped anomaly map, and the map over the original with its outlines."""

    original: Picture | None
    heatmap: Picture
    overlay: Picture


# ------------------------------------------------------------------ overlays
def display_size(width: int | None, height: int | None, longest: int = DISPLAY_SIZE) -> tuple[int, int]:
    """(w, h) with the original's aspect ratio and ``longest`` pixels on its longer side (square if unknown)."""
    if not width or not height:
        return longest, longest
    scale = longest / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize_map(amap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) float map -> float32 map of ``size`` = (w, h), bilinear (the map covers the whole image)."""
    return np.asarray(Image.fromarray(np.asarray(amap, np.float32), mode="F")
                      .resize(size, Image.Resampling.BILINEAR), dtype=np.float32)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(np.asarray(mask, np.uint8) * 255).resize(size, Image.Resampling.NEAREST)) > 127


def colourise(amap: np.ndarray, vmax: float) -> np.ndarray:
    """Float map -> (h, w, 3) uint8 through the colour map, 0 .. ``vmax`` (values above saturate)."""
    from matplotlib import colormaps

    lut = (colormaps[COLOUR_MAP](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)
    level = np.clip(amap / vmax, 0, 1) * 255 if vmax > 0 else np.zeros_like(amap)
    return lut[np.rint(level).astype(np.uint8)]


def outline(mask: np.ndarray) -> np.ndarray:
    """The border of a boolean region, about two pixels wide (empty for an empty region)."""
    if not mask.any():
        return mask
    edge = mask & ~ndimage.binary_erosion(mask, border_value=0)
    return ndimage.binary_dilation(edge)


def draw_outlines(rgb: np.ndarray, outlines: Sequence[tuple[np.ndarray, tuple[int, int, int]]]) -> np.ndarray:
    out = rgb.copy()
    for mask, colour in outlines:
        out[outline(mask)] = colour
    return out


def overlay_panels(amap: np.ndarray, threshold: float, vmax: float, size: tuple[int, int],
                   original: np.ndarray | None = None, truth: np.ndarray | None = None) -> Panels:
    """Original, heatmap and overlay of one image, each ``size`` = (w, h).

    ``amap`` is the anomaly map in map units (any resolution; it covers the whole
    image); the region where it reaches ``threshold`` is outlined in cyan, and
    ``truth`` (a ground-truth mask, any resolution) in green. ``original`` is
    (H, W, 3) uint8 or None: the overlay is then drawn on the heatmap alone.
    """
    big = resize_map(amap, size)
    heat = colourise(big, vmax)
    lines = [(big >= threshold, THRESHOLD_COLOUR)]
    if truth is not None:
        lines.append((resize_mask(truth, size), TRUTH_COLOUR))
    if original is None:
        return Panels(None, jpeg(heat), jpeg(draw_outlines(heat, lines)))
    base = np.asarray(Image.fromarray(np.asarray(original, np.uint8)).resize(size, Image.Resampling.BILINEAR))
    alpha = HEAT_OPACITY * np.clip(big / vmax if vmax > 0 else big * 0, 0, 1)[..., None]  # low values stay clear
    blend = np.rint(base * (1 - alpha) + heat * alpha).astype(np.uint8)
    return Panels(jpeg(base), jpeg(heat), jpeg(draw_outlines(blend, lines)))


def jpeg(rgb: np.ndarray) -> Picture:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return Picture(buf.getvalue(), "image/jpeg", rgb.shape[1], rgb.shape[0])


# ------------------------------------------------------------------ plots
def _figure(width: float = 5.5, height: float = 3.4):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_PLOT_DPI, layout="constrained")
    return fig


def _png(fig) -> Picture:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_PLOT_DPI)
    data = buf.getvalue()
    width, height = Image.open(io.BytesIO(data)).size
    return Picture(data, "image/png", width, height)


def _mark_thresholds(ax, thresholds: Sequence[float], vertical: bool = True) -> None:
    for i, t in enumerate(sorted(set(float(t) for t in thresholds))):
        line = ax.axvline if vertical else ax.axhline
        line(t, color="#d62728", linestyle="--", linewidth=1.2, label="threshold" if i == 0 else None)


def score_histogram(groups: dict[str, np.ndarray], thresholds: Sequence[float], title: str,
                    bins: int = 40) -> Picture:
    """Histogram of image scores, one colour per group, the threshold(s) marked."""
    fig = _figure()
    ax = fig.add_subplot()
    values = [np.asarray(v, np.float64) for v in groups.values()]
    everything = np.concatenate([*values, np.asarray(thresholds, np.float64)])
    lo, hi = (float(everything.min()), float(everything.max())) if everything.size else (0.0, 1.0)
    edges = np.linspace(lo, hi if hi > lo else lo + 1e-6, bins + 1)
    for name, v in zip(groups, values):
        ax.hist(v, bins=edges, alpha=0.65 if len(groups) > 1 else 0.9, label=f"{name} ({len(v)})")
    _mark_thresholds(ax, thresholds)
    ax.set(title=title, xlabel="image score", ylabel="images")
    ax.legend(fontsize="small")
    return _png(fig)


def trend(dates: Sequence[str], anomalous_share: Sequence[float | None], median_score: Sequence[float | None],
          thresholds: Sequence[float], highlight: str) -> Picture:
    """Daily anomalous share and median score, the report's night marked."""
    x = [Date.fromisoformat(d) for d in dates]
    share = np.array([np.nan if s is None else 100 * s for s in anomalous_share], np.float64)
    median = np.array([np.nan if m is None else m for m in median_score], np.float64)
    from matplotlib import dates as mdates

    fig = _figure(5.5, 3.4)
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.plot(x, share, marker="o", color="#d62728")
    top.set(ylabel="anomalous %", title="anomalous share and median score per night")
    bottom.plot(x, median, marker="o", color="#1f77b4", label="median score")
    _mark_thresholds(bottom, thresholds, vertical=False)
    bottom.set(ylabel="median score")
    bottom.legend(fontsize="small")
    if highlight in dates:
        for ax in (top, bottom):
            ax.axvline(Date.fromisoformat(highlight), color="0.6", linewidth=6, alpha=0.3)
    if len(x) <= 10:  # a tick per night, never hours between two nights
        bottom.set_xticks(x)
    else:
        bottom.xaxis.set_major_locator(mdates.AutoDateLocator(minticks=3, maxticks=10))
    bottom.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d"))
    fig.autofmt_xdate()
    return _png(fig)


def curves(lines: dict[str, tuple[np.ndarray, np.ndarray]], title: str, xlabel: str, ylabel: str,
           chance: bool = False, limit: float | None = None, points: int = 400) -> Picture:
    """Curves on [0, 1] x [0, 1] (ROC, PRO); long ones are resampled to ``points`` for drawing.

    ``chance`` draws the diagonal; ``limit`` marks an integration limit on x (AUPRO's FPR limit).
    """
    from raymae.metrics import thin_curve  # here, not at the top: the nightly page needs no scikit-learn

    fig = _figure(4.6, 4.0)
    ax = fig.add_subplot()
    for name, (x, y) in lines.items():
        x, y = thin_curve(np.asarray(x, np.float64), np.asarray(y, np.float64), points)
        ax.plot(x, y, linewidth=2 if name == "all" else 1.2, label=name)
    if chance:
        ax.plot([0, 1], [0, 1], color="0.7", linestyle=":", linewidth=1)
    if limit is not None:
        ax.axvline(limit, color="0.4", linestyle="--", linewidth=1, label=f"FPR {limit:g}")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(fontsize="small", loc="lower right")
    return _png(fig)


def colour_scale(tops, threshold: float | None) -> float:
    """One heatmap colour scale for a whole page, so colours compare across images: the largest
    finite map maximum or threshold, 1.0 when there is none above 0."""
    candidates = [float(t) for t in [*tops, threshold] if t is not None and np.isfinite(t)]
    top = max(candidates, default=0.0)
    return top if top > 0 else 1.0


def colour_bar(vmax: float, threshold: float) -> Picture:
    """The heatmap colour scale, 0 .. ``vmax``, with the threshold marked."""
    fig = _figure(4.6, 0.75)
    ax = fig.add_subplot()
    ax.imshow(np.linspace(0, 1, 256)[None, :], aspect="auto", cmap=COLOUR_MAP, extent=(0, vmax, 0, 1))
    if 0 <= threshold <= vmax:
        ax.axvline(threshold, color=np.array(THRESHOLD_COLOUR) / 255, linewidth=2.5)
    ax.set_yticks([])
    ax.set_xlabel("anomaly map value (cyan: threshold)", fontsize="small")
    ax.tick_params(labelsize="small")
    return _png(fig)
