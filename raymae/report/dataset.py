"""Reading scoring output for the reports: one night's rows, and per-night aggregates.

Everything goes through :mod:`raymae.storage` (local paths and ``s3://``) and
reads with column projection: a night's rows come without their heatmap PNGs
(those are fetched for the few images shown), and the history of many nights
reads three small columns per night, one night at a time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds

from raymae import storage
from raymae.data import DataError
from raymae.scoring import PARTITION, parse_date

NIGHT_COLUMNS = ["image_uri", "score", "is_anomalous", "threshold", "heatmap_max", "height", "width",
                 "status", "error", "model_id", "scored_at"]
DAY_COLUMNS = ["status", "is_anomalous", "score"]
_PARTITION_DIR = re.compile(rf"^{PARTITION}=(\d{{4}}-\d{{2}}-\d{{2}})$")


@dataclass(frozen=True)
class DayStats:
    """One night in numbers; errors are not counted as images scored."""

    date: str
    images: int                 # rows: every image that came in
    ok: int                     # scored
    errors: int
    anomalous: int
    median_score: float | None  # of the scored images

    @property
    def anomalous_share(self) -> float | None:
        return self.anomalous / self.ok if self.ok else None


def list_dates(scores_uri: str) -> list[str]:
    """The dates that have a ``date=YYYY-MM-DD`` partition under ``scores_uri``, oldest first."""
    fs, root = storage.resolve(scores_uri)
    fs.invalidate_cache(root)  # a partition written moments ago by this process must be seen
    try:
        entries = fs.ls(root, detail=True) if fs.isdir(root) else None
    except (FileNotFoundError, PermissionError, OSError) as e:
        raise DataError(f"cannot list the scores at {scores_uri!r}: {e}") from e
    if entries is None:
        raise DataError(f"no scores at {scores_uri!r}: the folder does not exist")
    dates = []
    for entry in entries:
        m = _PARTITION_DIR.match(entry["name"].rstrip("/").rsplit("/", 1)[-1])
        if entry.get("type") == "directory" and m:
            try:
                dates.append(parse_date(m.group(1)))
            except DataError:
                continue  # date=2026-02-30: not a night
    return sorted(dates)


def require_date(scores_uri: str, date: str) -> list[str]:
    """All dates under ``scores_uri``; raises DataError naming what is there when ``date`` is not."""
    dates = list_dates(scores_uri)
    if date not in dates:
        there = (f"it has {len(dates)} nights, from {dates[0]} to {dates[-1]}" if dates
                 else f"it has no {PARTITION}=YYYY-MM-DD partitions")
        raise DataError(f"no scores for {date} under {scores_uri!r} ({there})")
    return dates


def read_partition(scores_uri: str, date: str, columns: list[str], filter=None) -> pa.Table:
    """Some columns of one night's Parquet files (``filter``: a pyarrow expression)."""
    partition = storage.join(scores_uri, f"{PARTITION}={date}")
    fs, path = storage.arrow_filesystem(partition)
    try:
        dataset = pds.dataset(path, filesystem=fs, format="parquet")
    except (FileNotFoundError, OSError, pa.ArrowInvalid) as e:
        raise DataError(f"cannot read {partition!r}: {e}") from e
    if not dataset.files:
        raise DataError(f"{partition!r} holds no Parquet files")
    missing = [c for c in columns if c not in dataset.schema.names]
    if missing:
        raise DataError(f"{partition!r} is not raymae scoring output: no column {', '.join(missing)}")
    try:
        return dataset.to_table(columns=columns, filter=filter)
    except (OSError, pa.ArrowInvalid) as e:
        raise DataError(f"cannot read {partition!r}: {e}") from e


def is_ok(table: pa.Table) -> pa.ChunkedArray:
    """Per row: was the image scored (``status = 'ok'``)?"""
    return pc.fill_null(pc.equal(table.column("status"), "ok"), False)


def day_stats(date: str, table: pa.Table) -> DayStats:
    """Counts and median score of a night from its ``status``, ``is_anomalous`` and ``score`` columns."""
    ok = is_ok(table)
    n_ok = int(pc.sum(ok).as_py() or 0)
    anomalous = int(pc.sum(pc.and_(ok, table.column("is_anomalous").fill_null(False))).as_py() or 0)
    scores = table.column("score").filter(ok).drop_null().to_numpy()
    return DayStats(date=date, images=table.num_rows, ok=n_ok, errors=table.num_rows - n_ok,
                    anomalous=anomalous, median_score=float(np.median(scores)) if scores.size else None)


def history(scores_uri: str, dates: list[str]) -> list[DayStats]:
    """:class:`DayStats` of each date, reading three columns of one night at a time."""
    return [day_stats(d, read_partition(scores_uri, d, DAY_COLUMNS)) for d in dates]


def heatmaps(scores_uri: str, date: str, image_uris: list[str]) -> dict[str, bytes]:
    """image_uri -> heatmap PNG for just these images of the night.

    The filter lets pyarrow skip row groups whose image_uri statistics (min/max)
    cannot hold a wanted image; scoring writes rows in listing order, so those
    ranges are narrow and only the row groups of the wanted images are read.
    """
    if not image_uris:
        return {}
    table = read_partition(scores_uri, date, ["image_uri", "heatmap_png"],
                           filter=pc.field("image_uri").isin(pa.array(image_uris, pa.string())))
    found: dict[str, bytes] = {}
    for uri, png in zip(table.column("image_uri").to_pylist(), table.column("heatmap_png").to_pylist()):
        if png is not None:
            found.setdefault(uri, png)
    return found
