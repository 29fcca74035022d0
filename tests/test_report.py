"""The report pages: a night's scores, the errors and the trend as a person sees them, and the evaluation page."""

from __future__ import annotations

import html
import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import pytest
from PIL import Image

from raymae.cli import main
from raymae.report import figures
from raymae.report.nightly import build_nightly_report, folder_levels, location_parts
from tests.badfiles import write_tar
from tests.browser import Browser, ensure_chromium
from tests.scripts import load_script

DAY0, DAY1, DAY2 = "2026-11-25", "2026-11-26", "2026-11-27"
HOSTILE_OK = "<script>.png"                       # a readable image with a hostile name
HOSTILE_BROKEN = "<img src=x onerror=alert(1)>.png"  # an empty file with one
SCREENSHOT = Path(__file__).parents[1] / "docs" / "report-screenshot.png"


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


# ------------------------------------------------------------------ pieces, no Ray
def test_overlays_outline_where_the_map_reaches_the_threshold():
    amap = np.zeros((16, 16), np.float32)
    amap[4:8, 4:8] = 1.0
    original = np.full((32, 48, 3), 120, np.uint8)
    panels = figures.overlay_panels(amap, threshold=0.5, vmax=1.0, size=(48, 32), original=original)
    assert (panels.original.width, panels.original.height) == (48, 32)
    overlay = np.asarray(Image.open(io.BytesIO(panels.overlay.data)), np.int32)
    cyan = (np.abs(overlay - figures.THRESHOLD_COLOUR).sum(-1) < 60)
    ys, xs = np.nonzero(cyan)
    # the square covers x 12..24, y 8..16 of the 48x32 display; its outline lies around it, nothing far away
    assert cyan.any() and xs.min() >= 9 and xs.max() <= 26 and ys.min() >= 5 and ys.max() <= 18
    without = figures.overlay_panels(amap, 0.5, 1.0, (48, 32), original=None)
    assert without.original is None and without.overlay.width == 48


def test_an_image_is_shown_with_its_aspect_ratio():
    assert figures.display_size(2448, 2048) == (224, 187)
    assert figures.display_size(None, None) == (224, 224)


def test_folder_levels_are_relative_to_what_all_images_share():
    prefix, levels = folder_levels(["s3://b/dumps/line1/cam1/a.png", "s3://b/dumps/line2/cam1/b.png",
                                    "s3://b/dumps/line2/shard.tar#cam3/c.png"])
    assert prefix == "s3://b/dumps"
    assert levels == [["line1", "cam1"], ["line2", "cam1"], ["line2", "shard.tar", "cam3"]]
    assert location_parts("/d/x#y.png") == ["d"]  # '#' in a plain file name is part of the name


def test_scored_images_are_read_again_from_files_and_tar_members_or_say_why_not(tmp_path):
    from raymae.sources import read_images

    (tmp_path / "a.png").write_bytes(b"png bytes")
    shard = write_tar(tmp_path / "s.tar", {"x/1.png": b"one", "x/2.png": b"two"})
    got = read_images([str(tmp_path / "a.png"), f"{shard}#x/2.png", f"{shard}#x/9.png", str(tmp_path / "gone.png")])
    assert got[str(tmp_path / "a.png")].data == b"png bytes"
    assert got[f"{shard}#x/2.png"].data == b"two"
    assert got[f"{shard}#x/9.png"].data is None and got[f"{shard}#x/9.png"].error == "not in the archive"
    assert got[str(tmp_path / "gone.png")].error.startswith("cannot read file: FileNotFoundError")


def unreadable_night() -> pa.Table:
    """Scoring output of a night of two empty files: two error rows."""
    from raymae.scoring import to_output_rows

    batch = {"image_uri": np.array(["/d/l1/a.png", "/d/l2/b.png"], dtype=object),
             "source_uri": np.array(["/d/l1/a.png", "/d/l2/b.png"], dtype=object),
             "height": np.array([-1, -1], np.int32), "width": np.array([-1, -1], np.int32),
             "error": np.array(["empty file (0 bytes)"] * 2, dtype=object),
             "score": np.full(2, np.nan, np.float32), "heatmap": np.zeros((2, 8, 8), np.float32),
             "scored_at": np.array(["2026-11-26T02:00:00"] * 2, dtype="datetime64[us]")}
    return to_output_rows(batch, threshold=0.5, model_id="abc")


