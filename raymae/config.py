"""Every setting of raymae in one typed place.

A :class:`RaymaeConfig` holds the whole recipe: model shape, both training stages,
the stage-2 corruption, the anomaly-map rule and the threshold calibration.
It round-trips through JSON (``to_dict`` / ``from_dict``) and is stored in the
model artifact's ``config.json``, so a model can always be rebuilt exactly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_type_hints

# Named ViT sizes. Encoder widths follow ViT/DeiT; decoders follow MAE's light decoder.
# ``large`` (ViT-L/16 encoder, 512-wide 8-block decoder) is the ISSTAD paper's model.
MODEL_SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3,
                 decoder_embed_dim=128, decoder_depth=4, decoder_num_heads=4),
    "small": dict(embed_dim=384, depth=12, num_heads=6,
                  decoder_embed_dim=256, decoder_depth=4, decoder_num_heads=8),
    "base": dict(embed_dim=768, depth=12, num_heads=12,
                 decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16),
    "large": dict(embed_dim=1024, depth=24, num_heads=16,
                  decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16),
}

ModelSize = Literal["tiny", "small", "base", "large"]
Combination = Literal["product", "prob", "recon", "mean", "isstad", "normal_mean", "normal_max"]
ScoreRule = Literal["max", "mean", "topk", "pool"]
PixelHead = Literal["linear", "fusion", "compare"]
PixelUpsampling = Literal["patch", "bilinear"]
Precision = Literal["fp32", "bf16", "auto"]
Intensity = Literal["fixed", "per_image", "per_image_gain", "per_image_robust"]
RuleChoice = Literal["image+pixel", "map-by-pixel"]
RULE_CHOICES: tuple[str, ...] = get_args(RuleChoice)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# Smallest change (grey levels) a corruption may label anomalous (raymae.corruption.MIN_CHANGE).
MIN_LABEL_CHANGE = 2


class ConfigError(ValueError):
    """A setting that cannot work, with a message a person can act on."""


@dataclass
class ModelConfig:
    """Shape of the MAE and of its stage-2 extension."""

    size: ModelSize = "tiny"
    image_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    # Overrides of the named size (None = take it from MODEL_SIZES[size]).
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    decoder_embed_dim: int | None = None
    decoder_depth: int | None = None
    decoder_num_heads: int | None = None
    mlp_ratio: float = 4.0
    # Stage 2: blocks appended to the decoder, and whether every decoder block
    # gets its own pixel-classification head (the paper's deep supervision).
    stage2_extra_blocks: int = 2
    deep_supervision: bool = False
    # Pixel-classification head: "linear" (a linear layer per patch token, as the paper),
    # "fusion" (token features fused with two 3x3 convolutions over the input image) or
    # "compare" (as fusion, but the convolutions see the input and its reconstruction side
    # by side, as DRAEM's discriminative network does).
    pixel_head: PixelHead = "linear"
    # How the pixel head's per-token outputs reach pixel resolution: "patch" (each token
    # predicts its own p x p pixels, as the paper; maps can show the patch grid) or
    # "bilinear" (each token predicts one vector, interpolated between token centres).
    pixel_upsampling: PixelUpsampling = "patch"
    norm_pix_loss: bool = False

    def resolved(self) -> "ModelConfig":
        """A copy with every ``None`` width/depth filled in from the named size."""
        if self.size not in MODEL_SIZES:
            raise ConfigError(f"unknown model size {self.size!r}; choose one of {sorted(MODEL_SIZES)}")
        preset = MODEL_SIZES[self.size]
        filled = {k: (getattr(self, k) if getattr(self, k) is not None else v) for k, v in preset.items()}
        out = dataclasses.replace(self, **filled)
        if out.image_size % out.patch_size:
            raise ConfigError(
                f"image size {out.image_size} is not a multiple of patch size {out.patch_size}")
        if out.embed_dim % out.num_heads or out.decoder_embed_dim % out.decoder_num_heads:
            raise ConfigError("embedding widths must be divisible by their number of heads")
        return out


@dataclass
class Stage1Config:
    """Masked-autoencoder pre-training on normal images."""

    epochs: int = 30
    # Optimiser steps (global batches); > 0 replaces ``epochs``: the stage runs the whole epochs
    # that give at least this many steps, so a small set trains as long as a large one.
    steps: int = 0
    batch_size: int = 32
    lr: float = 1.5e-4  # base learning rate, scaled by global batch / 256 as in MAE
    weight_decay: float = 0.05
    warmup_epochs: float = 2
    warmup_steps: int = 0  # the warm-up when ``steps`` is set
    mask_ratio: float = 0.75
    grad_clip: float = 0.0  # largest global gradient norm per step; 0 = no clipping


@dataclass
class Stage2Config:
    """Incremental self-supervised stage: repair and classify corrupted pixels."""

    epochs: int = 20
    steps: int = 0        # as Stage1Config.steps
    batch_size: int = 32
    lr: float = 1.5e-4
    weight_decay: float = 0.05
    warmup_epochs: float = 1
    warmup_steps: int = 0
    grad_clip: float = 0.0  # largest global gradient norm per step; 0 = no clipping
    freeze_encoder: bool = True
    ce_weight: float = 1.0
    mse_weight: float = 1.0
    ssim_weight: float = 1.0
    # Cross-entropy weights of (normal, anomalous) pixels; anomalies are the rare class.
    class_weights: tuple[float, float] = (1.0, 5.0)
    # Focal loss (Lin et al. 2017, as DRAEM): the classification term scales each pixel's
    # weighted CE by (1 - p_true) ** focal_gamma, so the many easy normal pixels count less.
    # 0 = plain class-weighted cross-entropy.
    focal_gamma: float = 0.0
    # Weight of a soft-Dice term on the anomalous class (1 - Dice over the whole batch), which a
    # constant prediction cannot satisfy whatever the class balance. 0 = off.
    dice_weight: float = 0.0
    # Start the new pixel head predicting this anomalous probability everywhere (RetinaNet's
    # prior initialisation of the last bias) instead of 0.5. 0 = leave the bias at 0.
    anomaly_prior: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.anomaly_prior < 1.0:
            raise ConfigError(f"stage2.anomaly_prior must be in [0, 1), not {self.anomaly_prior}")
        if self.focal_gamma < 0 or self.dice_weight < 0:
            raise ConfigError("stage2.focal_gamma and stage2.dice_weight must not be negative")


@dataclass
class CorruptionConfig:
    """Pixel-level corruption that turns a normal image into a labelled fake anomaly."""

    clean_share: float = 0.2          # share of samples left uncorrupted
    perlin_share: float = 0.5         # of the corrupted ones, share using Perlin masks
    # (a) self-sourced (the rest of the corrupted ones): an augmented copy of the image
    # pasted into random shapes
    max_shapes: int = 3
    shape_area: tuple[float, float] = (0.002, 0.05)  # fraction of the image per shape
    foreground_only: bool = False     # keep shapes on the object (object categories)
    # (b) Perlin-noise masks blended with a texture (the image itself or Perlin noise)
    perlin_min_scale: int = 0         # noise scale = 2 ** randint(min, max)
    perlin_max_scale: int = 6
    perlin_threshold: float = 0.5
    blend_range: tuple[float, float] = (0.2, 1.0)  # opacity of the pasted texture
    # Darken or brighten every self-sourced or Perlin region by this many grey levels (0, 0 = off).
    intensity_shift: tuple[float, float] = (0.0, 0.0)
    # (c) thin lines (scratches, cracks): 1..max_lines smooth random curves, darker or
    # brighter than the surface. Width and length are fractions of the shorter image side.
    line_share: float = 0.0           # of the corrupted ones, share using lines
    max_lines: int = 2
    line_width: tuple[float, float] = (0.005, 0.02)
    line_length: tuple[float, float] = (0.1, 0.6)
    line_contrast: tuple[float, float] = (15.0, 70.0)  # grey levels at the line's centre
    # (d) regions (uneven shading, stains, worn areas): a large area behind a wavy,
    # slightly soft boundary whose brightness, contrast and sharpness change gently.
    region_share: float = 0.0         # of the corrupted ones, share using regions
    region_area: tuple[float, float] = (0.1, 0.6)      # fraction of the image
    region_offset: tuple[float, float] = (6.0, 30.0)   # grey levels, darker or brighter
    region_edge: tuple[float, float] = (0.005, 0.03)   # edge softness, fraction of the side
    # (e) natural synthetic anomalies (NSA, Schlueter et al. 2022): 1..natural_patches patches cut
    # from *another* normal image, each with its own size (a fraction of the shorter side per
    # axis) and rescaled by a factor in natural_scale, Poisson-blended (an exact sine-transform solve)
    # into a random place, so no edge gives them away. Labelled where the blended result differs
    # from the clean image by more than natural_label_threshold grey levels (3x3 mean of the
    # channel-mean change): a pasted piece of identical surface is no defect.
    natural_share: float = 0.0        # of the corrupted ones, share using natural anomalies
    natural_patches: int = 3
    natural_size: tuple[float, float] = (0.04, 0.25)
    natural_scale: tuple[float, float] = (0.7, 1.3)
    natural_label_threshold: float = 8.0
    # Darken or brighten a soft-edged blob inside each natural patch by this many grey levels before
    # blending (textured spots, holes, stains without a hard edge); (0, 0) = plain NSA.
    natural_intensity: tuple[float, float] = (0.0, 0.0)
    # Normal lighting variation, left unlabelled: this share of samples (clean or corrupted)
    # first gets a smooth gain over the whole image (a brightness gradient or broad shading
    # bands) and, half the time, a soft highlight band (glare). It changes the clean target
    # too, so stage 2 learns to keep it and to call it normal. 0 = off.
    variation_share: float = 0.0
    variation_gain: tuple[float, float] = (0.05, 0.3)   # largest relative brightness change
    variation_glare: tuple[float, float] = (0.2, 0.8)   # relative brightening at the highlight's centre
    # Normal exposure change, left unlabelled: this share of samples (clean or corrupted) first has
    # its brightness multiplied by one factor from exposure_gain, clipped to 0-255 as a camera clips
    # (a brighter lamp saturates the light parts). The clean target changes too. 0 = off.
    exposure_share: float = 0.0
    exposure_gain: tuple[float, float] = (0.85, 1.15)

    def __post_init__(self) -> None:
        shares = {"clean_share": self.clean_share, "perlin_share": self.perlin_share,
                  "line_share": self.line_share, "region_share": self.region_share,
                  "natural_share": self.natural_share, "variation_share": self.variation_share,
                  "exposure_share": self.exposure_share}
        for name, value in shares.items():
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"corruption.{name} must be between 0 and 1, not {value}")
        taken = self.perlin_share + self.line_share + self.region_share + self.natural_share
        if taken > 1.0 + 1e-9:
            raise ConfigError(
                "corruption.perlin_share + line_share + region_share + natural_share must be at most 1 "
                f"(the rest is self-sourced), not {taken:g}")
        if not 0.0 < self.natural_size[0] <= self.natural_size[1] <= 1.0:
            raise ConfigError("corruption.natural_size must be a range (low, high) of fractions of the "
                              f"image side with 0 < low <= high <= 1, not {self.natural_size}")
        if not 0.0 < self.natural_scale[0] <= self.natural_scale[1]:
            raise ConfigError("corruption.natural_scale must be a range (low, high) with 0 < low <= high, "
                              f"not {self.natural_scale}")
        if self.natural_patches < 1 or self.natural_label_threshold < MIN_LABEL_CHANGE:
            raise ConfigError("corruption.natural_patches must be at least 1 and "
                              f"corruption.natural_label_threshold at least {MIN_LABEL_CHANGE} grey levels")
        if not 0.0 <= self.variation_gain[0] <= self.variation_gain[1] < 1.0:
            raise ConfigError("corruption.variation_gain must be a range (low, high) with "
                              f"0 <= low <= high < 1, not {self.variation_gain}")
        if not 0.0 < self.exposure_gain[0] <= self.exposure_gain[1]:
            raise ConfigError("corruption.exposure_gain must be a range (low, high) of brightness factors "
                              f"with 0 < low <= high, not {self.exposure_gain}")
        if not 0.0 <= self.variation_glare[0] <= self.variation_glare[1]:
            raise ConfigError("corruption.variation_glare must be a range (low, high) with "
                              f"0 <= low <= high, not {self.variation_glare}")


@dataclass
class AnomalyMapConfig:
    """How the reconstruction-error map R and probability map P become one score."""

    # product: P * minmax(R) (the paper); prob: P; recon: R; mean: (P + minmax(R)) / 2;
    # isstad: G(P) * G(R) with sigma 4 each, as the paper's released code;
    # normal_mean / normal_max: R and P in units of normal images (below), averaged / the larger.
    combination: Combination = "product"
    sigma: float = 4.0                     # Gaussian smoothing, pixels at image_size
    # max, mean, topk, or pool (the largest window mean; DRAEM). ISSTAD's code: isstad + mean.
    score_rule: ScoreRule = "max"
    topk_fraction: float = 0.01            # for score_rule="topk": mean of the top 1 %
    pool_fraction: float = 0.08            # for score_rule="pool": window side / image side
    # What normal maps look like: the 0.9 and 0.995 quantiles of R and of P over the held-back
    # normal images. Measured by calibration (never set by hand); the normal_* maps need them.
    normal_recon: tuple[float, float] | None = None
    normal_prob: tuple[float, float] | None = None


def unseen_corruption() -> CorruptionConfig:
    """Validation corruptions from families the default stage 2 never trains on.

    Half thin lines, half one small self-sourced shape (0.1-1 % of the image, shifted by
    10-50 grey levels). Real defects are new to the pixel classifier too; on magnetic_tile
    this mix chose better map rules than the training families (benchmarks/validation_mixes.py).
    """
    return CorruptionConfig(perlin_share=0.0, line_share=0.5, max_shapes=1, shape_area=(0.001, 0.01),
                            intensity_shift=(10.0, 50.0))


@dataclass
class CalibrationConfig:
    """Threshold from held-back normal training images (no labels needed)."""

    holdout_fraction: float = 0.1
    target_fpr: float = 0.01
    # Pick combination/score rule on validation data (held-back normals vs their
    # corrupted copies) instead of taking AnomalyMapConfig as given.
    select_map_rule: bool = True
    # How those copies are corrupted. The default uses families stage 2's default corruption
    # never draws (lines, small shapes), so the rules are judged on anomalies the pixel
    # classifier was not trained on, as real defects are. None = like stage 2's training.
    validation_corruption: CorruptionConfig | None = field(default_factory=unseen_corruption)
    # About how many synthetic defects judge the rules: ceil(this / held-back normals) copies of each
    # held-back normal, each corrupted on its own (at least one). More defects mean fewer ties and less
    # luck of one draw, for a little more inference at calibration.
    validation_defects: int = 600
    # Judge each rule also with the held-back normals this much darker and brighter (their
    # brightness times 1 -/+ this; the synthetic defects as they are), counting the worst of the
    # three image AUROCs, so a rule that reads a lamp's drift as an anomaly loses. 0 (default) =
    # the normals as they are only: 0.08 did not foresee the test set's drift (docs/experiments.md).
    validation_drift: float = 0.0
    # How the validation table ranks the rules. image+pixel: the highest image AUROC + pixel
    # AUROC. map-by-pixel: the map (combination) of the best pixel AUROC, then its score rule of
    # the best image AUROC; the pixel AUROC, over millions of pixels, is a steadier judge of the map
    # than the image AUROC of a few dozen held-back normals (benchmarks/rule_choice.py).
    rule_choice: RuleChoice = "image+pixel"

    def __post_init__(self) -> None:
        if self.validation_defects < 1:
            raise ConfigError(f"calibration.validation_defects must be at least 1, not {self.validation_defects}")
        if not 0.0 <= self.validation_drift < 1.0:
            raise ConfigError("calibration.validation_drift must be a relative brightness change in [0, 1), "
                              f"not {self.validation_drift}")


@dataclass
class RaymaeConfig:
    """One complete recipe: what train writes into the artifact's config.json."""

    model: ModelConfig = field(default_factory=ModelConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    corruption: CorruptionConfig = field(default_factory=CorruptionConfig)
    anomaly_map: AnomalyMapConfig = field(default_factory=AnomalyMapConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # "fixed": every image is normalised with mean/std as it is. "per_image": each image's own
    # intensity mean and spread are standardised first, so a global change of brightness or
    # contrast (lighting drift) does not change what the model sees. "per_image_gain": each image
    # is divided by its median intensity (a lamp's gain), which keeps local contrast.
    # "per_image_robust": "per_image" with the median and interquartile range, which a defect
    # over less than a quarter of the image hardly moves.
    intensity: Intensity = "fixed"
    seed: int = 0
    # Autocast dtype of the training forward passes ("bf16" on GPUs roughly doubles
    # throughput); weights, optimiser state and inference stay float32. "auto": bf16 where
    # the device computes it natively (a GPU with bf16, a CPU with AVX512-BF16 or AMX),
    # float32 elsewhere (raymae.training.loop.training_precision).
    precision: Precision = "fp32"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RaymaeConfig":
        return _from_dict(cls, data)


def _from_dict(cls: type, data: dict[str, Any]):
    """Rebuild a (nested) dataclass from plain JSON data, refusing unknown keys."""
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} setting(s): {sorted(unknown)}")
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        nested = [t for t in (hint, *get_args(hint)) if dataclasses.is_dataclass(t)]
        if nested and isinstance(value, dict):  # a section, or an optional one that is set
            kwargs[key] = _from_dict(nested[0], value)
        elif isinstance(value, list):
            kwargs[key] = tuple(value)
        else:
            allowed = get_args(hint) if getattr(hint, "__origin__", None) is Literal else None
            if allowed and value not in allowed:
                raise ConfigError(f"{cls.__name__}.{key} must be one of {allowed}, not {value!r}")
            kwargs[key] = value
    return cls(**kwargs)
