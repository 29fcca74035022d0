"""Nightly scoring: image files and tar shards -> Ray Data -> the model -> Parquet.

The pipeline reads top to bottom::

    sources (listed on the driver, grouped: a model batch of loose files, or one tar)
      -> read_group      CPU tasks: bytes of every image, or why not (never raises)
      -> decode_images   CPU tasks: pixels at the model's size, original height/width
      -> ScoreImages     actor pool: the model (GPU if asked), scores and small heatmaps
                         (on CPU the actors decode their own batches: the cores are shared
                         anyway, and pixels then skip the object store; with
                         ``jpeg_on_device`` they decode JPEGs on their GPU)
      -> to_output_rows  CPU tasks: PNG heatmaps, the output schema
      -> write_parquet   into a staging folder, then swapped in as <output>/date=YYYY-MM-DD/

Scoring calls :class:`raymae.inference.Predictor`, the path ``raymae evaluate``
uses, so an image gets the same score through both. One row comes out per
image in; a file that cannot be read or decoded is a row with
``status='error'`` and the reason. Rerunning a date replaces that date's
partition only after the new one is completely written.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import date as Date
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raymae import heatmap, storage
from raymae.data import MAX_PIXELS, DataError, load_image
from raymae.sources import (MAX_FILE_BYTES, MAX_TAR_MEMBERS, TAR, Limits, Listing, Source, list_sources,
                            read_sources)

if TYPE_CHECKING:  # torch and timm load only where the model runs, not in every CPU task
    from raymae.artifact import ModelArtifact

log = logging.getLogger("raymae.scoring")

# The output contract (README "Output schema (a contract)"); the partition column ``date``
# lives in the folder name (Hive style: <output>/date=YYYY-MM-DD/part-00000.parquet).
OUTPUT_SCHEMA = pa.schema([
    ("image_uri", pa.string()),       # the file, or archive.tar#member
    ("source_uri", pa.string()),      # the file or archive it came from
    ("score", pa.float32()),          # image anomaly score (null when status = 'error')
    ("is_anomalous", pa.bool_()),     # score >= threshold (null when status = 'error')
    ("threshold", pa.float32()),      # the model's calibrated threshold
    ("heatmap_png", pa.binary()),     # 8-bit PNG: map ~= pixel / 255 * heatmap_max
    ("heatmap_max", pa.float32()),    # the anomaly map's maximum (the PNG's 255)
    ("height", pa.int32()),           # original image size (null when undecodable)
    ("width", pa.int32()),
    ("status", pa.string()),          # 'ok' | 'error'
    ("error", pa.string()),           # why, null when ok
    ("model_id", pa.string()),        # SHA-256 prefix of the model weights
    ("scored_at", pa.timestamp("us", tz="UTC")),
])
PARTITION = "date"
STAGING = "_staging"  # leading underscore: ignored by Spark, pyarrow datasets and Athena
FILES_PER_GROUP = 32  # loose files per read task when not grouped by the model's batch size
CPU_BATCH_SIZE = 32   # images per model call on CPU
GPU_BATCH_SIZE = 256  # on a GPU: a ViT-B/16 batch of 32 takes the H200 a few ms, less than Ray's per-batch cost
PRECISIONS = ("auto", "fp32", "bf16")  # raymae.inference.PRECISIONS, not imported here: that loads torch
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass
class ScoreOptions:
    date: str
    batch_size: int | None = None   # images per model call (default CPU_BATCH_SIZE, GPU_BATCH_SIZE with gpu)
    actors: int = 1                 # model replicas (one GPU each with gpu=True)
    gpu: bool = False
    cpus_per_actor: float = 1.0     # CPUs each model replica reserves
    threads_per_actor: int | None = None  # its torch threads on CPU (default: this machine's cores / actors)
    heatmap_size: int = 64          # heatmap PNG side in pixels
    decode_batch_size: int = 32
    decode_in_actor: bool | None = None  # default: on CPU yes, with GPUs in separate CPU tasks
    jpeg_on_device: bool = False    # the actors decode JPEGs on the model's device (raymae.jpeg)
    precision: str = "auto"         # of the model: fp32, bf16 or auto (bf16 on a GPU; raymae.inference)
    max_pixels: int = MAX_PIXELS            # per image: more is refused as a decompression bomb
    max_file_bytes: int = MAX_FILE_BYTES    # per file or tar member: more is refused unread
    max_tar_members: int = MAX_TAR_MEMBERS  # per tar archive: members beyond are not read

    def __post_init__(self):
        self.date = parse_date(self.date)
        if self.batch_size is None:
            self.batch_size = GPU_BATCH_SIZE if self.gpu else CPU_BATCH_SIZE
        if self.precision not in PRECISIONS:
            raise DataError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        for name in ("batch_size", "actors", "heatmap_size", "decode_batch_size", "max_pixels",
                     "max_file_bytes", "max_tar_members"):
            if getattr(self, name) < 1:
                raise DataError(f"{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")
        if not self.cpus_per_actor > 0:
            raise DataError(f"cpus-per-actor must be above 0, not {self.cpus_per_actor}")
        if self.decode_in_actor is None or self.jpeg_on_device:
            self.decode_in_actor = not self.gpu or self.jpeg_on_device
        if self.threads_per_actor is None:
            # Decoding runs inside the actors on CPU, so the model may use every core
            # (measured: 27.6 vs 21.7 images/s with one thread on 2 cores).
            self.threads_per_actor = max(1, (os.cpu_count() or 1) // self.actors)
        elif self.threads_per_actor < 1:
            raise DataError(f"threads-per-actor must be at least 1, not {self.threads_per_actor}")

    @property
    def limits(self) -> Limits:
        return Limits(max_file_bytes=self.max_file_bytes, max_tar_members=self.max_tar_members)


@dataclass
class ScoreSummary:
    output: str                     # the partition written
    images: int
    ok: int
    errors: int
    anomalous: int
    seconds: float
    model_id: str
    skipped: list[str] = field(default_factory=list)
    # Where the time went: per pipeline stage (Ray Data operator), the seconds its tasks ran
    # (summed over tasks, so parallel stages add up to more than the wall time) and their count.
    stages: dict[str, dict] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")

    def format(self) -> str:
        lines = [f"images {self.images}  ok {self.ok}  errors {self.errors}  anomalous {self.anomalous}  "
                 f"({self.images_per_second:.1f} images/s over {self.seconds:.1f} s)",
                 f"model {self.model_id}  output {self.output}"]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} files that are neither images nor tar shards, "
                         f"e.g. {self.skipped[0]}")
        return "\n".join(lines)


def parse_date(value: str) -> str:
    """'YYYY-MM-DD' checked to be a real calendar date."""
    try:
        if not _DATE.match(value):
            raise ValueError
        return Date.fromisoformat(value).isoformat()
    except (TypeError, ValueError):
        raise DataError(f"date must be a calendar date written YYYY-MM-DD, not {value!r}") from None


def today() -> str:
    """Today's date in UTC, YYYY-MM-DD: the night a scoring run defaults to."""
    return datetime.now(timezone.utc).date().isoformat()


