"""The bad-input corpus: every awkward kind of file gets its expected outcome.

First through the pipeline's own stage functions without Ray (fast, checks the
decoded pixels), then through one real ``raymae score`` run (every input is one
row, scored like the model scores the same pixels).
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.dataset as pds
import pytest

from raymae.cli import main
from raymae.data import load_image
from raymae.scoring import decode_images, group_sources, read_group
from raymae.sources import Limits, list_sources
from tests.badfiles import (CORPUS_MAX_FILE_BYTES, CORPUS_MAX_TAR_MEMBERS, ERROR, OK, Corpus, Expect,
                            write_corpus)

LIMITS = Limits(max_file_bytes=CORPUS_MAX_FILE_BYTES, max_tar_members=CORPUS_MAX_TAR_MEMBERS)
SIZE = 32
DAY = "2026-11-28"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "dump")


def through_the_stages(corpus: Corpus, size: int) -> dict[str, dict]:
    """image_uri -> decoded row, by the functions the Ray pipeline maps over its blocks."""
    rows = {}
    for group in group_sources(list_sources([str(corpus.root)]).sources):
        for table in read_group({k: [v] for k, v in group.items()}, limits=LIMITS):
            out = decode_images(table, size)
            for i, uri in enumerate(out["image_uri"]):
                assert uri not in rows, f"{uri} came out twice"
                rows[uri] = {k: out[k][i] for k in ("error", "height", "width", "image")}
    return rows


def unmet(expect: Expect, row: dict | None) -> str | None:
    """Why a decoded row does not meet its expectation, or None when it does."""
    if row is None:
        return "no row"
    if expect.outcome == ERROR:
        if not row["error"]:
            return "decoded, but should be an error"
        return None if expect.reason in row["error"] else f"reason {row['error']!r}, expected {expect.reason!r}"
    if row["error"]:
        return f"error {row['error']!r}"
    if (row["width"], row["height"]) != expect.size:
        return f"size {row['width']}x{row['height']}, expected {expect.size[0]}x{expect.size[1]}"
    if expect.check is not None and not expect.check(row["image"]):
        return f"pixels wrong, mean colour {row['image'].reshape(-1, 3).mean(0).round()}"
    return None


def test_the_corpus_has_at_least_25_kinds_each_with_a_row_or_a_skip(corpus):
    assert len(corpus.kinds) >= 25
    assert all(k.rows or k.skipped for k in corpus.kinds)
    assert len({k.name for k in corpus.kinds}) == len(corpus.kinds)


def test_every_kind_gets_its_expected_outcome_from_the_pipeline_stages(corpus):
    rows = through_the_stages(corpus, SIZE)
    expected = corpus.expected_rows()
    failures = {f"{kind}: {uri}": why for uri, (kind, e) in expected.items() if (why := unmet(e, rows.get(uri)))}
    assert not failures, failures
    assert sorted(rows) == sorted(expected), "rows that no kind expects: " + str(sorted(set(rows) - set(expected)))
    assert list_sources([str(corpus.root)]).skipped == corpus.expected_skipped()


def test_tar_members_with_escaping_names_are_never_written_to_disk(corpus):
    through_the_stages(corpus, SIZE)
    assert not (corpus.root.parent.parent / "escaped.png").exists()
    assert not (corpus.root / "escaped.png").exists() and not Path("/etc/raymae-abs.png").exists()
    assert not (corpus.root / "tars" / "dot").exists()


def test_error_reasons_are_one_line_for_a_person(corpus):
    rows = through_the_stages(corpus, SIZE)
    for uri, row in rows.items():
        if row["error"]:
            assert "\n" not in row["error"] and "BytesIO" not in row["error"] and len(row["error"]) < 300, uri


def test_the_byte_limit_holds_even_when_the_listed_size_is_wrong(tmp_path):
    from raymae.sources import IMAGE, Source, read_image

    (tmp_path / "grew.png").write_bytes(b"\x89PNG" + b"\0" * 5000)
    raw = read_image(Source(str(tmp_path / "grew.png"), IMAGE, size=10), max_file_bytes=1000)
    assert raw.data is None and "file too large" in raw.error


# ------------------------------------------------------------------ one real run
@pytest.fixture(scope="module")
def scored(ray_local, corpus, model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus-scores")
    code = main(["score", "--input", str(corpus.root), "--model", model_dir, "--output", str(out),
                 "--date", DAY, "--batch-size", "8", "--heatmap-size", "8",
                 "--max-file-bytes", str(CORPUS_MAX_FILE_BYTES),
                 "--max-tar-members", str(CORPUS_MAX_TAR_MEMBERS)])
    table = pds.dataset(str(out / f"date={DAY}"), format="parquet").to_table()
    return {"code": code, "rows": table.to_pylist()}


@pytest.mark.slow
def test_raymae_score_gives_one_row_per_input_with_its_outcome(scored, corpus, trained_artifact, reliability):
    assert scored["code"] == 0
    rows = {r["image_uri"]: r for r in scored["rows"]}
    expected = corpus.expected_rows()
    assert len(scored["rows"]) == len(rows), "an image came out twice"
    assert sorted(rows) == sorted(expected)
    handled = set()
    for kind in corpus.kinds:
        for rel, e in kind.rows.items():
            row = rows[corpus.uri(rel)]
            assert row["status"] == e.outcome, (kind.name, rel, row["error"])
            if e.outcome == ERROR:
                assert e.reason in row["error"] and row["score"] is None, (kind.name, row["error"])
            else:
                assert (row["width"], row["height"]) == e.size and row["error"] is None, kind.name
        handled.add(kind.name)
    reliability.bad_input(tried=[k.name for k in corpus.kinds], handled=sorted(handled),
                          inputs=len(expected), rows_out=len(scored["rows"]))


@pytest.mark.slow
def test_what_can_be_scored_is_scored_like_the_model_scores_its_pixels(scored, corpus, trained_artifact):
    rows = [r for r in scored["rows"] if r["status"] == OK]
    predictor = trained_artifact.predictor()
    size = trained_artifact.config.model.image_size
    pixels = [load_image(_bytes_of(corpus, r["image_uri"]), size).pixels for r in rows]
    expected = predictor.predict(np.stack(pixels), 16).scores
    got = np.array([r["score"] for r in rows])
    assert np.allclose(got, expected, rtol=1e-4, atol=1e-6)


def _bytes_of(corpus: Corpus, uri: str) -> bytes:
    """The bytes the corpus wrote for an image_uri (a tar member read in stream mode, as scoring does)."""
    rel = uri[len(str(corpus.root)) + 1:]
    for kind in corpus.kinds:
        for name, data in kind.files.items():
            if rel == name:
                return data
            if rel.startswith(name + "#"):
                with tarfile.open(fileobj=io.BytesIO(data), mode="r|*") as tar:
                    for member in tar:
                        if member.name == rel[len(name) + 1:]:
                            return tar.extractfile(member).read()
    raise KeyError(uri)
