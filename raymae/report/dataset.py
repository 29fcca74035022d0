"""Reading scoring output for the reports: one night's rows, and per-night aggregates.

Everything goes through :mod:`raymae.storage` (local paths and ``s3://``) and
reads with column projection: a night's rows come without their heatmap PNGs
(those are fetched for the few images shown, from their row groups only), and
the history of many nights reads three small columns per night, one night at a time.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds

from raymae import storage
from raymae.data import DataError
from raymae.scoring import (MARKER, PARTITION, complete_dates, is_complete, is_ok, night_counts,
                            partition_date, partition_uri)

NIGHT_COLUMNS = ["image_uri", "score", "is_anomalous", "threshold", "heatmap_max", "height", "width",
                 "status", "error", "model_id", "scored_at"]
DAY_COLUMNS = ["status", "is_anomalous", "score"]


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
    dates = [partition_date(e["name"]) for e in entries if e.get("type") == "directory"]
    return sorted(d for d in dates if d)


def require_date(scores_uri: str, date: str) -> list[str]:
    """All dates under ``scores_uri``; raises DataError naming what is there when ``date`` is not."""
    dates = list_dates(scores_uri)
    if date not in dates:
        there = (f"it has {len(dates)} nights, from {dates[0]} to {dates[-1]}" if dates
                 else f"it has no {PARTITION}=YYYY-MM-DD partitions")
        raise DataError(f"no scores for {date} under {scores_uri!r} ({there})")
    if not is_complete(partition_uri(scores_uri, date)):
        raise DataError(f"the scores for {date} under {scores_uri!r} are incomplete: their scoring run "
                        f"stopped while publishing them (no {MARKER}); score {date} again")
    return dates


def complete_nights_before(scores_uri: str, dates: list[str], date: str, n: int) -> tuple[list[str], list[str]]:
    """The last ``n`` nights before ``date`` whose partition was completely published, oldest first,
    and the incomplete ones passed over on the way (a scoring run killed while publishing)."""
    complete = complete_dates(scores_uri)
    chosen, skipped = [], []
    for d in sorted((d for d in dates if d < date), reverse=True):
        if len(chosen) >= n:
            break
        (chosen if d in complete else skipped).append(d)
    return chosen[::-1], skipped[::-1]


def open_partition(scores_uri: str, date: str, columns: list[str]) -> pds.Dataset:
    """One night's Parquet files as a dataset, checked to hold ``columns``."""
    partition = partition_uri(scores_uri, date)
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
    return dataset


def read_partition(scores_uri: str, date: str, columns: list[str]) -> pa.Table:
    """Some columns of one night's Parquet files."""
    dataset = open_partition(scores_uri, date, columns)
    try:
        return dataset.to_table(columns=columns)
    except (OSError, pa.ArrowInvalid) as e:
        raise DataError(f"cannot read the {date} partition of {scores_uri!r}: {e}") from e


@dataclass
class Night:
    """One night's rows without their heatmaps, each tagged with the Parquet row group it came from,
    so the heatmaps of a few rows can be read later from their row groups alone."""

    date: str
    table: pa.Table                              # NIGHT_COLUMNS + ROW_GROUP
    row_groups: list[pds.ParquetFileFragment]    # ROW_GROUP indexes this list


ROW_GROUP = "_row_group"
# Read a row group's heatmap column a page at a time rather than whole (a row group of
# 50,000 images holds about 150 MB of heatmaps; measured peak 690 instead of 830 MB).
_STREAMING = pds.ParquetFragmentScanOptions(use_buffered_stream=True, buffer_size=1 << 20, pre_buffer=False)


def read_night(scores_uri: str, date: str, threads: int = 8) -> Night:
    """The night's rows (every column but ``heatmap_png``), row group by row group, in parallel."""
    dataset = open_partition(scores_uri, date, NIGHT_COLUMNS)
    try:
        groups = [g for f in dataset.get_fragments() for g in f.split_by_row_group()]

        def read(i: int) -> pa.Table:
            t = groups[i].to_table(columns=NIGHT_COLUMNS, schema=dataset.schema)
            return t.append_column(ROW_GROUP, pa.array(np.full(t.num_rows, i, np.int32)))

        with ThreadPoolExecutor(max(1, min(threads, len(groups)))) as pool:
            tables = list(pool.map(read, range(len(groups))))
    except (OSError, pa.ArrowInvalid) as e:
        raise DataError(f"cannot read the {date} partition of {scores_uri!r}: {e}") from e
    schema = pa.schema([dataset.schema.field(c) for c in NIGHT_COLUMNS]).append(pa.field(ROW_GROUP, pa.int32()))
    return Night(date, pa.concat_tables(tables) if tables else schema.empty_table(), groups)


def day_stats(date: str, table: pa.Table) -> DayStats:
    """Counts (:func:`raymae.scoring.night_counts`) and median score of a night's rows."""
    scores = table.column("score").filter(is_ok(table)).drop_null().to_numpy()
    return DayStats(date=date, **night_counts(table),
                    median_score=float(np.median(scores)) if scores.size else None)


def history(scores_uri: str, dates: list[str]) -> list[DayStats]:
    """:class:`DayStats` of each date, reading three columns of one night at a time."""
    return [day_stats(d, read_partition(scores_uri, d, DAY_COLUMNS)) for d in dates]


def heatmaps(night: Night, rows: list[dict]) -> dict[str, bytes]:
    """image_uri -> heatmap PNG of these rows of ``night``, reading only the row groups that hold them
    (scoring writes row groups of 10,000 rows or more, in no particular order of image_uri)."""
    found: dict[str, bytes] = {}
    wanted: dict[int, list[str]] = {}
    for r in rows:
        wanted.setdefault(r[ROW_GROUP], []).append(r["image_uri"])
    for group, uris in sorted(wanted.items()):
        try:
            table = night.row_groups[group].scanner(
                columns=["image_uri", "heatmap_png"], filter=pc.field("image_uri").isin(pa.array(uris, pa.string())),
                fragment_scan_options=_STREAMING, batch_size=2048, use_threads=False).to_table()
        except (OSError, pa.ArrowInvalid) as e:
            raise DataError(f"cannot read the heatmaps of {night.date}: {e}") from e
        for uri, png in zip(table.column("image_uri").to_pylist(), table.column("heatmap_png").to_pylist()):
            if png is not None:
                found.setdefault(uri, png)
    return found