def partition_uri(output: str, date: str) -> str:
    return storage.join(output, f"{PARTITION}={date}")


# ------------------------------------------------------------------ stages
def group_sources(sources: list[Source], files_per_group: int = FILES_PER_GROUP) -> list[dict]:
    """One read task each: up to ``files_per_group`` loose files, or a single tar."""
    loose = [s for s in sources if s.kind != TAR]
    groups = [loose[i:i + files_per_group] for i in range(0, len(loose), files_per_group)]
    groups += [[s] for s in sources if s.kind == TAR]
    return [{"uris": [s.uri for s in g], "kinds": [s.kind for s in g], "sizes": [s.size for s in g]}
            for g in groups]


RAW_SCHEMA = pa.schema([("image_uri", pa.string()), ("source_uri", pa.string()),
                        ("data", pa.binary()), ("error", pa.string())])


def read_group(batch: dict, limits: Limits = Limits(), chunk: int = 32) -> Iterator[pa.Table]:
    """A batch of source groups -> tables of raw bytes, ``chunk`` rows at a time (tars stream)."""
    sources = [Source(str(u), str(k), int(n))
               for uris, kinds, sizes in zip(batch["uris"], batch["kinds"], batch["sizes"])
               for u, k, n in zip(uris, kinds, sizes)]
    rows: list = []
    for raw in read_sources(sources, limits=limits):
        rows.append(raw)
        if len(rows) >= chunk:
            yield _raw_table(rows)
            rows = []
    if rows:
        yield _raw_table(rows)


