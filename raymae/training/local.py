"""From a dataset URI to a model artifact: data, the two stages, calibration.

``train_local`` runs everything in this process (one CPU or GPU, no Ray);
``raymae.training.ray_driver`` runs the same steps across a Ray Train worker group.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from raymae import data
from raymae.artifact import ModelArtifact
from raymae.calibration import calibrate
from raymae.config import RaymaeConfig
from raymae.model import MaskedAutoencoderViT
from raymae.pretrained import load_init_weights
from raymae.training.loop import EpochResult, train_two_stages, training_precision
from raymae.training.resources import plan_resources, resources_used

log = logging.getLogger("raymae")


@dataclass
class TrainingData:
    """Normal images split into the training part and the held-back calibration part."""

    train: np.ndarray     # (N, S, S, 3) uint8
    holdout: np.ndarray   # (M, S, S, 3) uint8
    source: str


def load_training_data(uri: str, cfg: RaymaeConfig) -> TrainingData:
    records = data.list_train(uri)
    train, hold = data.split_holdout(records, cfg.calibration.holdout_fraction, cfg.seed)
    size = cfg.model.image_size
    return TrainingData(data.load_images(train, size).images, data.load_images(hold, size).images, uri)


def finish_artifact(model: MaskedAutoencoderViT, training: TrainingData, cfg: RaymaeConfig,
                    info: dict, device: torch.device | str = "cpu") -> ModelArtifact:
    """Calibrate the trained stage-2 model on the held-back normals and package it."""
    from raymae.inference import Predictor

    cfg, calibration = calibrate(Predictor(model, cfg, device), training.holdout, cfg)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    info = dict(info, train_images=len(training.train), holdout_images=len(training.holdout),
                data=training.source, train_precision=training_precision(cfg.precision, torch.device(device)))
    return ModelArtifact(cfg, state, calibration, info)


def log_epoch(result: EpochResult) -> None:
    """One line per epoch: which of the stage's epochs, the loss and its terms, its seconds and,
    at its pace, the time left in the stage (``stage 2 epoch 63/100 loss ... (38.2s, 24 min left in stage 2)``)."""
    parts = "".join(f"{k}={v:.4f} " for k, v in result.parts.items())
    of = f"/{result.epochs}" if result.epochs else ""
    left = result.seconds_left()
    eta = ""
    if left > 0:
        eta = f", {left / 60:.0f} min" if left >= 90 else f", {left:.0f} s"
        eta += f" left in stage {result.stage}"
    log.info("stage %d epoch %d%s loss %.4f %s(%.1fs%s)", result.stage, result.epoch + 1, of, result.loss,
             parts, result.seconds, eta)


def train_local(uri: str, cfg: RaymaeConfig, device: str = "cpu", init: str | None = None,
                on_epoch_end=None, loader_workers: int | None = None,
                training: TrainingData | None = None) -> ModelArtifact:
    """Both stages and calibration in this process; returns the artifact (not yet saved).

    ``loader_workers`` DataLoader processes prepare batches (stage 2's corruption
    is CPU work that a GPU outruns; None: :func:`plan_resources` decides; torch keeps its
    own thread count here, the whole machine); ``training`` reuses images already loaded.
    """
    start = time.time()
    loader_workers = plan_resources(device.startswith("cuda"), loader_workers=loader_workers).loader_workers
    training = training or load_training_data(uri, cfg)
    init_state = load_init_weights(init, cfg.model).state_dict if init else None
    history: list[dict] = []

    def hook(result: EpochResult, model, optimizer) -> None:
        history.append(result.record())
        log_epoch(result)
        if on_epoch_end:
            on_epoch_end(result, model, optimizer)

    model = train_two_stages(cfg, training.train, torch.device(device), init_state=init_state,
                             on_epoch_end=hook, loader_workers=loader_workers)
    info = {"init": init, "history": history, "train_seconds": round(time.time() - start, 1),
            **resources_used(loader_workers)}
    return finish_artifact(model, training, cfg, info, device)
