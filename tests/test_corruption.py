"""Behaviour of the stage-2 pixel corruption (raymae.corruption)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from raymae.config import CorruptionConfig
from raymae.corruption import (MIN_CHANGE, CorruptedSample, corrupt, corrupt_batch, corrupt_seeded,
                               estimate_foreground, perlin_noise)
from raymae.synthetic import make_texture

ALWAYS = CorruptionConfig(clean_share=0.0)


def _texture(seed: int = 0, size: int = 48) -> np.ndarray:
    return make_texture(np.random.default_rng(seed), size)


def _disc_on_black(size: int = 64, radius: int = 14) -> tuple[np.ndarray, np.ndarray]:
    """A bright textured disc on a black background: (image (H, W, 3) uint8, disc (H, W) bool)."""
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= radius ** 2
    image = np.zeros((size, size, 3), np.uint8)
    image[disc] = np.clip(_texture(3, size)[disc].astype(int) + 40, 0, 255)
    return image, disc


def _changed(sample: CorruptedSample) -> np.ndarray:
    diff = np.abs(sample.image.astype(int) - sample.clean.astype(int)).max(axis=-1)
    return diff >= MIN_CHANGE


@pytest.mark.parametrize("perlin_share,kind", [(1.0, "perlin"), (0.0, "self")])
def test_mask_is_exactly_the_changed_pixels(perlin_share: float, kind: str) -> None:
    cfg = dataclasses.replace(ALWAYS, perlin_share=perlin_share)
    image = _texture(1)
    kinds = set()
    for index in range(40):
        s = corrupt_seeded(image, cfg, seed=7, index=index)
        kinds.add(s.kind)
        assert s.image.shape == image.shape and s.image.dtype == np.uint8
        assert s.mask.shape == image.shape[:2] and s.mask.dtype == bool
        assert np.array_equal(s.image[~s.mask], image[~s.mask])
        assert np.array_equal(s.mask, _changed(s))
    assert kind in kinds


def test_pixels_outside_the_mask_are_untouched_for_default_config() -> None:
    image = _texture(2, 40)
    for index in range(60):
        s = corrupt_seeded(image, CorruptionConfig(), seed=1, index=index)
        assert np.array_equal(s.image[~s.mask], image[~s.mask])
        assert np.array_equal(s.clean, image)


def test_corrupted_samples_have_nonempty_masks() -> None:
    image = _texture(4)
    samples = [corrupt_seeded(image, ALWAYS, seed=0, index=i) for i in range(40)]
    for s in samples:
        assert (s.kind == "clean") == (not s.mask.any())
    assert sum(s.kind != "clean" for s in samples) >= 36


def test_same_seed_and_index_give_identical_output() -> None:
    image = _texture(5)
    a = corrupt_seeded(image, ALWAYS, seed=3, index=11)
    corrupt_seeded(image, ALWAYS, seed=3, index=12)  # order must not matter
    b = corrupt_seeded(image, ALWAYS, seed=3, index=11)
    assert a.kind == b.kind
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)


def test_different_index_or_seed_gives_different_output() -> None:
    image = _texture(5)
    a = corrupt_seeded(image, ALWAYS, seed=3, index=11)
    assert not np.array_equal(a.mask, corrupt_seeded(image, ALWAYS, seed=3, index=12).mask)
    assert not np.array_equal(a.mask, corrupt_seeded(image, ALWAYS, seed=4, index=11).mask)


def test_clean_share_is_honoured_roughly() -> None:
    image = _texture(6, 32)
    cfg = CorruptionConfig(clean_share=0.3)
    samples = [corrupt_seeded(image, cfg, seed=0, index=i) for i in range(200)]
    clean = [s for s in samples if s.kind == "clean"]
    assert 0.18 <= len(clean) / len(samples) <= 0.45
    for s in clean:
        assert not s.mask.any() and np.array_equal(s.image, image)


def test_clean_share_one_never_corrupts() -> None:
    image = _texture(6, 32)
    s = corrupt(image, CorruptionConfig(clean_share=1.0), np.random.default_rng(0))
    assert s.kind == "clean" and not s.mask.any() and np.array_equal(s.image, image)


def test_both_kinds_appear_with_mixed_perlin_share() -> None:
    image = _texture(7, 32)
    kinds = {corrupt_seeded(image, ALWAYS, seed=0, index=i).kind for i in range(40)}
    assert {"self", "perlin"} <= kinds


def test_foreground_estimate_finds_a_disc_on_black() -> None:
    image, disc = _disc_on_black()
    fg = estimate_foreground(image)
    overlap = (fg & disc).sum() / (fg | disc).sum()
    assert overlap > 0.9


def test_foreground_falls_back_to_whole_image_for_uniform_images() -> None:
    image = np.full((32, 32, 3), 90, np.uint8)
    assert estimate_foreground(image).all()


def test_foreground_only_keeps_self_sourced_masks_on_the_object() -> None:
    image, disc = _disc_on_black()
    cfg = dataclasses.replace(ALWAYS, perlin_share=0.0, foreground_only=True, shape_area=(0.01, 0.05))
    fg = estimate_foreground(image)
    hits = 0
    for index in range(30):
        s = corrupt_seeded(image, cfg, seed=2, index=index)
        assert not (s.mask & ~fg).any()
        hits += s.mask.any()
    assert hits >= 25


def test_perlin_noise_has_requested_shape_and_range_for_non_divisible_sizes() -> None:
    rng = np.random.default_rng(0)
    for shape, res in [((37, 50), (4, 8)), ((64, 64), (1, 1)), ((30, 17), (16, 4))]:
        noise = perlin_noise(shape, res, rng)
        assert noise.shape == shape
        assert np.isfinite(noise).all()
        assert np.abs(noise).max() <= 1.5
        assert noise.std() > 0.05


def test_perlin_noise_is_smooth_within_a_cell() -> None:
    noise = perlin_noise((64, 64), (2, 2), np.random.default_rng(1))
    assert np.abs(np.diff(noise, axis=0)).max() < 0.2
    assert np.abs(np.diff(noise, axis=1)).max() < 0.2


def test_corrupt_batch_stacks_seeded_samples() -> None:
    images = np.stack([_texture(i, 32) for i in range(3)])
    out, clean, masks = corrupt_batch(images, ALWAYS, seed=9, indices=[4, 5, 6])
    assert out.shape == images.shape and clean.shape == images.shape and masks.shape == (3, 32, 32)
    assert np.array_equal(clean, images)
    single = corrupt_seeded(images[1], ALWAYS, seed=9, index=5)
    assert np.array_equal(out[1], single.image) and np.array_equal(masks[1], single.mask)


def test_non_rgb_uint8_input_is_refused() -> None:
    with pytest.raises(ValueError):
        corrupt(np.zeros((8, 8), np.uint8), ALWAYS, np.random.default_rng(0))
    with pytest.raises(ValueError):
        corrupt(np.zeros((8, 8, 3), np.float32), ALWAYS, np.random.default_rng(0))


def test_corruptions_of_a_grey_image_stay_grey():
    grey = np.random.default_rng(1).integers(0, 255, (48, 48), dtype=np.uint8)
    image = np.repeat(grey[..., None], 3, axis=-1)
    cfg = CorruptionConfig(clean_share=0.0)
    for index in range(30):
        s = corrupt_seeded(image, cfg, seed=5, index=index)
        assert np.array_equal(s.image[..., 0], s.image[..., 1])
        assert np.array_equal(s.image[..., 1], s.image[..., 2])
        assert s.mask.any()


def test_an_intensity_shift_darkens_or_brightens_the_corrupted_region_as_a_whole():
    image = np.full((48, 48, 3), 128, dtype=np.uint8)
    image[::2] = 120  # a faint texture
    plain = CorruptionConfig(clean_share=0.0)
    shifted = dataclasses.replace(plain, intensity_shift=(20.0, 40.0))
    for index in range(20):
        a = corrupt_seeded(image, plain, seed=9, index=index)
        b = corrupt_seeded(image, shifted, seed=9, index=index)
        assert b.mask.any() and np.array_equal(b.image[~b.mask], b.clean[~b.mask])
        both = a.mask & b.mask  # the same shapes were drawn; the shift moved them as one
        delta = b.image[both].astype(float) - a.image[both].astype(float)
        assert 19 <= abs(delta.mean()) <= 41
