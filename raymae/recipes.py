"""Named recipes: complete, measured configurations to train with.

``raymae train --recipe NAME`` (or ``"recipe": NAME`` in a ``--config`` file) starts from
one of these; flags and the rest of the config file change it from there. The benchmarks
train with the same objects, so what docs/benchmarks.md reports is what users get.

* ``cpu``   -- the best recipe measured from scratch on 2 CPU cores (about 45 minutes for
  750 training images; training is sized in optimiser steps, so a smaller set trains as
  long). The default without ``--gpu``.
* ``gpu``   -- ViT-B/16 at 224 px in bf16 for one GPU. The default with ``--gpu``.
* ``paper`` -- ISSTAD as published: ViT-B/16 at 224 px, the encoder frozen in stage 2, a
  linear pixel head after every decoder block, the product map. Meant for a pretrained
  MAE (``--init``): with an encoder trained from scratch it detects poorly.
"""

from __future__ import annotations

from typing import Callable

from raymae.config import (AnomalyMapConfig, ConfigError, CorruptionConfig, ModelConfig,
                           RaymaeConfig, Stage1Config, Stage2Config)


def natural_corruption(perlin_max_scale: int) -> CorruptionConfig:
    """Stage 2's measured corruption mix for training from scratch.

    Half natural anomalies (patches of another normal image, Poisson-blended, with a soft
    darker or brighter blob inside), a quarter Perlin regions, the rest self-sourced shapes;
    shapes and Perlin regions shifted by 10-50 grey levels. ``perlin_max_scale`` grows with
    the image side (4 at 128 px, 5 at 224 px).
    """
    return CorruptionConfig(intensity_shift=(10.0, 50.0), perlin_max_scale=perlin_max_scale,
                            natural_share=0.5, perlin_share=0.25, natural_intensity=(10.0, 50.0))


def cpu() -> RaymaeConfig:
    """Tiny ViT at 128 px, patch 8: from scratch on 2 CPU cores in about 45 minutes.

    Stage 2 corrupts with natural anomalies (half), Perlin (a quarter) and self-sourced shapes;
    every image is standardised on its own (``intensity="per_image"``) so lighting drift is not
    an anomaly. Forward passes run in bf16 where the CPU has AVX512-BF16 or AMX (``precision=
    "auto"``): stage-2 steps take about 0.7 of their float32 time there, and the time saved
    buys a longer stage 2, 2100 steps instead of 840 (on a CPU without native bf16 it trains in
    float32, about 30 % longer). Stage 2's learning rate is 8e-3 (peak 1e-3 at batch 32), twice
    the earlier 4e-3. The learning rate, 1700 steps instead of 1400 and 2100 instead of 1700 were
    each adopted because validation's pixel AUROC rose with them under every map combination, on
    every run measured.
    """
    return RaymaeConfig(
        model=ModelConfig(size="tiny", image_size=128, patch_size=8, depth=6, decoder_depth=2,
                          stage2_extra_blocks=2, pixel_head="fusion"),
        stage1=Stage1Config(steps=840, warmup_steps=63, batch_size=32, lr=1.5e-3),
        stage2=Stage2Config(steps=2100, warmup_steps=42, batch_size=32, lr=8e-3, freeze_encoder=False),
        corruption=natural_corruption(perlin_max_scale=4),
        anomaly_map=AnomalyMapConfig(sigma=2.0),
        intensity="per_image",
        precision="auto",
    )


def gpu() -> RaymaeConfig:
    """ViT-B/16 at 224 px, bf16 autocast, for one GPU.

    Stage 2 corrupts and standardises as the ``cpu`` recipe does (natural anomalies, per-image
    intensity): measured on 2 CPU cores, on magnetic tile and bottle, not yet on a GPU
    (docs/benchmarks.md). Without per-image standardisation a darker lamp is an anomaly.
    """
    return RaymaeConfig(
        model=ModelConfig(size="base", image_size=224, patch_size=16, stage2_extra_blocks=2,
                          pixel_head="fusion"),
        stage1=Stage1Config(steps=1800, warmup_steps=120, batch_size=128, lr=1e-3, grad_clip=1.0),
        stage2=Stage2Config(steps=1300, warmup_steps=50, batch_size=64, lr=5e-4, grad_clip=1.0,
                            freeze_encoder=False),
        corruption=natural_corruption(perlin_max_scale=5),
        anomaly_map=AnomalyMapConfig(sigma=4.0),
        intensity="per_image",
        precision="bf16",
    )


def paper() -> RaymaeConfig:
    """ISSTAD's published setting, for a pretrained MAE encoder (``--init``)."""
    return RaymaeConfig(
        model=ModelConfig(size="base", image_size=224, patch_size=16, deep_supervision=True),
        stage1=Stage1Config(epochs=30),
        stage2=Stage2Config(epochs=20, freeze_encoder=True),
        anomaly_map=AnomalyMapConfig(combination="product", sigma=4.0),
    )


RECIPES: dict[str, Callable[[], RaymaeConfig]] = {"cpu": cpu, "gpu": gpu, "paper": paper}


def recipe(name: str) -> RaymaeConfig:
    """A fresh copy of the named recipe."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; choose one of {', '.join(sorted(RECIPES))}")
    return RECIPES[name]()


def default_recipe_name(gpu: bool) -> str:
    """What ``raymae train`` uses without ``--recipe``: the best measured for the hardware."""
    return "gpu" if gpu else "cpu"
