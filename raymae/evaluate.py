"""Evaluation on labelled test images, as the literature reports it.

The test images come from an MVTec-AD style folder (``data.list_test``) or from
folders of normal and defective images with optional masks (``data.list_folders``).
Writes ``metrics.json`` (image AUROC, pixel AUROC, AUPRO@0.3, pixel AP,
image F1-max; overall and per defect type) and ``scores.parquet`` (one row per
test image), and prints a table. Without masks the pixel metrics are absent:
null in ``metrics.json``, a dash in the table and on the page.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace


import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raymae import data, metrics, storage
from raymae.artifact import ModelArtifact
from raymae.inference import Prediction

METRIC_NAMES = ("image_auroc", "pixel_auroc", "aupro", "pixel_ap", "image_f1_max")
PIXEL_METRICS = ("pixel_auroc", "aupro", "pixel_ap")
NO_MASKS = "absent: the test images have no defect masks"


def absent(value) -> bool:
    """A metric that could not be computed (NaN): pixel metrics without masks."""
    return value is None or (isinstance(value, float) and math.isnan(value))


@dataclass
class EvaluationResult:
    metrics: dict[str, float]
    per_type: dict[str, dict[str, float]]
    n_images: int
    model_id: str
    map_rule: str
    threshold: float
    extra: dict = field(default_factory=dict)
    # (pixel FPR, PRO) of "all" and of each defect type, resampled for plots; not in metrics.json
    pro_curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)

    @property
    def has_pixel_metrics(self) -> bool:
        return not absent(self.metrics.get("pixel_auroc"))

    def to_json_dict(self) -> dict:
        """What metrics.json holds: everything but the curves; absent metrics are null."""
        out = asdict(replace(self, pro_curves={}))
        del out["pro_curves"]
        out["metrics"] = _nulls(out["metrics"])
        out["per_type"] = {name: _nulls(row) for name, row in out["per_type"].items()}
        return out


def _nulls(row: dict) -> dict:
    return {k: None if absent(v) else v for k, v in row.items()}


def compute_metrics(labels: np.ndarray, scores: np.ndarray, masks: np.ndarray, maps: np.ndarray,
                    fpr_limit: float = 0.3) -> dict[str, float]:
    """The five headline metrics; pixel metrics are NaN where the split has no defect pixels."""
    return metrics_and_pro_curve(labels, scores, masks, maps, fpr_limit)[0]


def metrics_and_pro_curve(labels: np.ndarray, scores: np.ndarray, masks: np.ndarray, maps: np.ndarray,
                          fpr_limit: float = 0.3) -> tuple[dict[str, float], tuple[np.ndarray, np.ndarray] | None]:
    """:func:`compute_metrics` and the PRO curve behind AUPRO (None without defect pixels)."""
    nan = float("nan")
    pixel, curve = {"pixel_auroc": nan, "pixel_ap": nan, "aupro": nan}, None
    if masks.any():
        pixel, curve = metrics.pixel_metrics_and_pro_curve(masks, maps, fpr_limit)
    return {**metrics.image_metrics(labels, scores), **pixel}, curve


def per_type_metrics(test: data.ImageSet, pred: Prediction
                     ) -> tuple[dict[str, dict[str, float]], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Each defect type against the normal test images: its metrics, and its PRO curve."""
    types = np.array(test.defect_types)
    good = types == data.GOOD
    rows, curves = {}, {}
    for defect in sorted(set(types) - {data.GOOD}):
        sel = good | (types == defect)
        rows[defect], curve = metrics_and_pro_curve(test.labels[sel], pred.scores[sel],
                                                    test.masks[sel], pred.maps[sel])
        rows[defect]["n"] = int((types == defect).sum())
        if curve is not None:
            curves[defect] = curve
    return rows, curves


def evaluate(artifact: ModelArtifact, data_uri: str | None = None, device: str = "cpu", batch_size: int = 32,
             test: data.ImageSet | None = None,
             precision: str = "auto") -> tuple[EvaluationResult, data.ImageSet, Prediction]:
    """The metrics of a model on ``test`` (decoded images), or else on the MVTec-AD folder ``data_uri``."""
    if test is None:
        test = data.load_images(data.list_test(data_uri), artifact.config.model.image_size)
    labels = test.labels
    if len(labels) == 0 or labels.min() == labels.max():
        where = f" of {data_uri!r}" if data_uri else ""
        raise data.DataError(f"the test images{where} need both normal and defective images to compute AUROC "
                             f"(found {int((labels == 0).sum())} normal, {int((labels == 1).sum())} defective)")
    pred = artifact.predictor(device, precision).predict(test.images, batch_size)
    amap = artifact.config.anomaly_map
    overall, curve = metrics_and_pro_curve(labels, pred.scores, test.masks, pred.maps)
    per_type, curves = per_type_metrics(test, pred)
    result = EvaluationResult(
        metrics=overall, per_type=per_type, n_images=len(labels), model_id=artifact.model_id,
        map_rule=f"{amap.combination}/{amap.score_rule}", threshold=artifact.calibration.threshold,
        pro_curves=({"all": curve} if curve is not None else {}) | curves)
    flagged = pred.scores >= result.threshold
    result.extra = {"threshold_fpr": float(flagged[labels == 0].mean()),
                    "threshold_tpr": float(flagged[labels == 1].mean())}
    if not result.has_pixel_metrics:
        result.extra["pixel_metrics"] = NO_MASKS
    return result, test, pred


def write_outputs(result: EvaluationResult, test: data.ImageSet, pred: Prediction, output: str) -> None:
    """``metrics.json`` and ``scores.parquet`` under ``output`` (local or s3://)."""
    storage.write_bytes(storage.join(output, "metrics.json"),
                        json.dumps(result.to_json_dict(), indent=2, default=float, allow_nan=False).encode())
    table = pa.table({
        "image_uri": pa.array(test.uris, pa.string()),
        "score": pa.array(pred.scores, pa.float32()),
        "label": pa.array(test.labels.astype(np.int8), pa.int8()),
        "defect_type": pa.array(test.defect_types, pa.string()),
        "is_anomalous": pa.array(pred.scores >= result.threshold, pa.bool_()),
    })
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    storage.write_bytes(storage.join(output, "scores.parquet"), sink.getvalue().to_pybytes())


def metric_rows(result: EvaluationResult) -> list[tuple[str, dict[str, float]]]:
    """("all" | defect type, its metrics with ``n``), as the table and the evaluation page show them."""
    return [("all", dict(result.metrics, n=result.n_images)), *result.per_type.items()]


def format_table(result: EvaluationResult) -> str:
    header = f"{'':<14}" + "".join(f"{m:>14}" for m in METRIC_NAMES) + f"{'n':>6}"
    rows = [header]
    for name, row in metric_rows(result):
        rows.append(f"{name:<14}" + "".join(f"{'-' if absent(row[m]) else f'{row[m]:.4f}':>14}"
                                            for m in METRIC_NAMES) + f"{row['n']:>6}")
    rows.append(f"model {result.model_id}  map rule {result.map_rule}  threshold {result.threshold:.4g} "
                f"(test FPR {result.extra['threshold_fpr']:.3f}, TPR {result.extra['threshold_tpr']:.3f})")
    if not result.has_pixel_metrics:
        rows.append(f"pixel metrics ({', '.join(PIXEL_METRICS)}): {NO_MASKS}")
    return "\n".join(rows)