def test_a_night_where_nothing_could_be_scored_still_gets_a_page(tmp_path):
    from raymae.report.nightly import render_nightly_report

    write_night(str(tmp_path), DAY1, unreadable_night())
    report = build_nightly_report(str(tmp_path), DAY1)
    assert (report.summary.stats.ok, report.summary.stats.errors, report.top) == (0, 2, [])
    assert [(g.reason, g.count) for g in report.errors] == [("empty file (0 bytes)", 2)]
    text = render_nightly_report(report)
    assert "No image of this night could be scored." in text and 'id="anomalous-share">–<' in text

    # the command on its own, as the nightly job runs it: it never loads torch (seconds and a GB saved)
    import subprocess
    import sys

    script = ("import sys; from raymae.cli import main; code = main(sys.argv[1:]); "
              "assert 'torch' not in sys.modules, 'raymae report imported torch'; sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", script, "report", "--scores", str(tmp_path), "--date", DAY1,
                           "--output", str(tmp_path / "page")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "page" / "index.html").exists() and "2 errors" in done.stdout


def test_a_night_whose_scoring_run_stopped_while_publishing_is_refused_and_left_out_of_the_trend(
        capsys, tmp_path):
    from raymae.report.nightly import render_nightly_report
    from raymae.scoring import MARKER

    for date in (DAY0, DAY1, DAY2):
        write_night(str(tmp_path), date, unreadable_night())
    (tmp_path / f"date={DAY1}" / MARKER).unlink()  # the run was killed between swapping the files in and the marker
    code, _, err = run(capsys, "report", "--scores", str(tmp_path), "--date", DAY1,
                       "--output", str(tmp_path / "page"))
    assert code == 2 and not (tmp_path / "page").exists()
    assert err.strip() == (f"raymae report: error: the scores for {DAY1} under {str(tmp_path)!r} are incomplete: "
                           f"their scoring run stopped while publishing them (no _SUCCESS); score {DAY1} again")
    report = build_nightly_report(str(tmp_path), DAY2)
    assert [d.date for d in report.history] == [DAY0, DAY2] and report.incomplete_nights == [DAY1]
    assert f"stopped while publishing them: {DAY1}." in render_nightly_report(report)


def test_the_trend_learns_which_nights_are_complete_from_one_listing_not_a_request_per_night(
        monkeypatch, tmp_path):
    from raymae.report import dataset
    from raymae.scoring import MARKER, complete_dates

    dates = [f"2026-03-{d:02d}" for d in range(1, 13)]
    for date in dates:
        write_night(str(tmp_path), date, unreadable_night())
    (tmp_path / f"date={dates[4]}" / MARKER).unlink()
    (tmp_path / "_staging" / f"date={dates[-1]}-0123456789ab").mkdir(parents=True)  # a run in flight
    (tmp_path / "date=2026-02-30").mkdir()  # not a date
    (tmp_path / "date=2026-02-30" / MARKER).write_text("{}")
    assert complete_dates(str(tmp_path)) == set(dates) - {dates[4]}

    checked = []
    real = dataset.is_complete
    monkeypatch.setattr(dataset, "is_complete", lambda partition: checked.append(partition) or real(partition))
    report = build_nightly_report(str(tmp_path), dates[-1], history_nights=90)
    assert checked == [str(tmp_path / f"date={dates[-1]}")]  # tonight's own marker, nothing per earlier night
    assert [d.date for d in report.history] == dates[:4] + dates[5:] and report.incomplete_nights == [dates[4]]


