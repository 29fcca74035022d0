"""Nightly report speed and memory on scoring output of the real schema.

    python benchmarks/report.py --images 500000                # one large night
    python benchmarks/report.py --images 50000 --nights 20     # a night and 19 earlier ones

Writes synthetic scoring output (``raymae.scoring.OUTPUT_SCHEMA``: one row per
image, a PNG heatmap each, 1 % error rows, row groups of ``--row-group`` rows,
a ``_SUCCESS`` marker per night) into ``--workdir``, then runs ``raymae report``
for the last night in a child process and records its wall time and peak
resident memory (the child's own VmHWM, so Linux only). The originals do not exist, so the
page shows every top image as missing; reading them is not what is measured.
Results go to ``benchmarks/results/report-<machine>.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.ndimage import gaussian_filter

from raymae.scoring import MARKER, OUTPUT_SCHEMA, partition_uri, to_output_rows

RESULTS = Path(__file__).parent / "results"
HEATMAPS = 64        # smoothed base maps (smoothing each of 500,000 would dominate the set-up)
ERROR_SHARE = 0.01


def heatmap_pool(size: int, seed: int) -> list[np.ndarray]:
    """Gaussian-smoothed random (size, size) maps in [0, 1], like a model's (about 2.6 KB as PNG at 64 px)."""
    rng = np.random.default_rng(seed)
    pool = []
    for _ in range(HEATMAPS):
        m = gaussian_filter(rng.random((size, size), dtype=np.float32), 2.0)
        pool.append((m - m.min()) / max(float(m.max() - m.min()), 1e-6))
    return pool


def night_rows(start: int, n: int, date: str, root: str, pool: list[np.ndarray], rng) -> pa.Table:
    """``n`` output rows of images numbered from ``start``."""
    ids = np.arange(start, start + n)
    uris = np.array([f"{root}/line{i % 4}/cam{i % 3}/img{i:08d}.png" for i in ids], dtype=object)
    error = rng.random(n) < ERROR_SHARE
    batch = {"image_uri": uris, "source_uri": uris,
             "height": np.where(error, -1, 480).astype(np.int32), "width": np.where(error, -1, 640).astype(np.int32),
             "error": np.where(error, "cannot decode image: truncated file", "").astype(object),
             "score": rng.gamma(2.0, 0.05, n).astype(np.float32),
             # a little noise makes every PNG unique, as real heatmaps are (Parquet would dictionary-encode repeats)
             "heatmap": np.clip(np.stack([pool[i % len(pool)] for i in ids])
                                + rng.normal(0.0, 0.01, (n, *pool[0].shape)).astype(np.float32), 0.0, 1.0),
             "scored_at": np.full(n, np.datetime64(f"{date}T02:00:00"), dtype="datetime64[us]")}
    return to_output_rows(batch, threshold=0.3, model_id="benchmark")


def write_night(scores: str, date: str, images: int, row_group: int, heatmap_size: int, seed: int) -> int:
    """One published partition; returns its bytes on disk."""
    folder = Path(partition_uri(scores, date))
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    pool = heatmap_pool(heatmap_size, seed)
    path = folder / "part-00000.parquet"
    with pq.ParquetWriter(str(path), OUTPUT_SCHEMA) as writer:
        for start in range(0, images, row_group):
            writer.write_table(night_rows(start, min(row_group, images - start), date,
                                          str(Path(scores).parent / "dump"), pool, rng),
                                row_group_size=row_group)
    (folder / MARKER).write_text(json.dumps({"images": images}))
    return path.stat().st_size


# The child reports its own peak (VmHWM, Linux): getrusage's maxrss would carry the
# high-water mark of the parent's memory that the child held before its exec.
REPORT_AND_PEAK = ("import sys; from raymae.cli import main; code = main(sys.argv[1:]); "
                   "peak = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]; "
                   "print('peak_kb', peak, file=sys.stderr); sys.exit(code)")


def run_report(scores: str, date: str, output: str) -> tuple[float, float, str]:
    """``raymae report`` in a child process: (wall seconds, peak RSS in MB, what it printed)."""
    cmd = [sys.executable, "-c", REPORT_AND_PEAK, "report", "--scores", scores, "--date", date, "--output", output]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"raymae report failed ({done.returncode}): {done.stderr.strip()}")
    peak_kb = int(done.stderr.rsplit("peak_kb", 1)[1].split()[0])
    return seconds, peak_kb / 1024, done.stdout.strip().splitlines()[0]  # the counts, not the path


def machine() -> dict:
    return {"platform": platform.platform(), "python": platform.python_version(),
            "cpu_cores": os.cpu_count(), "processor": platform.processor()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=500_000, help="images in the reported night")
    p.add_argument("--nights", type=int, default=1, help="nights in all: the reported one and earlier ones")
    p.add_argument("--row-group", type=int, default=10_000, help="rows per Parquet row group")
    p.add_argument("--heatmap-size", type=int, default=64, help="heatmap side in pixels (raymae score's default)")
    p.add_argument("--workdir", help="where the scores are written (default: a temporary folder, removed)")
    p.add_argument("--out", help="results file (default benchmarks/results/report-cpu-<N>core.json)")
    args = p.parse_args(argv)
    if args.images < 1 or args.nights < 1 or args.row_group < 1:
        p.error("--images, --nights and --row-group must be at least 1")

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="raymae-report-bench-"))
    scores = str(workdir / "scores")
    last = dt.date(2026, 11, 26)
    dates = [(last - dt.timedelta(days=k)).isoformat() for k in range(args.nights - 1, -1, -1)]
    try:
        start = time.perf_counter()
        parquet_bytes = sum(write_night(scores, d, args.images, args.row_group, args.heatmap_size, seed=k)
                            for k, d in enumerate(dates))
        setup_s = time.perf_counter() - start
        seconds, peak_mb, printed = run_report(scores, dates[-1], str(workdir / "page"))
        page_bytes = (workdir / "page" / "index.html").stat().st_size
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    record = {
        "command": "python benchmarks/report.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "images_per_night": args.images, "nights": args.nights, "row_group_rows": args.row_group,
        "heatmap_size": args.heatmap_size, "parquet_bytes": parquet_bytes,
        "report_seconds": round(seconds, 2), "report_peak_rss_mb": round(peak_mb, 1),
        "page_bytes": page_bytes, "report_printed": printed, "setup_seconds": round(setup_s, 1),
    }
    out = Path(args.out) if args.out else RESULTS / f"report-cpu-{os.cpu_count()}core.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
