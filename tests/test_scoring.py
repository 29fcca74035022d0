"""Nightly scoring: files and tar shards in, one Parquet row per image out, on local Ray and on S3."""

import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pds
import pytest

from raymae import heatmap
from raymae.cli import main
from raymae.data import DataError
from raymae.scoring import OUTPUT_SCHEMA, ScoreOptions, parse_date, score, to_output_rows
from tests.badfiles import png_bytes, write_bad_files, write_tar
from tests.scripts import load_script

DAY1, DAY2 = "2026-11-26", "2026-11-27"  # DAY1 is the night the documented queries ask about


# ------------------------------------------------------------------ pieces, no Ray
def test_dates_must_be_real_calendar_dates():
    assert parse_date("2026-02-28") == "2026-02-28"
    for bad in ("2026-02-30", "26-11-2026", "2026/11/26", "today", ""):
        with pytest.raises(DataError, match="YYYY-MM-DD"):
            parse_date(bad)


def test_options_refuse_nonsense_with_the_flag_name():
    with pytest.raises(DataError, match="batch-size must be at least 1"):
        ScoreOptions(date=DAY1, batch_size=0)


def test_heatmaps_round_trip_through_png_within_one_grey_level():
    rng = np.random.default_rng(0)
    amap = rng.random((2, 64, 64)).astype(np.float32) * 0.3
    small = heatmap.downsample(amap, 16)
    assert small.shape == (2, 16, 16)
    assert np.allclose(small[0, 0, 0], amap[0, :4, :4].mean(), atol=1e-6)
    png, top = heatmap.encode(small[1])
    assert png.startswith(b"\x89PNG") and top == pytest.approx(small[1].max())
    assert np.abs(heatmap.decode(png, top) - small[1]).max() <= top / 255 / 2 + 1e-6


def test_error_rows_have_nulls_where_there_is_nothing_to_report():
    batch = {
        "image_uri": np.array(["a.png", "b.png"], dtype=object),
        "source_uri": np.array(["a.png", "b.png"], dtype=object),
        "height": np.array([10, -1], np.int32), "width": np.array([20, -1], np.int32),
        "error": np.array(["", "empty file (0 bytes)"], dtype=object),
        "score": np.array([0.7, np.nan], np.float32),
        "heatmap": np.zeros((2, 8, 8), np.float32),
        "scored_at": np.array(["2026-11-26T02:00:00"] * 2, dtype="datetime64[us]"),
    }
    table = to_output_rows(batch, threshold=0.5, model_id="abc")
    assert table.schema == OUTPUT_SCHEMA
    rows = table.to_pylist()
    assert rows[0]["status"] == "ok" and rows[0]["is_anomalous"] is True and rows[0]["error"] is None
    assert rows[0]["height"] == 10 and rows[0]["width"] == 20 and rows[0]["heatmap_png"]
    assert rows[1]["status"] == "error" and rows[1]["error"] == "empty file (0 bytes)"
    assert rows[1]["score"] is None and rows[1]["is_anomalous"] is None and rows[1]["height"] is None


def test_the_nightly_job_fills_in_todays_date_and_keeps_an_explicit_one():
    job = load_script("jobs/score.py")
    args = job.with_default_date(["--input", "x"])
    assert args[-2] == "--date" and parse_date(args[-1])
    assert job.with_default_date(["--date", DAY1]) == ["--date", DAY1]


def test_a_missing_input_is_an_error_and_writes_nothing(capsys, tmp_path, model_dir):
    code = main(["score", "--input", str(tmp_path / "missing"), "--model", model_dir,
                 "--output", str(tmp_path / "out"), "--date", DAY1])
    assert code == 2 and "input not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_wrong_model_folder_is_an_error_before_anything_runs(capsys, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(png_bytes())
    code = main(["score", "--input", str(tmp_path / "in"), "--model", str(tmp_path / "nomodel"),
                 "--output", str(tmp_path / "out"), "--date", DAY1])
    assert code == 2 and "no raymae model" in capsys.readouterr().err