# ------------------------------------------------------------------ a scored night
@pytest.fixture(scope="module")
def dump(synthetic_dataset, tmp_path_factory) -> dict:
    """Tonight's files: two lines with cameras, a tar shard, broken and hostile names, one file to lose."""
    root = tmp_path_factory.mktemp("factory")
    test = sorted((Path(synthetic_dataset) / "test").glob("*/*.png"))
    folders = ["lineA/cam1", "lineA/cam2", "lineB/cam1"]
    for i, f in enumerate(test):
        dest = root / folders[i % 3] / f"{f.parent.name}-{f.name}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dest)
    defects = [f for f in test if f.parent.name != "good"]
    shutil.copy(defects[0], root / "lineB" / "cam1" / HOSTILE_OK)
    shutil.copy(defects[1], root / "lineA" / "cam1" / "gone.png")
    (root / "lineA" / "cam2" / HOSTILE_BROKEN).write_bytes(b"")
    (root / "lineA" / "cam1" / "truncated.png").write_bytes(defects[2].read_bytes()[:300])
    shard = write_tar(root / "lineB" / "cam2" / "shard.tar",
                      {f"{f.parent.name}/{f.name}": f.read_bytes() for f in defects[3:6]})
    return {"root": str(root), "shard": str(shard), "gone": str(root / "lineA" / "cam1" / "gone.png"),
            "hostile_ok": str(root / "lineB" / "cam1" / HOSTILE_OK),
            "hostile_broken": str(root / "lineA" / "cam2" / HOSTILE_BROKEN),
            "truncated": str(root / "lineA" / "cam1" / "truncated.png")}


def write_night(out: str, date: str, table: pa.Table) -> None:
    """A published partition, as scoring leaves it: the Parquet file, then the ``_SUCCESS`` marker."""
    from raymae.scoring import MARKER

    (Path(out) / f"date={date}").mkdir()
    pq.write_table(table, str(Path(out) / f"date={date}" / "part-00000.parquet"))
    (Path(out) / f"date={date}" / MARKER).write_text("{}")


@pytest.fixture(scope="module")
def night(ray_local, dump, model_dir, tmp_path_factory):
    """One real scoring run (with --report) for DAY1; DAY0 and DAY2 are smaller nights made of its good images."""
    out = str(tmp_path_factory.mktemp("scores"))
    first_report = tmp_path_factory.mktemp("first-report")
    code = main(["score", "--input", dump["root"], "--model", model_dir, "--output", out, "--date", DAY1,
                 "--batch-size", "8", "--heatmap-size", "16", "--report", str(first_report)])
    assert code == 0
    Path(dump["gone"]).unlink()  # an original lost after scoring: the report must still work
    table = pds.dataset(f"{out}/date={DAY1}", format="parquet").to_table()
    good = table.filter(pc.match_substring(table.column("image_uri"), "/good-"))
    write_night(out, DAY0, good)
    write_night(out, DAY2, good.slice(0, 3))  # a later night never shows in an earlier night's trend
    return {"out": out, "table": table, "first_report": first_report / "index.html"}


@pytest.fixture(scope="module")
def page(night, tmp_path_factory) -> dict:
    """`raymae report` of DAY1 with every scored image in the top list."""
    out = tmp_path_factory.mktemp("report")
    code = main(["report", "--scores", night["out"], "--date", DAY1, "--output", str(out / "{date}"), "--top", "100"])
    assert code == 0
    index = out / DAY1 / "index.html"
    return {"path": index, "html": index.read_text(encoding="utf-8")}


def element_text(page_html: str, element_id: str) -> str:
    m = re.search(rf'id="{re.escape(element_id)}">(.*?)</', page_html, re.S)
    assert m, f"no element with id {element_id!r}"
    return html.unescape(m.group(1)).strip()


def top_uris(page_html: str) -> list[str]:
    return [html.unescape(u) for u in re.findall(r'<code class="uri">(.*?)</code>', page_html)]


@pytest.mark.slow
def test_scoring_with_report_writes_the_page_of_the_night(night):
    text = night["first_report"].read_text(encoding="utf-8")
    assert f"Nightly anomaly report: {DAY1}" in text
    assert element_text(text, "images") == str(night["table"].num_rows)


