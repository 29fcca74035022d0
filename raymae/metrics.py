"""Evaluation metrics for anomaly detection: image-level and pixel-level.

Image level: ROC AUC and the best F1 over all thresholds.
Pixel level: ROC AUC and average precision over all pixels, and AUPRO, the
normalised area under the per-region-overlap curve of Bergmann et al.,
"The MVTec Anomaly Detection Dataset", IJCV 2021, computed exactly as the
MVTec AD evaluation code does (no threshold binning).

The curves behind the areas are public too (:func:`roc_curve`,
:func:`pro_curve`), for plots: the scalar metrics are computed from them.

Every function checks its inputs and raises ``ValueError`` with a message
that says what is wrong, rather than returning NaN or a warning.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage
from sklearn.metrics import precision_recall_curve, roc_auc_score
from sklearn.metrics import roc_curve as _sklearn_roc_curve

# 8-connectivity: pixels touching at a corner belong to the same region.
_EIGHT_CONNECTED = np.ones((3, 3), dtype=int)


def _scores(values: ArrayLike, name: str) -> np.ndarray:
    """``values`` as float64, refusing NaNs."""
    out = np.asarray(values, dtype=np.float64)
    if np.isnan(out).any():
        raise ValueError(f"{name} contain NaN values")
    return out


def _binary(values: ArrayLike, name: str) -> np.ndarray:
    """``values`` as a boolean array, refusing anything but 0/1 (or bool)."""
    out = np.asarray(values)
    if out.dtype != bool:
        if not np.isin(out, (0, 1)).all():
            raise ValueError(f"{name} must contain only 0/1 (or booleans)")
        out = out.astype(bool)
    return out


def _require_classes(positive: np.ndarray, what: str, need_negative: bool = True) -> None:
    """Raise if ``positive`` has no True (or, if ``need_negative``, no False)."""
    if not positive.any():
        raise ValueError(f"no anomalous {what}: the metric is undefined")
    if need_negative and positive.all():
        raise ValueError(f"no normal {what}: the metric is undefined")


def _image_inputs(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validated 1-D (labels, scores) of equal length."""
    y, s = _binary(labels, "labels"), _scores(scores, "scores")
    if y.ndim != 1 or s.ndim != 1:
        raise ValueError(f"labels and scores must be 1-D, got shapes {y.shape} and {s.shape}")
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape[0]} vs {s.shape[0]}")
    return y, s


