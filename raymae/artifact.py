"""The trained model as a folder: ``model.safetensors`` + ``config.json``.

``config.json`` holds everything needed to rebuild the network and its
preprocessing (:class:`raymae.config.RaymaeConfig`), the calibrated decision
threshold with the normal-score statistics, and where the model came from.
Weights are only ever read from safetensors: no pickle is loaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from raymae import storage
from raymae.config import RaymaeConfig
from raymae.inference import Predictor
from raymae.model import MaskedAutoencoderViT, build_model

FORMAT = "raymae-model"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class ArtifactError(ValueError):
    """A model folder that cannot be used."""


@dataclass
class Calibration:
    """Decision threshold from held-back normal training images.

    threshold: image score at or above which an image is anomalous, chosen so
    that about ``target_fpr`` of normal images exceed it.
    normal_scores: statistics of the held-back normal scores (n, mean, std, quantiles, max).
    map_max: 99.9th percentile of normal anomaly-map values, a fixed scale for heatmaps.
    validation: image/pixel AUROC of each map rule on held-back normals vs their
    synthetic corruptions (the data the default rule was chosen on).
    """

    threshold: float
    target_fpr: float
    normal_scores: dict[str, float]
    map_max: float = 1.0
    validation: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class ModelArtifact:
    config: RaymaeConfig
    state_dict: dict[str, torch.Tensor]
    calibration: Calibration
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def model_id(self) -> str:
        """Short SHA-256 of the serialised weights: changes whenever the weights do."""
        return hashlib.sha256(self.weights_bytes()).hexdigest()[:16]

    def weights_bytes(self) -> bytes:
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict.items()}
        return save_safetensors(tensors, metadata={"format": FORMAT})

    def build_model(self) -> MaskedAutoencoderViT:
        model = build_model(self.config.model, stage2=True)
        model.load_state_dict(self.state_dict)
        return model.eval()

    def predictor(self, device: str | torch.device = "cpu", precision: str = "auto") -> Predictor:
        """The model ready to score on ``device`` (``precision``: see :class:`Predictor`)."""
        return Predictor(self.build_model(), self.config, device, precision)

    # -------------------------------------------------------------- disk
    def save(self, uri: str) -> None:
        weights = self.weights_bytes()
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model_id": hashlib.sha256(weights).hexdigest()[:16],
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config": self.config.to_dict(),
            "calibration": dataclasses.asdict(self.calibration),
            "info": self.info,
        }
        storage.write_bytes(storage.join(uri, WEIGHTS_FILE), weights)
        storage.write_bytes(storage.join(uri, CONFIG_FILE), json.dumps(meta, indent=2).encode())

    @classmethod
    def load(cls, uri: str) -> "ModelArtifact":
        try:
            meta = json.loads(storage.read_bytes(storage.join(uri, CONFIG_FILE)))
            weights = storage.read_bytes(storage.join(uri, WEIGHTS_FILE))
        except FileNotFoundError as e:
            raise ArtifactError(f"no raymae model at {uri!r}: expected {CONFIG_FILE} and {WEIGHTS_FILE}") from e
        if meta.get("format") != FORMAT:
            raise ArtifactError(f"{uri!r} is not a raymae model folder (format={meta.get('format')!r})")
        if meta.get("format_version", 0) > FORMAT_VERSION:
            raise ArtifactError(f"{uri!r} was written by a newer raymae (format {meta['format_version']})")
        return cls(config=RaymaeConfig.from_dict(meta["config"]),
                   state_dict=load_safetensors(weights),
                   calibration=Calibration(**meta["calibration"]),
                   info=meta.get("info", {}))