@pytest.mark.slow
def test_the_summary_numbers_are_those_of_the_parquet(page, night, trained_artifact):
    rows = night["table"].to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    anomalous = sum(r["is_anomalous"] for r in ok)
    text = page["html"]
    assert element_text(text, "images") == str(len(rows))
    assert element_text(text, "scored") == str(len(ok))
    assert element_text(text, "errors") == str(len(rows) - len(ok)) == "2"
    assert element_text(text, "anomalous") == str(anomalous)
    assert element_text(text, "anomalous-share") == f"{100 * anomalous / len(ok):.1f} %"
    assert element_text(text, "median-score") == f"{np.median([r['score'] for r in ok]):.4g}"
    assert element_text(text, "threshold") == f"{trained_artifact.calibration.threshold:.4g}"
    assert element_text(text, "model") == trained_artifact.model_id


@pytest.mark.slow
def test_the_top_images_are_the_highest_scores_in_order(night):
    report = build_nightly_report(night["out"], DAY1, top=5)
    ok = [r for r in night["table"].to_pylist() if r["status"] == "ok"]
    expected = sorted(ok, key=lambda r: (-r["score"], r["image_uri"]))[:5]
    assert [t.image_uri for t in report.top] == [r["image_uri"] for r in expected]
    assert [t.rank for t in report.top] == [1, 2, 3, 4, 5]
    assert [t.score for t in report.top] == pytest.approx([r["score"] for r in expected])
    text = build_and_render(night["out"], DAY1, 5)
    assert top_uris(text) == [r["image_uri"] for r in expected]


def build_and_render(scores: str, date: str, top: int) -> str:
    from raymae.report.nightly import render_nightly_report

    return render_nightly_report(build_nightly_report(scores, date, top=top))


@pytest.mark.slow
def test_errors_are_grouped_by_reason_with_their_paths(night, page, dump):
    report = build_nightly_report(night["out"], DAY1, top=1)
    groups = {g.reason: g for g in report.errors}
    assert groups["empty file (0 bytes)"].examples == [dump["hostile_broken"]]
    (truncated,) = [g for g in groups.values() if dump["truncated"] in g.examples]
    assert truncated.count == 1 and truncated.reason.startswith("not a readable image")
    section = page["html"].split('id="errors"', 1)[1].split('id="folders"', 1)[0]
    assert section.count('class="error-group"') == 2
    assert html.escape(dump["hostile_broken"], quote=False) in section


@pytest.mark.slow
def test_hostile_file_names_are_shown_as_text_never_as_markup(page, dump):
    text = page["html"]
    assert "<script" not in text.lower()
    assert "onerror=alert(1)>" not in text
    assert html.escape(dump["hostile_ok"], quote=False) in text
    assert "&lt;img src=x onerror=alert(1)&gt;.png" in text
    assert dump["hostile_ok"] in top_uris(text)


@pytest.mark.slow
def test_a_lost_original_leaves_the_heatmap_and_a_note(page, dump):
    text = page["html"]
    case = text.split(html.escape(dump["gone"], quote=False), 1)[1].split('class="case', 1)[0]
    assert "original not shown: cannot read file" in case
    assert case.count("<img") == 2  # the heatmap and the heatmap with its outline


@pytest.mark.slow
def test_every_top_image_but_the_lost_one_shows_its_original_even_from_a_tar(page, dump, night):
    n_ok = sum(r["status"] == "ok" for r in night["table"].to_pylist())
    cases = page["html"].split('class="case top-image"')[1:]
    assert len(cases) == n_ok
    missing = [c for c in cases if 'class="missing"' in c]
    assert len(missing) == 1 and html.escape(dump["gone"], quote=False) in missing[0]
    assert sum(html.escape(dump["shard"], quote=False) + "#" in c for c in cases) == 3


@pytest.mark.slow
def test_the_trend_holds_the_earlier_nights_and_matches_their_partitions(night, page):
    report = build_nightly_report(night["out"], DAY1, top=1)
    assert [d.date for d in report.history] == [DAY0, DAY1]
    day0 = pds.dataset(f"{night['out']}/date={DAY0}", format="parquet").to_table().to_pylist()
    d0 = report.history[0]
    assert (d0.images, d0.ok, d0.errors) == (len(day0), len(day0), 0)
    assert d0.anomalous == sum(r["is_anomalous"] for r in day0)
    assert d0.median_score == pytest.approx(np.median([r["score"] for r in day0]))
    from raymae.scoring import MARKER

    marker = json.loads((Path(night["out"]) / f"date={DAY1}" / MARKER).read_text())  # written by scoring
    d1 = report.history[1]
    assert {k: marker[k] for k in ("images", "ok", "errors", "anomalous")} == {
        "images": d1.images, "ok": d1.ok, "errors": d1.errors, "anomalous": d1.anomalous}
    assert "trend" in report.pictures and 'id="trend"' in page["html"]
    history = page["html"].split('id="history"', 1)[1].split("</table>", 1)[0]
    assert history.index(DAY1) < history.index(DAY0) and DAY2 not in history

    first = build_and_render(night["out"], DAY0, 1)
    assert 'id="trend"' not in first and "No earlier nights" in first


