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
