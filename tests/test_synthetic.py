"""Behaviour of the synthetic MVTec-AD-style dataset (raymae.synthetic)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raymae.synthetic import DEFECT_TYPES, _image_rng, draw_defect, make_texture, write_mvtec_dataset


def _load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.png"))


def test_texture_is_rgb_uint8_of_the_requested_size() -> None:
    image = make_texture(np.random.default_rng(0), 48)
    assert image.shape == (48, 48, 3) and image.dtype == np.uint8
    assert 30 <= image.min() and image.max() <= 225


def test_textures_share_a_family_but_differ_per_image() -> None:
    a = make_texture(np.random.default_rng(0), 32)
    b = make_texture(np.random.default_rng(1), 32)
    assert not np.array_equal(a, b)
    assert np.abs(a.mean(axis=(0, 1)) - b.mean(axis=(0, 1))).max() < 15


@pytest.mark.parametrize("kind", DEFECT_TYPES)
@pytest.mark.parametrize("size", [32, 64])
def test_defect_mask_is_exactly_the_drawn_pixels(kind: str, size: int) -> None:
    for seed in range(10):
        rng = np.random.default_rng(seed)
        clean = make_texture(rng, size)
        image, mask = draw_defect(clean, rng, kind)
        assert mask.shape == (size, size) and mask.dtype == bool
        assert np.array_equal(mask, (image != clean).any(axis=-1))
        assert mask.mean() > 0.002


@pytest.mark.parametrize("kind", DEFECT_TYPES)
def test_defects_are_clearly_visible(kind: str) -> None:
    rng = np.random.default_rng(3)
    clean = make_texture(rng, 64)
    image, mask = draw_defect(clean, rng, kind)
    diff = np.abs(image.astype(int) - clean.astype(int)).max(axis=-1)
    assert np.median(diff[mask]) >= 30


def test_draw_defect_leaves_the_input_alone_and_refuses_unknown_kinds() -> None:
    rng = np.random.default_rng(0)
    clean = make_texture(rng, 32)
    before = clean.copy()
    draw_defect(clean, rng, "spot")
    assert np.array_equal(clean, before)
    with pytest.raises(ValueError):
        draw_defect(clean, rng, "hole")


def test_writer_produces_mvtec_layout(tmp_path: Path) -> None:
    root = write_mvtec_dataset(tmp_path / "synth", n_train=4, n_test_good=2,
                               n_test_defect_per_type=3, size=32, seed=0)
    assert root == tmp_path / "synth"
    expected = ([f"train/good/{i:03d}.png" for i in range(4)]
                + [f"test/good/{i:03d}.png" for i in range(2)]
                + [f"test/{k}/{i:03d}.png" for k in DEFECT_TYPES for i in range(3)]
                + [f"ground_truth/{k}/{i:03d}_mask.png" for k in DEFECT_TYPES for i in range(3)])
    assert _files(root) == sorted(expected)
    image = _load(root / "train/good/000.png")
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8


def test_written_masks_match_the_defect_pixels(tmp_path: Path) -> None:
    root = write_mvtec_dataset(tmp_path, n_train=0, n_test_good=0, n_test_defect_per_type=4,
                               size=48, seed=2)
    for kind in DEFECT_TYPES:
        for i in range(4):
            mask = _load(root / f"ground_truth/{kind}/{i:03d}_mask.png")
            assert mask.shape == (48, 48) and mask.dtype == np.uint8
            assert set(np.unique(mask)) == {0, 255}
            image = _load(root / f"test/{kind}/{i:03d}.png")
            # The writer draws on the texture of the same per-image generator.
            clean = make_texture(_image_rng(2, 2 + DEFECT_TYPES.index(kind), i), 48)
            assert np.array_equal(mask == 255, (image != clean).any(axis=-1))


def test_writer_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    kwargs = dict(n_train=3, n_test_good=2, n_test_defect_per_type=2, size=32)
    a = write_mvtec_dataset(tmp_path / "a", seed=5, **kwargs)
    b = write_mvtec_dataset(tmp_path / "b", seed=5, **kwargs)
    c = write_mvtec_dataset(tmp_path / "c", seed=6, **kwargs)
    names = _files(a)
    assert names == _files(b) == _files(c)
    assert all(np.array_equal(_load(a / n), _load(b / n)) for n in names)
    assert not all(np.array_equal(_load(a / n), _load(c / n)) for n in names)


def test_writer_accepts_a_subset_of_defect_types(tmp_path: Path) -> None:
    root = write_mvtec_dataset(str(tmp_path), n_train=1, n_test_good=1, n_test_defect_per_type=1,
                               size=32, defect_types=("spot",))
    assert sorted(p.name for p in (root / "test").iterdir()) == ["good", "spot"]
    with pytest.raises(ValueError):
        write_mvtec_dataset(tmp_path / "bad", defect_types=("hole",))