def test_a_report_that_fails_after_scoring_fails_the_run_and_says_the_scores_are_published(
        capsys, tmp_path, monkeypatch):
    from types import SimpleNamespace

    from raymae import cli, scoring
    from raymae.storage import StorageError

    def report_fails(*args, **kwargs):
        raise StorageError("cannot write s3://reports/index.html: AccessDenied")

    # scoring itself stands in: planned, run and published
    monkeypatch.setattr(scoring, "plan", lambda inputs, model, output, opts: SimpleNamespace(output=output))
    monkeypatch.setattr(scoring, "run", lambda work: SimpleNamespace(format=lambda: "scored"))
    monkeypatch.setattr(cli, "_init_ray", lambda: None)
    monkeypatch.setattr(cli, "write_report", report_fails)
    code = main(["score", "--input", "in", "--model", "model", "--output", str(tmp_path / "out"),
                 "--date", DAY1, "--report", str(tmp_path / "report")])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert err == (f"raymae score: failed: the scores of {DAY1} are published under {tmp_path / 'out'}, "
                   f"but the report could not be written: cannot write s3://reports/index.html: AccessDenied")


# ------------------------------------------------------------------ end to end on Ray
def read_partition(root: str, date: str) -> pa.Table:
    return pds.dataset(f"{root}/date={date}", format="parquet").to_table()


@pytest.fixture(scope="module")
def dump(synthetic_dataset, tmp_path_factory) -> dict:
    """A night's dump: loose test images in two line folders, a tar shard, and broken files."""
    root = tmp_path_factory.mktemp("dump")
    test = Path(synthetic_dataset) / "test"
    loose = {}
    for i, f in enumerate(sorted(test.glob("*/*.png"))):
        dest = root / f"line{i % 2 + 1}" / f"{f.parent.name}-{f.name}"
        dest.parent.mkdir(exist_ok=True)
        shutil.copy(f, dest)
        loose[str(dest)] = str(f)
    members = {f"{f.parent.name}/{f.name}": f.read_bytes() for f in sorted(test.glob("good/*.png"))[:4]}
    members["meta.json"] = b"{}"
    shard = write_tar(root / "shards" / "shard-000.tar", members)
    broken = write_bad_files(root / "broken")
    (root / "shards" / "broken.tar").write_bytes(b"not a tar" * 100)
    return {"root": str(root), "loose": loose, "tar": str(shard), "broken": broken,
            "n_images": len(loose) + 4 + len(broken) + 1}


@pytest.fixture(scope="module")
def night(ray_local, dump, model_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("scores"))
    summary = score([dump["root"]], model_dir, out, ScoreOptions(date=DAY1, batch_size=8, heatmap_size=16))
    return {"out": out, "summary": summary, "table": read_partition(out, DAY1)}


@pytest.mark.slow
def test_every_image_in_is_one_row_out_and_broken_files_say_why(night, dump):
    table, summary = night["table"], night["summary"]
    rows = {r["image_uri"]: r for r in table.to_pylist()}
    assert table.num_rows == len(rows) == dump["n_images"] == summary.images
    for path, reason in dump["broken"].items():
        assert rows[path]["status"] == "error" and reason in rows[path]["error"], path
    assert rows[f"{dump['root']}/shards/broken.tar"]["status"] == "error"
    shard_rows = [u for u in rows if u.startswith(dump["tar"] + "#")]
    assert sorted(shard_rows) == sorted(f"{dump['tar']}#good/{n:03d}.png" for n in range(4))
    assert summary.errors == len(dump["broken"]) + 1 and summary.ok == summary.images - summary.errors
    assert summary.anomalous == sum(bool(r["is_anomalous"]) for r in rows.values())