def _raw_table(rows) -> pa.Table:
    return pa.table({"image_uri": [r.image_uri for r in rows], "source_uri": [r.source_uri for r in rows],
                     "data": [r.data for r in rows], "error": [r.error for r in rows]}, schema=RAW_SCHEMA)


def _pylist(batch, name: str) -> list:
    return batch.column(name).to_pylist() if isinstance(batch, pa.Table) else list(batch[name])


def decode_images(batch, image_size: int, max_pixels: int = MAX_PIXELS) -> dict[str, np.ndarray]:
    """Raw bytes (a pyarrow table or numpy columns) -> model-sized pixels; failures keep their row."""
    uris = _pylist(batch, "image_uri")
    n, s = len(uris), image_size
    pixels = np.zeros((n, s, s, 3), np.uint8)
    height = np.full(n, -1, np.int32)
    width = np.full(n, -1, np.int32)
    errors = _pylist(batch, "error")
    for i, data in enumerate(_pylist(batch, "data")):
        if errors[i] is not None:
            continue
        try:
            img = load_image(data, s, max_pixels)
        except DataError as e:
            errors[i] = str(e)
            continue
        except Exception as e:  # a Pillow failure nobody foresaw is one image's error, not the run's
            errors[i] = f"not a readable image: {type(e).__name__}: {e}"
            continue
        pixels[i], height[i], width[i] = img.pixels, img.height, img.width
    return {"image_uri": np.array(uris, dtype=object),
            "source_uri": np.array(_pylist(batch, "source_uri"), dtype=object),
            "image": pixels, "height": height, "width": width,
            "error": np.array([e or "" for e in errors], dtype=object)}


class ScoreImages:
    """The model in an actor: pixels -> image scores and downsampled anomaly maps.

    With ``decode`` (the keyword arguments of :func:`decode_images`) it takes raw
    bytes and decodes them itself: what scoring does on CPU, where decoding and
    the model share the same cores anyway and decoded pixels need not travel
    through the object store.
    """

    def __init__(self, model_uri: str, model_id: str, heatmap_size: int, batch_size: int,
                 gpu: bool = False, threads: int = 1, decode: dict | None = None,
                 jpeg_on_device: bool = False, precision: str = "auto"):
        import torch

        from raymae.artifact import ModelArtifact

        artifact = ModelArtifact.load(model_uri)
        if artifact.model_id != model_id:
            raise RuntimeError(f"the model at {model_uri} changed while scoring "
                               f"({model_id} -> {artifact.model_id})")
        if not gpu:
            torch.set_num_threads(threads)
        self.predictor = artifact.predictor("cuda" if gpu else "cpu", precision)
        self.heatmap_size = heatmap_size
        self.batch_size = batch_size
        self.decode = decode
        self.jpeg_on_device = jpeg_on_device

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.decode is not None and self.jpeg_on_device:
            from raymae.jpeg import decode_on_device

            batch = decode_on_device(batch, device=self.predictor.device, **self.decode)
        elif self.decode is not None:
            batch = decode_images(batch, **self.decode)
        n = len(batch["image_uri"])
        ok = np.array([not e for e in batch["error"]], dtype=bool)
        scores = np.full(n, np.nan, np.float32)
        size = min(self.heatmap_size, self.predictor.image_size)
        maps = np.zeros((n, size, size), np.float32)
        if ok.any():
            images = batch["image"]
            # maps are combined, smoothed and downsampled on the model's device: only the
            # small heatmaps and the scores come back
            if not ok.all():  # a numpy array, or a tensor on the device (jpeg_on_device)
                images = images[ok] if isinstance(images, np.ndarray) else images[np.flatnonzero(ok).tolist()]
            pred = self.predictor.predict(images, self.batch_size, map_size=size)
            scores[ok] = pred.scores
            maps[ok] = pred.maps
        out = {k: batch[k] for k in ("image_uri", "source_uri", "height", "width", "error")}
        out.update(score=scores, heatmap=maps,
                   scored_at=np.full(n, np.datetime64(datetime.now(timezone.utc).replace(tzinfo=None), "us")))
        return out


