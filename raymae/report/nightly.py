"""The nightly page: what one night's scoring found, and how it compares with earlier nights.

:func:`build_nightly_report` reads a scoring output (local or ``s3://``) and
returns a :class:`NightlyReport`; :func:`write_nightly_report` renders it to
``<output>/index.html``, one self-contained file (every picture embedded).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raymae import heatmap, sources, storage
from raymae.data import DataError, decode_image
from raymae.report import dataset, figures
from raymae.report.html import render, write_page
from raymae.scoring import parse_date

DEFAULT_TOP = 20
DEFAULT_HISTORY = 90      # nights of history in the trend
ERROR_EXAMPLES = 10       # paths listed per error reason
MAX_LEVELS = 3            # folder levels broken down (e.g. line / camera / station)
MAX_LEVEL_VALUES = 50     # rows per folder level, the most anomalous first
NO_SUBFOLDER = "(no subfolder)"  # the level value of images that sit directly in the level above


@dataclass(frozen=True)
class NightSummary:
    stats: dataset.DayStats
    thresholds: list[float]
    model_ids: list[str]
    first_scored: datetime | None
    last_scored: datetime | None

    @property
    def threshold(self) -> float:
        """The threshold of the night (the first, should a night mix models)."""
        return self.thresholds[0] if self.thresholds else float("nan")


@dataclass(frozen=True)
class TopImage:
    rank: int
    image_uri: str
    score: float
    threshold: float
    height: int | None
    width: int | None
    panels: figures.Panels
    note: str | None = None       # why the original is not shown


@dataclass(frozen=True)
class ErrorGroup:
    reason: str
    count: int
    examples: list[str]           # the first ERROR_EXAMPLES paths, sorted


@dataclass(frozen=True)
class LevelValue:
    value: str
    images: int
    ok: int
    errors: int
    anomalous: int

    @property
    def anomalous_share(self) -> float | None:
        return self.anomalous / self.ok if self.ok else None


@dataclass(frozen=True)
class LevelBreakdown:
    level: int                    # 1 = the first folder below the common prefix
    values: list[LevelValue]      # the most anomalous first
    more: int = 0                 # values left out of the table


@dataclass
class NightlyReport:
    scores_uri: str
    date: str
    summary: NightSummary
    top: list[TopImage]
    errors: list[ErrorGroup]
    history: list[dataset.DayStats]   # the nights up to and including this one, oldest first
    prefix: str                       # the folder all images of the night share
    breakdowns: list[LevelBreakdown]
    vmax: float                       # the heatmap colour scale's top, the same for every image
    incomplete_nights: list[str] = field(default_factory=list)  # left out of the history: never published
    pictures: dict[str, figures.Picture] = field(default_factory=dict)
    generated_at: datetime = field(default_factory=lambda: datetime.now().astimezone())


# ------------------------------------------------------------------ building
def build_nightly_report(scores_uri: str, date: str, top: int = DEFAULT_TOP,
                         history_nights: int = DEFAULT_HISTORY) -> NightlyReport:
    """Read the night ``date`` (and up to ``history_nights`` nights before it) and draw everything."""
    date = parse_date(date)
    if top < 1 or history_nights < 1:
        raise DataError("top and history must be at least 1")
    scores_uri = storage.absolute_uri(scores_uri)
    dates = dataset.require_date(scores_uri, date)
    tonight = dataset.read_night(scores_uri, date)
    night = tonight.table
    stats = dataset.day_stats(date, night)
    earlier, incomplete = dataset.complete_nights_before(scores_uri, dates, date, history_nights - 1)
    past = dataset.history(scores_uri, earlier) + [stats]
    summary = summarise(stats, night)
    chosen = top_rows(night, top)
    vmax = figures.colour_scale([r["heatmap_max"] for r in chosen], summary.threshold)
    prefix, levels = folder_levels(night.column("image_uri").to_pylist())
    report = NightlyReport(
        scores_uri=scores_uri, date=date, summary=summary,
        top=draw_top(tonight, chosen, vmax), errors=group_errors(night), history=past,
        prefix=prefix, breakdowns=breakdowns(night, levels), vmax=vmax, incomplete_nights=incomplete)
    report.pictures = plots(report, night)
    return report


def summarise(stats: dataset.DayStats, night: pa.Table) -> NightSummary:
    thresholds = sorted({float(t) for t in pc.unique(night.column("threshold").drop_null()).to_pylist()})
    model_ids = sorted(pc.unique(night.column("model_id").drop_null()).to_pylist())
    times = night.column("scored_at").drop_null()
    first, last = (pc.min(times).as_py(), pc.max(times).as_py()) if len(times) else (None, None)
    return NightSummary(stats, thresholds, model_ids, first, last)


def top_rows(night: pa.Table, n: int) -> list[dict]:
    """The ``n`` highest-scoring images that were scored, ties by path (heatmaps not read yet)."""
    ok = night.filter(pc.and_(dataset.is_ok(night), pc.is_valid(night.column("score"))))
    order = pc.sort_indices(ok, sort_keys=[("score", "descending"), ("image_uri", "ascending")])
    return ok.take(order[:n]).to_pylist()


def draw_top(night: dataset.Night, rows: list[dict], vmax: float) -> list[TopImage]:
    """Panels of the chosen images: heatmaps from the Parquet, originals read again where they still can be."""
    pngs = dataset.heatmaps(night, rows)
    originals = sources.read_images([r["image_uri"] for r in rows])
    out = []
    for rank, r in enumerate(rows, 1):
        size = figures.display_size(r["width"], r["height"])
        pixels, note = original_pixels(originals[r["image_uri"]], size)
        png = pngs.get(r["image_uri"])
        if png is None:  # cannot happen with raymae output; say so rather than fail
            amap, note = np.zeros((2, 2), np.float32), "no heatmap stored for this image"
        else:
            amap = heatmap.decode(png, r["heatmap_max"])
        out.append(TopImage(rank, r["image_uri"], float(r["score"]), float(r["threshold"]),
                            r["height"], r["width"],
                            figures.overlay_panels(amap, float(r["threshold"]), vmax, size, pixels), note))
    return out


def original_pixels(raw: sources.RawImage, size: tuple[int, int]) -> tuple[np.ndarray | None, str | None]:
    """(pixels, None) through the one decoder, or (None, why the original cannot be shown)."""
    if raw.data is None:
        return None, f"original not shown: {raw.error}"
    try:
        return np.asarray(decode_image(raw.data, draft_size=max(size))), None  # aspect kept: the panels resize
    except DataError as e:
        return None, f"original not shown: {e}"


def group_errors(night: pa.Table) -> list[ErrorGroup]:
    """Error rows grouped by their reason, the most frequent reason first."""
    failed = night.filter(pc.invert(dataset.is_ok(night))).select(["image_uri", "error"])
    by_reason: dict[str, list[str]] = defaultdict(list)
    for uri, error in zip(failed.column("image_uri").to_pylist(), failed.column("error").to_pylist()):
        by_reason[error or "(no reason given)"].append(uri)
    groups = [ErrorGroup(reason, len(uris), sorted(uris)[:ERROR_EXAMPLES]) for reason, uris in by_reason.items()]
    return sorted(groups, key=lambda g: (-g.count, g.reason))


# ------------------------------------------------------------------ folders
def location_parts(image_uri: str) -> list[str]:
    """The folders of an image, a tar archive counting as one (``a/b.tar#c/d.png`` -> a, b.tar, c)."""
    archive, member = sources.split_member(image_uri)
    path = archive if member is None else f"{archive}/{member}"
    return [p for p in path.split("://", 1)[-1].split("/")[:-1] if p]


def folder_levels(uris: list[str]) -> tuple[str, list[list[str]]]:
    """(the common folder prefix, each image's folders below it)."""
    parts = [location_parts(u) for u in uris]
    if not parts:
        return "", []
    common = 0
    shortest = min(len(p) for p in parts)
    while common < shortest and all(p[common] == parts[0][common] for p in parts):
        common += 1
    first = uris[0]
    scheme = first.split("://", 1)[0] + "://" if "://" in first else ("/" if first.startswith("/") else "")
    prefix = scheme + "/".join(parts[0][:common])
    return prefix, [p[common:] for p in parts]


def breakdowns(night: pa.Table, levels: list[list[str]]) -> list[LevelBreakdown]:
    """Anomalous share per value of each folder level that has more than one value."""
    out = []
    ok = dataset.is_ok(night)
    flags = pa.table({"ok": ok, "anomalous": pc.and_(ok, pc.fill_null(night.column("is_anomalous"), False))})
    depth = min(MAX_LEVELS, max((len(p) for p in levels), default=0))
    for level in range(depth):
        value = pa.array([p[level] if level < len(p) else NO_SUBFOLDER for p in levels], pa.string())
        counts = (flags.append_column("value", value).group_by("value")
                  .aggregate([("ok", "count"), ("ok", "sum"), ("anomalous", "sum")]))
        if counts.num_rows < 2:
            continue
        values = [LevelValue(v, n, int(k), n - int(k), int(a)) for v, n, k, a in zip(
            *(counts.column(c).to_pylist() for c in ("value", "ok_count", "ok_sum", "anomalous_sum")))]
        values.sort(key=lambda v: (-(v.anomalous_share or 0.0), v.value))
        out.append(LevelBreakdown(level + 1, values[:MAX_LEVEL_VALUES], max(0, len(values) - MAX_LEVEL_VALUES)))
    return out


# ------------------------------------------------------------------ pictures and page
def plots(report: NightlyReport, night: pa.Table) -> dict[str, figures.Picture]:
    scores = night.column("score").filter(dataset.is_ok(night)).drop_null().to_numpy()
    thresholds = report.summary.thresholds
    out = {"histogram": figures.score_histogram({"scored images": scores}, thresholds,
                                                f"scores of {report.date}"),
           "colour_bar": figures.colour_bar(report.vmax, report.summary.threshold)}
    if len(report.history) > 1:
        out["trend"] = figures.trend([d.date for d in report.history],
                                     [d.anomalous_share for d in report.history],
                                     [d.median_score for d in report.history], thresholds, report.date)
    return out


def render_nightly_report(report: NightlyReport) -> str:
    return render("nightly.html", report=report, generated_at=report.generated_at)


def write_nightly_report(report: NightlyReport, output: str) -> str:
    """``<output>/index.html`` (local or ``s3://``); returns its URI."""
    return write_page(output, "index.html", render_nightly_report(report))
