"""The evaluation page: how a model does on a labelled test split, and where it goes wrong.

Built from what :func:`raymae.evaluate.evaluate` returns: the metrics overall
and per defect type, image ROC and pixel PRO curves, the score distribution of
normal and defective images, and overlays of the best and worst cases with the
ground-truth defect outlined next to the region the threshold marks.
:func:`write_evaluation_report` writes ``<output>/report.html``, one file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from raymae import data, metrics
from raymae.evaluate import METRIC_NAMES, EvaluationResult, metric_rows
from raymae.inference import Prediction
from raymae.report import figures
from raymae.report.html import render, write_page

CASES_PER_KIND = 4     # normal images shown as false-alarm candidates
BEST, WORST, NORMAL = "best", "worst", "normal"
PRO_FPR_LIMIT = 0.3    # marked on the PRO plot: AUPRO integrates up to here


@dataclass(frozen=True)
class Case:
    """One test image shown with its panels."""

    kind: str          # BEST, WORST (of a defect type) or NORMAL (a high-scoring normal image)
    image_uri: str
    defect_type: str
    score: float
    flagged: bool      # score >= threshold
    panels: figures.Panels

    @property
    def title(self) -> str:
        return "normal image" if self.kind == NORMAL else f"{self.kind} {self.defect_type}"

    @property
    def verdict(self) -> str | None:
        """What the threshold made of it, when that is a mistake."""
        if self.kind == NORMAL:
            return "a false alarm" if self.flagged else None
        return None if self.flagged else "a missed defect"


@dataclass
class EvaluationReport:
    result: EvaluationResult
    rows: list[tuple[str, dict[str, float]]]   # ("all" | defect type, metrics with n)
    cases: list[Case]
    vmax: float
    pictures: dict[str, figures.Picture] = field(default_factory=dict)
    generated_at: datetime = field(default_factory=lambda: datetime.now().astimezone())

    @property
    def metric_names(self) -> tuple[str, ...]:
        return METRIC_NAMES


def build_evaluation_report(result: EvaluationResult, test: data.ImageSet, pred: Prediction,
                            cases_per_kind: int = CASES_PER_KIND) -> EvaluationReport:
    types = np.array(test.defect_types)
    rows = metric_rows(result)
    chosen = choose_cases(types, pred.scores, cases_per_kind)
    vmax = figures.colour_scale([pred.maps[i].max() for _, i in chosen], result.threshold)
    cases = [Case(kind, test.uris[i], str(types[i]), float(pred.scores[i]),
                  bool(pred.scores[i] >= result.threshold),
                  figures.overlay_panels(pred.maps[i], result.threshold, vmax,
                                         figures.display_size(None, None), test.images[i],
                                         test.masks[i] if test.masks[i].any() else None))
             for kind, i in chosen]
    report = EvaluationReport(result, rows, cases, vmax)
    report.pictures = plots(result, types, test, pred, vmax)
    return report


def choose_cases(types: np.ndarray, scores: np.ndarray, k: int) -> list[tuple[str, int]]:
    """Per defect type its best case (highest score) and its worst (lowest),
    then the ``k`` highest-scoring normal images (the likeliest false alarms)."""
    chosen: list[tuple[str, int]] = []
    for defect in sorted(set(types.tolist()) - {data.GOOD}):
        idx = np.flatnonzero(types == defect)
        order = idx[np.argsort(-scores[idx], kind="stable")]
        chosen.append((BEST, int(order[0])))
        if len(order) > 1:
            chosen.append((WORST, int(order[-1])))
    good = np.flatnonzero(types == data.GOOD)
    for i in good[np.argsort(-scores[good], kind="stable")][:k]:
        chosen.append((NORMAL, int(i)))
    return chosen


def plots(result: EvaluationResult, types: np.ndarray, test: data.ImageSet, pred: Prediction,
          vmax: float) -> dict[str, figures.Picture]:
    good = types == data.GOOD
    roc = {}
    for name in ["all", *result.per_type]:
        sel = np.ones(len(types), bool) if name == "all" else good | (types == name)
        roc[name] = metrics.roc_curve(test.labels[sel], pred.scores[sel])
    pro = result.pro_curves  # computed with the metrics, one sort of the pixels each
    out = {"roc": figures.curves(roc, "image ROC", "false-positive rate (normal images)",
                                 "true-positive rate (defective images)", chance=True),
           "histogram": figures.score_histogram({"normal": pred.scores[good], "defective": pred.scores[~good]},
                                                [result.threshold], "test image scores"),
           "colour_bar": figures.colour_bar(vmax, result.threshold)}
    if pro:
        out["pro"] = figures.curves(pro, "pixel PRO", "false-positive rate (normal pixels)",
                                    "per-region overlap", limit=PRO_FPR_LIMIT)
    return out


def render_evaluation_report(report: EvaluationReport) -> str:
    return render("evaluation.html", report=report, generated_at=report.generated_at)


def write_evaluation_report(report: EvaluationReport, output: str) -> str:
    """``<output>/report.html`` (local or ``s3://``); returns its URI."""
    return write_page(output, "report.html", render_evaluation_report(report))