def to_output_rows(batch: dict[str, np.ndarray], threshold: float, model_id: str) -> pa.Table:
    """Scores and maps -> rows of :data:`OUTPUT_SCHEMA` (heatmaps PNG-encoded, errors as nulls)."""
    ok = np.array([not e for e in batch["error"]], dtype=bool)
    pngs, tops = [], []
    for good, m in zip(ok, batch["heatmap"]):
        png, top = heatmap.encode(m) if good else (None, None)
        pngs.append(png)
        tops.append(top)
    n = len(ok)
    known = batch["height"] >= 0
    columns = {
        "image_uri": pa.array(batch["image_uri"].tolist(), pa.string()),
        "source_uri": pa.array(batch["source_uri"].tolist(), pa.string()),
        "score": pa.array(batch["score"], pa.float32(), mask=~ok),
        "is_anomalous": pa.array(batch["score"] >= threshold, pa.bool_(), mask=~ok),
        "threshold": pa.array(np.full(n, threshold, np.float32)),
        "heatmap_png": pa.array(pngs, pa.binary()),
        "heatmap_max": pa.array(tops, pa.float32()),
        "height": pa.array(batch["height"], pa.int32(), mask=~known),
        "width": pa.array(batch["width"], pa.int32(), mask=~known),
        "status": pa.array(np.where(ok, "ok", "error").tolist(), pa.string()),
        "error": pa.array([None if good else e for good, e in zip(ok, batch["error"])], pa.string()),
        "model_id": pa.array([model_id] * n, pa.string()),
        "scored_at": pa.array(batch["scored_at"].astype("datetime64[us]"), pa.timestamp("us", tz="UTC")),
    }
    return pa.table(columns, schema=OUTPUT_SCHEMA)