@pytest.mark.slow
def test_the_output_follows_the_documented_schema_in_a_hive_partition(night, model_dir, trained_artifact):
    out = Path(night["out"])
    assert [p.name for p in out.iterdir()] == [f"date={DAY1}"]  # no staging left behind
    names = sorted(p.name for p in (out / f"date={DAY1}").iterdir())
    assert names[0] == "_SUCCESS", names  # written last: the partition is complete
    assert names[1:] and all(re.fullmatch(r"part-\d{5}(-\d+)?\.parquet", n) for n in names[1:]), names
    table = night["table"]
    assert table.schema == OUTPUT_SCHEMA
    ok = [r for r in table.to_pylist() if r["status"] == "ok"]
    assert all(r["model_id"] == trained_artifact.model_id for r in ok)
    assert all(r["threshold"] == pytest.approx(trained_artifact.calibration.threshold) for r in ok)
    assert all(r["is_anomalous"] == (r["score"] >= r["threshold"]) for r in ok)
    assert all(r["height"] == 64 and r["width"] == 64 for r in ok)
    amap = heatmap.decode(ok[0]["heatmap_png"], ok[0]["heatmap_max"])
    assert amap.shape == (16, 16) and amap.max() == pytest.approx(ok[0]["heatmap_max"], rel=1e-6)
    partitioned = pds.dataset(night["out"], format="parquet", partitioning="hive").to_table()
    assert set(partitioned.column("date").to_pylist()) == {DAY1}


@pytest.mark.slow
def test_scoring_and_evaluate_give_an_image_the_same_score(night, dump, synthetic_dataset, model_dir,
                                                             tmp_path, capsys):
    assert main(["evaluate", "--data", synthetic_dataset, "--model", model_dir,
                 "--output", str(tmp_path)]) == 0
    evaluated = {r["image_uri"]: r["score"]
                 for r in pds.dataset(str(tmp_path / "scores.parquet")).to_table().to_pylist()}
    scored = {dump["loose"][r["image_uri"]]: r["score"]
              for r in night["table"].to_pylist() if r["image_uri"] in dump["loose"]}
    assert scored.keys() == evaluated.keys()
    for uri in scored:
        assert scored[uri] == pytest.approx(evaluated[uri], rel=1e-4, abs=1e-6), uri


@pytest.mark.slow
def test_decoding_in_separate_tasks_as_on_gpu_clusters_gives_the_same_rows(ray_local, night, dump, model_dir,
                                                                             tmp_path):
    summary = score([dump["root"]], model_dir, str(tmp_path), ScoreOptions(
        date=DAY1, batch_size=8, heatmap_size=16, decode_in_actor=False))
    tasks = {r["image_uri"]: r for r in read_partition(str(tmp_path), DAY1).to_pylist()}
    actor = {r["image_uri"]: r for r in night["table"].to_pylist()}
    assert summary.images == len(tasks) == len(actor) and tasks.keys() == actor.keys()
    for uri, row in actor.items():
        assert (tasks[uri]["status"], tasks[uri]["error"]) == (row["status"], row["error"])
        if row["score"] is None:
            assert tasks[uri]["score"] is None
        else:
            assert tasks[uri]["score"] == pytest.approx(row["score"], rel=1e-4, abs=1e-6)


@pytest.mark.slow
def test_rerunning_a_date_replaces_only_that_date(ray_local, night, dump, model_dir):
    out = night["out"]
    one_folder = str(Path(dump["root"]) / "line1")
    opts = ScoreOptions(date=DAY2, batch_size=8, heatmap_size=16)
    first = score([dump["root"]], model_dir, out, opts)
    again = score([one_folder], model_dir, out, opts)
    day2 = read_partition(out, DAY2)
    assert first.images == dump["n_images"]
    assert day2.num_rows == again.images == len(list(Path(one_folder).iterdir()))  # replaced, no duplicates
    assert all(u.startswith(one_folder) for u in day2.column("image_uri").to_pylist())
    assert read_partition(out, DAY1).num_rows == dump["n_images"]  # the other night is untouched


@pytest.mark.slow
def test_inputs_model_and_output_can_all_live_in_s3(ray_local, dump, model_dir, s3_bucket, trained_artifact):
    from raymae import storage

    fs, _ = storage.resolve(s3_bucket)
    fs.put(str(Path(dump["root"]) / "line1") + "/", f"{s3_bucket}/dumps/{DAY1}/line1/", recursive=True)
    fs.put(dump["tar"], f"{s3_bucket}/dumps/{DAY1}/shard-000.tar")
    fs.put(model_dir + "/", f"{s3_bucket}/models/tiny/", recursive=True)
    fs.invalidate_cache()

    summary = score([f"{s3_bucket}/dumps/{DAY1}/"], f"{s3_bucket}/models/tiny", f"{s3_bucket}/scores",
                    ScoreOptions(date=DAY1, batch_size=8))

    fs.invalidate_cache()
    files = [f for f in fs.find(f"{s3_bucket}/scores") if not f.endswith("/_SUCCESS")]
    assert files and all(f.startswith(f"{s3_bucket[5:]}/scores/date={DAY1}/part-") for f in files)
    assert fs.exists(f"{s3_bucket}/scores/date={DAY1}/_SUCCESS")
    table = pds.dataset(files, filesystem=fs, format="parquet").to_table()
    n_line1 = len(list((Path(dump["root"]) / "line1").iterdir()))
    assert table.num_rows == summary.images == n_line1 + 4 and summary.errors == 0
    assert all(u.startswith(f"{s3_bucket}/dumps/") for u in table.column("image_uri").to_pylist())
    assert set(table.column("model_id").to_pylist()) == {trained_artifact.model_id}


