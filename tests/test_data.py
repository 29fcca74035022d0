"""Reading MVTec-AD style folders from disk and from S3."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from raymae import data, storage
from raymae.storage import StorageError


def _png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format="PNG")
    return buf.getvalue()


def test_test_images_are_paired_with_their_masks(synthetic_dataset):
    records = data.list_test(synthetic_dataset)
    defective = [r for r in records if r.label == 1]
    assert {r.defect_type for r in defective} == {"scratch", "spot", "stain"}
    for r in defective:
        stem = os.path.basename(r.uri).rsplit(".", 1)[0]
        assert r.mask_uri.endswith(f"ground_truth/{r.defect_type}/{stem}_mask.png")
    assert all(r.mask_uri is None for r in records if r.label == 0)


def test_loaded_masks_are_boolean_and_resized(synthetic_dataset):
    test = data.load_images(data.list_test(synthetic_dataset), size=32)
    assert test.images.shape[1:] == (32, 32, 3) and test.images.dtype == np.uint8
    assert test.masks.dtype == bool
    assert not test.masks[test.labels == 0].any()
    assert all(m.any() for m in test.masks[test.labels == 1])


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_any_image_mode_and_size_becomes_rgb_at_the_model_size(mode):
    rng = np.random.default_rng(0)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, (30, 50), dtype=np.uint16))
    else:
        img = Image.fromarray(rng.integers(0, 255, (30, 50, 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    out = data.resize_rgb(data.decode_image(buf.getvalue()), 24)
    assert out.shape == (24, 24, 3) and out.dtype == np.uint8


def test_broken_images_are_explained():
    with pytest.raises(data.DataError, match="empty file"):
        data.decode_image(b"")
    with pytest.raises(data.DataError, match="not a readable image"):
        data.decode_image(b"<html>404</html>")


def test_a_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(data.DataError, match="data folder not found"):
        data.list_train(str(tmp_path / "nope"))


def test_an_empty_train_good_is_a_clear_error(tmp_path):
    (tmp_path / "train" / "good").mkdir(parents=True)
    with pytest.raises(data.DataError, match="no training images"):
        data.list_train(str(tmp_path))


@pytest.mark.parametrize("uri, message", [("ftp://host/data", "unsupported URI scheme"),
                                          ("s3:///prefix", "names no bucket"), ("", "empty")])
def test_bad_uris_are_explained(uri, message):
    with pytest.raises(StorageError, match=message):
        data.list_train(uri)


def test_holdout_split_is_deterministic_and_disjoint():
    records = list(range(50))
    a = data.split_holdout(records, 0.1, seed=3)
    assert a == data.split_holdout(records, 0.1, seed=3)
    train, hold = a
    assert len(hold) == 5 and not set(train) & set(hold) and len(train) + len(hold) == 50


def test_a_dataset_reads_the_same_from_s3(synthetic_dataset, s3_bucket):
    fs, _ = storage.resolve(s3_bucket)
    fs.put(synthetic_dataset + "/", s3_bucket + "/mvtec/", recursive=True)
    local = data.load_images(data.list_test(synthetic_dataset), 32)
    remote = data.load_images(data.list_test(s3_bucket + "/mvtec"), 32)
    assert [r.uri.startswith(s3_bucket) for r in remote.records] == [True] * len(local.records)
    assert np.array_equal(local.images, remote.images) and np.array_equal(local.masks, remote.masks)
    assert len(data.list_train(s3_bucket + "/mvtec")) == len(data.list_train(synthetic_dataset))


def test_a_missing_s3_prefix_is_a_clear_error(s3_bucket):
    with pytest.raises(data.DataError, match="data folder not found"):
        data.list_train(s3_bucket + "/absent")


# ------------------------------------------------------------------ your own folders
def _write_images(folder, names, size: int = 16) -> list[str]:
    """Small PNGs at folder/name (sub-folders created); returns their paths as strings."""
    rng = np.random.default_rng(len(names))
    paths = []
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_png(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)))
        paths.append(str(path))
    return paths


def test_a_plain_folder_of_normal_images_is_training_data_read_recursively(tmp_path):
    images = _write_images(tmp_path / "normals", ["b.png", "a.jpg", "line1/cam2/c.png"])
    _write_images(tmp_path / "normals", [".thumbs/x.png", "_staging/y.png", ".hidden.png"])
    (tmp_path / "normals" / "notes.txt").write_text("not an image")
    records = data.list_train(str(tmp_path / "normals"))
    assert [r.uri for r in records] == sorted(images)
    assert {(r.label, r.defect_type, r.mask_uri) for r in records} == {(0, data.GOOD, None)}


def test_a_glob_selects_the_training_images(tmp_path):
    _write_images(tmp_path, ["cam1/a.png", "cam1/b.png", "cam2/c.png", "cam1/d.jpg"])
    records = data.list_train(str(tmp_path / "cam1" / "*.png"))
    assert [os.path.basename(r.uri) for r in records] == ["a.png", "b.png"]
    assert all(os.path.exists(r.uri) for r in records)


def test_an_mvtec_folder_still_trains_on_train_good_and_nothing_else(synthetic_dataset):
    records = data.list_train(synthetic_dataset)
    assert records and all(f"{os.sep}train{os.sep}good{os.sep}" in r.uri for r in records)
    assert len(records) == len(os.listdir(os.path.join(synthetic_dataset, "train", "good")))


def test_an_mvtec_folder_without_train_good_is_an_error_not_its_defects_read_as_normal(tmp_path):
    _write_images(tmp_path, ["test/crack/000.png", "ground_truth/crack/000_mask.png"])
    with pytest.raises(data.DataError, match="no training images in .*train/good"):
        data.list_train(str(tmp_path))


@pytest.mark.parametrize("uri, message", [("empty", "no training images in .*empty.*: give a folder"),
                                          ("only-text", "no training images in"),
                                          ("empty/*.png", "no training images match")])
def test_a_folder_or_glob_without_images_is_a_clear_error(tmp_path, uri, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "only-text").mkdir()
    (tmp_path / "only-text" / "readme.txt").write_text("no images here")
    with pytest.raises(data.DataError, match=message):
        data.list_train(str(tmp_path / uri))


def test_an_s3_prefix_or_glob_of_normal_images_is_training_data(tmp_path, s3_bucket):
    _write_images(tmp_path / "normals", ["a.png", "sub/b.png", "c.png"])
    fs, _ = storage.resolve(s3_bucket)
    fs.put(str(tmp_path / "normals") + "/", s3_bucket + "/normals/", recursive=True)
    fs.invalidate_cache()
    prefix = [r.uri for r in data.list_train(s3_bucket + "/normals")]
    assert prefix == [f"{s3_bucket}/normals/{n}" for n in ("a.png", "c.png", "sub/b.png")]
    assert [r.uri for r in data.list_train(s3_bucket + "/normals/*.png")] == prefix[:2]
    loaded = data.load_images(data.list_train(s3_bucket + "/normals"), 8)
    assert loaded.images.shape == (3, 8, 8, 3)


def _folders(tmp_path, masks: list[str] | None = None):
    """good/ (3 normal), crack/ (2 defective), and optionally masks/ with the given names."""
    _write_images(tmp_path / "good", ["n0.png", "n1.png", "n2.png"])
    _write_images(tmp_path / "crack", ["d0.png", "d1.png"])
    if masks is not None:
        _write_images(tmp_path / "masks", masks)
    return str(tmp_path / "good"), str(tmp_path / "crack"), str(tmp_path / "masks")


def test_folders_of_normal_and_defective_images_are_a_test_set_named_after_the_folders(tmp_path):
    normal, abnormal, _ = _folders(tmp_path)
    records = data.list_folders([normal], [abnormal])
    assert [(os.path.basename(r.uri), r.label, r.defect_type, r.mask_uri) for r in records] == [
        ("n0.png", 0, data.GOOD, None), ("n1.png", 0, data.GOOD, None), ("n2.png", 0, data.GOOD, None),
        ("d0.png", 1, "crack", None), ("d1.png", 1, "crack", None)]


def test_masks_pair_with_defective_images_by_name_with_or_without_the_mask_suffix(tmp_path):
    normal, abnormal, masks = _folders(tmp_path, ["d0.png", "d1_mask.png"])
    records = data.list_folders([normal], [abnormal], [masks])
    assert {os.path.basename(r.uri): r.mask_uri and os.path.basename(r.mask_uri) for r in records if r.label} == {
        "d0.png": "d0.png", "d1.png": "d1_mask.png"}
    test = data.load_images(records, 16)
    assert test.masks.shape == (5, 16, 16) and not test.masks[test.labels == 0].any()


def test_one_masks_folder_per_defect_folder_keeps_images_of_the_same_name_apart(synthetic_dataset):
    root = synthetic_dataset
    types = ["scratch", "spot", "stain"]
    records = data.list_folders([f"{root}/test/good"], [f"{root}/test/{t}" for t in types],
                                [f"{root}/ground_truth/{t}" for t in types])
    assert [(r.uri, r.label, r.defect_type, r.mask_uri) for r in records] == [
        (r.uri, r.label, r.defect_type, r.mask_uri) for r in data.list_test(root)]


@pytest.mark.parametrize("names, message", [
    (["d0.png", "d1.png", "d7.png"], "1 of 3 masks in .* pair with no defective image: .*d7.png"),
    (["d0.png"], "1 of 2 defective images have no mask in .*d1.png"),
    (["d0.png", "d0_mask.png", "d1.png"], "two masks for images named 'd0'"),
])
def test_masks_that_do_not_pair_one_to_one_are_a_clear_error(tmp_path, names, message):
    normal, abnormal, masks = _folders(tmp_path, names)
    with pytest.raises(data.DataError, match=message):
        data.list_folders([normal], [abnormal], [masks])


def test_missing_or_empty_or_overlapping_folders_are_clear_errors(tmp_path):
    normal, abnormal, _ = _folders(tmp_path)
    (tmp_path / "empty").mkdir()
    empty = str(tmp_path / "empty")
    cases = [(([str(tmp_path / "absent")], [abnormal]), "data folder not found: .*absent"),
             (([empty], [abnormal]), "no images in --normal"),
             (([normal], [empty]), "no images in --abnormal"),
             (([normal], [abnormal], [empty]), "no masks in --masks"),
             (([normal], [abnormal], [empty, empty]), "2 --masks folders for 1 --abnormal folders"),
             (([str(tmp_path)], [abnormal]), "2 files are both under --normal and --abnormal")]
    for args, message in cases:
        with pytest.raises(data.DataError, match=message):
            data.list_folders(*args)