# ------------------------------------------------------------------ the pipeline
def build_dataset(listing: Listing, model_uri: str, artifact: "ModelArtifact", opts: ScoreOptions):
    """The lazy Ray Dataset of output rows (nothing runs until it is written)."""
    import ray.data
    from ray.data import ActorPoolStrategy

    # One read task per model batch of loose files: its block is then one actor task,
    # so the actors share even a small night, and a lost actor redoes one batch.
    groups = group_sources(listing.sources, files_per_group=opts.batch_size)
    ds = ray.data.from_items(groups, override_num_blocks=len(groups))
    # Reads are CPU tasks of their own: a read task may hold a file of up to
    # max_file_bytes, and reserving that also keeps Ray from fusing the reads into the
    # model actors, whose tasks would then each take batch_size *groups* (up to
    # batch_size x 32 images): one actor would score a whole small night while the
    # others idle, and a lost actor would redo all of it.
    ds = ds.map_batches(read_group, batch_size=1, batch_format="numpy", memory=opts.max_file_bytes,
                        fn_kwargs={"limits": opts.limits})
    decode = {"image_size": artifact.config.model.image_size, "max_pixels": opts.max_pixels}
    if not opts.decode_in_actor:
        # CPU tasks decode for the GPU actors. A decode task may hold one image of
        # max_pixels RGBA pixels: it reserves that much memory, which also keeps
        # Ray from fusing decoding into the read (a huge tar is decoded in
        # parallel, not by its reader) or into the actor (the GPU never waits on JPEG).
        ds = ds.map_batches(decode_images, batch_size=opts.decode_batch_size, batch_format="pyarrow",
                            fn_kwargs=decode, memory=4 * opts.max_pixels)
    ds = ds.map_batches(ScoreImages, batch_size=opts.batch_size, batch_format="numpy",
                        compute=ActorPoolStrategy(size=opts.actors),
                        num_gpus=1 if opts.gpu else 0, num_cpus=opts.cpus_per_actor,
                        fn_constructor_kwargs={"model_uri": model_uri, "model_id": artifact.model_id,
                                               "heatmap_size": opts.heatmap_size,
                                               "batch_size": opts.batch_size, "gpu": opts.gpu,
                                               "threads": opts.threads_per_actor,
                                               "decode": decode if opts.decode_in_actor else None,
                                               "jpeg_on_device": opts.jpeg_on_device,
                                               "precision": opts.precision})
    return ds.map_batches(to_output_rows, batch_format="numpy",
                          fn_kwargs={"threshold": float(artifact.calibration.threshold),
                                     "model_id": artifact.model_id})


@dataclass
class ScoringPlan:
    """Everything checked before Ray starts: the inputs exist, the model loads, the options are sane."""

    inputs: list[str]
    listing: Listing
    model_uri: str
    artifact: "ModelArtifact"
    output: str
    opts: ScoreOptions


def plan(inputs: list[str], model_uri: str, output: str, opts: ScoreOptions) -> ScoringPlan:
    """List the inputs, load the model, check the output is writable; raises DataError /
    ArtifactError / StorageError, all before anything is scored."""
    from raymae.artifact import ModelArtifact

    listing = list_sources(inputs)
    model_uri = storage.absolute_uri(model_uri)
    artifact = ModelArtifact.load(model_uri)
    output = storage.absolute_uri(output)
    storage.check_writable(storage.join(output, STAGING))  # not after hours of scoring
    return ScoringPlan(inputs, listing, model_uri, artifact, output, opts)


class ScoringFailed(RuntimeError):
    """A run that could not finish; nothing of it was published (the date's partition is as before)."""


MARKER = "_SUCCESS"  # written last into a complete partition; readers skip _files


def run(p: ScoringPlan) -> ScoreSummary:
    """Score and write one date's partition (Ray must be initialised); returns the counts.

    The rows go to a staging folder first; they are published (swapped in for the
    date's partition, then ``_SUCCESS`` written) only when every listed input has
    its rows and no loose file has two. A run that fails or is killed before that
    leaves the previous partition as it was; one killed while publishing leaves a
    partition without ``_SUCCESS``, which a rerun of the date replaces.
    """
    from ray.data import SaveMode
    from ray.data.datasource import FilenameProvider

    class PartFiles(FilenameProvider):  # deterministic names: part-00000.parquet, ...
        def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
            return f"part-{task_index:05d}.parquet"

    start = time.time()
    artifact, opts = p.artifact, p.opts
    log.info("scoring %d images and %d tar shards with model %s (threshold %.4g) for %s",
             p.listing.n_images, p.listing.n_archives, artifact.model_id,
             artifact.calibration.threshold, opts.date)
    staging = storage.join(p.output, STAGING, f"{PARTITION}={opts.date}-{uuid.uuid4().hex[:12]}")
    filesystem, staging_path = storage.arrow_filesystem(staging)
    partition = partition_uri(p.output, opts.date)
    stages: dict[str, dict] = {}
    try:
        try:
            ds = build_dataset(p.listing, p.model_uri, artifact, opts)
            ds.write_parquet(
                staging_path, filesystem=filesystem, filename_provider=PartFiles(),
                min_rows_per_file=10_000, mode=SaveMode.OVERWRITE)  # a fresh folder of this run
        except Exception as e:  # Ray wraps the cause (a task's error, a lost node) in its own types
            raise ScoringFailed(f"scoring {opts.date} failed, nothing was published "
                                f"({partition} is as it was): {root_cause(e)}") from e
        stages = stage_seconds(ds)
        counts = count_rows(staging)
        if counts["images"] == 0:
            raise DataError(f"no images found in {', '.join(p.inputs)}: "
                            f"the tar shards hold no image members")
        check_complete(staging, p.listing)
        publish(staging, partition, {**counts, "model_id": artifact.model_id})
        remove_stale_staging(p.output, opts.date)
    finally:
        remove(staging)
        remove(storage.join(p.output, STAGING), only_if_empty=True)
    return ScoreSummary(output=partition, seconds=time.time() - start,
                        model_id=artifact.model_id, skipped=p.listing.skipped, stages=stages, **counts)