@pytest.mark.slow
def test_folders_are_broken_down_by_line_and_camera(night, dump):
    report = build_nightly_report(night["out"], DAY1, top=1)
    assert report.prefix == dump["root"]
    by_level = {b.level: {v.value: v for v in b.values} for b in report.breakdowns}
    assert set(by_level[1]) == {"lineA", "lineB"} and set(by_level[2]) == {"cam1", "cam2"}
    rows = night["table"].to_pylist()
    line_a = [r for r in rows if r["image_uri"].startswith(dump["root"] + "/lineA/")]
    a = by_level[1]["lineA"]
    assert (a.images, a.errors) == (len(line_a), 2)
    assert a.anomalous == sum(bool(r["is_anomalous"]) for r in line_a)


# ------------------------------------------------------------------ the command line
@pytest.mark.slow
def test_a_night_without_scores_is_a_one_line_error(capsys, night, tmp_path):
    code, _, err = run(capsys, "report", "--scores", night["out"], "--date", "2026-12-01",
                       "--output", str(tmp_path))
    assert code == 2
    assert err.strip() == (f"raymae report: error: no scores for 2026-12-01 under {night['out']!r} "
                           f"(it has 3 nights, from {DAY0} to {DAY2})")
    assert not list(tmp_path.iterdir())


def test_wrong_report_arguments_are_one_line_errors(capsys, tmp_path):
    code, _, err = run(capsys, "report", "--scores", str(tmp_path / "nothing"), "--date", DAY1,
                       "--output", str(tmp_path / "r"))
    assert code == 2 and "no scores at" in err and "does not exist" in err
    (tmp_path / "s" / f"date={DAY1}").mkdir(parents=True)
    (tmp_path / "s" / f"date={DAY1}" / "_SUCCESS").write_text("{}")
    code, _, err = run(capsys, "report", "--scores", str(tmp_path / "s"), "--date", DAY1, "--output", str(tmp_path))
    assert code == 2 and "holds no Parquet files" in err
    code, _, err = run(capsys, "report", "--scores", str(tmp_path), "--date", "26/11/2026", "--output", str(tmp_path))
    assert code == 2 and "YYYY-MM-DD" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--scores", str(tmp_path), "--date", DAY1, "--output", str(tmp_path), "--top", "0"])
    assert exit_info.value.code == 2 and "--top: must be at least 1" in capsys.readouterr().err


def test_the_report_job_fills_in_todays_date():
    from raymae.scoring import parse_date

    job = load_script("jobs/report.py")
    args = job.with_default_date(["--scores", "x"])
    assert args[-2] == "--date" and parse_date(args[-1])


