"""Behaviour of the stage-2 pixel corruption (raymae.corruption)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from raymae.config import ConfigError, CorruptionConfig, RaymaeConfig
from raymae.corruption import (MIN_CHANGE, CorruptedSample, corrupt, corrupt_batch, corrupt_seeded,
                               donor_index, estimate_foreground, perlin_noise, poisson_blend)
from raymae.synthetic import make_texture

ALWAYS = CorruptionConfig(clean_share=0.0)
NATURAL = CorruptionConfig(clean_share=0.0, perlin_share=0.0, natural_share=1.0)
ONLY = {  # configs that draw one family of corruption every time
    "self": CorruptionConfig(clean_share=0.0, perlin_share=0.0),
    "perlin": CorruptionConfig(clean_share=0.0, perlin_share=1.0),
    "line": CorruptionConfig(clean_share=0.0, perlin_share=0.0, line_share=1.0),
    "region": CorruptionConfig(clean_share=0.0, perlin_share=0.0, region_share=1.0),
}


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


@pytest.mark.parametrize("kind", sorted(ONLY))
def test_mask_is_exactly_the_changed_pixels(kind: str) -> None:
    cfg = ONLY[kind]
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
    assert kinds == {"self", "perlin"}  # lines and regions are off unless asked for


def test_every_family_appears_in_proportion_to_its_share() -> None:
    image = _texture(7, 32)
    cfg = CorruptionConfig(clean_share=0.0, perlin_share=0.3, line_share=0.2, region_share=0.2)
    kinds = [corrupt_seeded(image, cfg, seed=0, index=i).kind for i in range(300)]
    for kind, share in {"perlin": 0.3, "line": 0.2, "region": 0.2, "self": 0.3}.items():
        assert abs(kinds.count(kind) / len(kinds) - share) < 0.08, (kind, kinds.count(kind))


def test_shares_that_cannot_add_up_are_refused_with_a_message() -> None:
    with pytest.raises(ConfigError, match="at most 1"):
        CorruptionConfig(perlin_share=0.6, line_share=0.3, region_share=0.2)
    with pytest.raises(ConfigError, match="line_share must be between 0 and 1"):
        CorruptionConfig(line_share=-0.1)
    with pytest.raises(ConfigError, match="clean_share"):
        RaymaeConfig.from_dict({"corruption": {"clean_share": 1.5}})


def test_a_config_written_before_lines_and_regions_existed_still_loads_without_them() -> None:
    old = RaymaeConfig().to_dict()
    for key in ("line_share", "max_lines", "line_width", "line_length", "line_contrast",
                "region_share", "region_area", "region_offset", "region_edge"):
        del old["corruption"][key]
    cfg = RaymaeConfig.from_dict(old)
    assert cfg.corruption.line_share == 0.0 and cfg.corruption.region_share == 0.0


def test_lines_are_thin_long_curves_mostly_darker_than_the_surface() -> None:
    image = np.full((96, 96, 3), 140, dtype=np.uint8)
    image[::3] = 134  # a faint texture
    darker, extents = 0, []
    for index in range(30):
        s = corrupt_seeded(image, ONLY["line"], seed=2, index=index)
        assert s.kind == "line"
        assert s.mask.mean() < 0.1
        # at most 0.02 of the side (about 2 px) wide: two erosions leave nothing of it
        assert not ndimage.binary_erosion(s.mask, iterations=2).any()
        labels, n = ndimage.label(s.mask, structure=np.ones((3, 3)))
        extents.append(max(np.ptp(np.nonzero(labels == k), axis=1).max() for k in range(1, n + 1)))
        delta = s.image[s.mask].astype(float) - s.clean[s.mask].astype(float)
        assert np.all(np.sign(delta) == np.sign(delta.mean()))  # one line colour per sample
        darker += delta.mean() < 0
    assert 15 <= darker <= 29  # mostly dark, like cracks, but not always
    assert np.median(extents) >= 0.15 * 96  # lines, not dots: 0.1 to 0.6 of the side long


def test_regions_are_large_gentle_changes_behind_one_boundary() -> None:
    image = np.full((96, 96, 3), 120, dtype=np.uint8)
    image[:, ::4] = 126  # a faint texture
    for index in range(30):
        s = corrupt_seeded(image, ONLY["region"], seed=3, index=index)
        assert s.kind == "region"
        assert 0.05 <= s.mask.mean() <= 0.8
        change = np.abs(s.image.astype(int) - s.clean.astype(int)).max(axis=-1)[s.mask]
        assert np.median(change) <= 45  # shading, not a pasted patch
        labels, n = ndimage.label(s.mask)
        biggest = np.bincount(labels.ravel())[1:].max()
        assert biggest >= 0.8 * s.mask.sum()  # one area (a few faint pixels may drop out)


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


@pytest.mark.parametrize("kind", sorted([*ONLY, "natural"]))
def test_corruptions_of_a_grey_image_stay_grey(kind: str):
    grey = np.random.default_rng(1).integers(0, 255, (48, 48), dtype=np.uint8)
    image = np.repeat(grey[..., None], 3, axis=-1)
    donor = np.repeat(np.random.default_rng(2).integers(0, 255, (48, 48, 1), dtype=np.uint8), 3, axis=-1)
    cfg = NATURAL if kind == "natural" else ONLY[kind]
    for index in range(30):
        s = corrupt_seeded(image, cfg, seed=5, index=index, donor=donor)
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


VARIED = CorruptionConfig(clean_share=1.0, variation_share=1.0)  # lighting variation only


def test_lighting_variation_changes_the_clean_image_but_labels_nothing() -> None:
    image = _texture(4, 64)
    for index in range(20):
        s = corrupt_seeded(image, VARIED, seed=1, index=index)
        assert s.kind == "clean" and not s.mask.any()
        assert np.array_equal(s.image, s.clean)                 # the target is the varied image
        assert np.abs(s.clean.astype(int) - image.astype(int)).max() >= 3


def test_corruptions_drawn_on_a_varied_image_are_labelled_against_it() -> None:
    image = _texture(5, 64)
    cfg = dataclasses.replace(VARIED, clean_share=0.0)
    for index in range(30):
        s = corrupt_seeded(image, cfg, seed=2, index=index)
        assert s.mask.any() and not np.array_equal(s.clean, image)
        assert np.array_equal(s.mask, _changed(s))
        assert np.array_equal(s.image[~s.mask], s.clean[~s.mask])


def test_lighting_variation_is_a_smooth_change_of_brightness_that_keeps_grey_grey() -> None:
    flat = np.full((128, 128, 3), 100, dtype=np.uint8)
    for index in range(30):
        varied = corrupt_seeded(flat, VARIED, seed=3, index=index).clean
        assert np.array_equal(varied[..., 0], varied[..., 1]) and np.array_equal(varied[..., 1], varied[..., 2])
        gain = varied[..., 0].astype(float) / 100
        assert 1 - 0.3 - 0.01 <= gain.min() and gain.max() <= 1 + 0.3 + 0.8 + 0.01
        step = max(np.abs(np.diff(gain, axis=0)).max(), np.abs(np.diff(gain, axis=1)).max())
        assert step <= 0.25 * np.ptp(gain)  # no edge: the change builds up over several pixels


def test_lighting_variation_is_off_by_default_and_its_ranges_are_checked() -> None:
    image = _texture(6, 32)
    assert CorruptionConfig().variation_share == 0.0
    assert np.array_equal(corrupt_seeded(image, CorruptionConfig(clean_share=1.0), seed=0, index=0).clean, image)
    with pytest.raises(ConfigError, match="variation_share"):
        CorruptionConfig(variation_share=1.5)
    with pytest.raises(ConfigError, match="variation_gain"):
        CorruptionConfig(variation_gain=(0.2, 1.0))
    with pytest.raises(ConfigError, match="variation_glare"):
        CorruptionConfig(variation_glare=(0.5, 0.1))


EXPOSED = CorruptionConfig(clean_share=1.0, exposure_share=1.0, exposure_gain=(1.2, 1.3))  # exposure only


def test_an_exposure_change_brightens_the_clean_image_and_clips_it_like_a_camera() -> None:
    image = np.full((32, 32, 3), 100, dtype=np.uint8)
    image[:16] = 230                                             # light enough to saturate
    for index in range(10):
        s = corrupt_seeded(image, EXPOSED, seed=4, index=index)
        assert s.kind == "clean" and not s.mask.any() and np.array_equal(s.image, s.clean)
        assert (s.clean[:16] == 255).all()                       # clipped, as the sensor would
        assert 120 <= s.clean[16:].min() == s.clean[16:].max() <= 130


def test_corruptions_on_an_exposed_image_are_labelled_against_it() -> None:
    image = _texture(7, 64)
    cfg = dataclasses.replace(EXPOSED, clean_share=0.0, exposure_gain=(0.8, 0.9))
    for index in range(20):
        s = corrupt_seeded(image, cfg, seed=5, index=index)
        assert s.clean.astype(int).sum() < image.astype(int).sum()   # darker target
        assert np.array_equal(s.image[~s.mask], s.clean[~s.mask])


def test_exposure_change_is_off_by_default_and_its_range_is_checked() -> None:
    assert CorruptionConfig().exposure_share == 0.0
    with pytest.raises(ConfigError, match="exposure_share"):
        CorruptionConfig(exposure_share=-0.1)
    with pytest.raises(ConfigError, match="exposure_gain"):
        CorruptionConfig(exposure_gain=(0.0, 1.1))
    with pytest.raises(ConfigError, match="exposure_gain"):
        CorruptionConfig(exposure_gain=(1.2, 0.9))


# ------------------------------------------------------------------ natural synthetic anomalies


def _smooth_surface(size: int = 64, level: float = 90.0, seed: int = 0) -> np.ndarray:
    """A gently shaded grey surface with fine grain: (size, size, 3) uint8."""
    yy, xx = np.mgrid[:size, :size] / size
    grain = ndimage.gaussian_filter(np.random.default_rng(seed).normal(0, 6, (size, size)), 1.0)
    value = level + 30 * xx + 10 * yy + grain
    return np.repeat(np.clip(np.rint(value), 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


def _stripes(size: int = 64, level: float = 170.0) -> np.ndarray:
    """A much brighter donor with strong vertical stripes: (size, size, 3) uint8."""
    xx = np.mgrid[:size, :size][1]
    value = level + 40 * np.sin(xx * 2 * np.pi / 6)
    return np.repeat(np.clip(np.rint(value), 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


def _gradient(image: np.ndarray) -> np.ndarray:
    """(H, W) gradient magnitude of the channel mean, float."""
    g = image.astype(float).mean(axis=-1)
    return np.hypot(ndimage.sobel(g, axis=0), ndimage.sobel(g, axis=1))


def test_natural_anomalies_label_visibly_changed_pixels_and_nothing_else() -> None:
    clean, donor = _smooth_surface(), _stripes()
    cfg = NATURAL
    labelled = 0
    for index in range(30):
        s = corrupt_seeded(clean, cfg, seed=1, index=index, donor=donor)
        assert s.kind == "natural"
        diff = np.abs(s.image.astype(int) - clean.astype(int))
        assert (diff.max(axis=-1)[s.mask] >= MIN_CHANGE).all()           # a label sits on a changed pixel
        visible = ndimage.uniform_filter(diff.mean(axis=-1).astype(float), 3, mode="nearest")
        unlabelled = ~s.mask & (diff.max(axis=-1) >= MIN_CHANGE)
        assert (visible[unlabelled] <= cfg.natural_label_threshold + 1e-9).all()  # no visible change goes unlabelled
        labelled += s.mask.sum()
    assert labelled > 0


def test_a_pasted_piece_of_identical_surface_is_no_defect() -> None:
    flat = np.full((48, 48, 3), 120, np.uint8)
    s = corrupt_seeded(flat, NATURAL, seed=0, index=0, donor=flat.copy())
    assert s.kind == "clean" and not s.mask.any()


def test_natural_anomalies_blend_without_a_seam() -> None:
    clean, donor = _smooth_surface(), _stripes()
    own = max(_gradient(clean).max(), _gradient(donor).max())
    for index in range(20):
        s = corrupt_seeded(clean, NATURAL, seed=2, index=index, donor=donor)
        changed = np.abs(s.image.astype(int) - clean.astype(int)).max(axis=-1) > 0
        border = changed & ~ndimage.binary_erosion(changed)               # the outermost changed pixels
        assert _gradient(s.image)[border].max() <= 1.05 * own
    # a plain paste of the same bright donor into the same surface makes a seam that check would catch
    pasted = clean.copy()
    pasted[20:40, 20:40] = donor[20:40, 20:40]
    assert _gradient(pasted)[19:41, 19:41].max() > 1.05 * own


def test_natural_anomalies_take_their_texture_from_the_donor() -> None:
    clean = _smooth_surface()
    with_stripes = [corrupt_seeded(clean, NATURAL, seed=3, index=i, donor=_stripes()) for i in range(20)]
    changed = [s for s in with_stripes if s.mask.any()]
    assert changed
    for s in changed:  # the stripes' strong horizontal gradients arrive inside the label
        horizontal = np.abs(np.diff(s.image.astype(float).mean(axis=-1), axis=1))
        assert horizontal[s.mask[:, 1:]].mean() > 3 * np.abs(np.diff(clean.astype(float).mean(axis=-1), axis=1)).mean()


def test_natural_anomalies_are_reproducible_per_seed_index_and_donor() -> None:
    clean, donor = _smooth_surface(), _stripes()
    a = corrupt_seeded(clean, NATURAL, seed=4, index=5, donor=donor)
    corrupt_seeded(clean, NATURAL, seed=4, index=6, donor=donor)
    b = corrupt_seeded(clean, NATURAL, seed=4, index=5, donor=donor)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert not np.array_equal(a.image, corrupt_seeded(clean, NATURAL, seed=4, index=6, donor=donor).image)


def test_each_sample_gets_another_image_as_donor_reproducibly() -> None:
    donors = [donor_index(seed=3, index=i, count=10) for i in range(10)]
    assert all(d != i and 0 <= d < 10 for i, d in enumerate(donors))
    assert donors == [donor_index(seed=3, index=i, count=10) for i in range(10)]
    assert donors != [donor_index(seed=4, index=i, count=10) for i in range(10)]
    assert donor_index(seed=3, index=0, count=1) == 0  # alone, an image lends its own patches


def test_natural_anomalies_stay_on_the_object_with_foreground_only() -> None:
    image, disc = _disc_on_black()
    cfg = dataclasses.replace(NATURAL, foreground_only=True)
    for index in range(20):
        s = corrupt_seeded(image, cfg, seed=6, index=index, donor=image)
        assert not (s.mask & ~disc).any()


def test_a_soft_intensity_change_makes_natural_anomalies_visible_on_a_uniform_surface() -> None:
    surface = _smooth_surface(seed=1)
    plain = [corrupt_seeded(surface, NATURAL, seed=7, index=i, donor=_smooth_surface(seed=2)).mask.mean()
             for i in range(20)]
    cfg = dataclasses.replace(NATURAL, natural_intensity=(30.0, 50.0))
    shifted = [corrupt_seeded(surface, cfg, seed=7, index=i, donor=_smooth_surface(seed=2)) for i in range(20)]
    assert np.mean([s.mask.mean() for s in shifted]) > 3 * np.mean(plain)
    for s in shifted:  # the blob changes the brightness as a whole (mostly darker), with no hard edge
        if s.mask.any():
            assert abs(float(s.image[s.mask].mean()) - float(s.clean[s.mask].mean())) > 10


def test_natural_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="natural_size"):
        CorruptionConfig(natural_size=(0.3, 0.1))
    with pytest.raises(ConfigError, match="natural_label_threshold"):
        CorruptionConfig(natural_label_threshold=0.5)
    with pytest.raises(ConfigError, match="at most 1"):
        CorruptionConfig(perlin_share=0.6, natural_share=0.6)


def test_a_donor_of_another_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="donor"):
        corrupt(_texture(1, 32), NATURAL, np.random.default_rng(0), donor=_texture(1, 48))


def _laplacian(f: np.ndarray) -> np.ndarray:
    """The 5-point Laplacian of (h, w, C) ``f`` on its inside: (h-2, w-2, C)."""
    return 4 * f[1:-1, 1:-1] - f[:-2, 1:-1] - f[2:, 1:-1] - f[1:-1, :-2] - f[1:-1, 2:]


@pytest.mark.parametrize("shape", [(9, 14), (14, 9), (5, 5), (3, 40)])
def test_poisson_blending_keeps_the_border_and_the_source_laplacian_inside(shape) -> None:
    rng = np.random.default_rng(0)
    for _ in range(3):
        target = rng.uniform(0, 255, (*shape, 3))
        source = rng.uniform(0, 255, (*shape, 3))
        out = poisson_blend(target, source)
        border = np.ones(shape, bool)
        border[1:-1, 1:-1] = False
        np.testing.assert_array_equal(out[border], target[border])
        np.testing.assert_allclose(_laplacian(out), _laplacian(source), atol=1e-8)