def stage_seconds(ds) -> dict[str, dict]:
    """Per Ray Data operator of a written dataset: task seconds (wall and CPU, summed) and tasks.

    Best effort: the statistics are a developer API of Ray Data, so a Ray that lacks them
    gives an empty dict rather than a failed night.
    """
    try:
        out = {}
        pending = [ds.get_stats_summary()]
        while pending:  # the written dataset's operators, then those of the datasets it came from
            summary = pending.pop()
            pending += summary.parents
            for op in summary.operators_stats:
                wall, cpu = op.wall_time, op.cpu_time
                out[op.operator_name] = {"task_wall_s": round(float(wall.sum), 3) if wall else None,
                                         "task_cpu_s": round(float(cpu.sum), 3) if cpu else None,
                                         "tasks": int(wall.count) if wall else None}
        return out
    except Exception as e:  # noqa: BLE001 -- statistics must never fail a run
        log.debug("no Ray Data statistics: %s", e)
        return {}


def root_cause(e: BaseException) -> str:
    """The innermost cause of a (Ray-wrapped) exception, on one line."""
    seen = set()
    while id(e) not in seen:
        seen.add(id(e))
        inner = getattr(e, "cause", None) or e.__cause__
        if not isinstance(inner, BaseException):
            break
        e = inner
    text = str(e).strip().splitlines()  # Ray appends its retry advice on further lines
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def score(inputs: list[str], model_uri: str, output: str, opts: ScoreOptions) -> ScoreSummary:
    """:func:`plan` then :func:`run`, for callers that have started Ray themselves."""
    return run(plan(inputs, model_uri, output, opts))


def _parquet_files(uri: str) -> tuple:
    fs, path = storage.resolve(uri)
    fs.invalidate_cache(path)  # Ray workers wrote here, not this process
    return fs, ([f for f in fs.find(path) if f.endswith(".parquet")] if fs.exists(path) else [])


def count_rows(uri: str) -> dict[str, int]:
    """images / ok / errors / anomalous in the Parquet files under ``uri``."""
    fs, files = _parquet_files(uri)
    if not files:
        return {"images": 0, "ok": 0, "errors": 0, "anomalous": 0}
    return night_counts(pq.ParquetDataset(files, filesystem=fs).read(columns=["status", "is_anomalous"]))


def is_ok(table: pa.Table) -> pa.ChunkedArray:
    """Per row: was the image scored (``status = 'ok'``)?"""
    return pc.fill_null(pc.equal(table.column("status"), "ok"), False)


def night_counts(table: pa.Table) -> dict[str, int]:
    """images / ok / errors / anomalous of scoring rows (their ``status`` and ``is_anomalous``).

    The one definition of a night's counts: the ``_SUCCESS`` marker and the reports both use it.
    An image is ok or an error; only ok images count as anomalous.
    """
    ok = is_ok(table)
    n_ok = int(pc.sum(ok).as_py() or 0)
    anomalous = int(pc.sum(pc.and_(ok, table.column("is_anomalous").fill_null(False))).as_py() or 0)
    return {"images": table.num_rows, "ok": n_ok, "errors": table.num_rows - n_ok, "anomalous": anomalous}