@pytest.mark.slow
def test_scores_originals_and_the_page_can_all_live_in_s3(capsys, night, dump, s3_bucket):
    from raymae import storage
    from raymae.scoring import complete_dates

    fs, _ = storage.resolve(s3_bucket)
    fs.put(dump["root"] + "/", f"{s3_bucket}/dumps/", recursive=True)
    moved = night["table"]
    for column in ("image_uri", "source_uri"):
        values = [u.replace(dump["root"], f"{s3_bucket}/dumps", 1) for u in moved.column(column).to_pylist()]
        moved = moved.set_column(moved.schema.get_field_index(column), column, pa.array(values, pa.string()))
    with fs.open(f"{s3_bucket}/scores/date={DAY1}/part-00000.parquet", "wb") as f:
        pq.write_table(moved, f)
    fs.pipe(f"{s3_bucket}/scores/date={DAY1}/_SUCCESS", b"{}")
    fs.pipe(f"{s3_bucket}/scores/date={DAY0}/part-00000.parquet", b"")  # killed before its marker
    fs.invalidate_cache()
    assert complete_dates(f"{s3_bucket}/scores") == {DAY1}

    code, out, err = run(capsys, "report", "--scores", f"{s3_bucket}/scores", "--date", DAY1,
                         "--output", f"{s3_bucket}/reports/{{date}}", "--top", "100")
    assert code == 0, err
    assert f"wrote {s3_bucket}/reports/{DAY1}/index.html" in out
    text = storage.read_bytes(f"{s3_bucket}/reports/{DAY1}/index.html").decode()
    assert f"{s3_bucket}/dumps/lineB/cam2/shard.tar#" in text
    assert text.count('class="missing"') == 1  # only the lost original; the rest came from S3, tar members too
    assert element_text(text, "images") == str(night["table"].num_rows)


# ------------------------------------------------------------------ the evaluation page
@pytest.fixture(scope="module")
def evaluation(synthetic_dataset, model_dir, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("evaluation")
    assert main(["evaluate", "--data", synthetic_dataset, "--model", model_dir, "--output", str(out)]) == 0
    return {"path": out / "report.html", "html": (out / "report.html").read_text(encoding="utf-8"), "out": out}


def test_evaluate_writes_a_page_with_the_metrics_per_defect_type_and_cases(evaluation):
    import json

    from raymae.synthetic import DEFECT_TYPES

    result = json.loads((evaluation["out"] / "metrics.json").read_text())
    text = evaluation["html"]
    for name, row in [("all", result["metrics"]), *result["per_type"].items()]:
        line = text.split(f'data-type="{name}"', 1)[1].split("</tr>", 1)[0]
        assert f">{row['image_auroc']:.3f}<" in line and f">{row['aupro']:.3f}<" in line
    assert set(result["per_type"]) == set(DEFECT_TYPES)
    cases = [(kind, html.unescape(uri)) for kind, uri in re.findall(
        r'class="case" data-kind="([^"]+)">.*?<code class="uri">(.*?)</code>', text, re.S)]
    scores = pq.read_table(evaluation["out"] / "scores.parquet").to_pylist()
    expected = []
    for defect in sorted(DEFECT_TYPES):
        of_type = sorted((r for r in scores if r["defect_type"] == defect), key=lambda r: -r["score"])
        expected += [("best", of_type[0]["image_uri"]), ("worst", of_type[-1]["image_uri"])]
    normal = sorted((r for r in scores if r["defect_type"] == "good"), key=lambda r: -r["score"])
    expected += [("normal", r["image_uri"]) for r in normal[:4]]
    assert cases == expected
    for picture in ("roc", "pro", "histogram", "colour-bar"):
        assert f'id="{picture}"' in text


# ------------------------------------------------------------------ in a real browser
@pytest.fixture(scope="module")
def browser():
    b = Browser(ensure_chromium())
    yield b
    b.close()


@pytest.mark.slow
def test_every_picture_of_the_nightly_page_loads_in_chromium(browser, page, tmp_path):
    shot = tmp_path / "report.png"
    images = browser.images(page["path"], screenshot=shot)
    assert len(images) == page["html"].count("<img") > 10
    assert [i for i in images if i.natural_width == 0] == []
    assert {"histogram of the night's scores with the threshold",
            "anomalous share and median score per night"} <= {i.alt for i in images}
    picture = np.asarray(Image.open(shot).convert("RGB"))
    assert picture.shape[1] == 1240 and picture.std() > 10  # not a blank page
    if os.environ.get("RAYMAE_UPDATE_SCREENSHOT"):  # refresh the README's picture (not on every run:
        SCREENSHOT.parent.mkdir(exist_ok=True)       # it would change a tracked file each time)
        Image.open(shot).convert("RGB").quantize(256).save(SCREENSHOT, optimize=True)


def test_every_picture_of_the_evaluation_page_loads_in_chromium(browser, evaluation):
    images = browser.images(evaluation["path"])
    assert len(images) == evaluation["html"].count("<img") > 10
    assert [i for i in images if i.natural_width == 0] == []