def _pixel_inputs(masks: ArrayLike, maps: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validated (masks, maps) of equal shape (N, H, W)."""
    m, a = _binary(masks, "masks"), _scores(maps, "maps")
    if m.ndim != 3 or a.ndim != 3:
        raise ValueError(f"masks and maps must be 3-D (N, H, W), got shapes {m.shape} and {a.shape}")
    if m.shape != a.shape:
        raise ValueError(f"masks and maps differ in shape: {m.shape} vs {a.shape}")
    return m, a


def roc_curve(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Image-level ROC curve: (FPR, TPR) arrays from (0, 0) to (1, 1), one point per useful threshold."""
    y, s = _image_inputs(labels, scores)
    _require_classes(y, "images")
    fpr, tpr, _ = _sklearn_roc_curve(y, s)
    return fpr, tpr


def image_auroc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Image-level ROC AUC: ``labels`` are 0/1 per image (1 = anomalous), ``scores`` higher = more anomalous."""
    y, s = _image_inputs(labels, scores)
    _require_classes(y, "images")
    return float(roc_auc_score(y, s))


def f1_max(labels: ArrayLike, scores: ArrayLike) -> float:
    """Best F1 over every threshold ``score >= t``, taken from the precision-recall curve.

    Points where precision and recall are both 0 count as F1 = 0.
    """
    y, s = _image_inputs(labels, scores)
    _require_classes(y, "images", need_negative=False)
    precision, recall, _ = precision_recall_curve(y, s)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    return float(f1.max())


def pixel_auroc(masks: ArrayLike, maps: ArrayLike) -> float:
    """Pixel-level ROC AUC over all pixels of all images; ``masks`` and ``maps`` are (N, H, W)."""
    m, a = _pixel_inputs(masks, maps)
    _require_classes(m, "pixels")
    return pixel_curves(m, a, regions=False).auroc()


def pixel_ap(masks: ArrayLike, maps: ArrayLike) -> float:
    """Pixel-level average precision over all pixels of all images; ``masks`` and ``maps`` are (N, H, W)."""
    m, a = _pixel_inputs(masks, maps)
    _require_classes(m, "pixels", need_negative=False)
    return pixel_curves(m, a, regions=False).ap()


def _inverse_region_areas(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """Per-pixel ``1 / area`` of its ground-truth region (0 for normal pixels), and the region count.

    Regions are 8-connected components, labelled per image.
    """
    inv_area = np.zeros(masks.shape, dtype=np.float64)
    num_regions = 0
    for i, mask in enumerate(masks):
        regions, n = ndimage.label(mask, structure=_EIGHT_CONNECTED)
        per_region = np.zeros(n + 1)
        per_region[1:] = 1.0 / np.bincount(regions.ravel())[1:]
        inv_area[i] = per_region[regions]
        num_regions += n
    return inv_area, num_regions


@dataclass
class PixelCurves:
    """The pixel-level curves, one point per distinct map value plus a leading (0, 0).

    Walking the pixels by descending score, each point counts the pixels at or
    above that value (tied pixels move together):

    * ``fpr``: share of the normal pixels counted;
    * ``tpr``: share of the anomalous pixels counted (the recall);
    * ``precision``: anomalous share of the pixels counted (1 at the leading point);
    * ``pro``: mean over ground-truth regions of the share of the region counted
      (``None`` when computed with ``regions=False``).
    """

    fpr: np.ndarray
    tpr: np.ndarray
    precision: np.ndarray
    pro: np.ndarray | None = None

    def auroc(self) -> float:
        """Area under (fpr, tpr), trapezoids between the distinct thresholds."""
        return float(np.sum(0.5 * (self.tpr[1:] + self.tpr[:-1]) * np.diff(self.fpr)))

    def ap(self) -> float:
        """Average precision as scikit-learn defines it: precision times each recall step, summed."""
        return float(np.sum(np.diff(self.tpr) * self.precision[1:]))

    def aupro(self, fpr_limit: float = 0.3) -> float:
        """Normalised area under (fpr, pro) up to ``fpr_limit``."""
        return _trapezoid(self.fpr, self.pro, fpr_limit) / fpr_limit


def pixel_curves(masks: np.ndarray, maps: np.ndarray, regions: bool = True) -> PixelCurves:
    """The curves of validated (N, H, W) bool masks and float maps, from one sort of all pixels.

    Every normal pixel adds ``1 / num_normal`` to the FPR, every anomalous one
    ``1 / num_anomalous`` to the TPR, and every pixel of ground-truth region ``r``
    adds ``1 / (num_regions * area_r)`` to the PRO, so walking the pixels by
    descending score and summing gives the curves. ``regions=False`` skips the
    region labelling that only the PRO needs.
    """
    order = np.argsort(-maps.ravel())  # descending score
    sorted_scores = maps.ravel()[order]
    # Keep the leading (0, 0) and only the last pixel of each run of equal scores, so ties move together.
    keep = np.concatenate(([True], sorted_scores[1:] != sorted_scores[:-1], [True]))
    del sorted_scores

    # One scratch array of per-pixel steps, reused for both sums; steps[0] = 0 is the curves' start.
    steps = np.zeros(order.size + 1)
    steps[1:] = masks.ravel()[order]
    tp = np.cumsum(steps, out=steps)[keep]
    counted = np.flatnonzero(keep).astype(np.float64)  # pixels counted at each kept point
    fp = counted - tp
    precision = np.divide(tp, counted, out=np.ones_like(tp), where=counted > 0)
    curves = PixelCurves(fpr=fp / max(fp[-1], 1.0), tpr=tp / max(tp[-1], 1.0), precision=precision)

    if regions:
        inv_area, num_regions = _inverse_region_areas(masks)
        steps[0] = 0.0
        np.take(inv_area.ravel(), order, out=steps[1:], mode="clip")  # valid indices; "clip" avoids a copy
        del inv_area
        pro = np.cumsum(steps, out=steps)[keep]
        pro /= max(num_regions, 1)
        curves.pro = np.clip(pro, None, 1.0, out=pro)  # cumsum round-off must not exceed 1
    return curves


def _check_fpr_limit(fpr_limit: float) -> None:
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")


def _trapezoid(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under ``y(x)`` for ``x`` in [x[0], x_max]; ``x`` must be non-decreasing.

    A segment crossing ``x_max`` is cut there, with ``y`` interpolated linearly
    (as MVTec's ``trapezoid(x, y, x_max)``).
    """
    end = int(np.searchsorted(x, x_max, side="right"))  # x[:end] <= x_max < x[end:]
    area = float(np.sum(0.5 * (y[1:end] + y[: end - 1]) * np.diff(x[:end])))
    if end < len(x):
        x0, x1, y0, y1 = x[end - 1], x[end], y[end - 1], y[end]
        y_cut = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        area += 0.5 * (y0 + y_cut) * (x_max - x0)
    return area


def pro_curve(masks: ArrayLike, maps: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """The exact PRO curve: (pixel FPR, PRO) arrays from (0, 0) to (1, 1), the FPR non-decreasing.

    One point per distinct anomaly-map value (tied pixels move together), so the
    curve of a large test set has many points: thin it for a plot, not for the area.
    ``masks`` and ``maps`` are (N, H, W), as for :func:`aupro`, which integrates it.
    """
    m, a = _pixel_inputs(masks, maps)
    _require_classes(m, "pixels")
    curves = pixel_curves(m, a)
    return curves.fpr, curves.pro


def aupro(masks: ArrayLike, maps: ArrayLike, fpr_limit: float = 0.3) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit`` (Bergmann et al., IJCV 2021).

    PRO at a threshold is the mean over ground-truth regions (8-connected,
    per image) of the fraction of the region's pixels at or above it, so a
    small defect weighs as much as a large one. The curve of PRO against the
    pixel FPR is integrated with the trapezoid rule up to ``fpr_limit`` and
    divided by ``fpr_limit``, giving a value in [0, 1].

    Args:
        masks: (N, H, W) ground truth, 0/1 or bool (1 = anomalous).
        maps: (N, H, W) anomaly scores, higher = more anomalous.
        fpr_limit: upper FPR bound of the integral, in (0, 1].
    """
    _check_fpr_limit(fpr_limit)
    m, a = _pixel_inputs(masks, maps)
    _require_classes(m, "pixels")
    return pixel_curves(m, a).aupro(fpr_limit)


def image_metrics(labels: ArrayLike, scores: ArrayLike) -> dict[str, float]:
    """``{"image_auroc", "image_f1_max"}`` for per-image labels and scores."""
    return {"image_auroc": image_auroc(labels, scores), "image_f1_max": f1_max(labels, scores)}


def pixel_metrics(masks: ArrayLike, maps: ArrayLike, fpr_limit: float = 0.3) -> dict[str, float]:
    """``{"pixel_auroc", "pixel_ap", "aupro"}`` for (N, H, W) masks and anomaly maps, from one sort."""
    return pixel_metrics_and_pro_curve(masks, maps, fpr_limit)[0]


def pixel_metrics_and_pro_curve(masks: ArrayLike, maps: ArrayLike, fpr_limit: float = 0.3, points: int = 2000
                                ) -> tuple[dict[str, float], tuple[np.ndarray, np.ndarray]]:
    """:func:`pixel_metrics` and the PRO curve it integrated, as (pixel FPR, PRO) resampled to at
    most ``points`` points (ends kept) for a plot: one sort of the pixels for both."""
    _check_fpr_limit(fpr_limit)
    m, a = _pixel_inputs(masks, maps)
    _require_classes(m, "pixels")
    curves = pixel_curves(m, a)
    scalars = {"pixel_auroc": curves.auroc(), "pixel_ap": curves.ap(), "aupro": curves.aupro(fpr_limit)}
    return scalars, thin_curve(curves.fpr, curves.pro, points)


def thin_curve(x: np.ndarray, y: np.ndarray, points: int) -> tuple[np.ndarray, np.ndarray]:
    """At most ``points`` points of a curve with non-decreasing x, its ends kept (for plots)."""
    if len(x) <= points:
        return x, y
    keep = np.unique(np.linspace(0, len(x) - 1, points).round().astype(int))
    return x[keep], y[keep]