def check_complete(staging: str, listing: Listing) -> None:
    """Every listed file has rows, and every loose image exactly one; else ScoringFailed.

    (A tar may name two members alike, so members are not checked for repeats.)
    """
    fs, files = _parquet_files(staging)
    table = pq.ParquetDataset(files, filesystem=fs).read(columns=["image_uri", "source_uri"])
    found = set(pc.unique(table.column("source_uri")).to_pylist())
    missing = sorted(s.uri for s in listing.sources if s.uri not in found)
    loose = pc.filter(table.column("image_uri"), pc.equal(table.column("image_uri"), table.column("source_uri")))
    counts = pc.value_counts(loose)
    repeated = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1)).to_pylist()
    if missing or repeated:
        raise ScoringFailed(f"the output is incomplete, nothing was published: {len(missing)} inputs "
                            f"without a row (e.g. {missing[:1]}), {len(repeated)} with more than one "
                            f"(e.g. {sorted(repeated)[:1]})")


def publish(staging: str, partition: str, counts: dict) -> None:
    """Replace the date's partition with the staged files (other dates are untouched),
    then mark it complete with ``_SUCCESS`` (JSON: the counts and when)."""
    fs, staged = storage.resolve(staging)
    _, target = storage.resolve(partition)
    fs.invalidate_cache(target)
    if fs.exists(f"{target}/{MARKER}"):
        fs.rm(f"{target}/{MARKER}")  # first: from here until the end the partition is incomplete
    if fs.exists(target):
        fs.rm(target, recursive=True)
    fs.makedirs(target, exist_ok=True)
    for f in sorted(fs.find(staged)):
        fs.mv(f, f"{target}/{f[len(staged):].lstrip('/')}")
    marker = {**counts, "published_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    storage.write_bytes(storage.join(partition, MARKER), json.dumps(marker).encode())


def is_complete(partition: str) -> bool:
    """Whether a partition was completely published (its ``_SUCCESS`` exists)."""
    fs, path = storage.resolve(partition)
    fs.invalidate_cache(path)
    return fs.exists(f"{path}/{MARKER}")


def partition_date(name: str) -> str | None:
    """The night of a ``date=YYYY-MM-DD`` folder name (a path's last part), or None if it is not one."""
    prefix, _, value = name.rstrip("/").rsplit("/", 1)[-1].partition("=")
    if prefix != PARTITION:
        return None
    try:
        return parse_date(value)
    except DataError:
        return None  # date=2026-02-30: not a night


def complete_dates(output: str) -> set[str]:
    """The dates under ``output`` whose partition holds ``_SUCCESS``, from one listing
    (not one request per night: a 90-night history on S3 is one LIST, not 89 HEADs)."""
    fs, root = storage.resolve(output)
    fs.invalidate_cache(root)
    found = (partition_date(path.rsplit("/", 2)[-2]) for path in fs.glob(f"{root}/{PARTITION}=*/{MARKER}"))
    return {d for d in found if d}


def remove_stale_staging(output: str, date: str) -> None:
    """Staging folders of this date left by runs that were killed (their rows were never published)."""
    fs, root = storage.resolve(storage.join(output, STAGING))
    fs.invalidate_cache(root)
    if not fs.exists(root):
        return
    for path in fs.ls(root, detail=False):
        if path.rstrip("/").rsplit("/", 1)[-1].startswith(f"{PARTITION}={date}-"):
            remove(path if "://" not in output else f"{storage.scheme_of(output)}://{path}")


def remove(uri: str, only_if_empty: bool = False) -> None:
    fs, path = storage.resolve(uri)
    try:
        if not fs.exists(path) or (only_if_empty and fs.find(path)):
            return
        fs.rm(path, recursive=True)
    except FileNotFoundError:
        pass
