"""Listing inputs and reading their bytes: prefixes, globs, files, tar shards, and what can go wrong."""

import pytest

from raymae.data import DataError, load_image
from raymae.sources import IMAGE, TAR, Limits, list_sources, read_sources
from tests.badfiles import BAD_FILES, jpeg_bytes, png_bytes, write_bad_files, write_tar


def test_a_prefix_lists_images_and_tars_recursively_and_reports_other_files(tmp_path):
    (tmp_path / "line1" / "cam2").mkdir(parents=True)
    (tmp_path / "line1" / "a.png").write_bytes(png_bytes())
    (tmp_path / "line1" / "cam2" / "b.JPG").write_bytes(jpeg_bytes())
    write_tar(tmp_path / "shards" / "s-000.tar", {"x.png": png_bytes()})
    (tmp_path / "line1" / "notes.txt").write_text("not an image")
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "_SUCCESS").write_bytes(b"")

    listing = list_sources([str(tmp_path)])

    assert [(s.uri.removeprefix(str(tmp_path)), s.kind) for s in listing.sources] == [
        ("/line1/a.png", IMAGE), ("/line1/cam2/b.JPG", IMAGE), ("/shards/s-000.tar", TAR)]
    assert listing.skipped == [str(tmp_path / "line1" / "notes.txt")]


def test_globs_and_single_files_can_be_mixed_without_duplicates(tmp_path):
    for name in ("a.png", "b.png", "c.jpg"):
        (tmp_path / name).write_bytes(png_bytes())
    (tmp_path / "odd-extension.dat").write_bytes(png_bytes())

    listing = list_sources([str(tmp_path / "*.png"), str(tmp_path / "a.png"),
                            str(tmp_path / "odd-extension.dat")])

    names = [s.uri.rsplit("/", 1)[1] for s in listing.sources]
    assert names == ["a.png", "b.png", "odd-extension.dat"]  # a file named explicitly is scored


def test_a_missing_input_and_an_input_without_images_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="input not found"):
        list_sources([str(tmp_path / "nope")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images or .tar shards"):
        list_sources([str(tmp_path / "empty")])
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("hello")
    with pytest.raises(DataError, match="only non-image files"):
        list_sources([str(tmp_path / "docs")])
    with pytest.raises(DataError, match="no input"):
        list_sources([])


def test_tar_members_become_one_image_each_and_other_members_are_skipped(tmp_path):
    shard = write_tar(tmp_path / "shard.tar", {
        "000.jpg": jpeg_bytes(0), "000.json": b"{}", "001.png": png_bytes(1), "sub/002.png": png_bytes(2)})

    raws = list(read_sources(list_sources([str(shard)]).sources))

    assert [r.image_uri for r in raws] == [f"{shard}#000.jpg", f"{shard}#001.png", f"{shard}#sub/002.png"]
    assert all(r.error is None and r.source_uri == str(shard) for r in raws)
    assert raws[1].data == png_bytes(1)


def test_a_truncated_tar_keeps_the_members_before_the_break_and_names_the_broken_one(tmp_path):
    members = {"a.png": png_bytes(0), "b.png": png_bytes(1), "c.png": png_bytes(2)}
    shard = write_tar(tmp_path / "whole.tar", members)
    data = shard.read_bytes()
    cut = data.index(png_bytes(1)) + 100  # inside b.png's data
    (tmp_path / "cut.tar").write_bytes(data[:cut])

    raws = list(read_sources(list_sources([str(tmp_path / "cut.tar")]).sources))

    assert [r.image_uri.rsplit("#", 1)[1] for r in raws] == ["a.png", "b.png"]
    assert raws[0].error is None
    assert raws[1].data is None and "unreadable tar member" in raws[1].error


def test_a_file_that_is_not_a_tar_is_one_error_row(tmp_path):
    (tmp_path / "fake.tar").write_bytes(b"this is not a tar archive" * 40)
    (tmp_path / "empty.tar").write_bytes(b"")

    raws = list(read_sources(list_sources([str(tmp_path)]).sources))

    assert [r.image_uri.rsplit("/", 1)[1] for r in raws] == ["empty.tar", "fake.tar"]
    assert all(r.data is None and "unreadable tar archive" in r.error for r in raws)


def test_files_over_the_size_limit_are_refused_unread(tmp_path):
    (tmp_path / "big.png").write_bytes(png_bytes(size=64))
    write_tar(tmp_path / "s.tar", {"big.png": png_bytes(size=64)})

    raws = list(read_sources(list_sources([str(tmp_path)]).sources, limits=Limits(max_file_bytes=1000)))

    assert [r.data for r in raws] == [None, None]
    assert "too large" in raws[0].error and "too large" in raws[1].error


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_each_kind_of_broken_image_fails_decoding_with_its_reason(tmp_path, name):
    path, reason = next((p, r) for p, r in write_bad_files(tmp_path).items() if p.endswith(name))
    with pytest.raises(DataError, match=reason):
        load_image(open(path, "rb").read(), 32)


def test_decoding_keeps_the_original_size_and_limits_pixels():
    img = load_image(jpeg_bytes(0, 48), 32)
    assert img.pixels.shape == (32, 32, 3) and (img.height, img.width) == (48, 48)
    with pytest.raises(DataError, match="decompression bomb"):
        load_image(jpeg_bytes(0, 48), 32, max_pixels=48 * 48 - 1)