def doc_block(page: str, marker: str) -> str:
    """The fenced code block that follows ``<!-- marker -->`` in a page (README.md, docs/...)."""
    text = (Path(__file__).parents[1] / page).read_text()
    after = text.split(f"<!-- {marker} -->", 1)[1]
    return after.split("```", 2)[1].split("\n", 1)[1]


@pytest.mark.slow
def test_the_documented_queries_run_on_the_output_with_duckdb_and_pandas(night, dump, tmp_path, monkeypatch):
    """The README's query, and docs/scoring.md's DuckDB and pandas queries."""
    import duckdb

    (tmp_path / "scores").symlink_to(night["out"])
    monkeypatch.chdir(tmp_path)
    rows = night["table"].to_pylist()
    expected_top = sorted((r["score"] for r in rows if r["status"] == "ok"), reverse=True)[:20]

    assert [r[1] for r in duckdb.sql(doc_block("README.md", "analytics:readme")).fetchall()] == pytest.approx(expected_top)
    statements = [q for q in doc_block("docs/scoring.md", "analytics:sql").split(";") if q.strip()]
    top, per_day, per_folder, errors = [duckdb.sql(q).fetchall() for q in statements]
    assert [r[1] for r in top] == pytest.approx(expected_top)
    day1 = next(r for r in per_day if str(r[0]) == DAY1)
    assert day1[1] == night["summary"].ok and day1[3] == night["summary"].errors
    assert day1[2] == pytest.approx(night["summary"].anomalous / night["summary"].ok)
    assert {r[1] for r in per_folder if str(r[0]) == DAY1} >= {f"{dump['root']}/line1", f"{dump['root']}/line2"}
    assert {r[1] for r in errors if str(r[0]) == DAY1} >= set(dump["broken"])

    scope = {}
    exec(doc_block("docs/scoring.md", "analytics:python"), scope)
    assert scope["top"].score.tolist() == pytest.approx(expected_top)
    assert scope["per_day"][DAY1] == pytest.approx(day1[2])
    assert set(scope["errors"][scope["errors"].date == DAY1].image_uri) == {r[1] for r in errors if str(r[0]) == DAY1}


def test_the_completeness_check_refuses_a_lost_or_repeated_image(tmp_path):
    import pyarrow.parquet as pq

    from raymae.scoring import ScoringFailed, check_complete
    from raymae.sources import IMAGE, Listing, Source

    listing = Listing([Source(f"/d/{n}.png", IMAGE, 1) for n in "abc"] + [Source("/d/s.tar", "tar", 1)])

    def staged(uris: list[str]) -> str:
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        folder.mkdir()
        sources = [u.split("#")[0] for u in uris]
        pq.write_table(pa.table({"image_uri": uris, "source_uri": sources}), folder / "part-00000.parquet")
        return str(folder)

    members = ["/d/s.tar#x.png", "/d/s.tar#x.png"]  # a tar may hold two members of one name
    check_complete(staged(["/d/a.png", "/d/b.png", "/d/c.png", *members]), listing)
    with pytest.raises(ScoringFailed, match="1 inputs without a row"):
        check_complete(staged(["/d/a.png", "/d/b.png", *members]), listing)
    with pytest.raises(ScoringFailed, match="1 with more than one"):
        check_complete(staged(["/d/a.png", "/d/b.png", "/d/c.png", "/d/c.png", *members]), listing)
