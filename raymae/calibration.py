"""Choosing the anomaly-map rule and the decision threshold without labels.

All use only normal training images that were held back from training:
* what their maps look like (the quantiles of R and P the ``normal_*`` maps are
  scaled by), stored in the config's ``anomaly_map``;
* the map rule (combination x image-score rule) is chosen on those images
  against synthetic corruptions of them (never on the test set);
* the threshold is the (1 - target_fpr) quantile of their image scores.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch

from raymae import metrics
from raymae.anomaly_map import COMBINATIONS, make_anomaly_map, maps_and_scores, normal_quantiles
from raymae.artifact import Calibration
from raymae.config import RULE_CHOICES, AnomalyMapConfig, RaymaeConfig
from raymae.corruption import corrupt_batch, exposure_change
from raymae.inference import Predictor, RawMaps

VALIDATION_SEED_OFFSET = 7_919  # corruptions for validation differ from training's
log = logging.getLogger(__name__)


def validation_copies(normals: int, cfg: RaymaeConfig) -> int:
    """Corrupted copies of each of ``normals`` held-back images: about ``validation_defects`` in all."""
    return max(1, -(-cfg.calibration.validation_defects // normals))


def validation_fakes(normals: np.ndarray, cfg: RaymaeConfig) -> tuple[np.ndarray, np.ndarray]:
    """The corrupted copies validation judges map rules on, and their masks.

    ``validation_copies`` copies of each held-back normal ``(N, S, S, 3)``, each corrupted on its
    own: returns ``(N * copies, S, S, 3)`` uint8 and ``(N * copies, S, S)`` bool.
    """
    corruption = dataclasses.replace(cfg.calibration.validation_corruption or cfg.corruption,
                                     clean_share=0.0)
    sources = np.concatenate([normals] * validation_copies(len(normals), cfg))
    fakes, _, masks = corrupt_batch(sources, corruption, cfg.seed + VALIDATION_SEED_OFFSET,
                                    list(range(len(sources))))
    return fakes, masks


def validation_masks(normals: int, fake_masks: np.ndarray) -> np.ndarray:
    """Pixel labels of validation's images: ``normals`` all-normal masks, then ``fake_masks``
    ``(M, S, S)``; returns ``(normals + M, S, S)`` bool."""
    return np.concatenate([np.zeros((normals, *fake_masks.shape[1:]), bool), fake_masks])


def validation_table(predictor: Predictor, normals: np.ndarray, cfg: RaymaeConfig,
                     batch_size: int = 32, raw_normals: RawMaps | None = None) -> dict[str, dict[str, float]]:
    """AUROC of every map rule: held-back normals vs their corrupted copies.

    The copies follow ``calibration.validation_corruption`` (by default families stage 2
    never trains on), or stage 2's own corruption when that is None. ``cfg.anomaly_map``
    must hold the normal-map quantiles for the ``normal_*`` rules to be judged. With
    ``calibration.validation_drift`` each row also holds ``image_auroc_drift``: the worst image
    AUROC with the normals that much darker or brighter (the defects unchanged), as a lamp that
    ages between the normal and the defect photos.
    """
    fakes, fake_masks = validation_fakes(normals, cfg)
    raw_n = predictor.raw_maps(normals, batch_size) if raw_normals is None else raw_normals
    raw_f = predictor.raw_maps(fakes, batch_size)
    drift = cfg.calibration.validation_drift
    raw_drifted = [predictor.raw_maps(exposure_change(normals, 1.0 + sign * drift), batch_size)
                   for sign in ((-1, 1) if drift else ())]
    recon = torch.cat([raw_n.recon_error, raw_f.recon_error])
    prob = torch.cat([raw_n.prob, raw_f.prob])
    labels = np.r_[np.zeros(len(normals)), np.ones(len(fakes))]
    masks = validation_masks(len(normals), fake_masks)
    table = {}
    referenced = cfg.anomaly_map.normal_recon is not None
    for comb in [c for c in COMBINATIONS if referenced or not c.startswith("normal_")]:
        comb_cfg = dataclasses.replace(cfg.anomaly_map, combination=comb)
        maps, by_rule = maps_and_scores(recon, prob, comb_cfg)  # the map does not depend on the score rule
        pixel_auroc = metrics.pixel_auroc(masks, maps.numpy())
        for rule, scores in by_rule.items():
            row = {"image_auroc": metrics.image_auroc(labels, scores.numpy()), "pixel_auroc": pixel_auroc}
            if raw_drifted:
                row["image_auroc_drift"] = _worst_drift_auroc(raw_drifted, scores[len(normals):],
                                                              dataclasses.replace(comb_cfg, score_rule=rule))
            table[f"{comb}/{rule}"] = row
    return table


def _worst_drift_auroc(raw_drifted: list[RawMaps], fake_scores: torch.Tensor, rule: AnomalyMapConfig) -> float:
    """The lowest image AUROC of ``rule`` over the drifted copies of the held-back normals
    (their raw maps), each against the unchanged synthetic defects' scores ``(M,)``."""
    aurocs = []
    for raw in raw_drifted:
        normal_scores = make_anomaly_map(raw.recon_error, raw.prob, rule)[1]
        labels = np.r_[np.zeros(len(normal_scores)), np.ones(len(fake_scores))]
        aurocs.append(metrics.image_auroc(labels, torch.cat([normal_scores, fake_scores]).numpy()))
    return min(aurocs)


def rule_merit(row: dict[str, float]) -> float:
    """What ranks a rule on validation under ``rule_choice="image+pixel"``: its image AUROC (the
    worst with and without lighting drift, where judged) plus its pixel AUROC."""
    return _image_merit(row) + row["pixel_auroc"]


def _image_merit(row: dict[str, float]) -> float:
    """A rule's validation image AUROC: the worst with and without lighting drift, where judged."""
    return min(row["image_auroc"], row.get("image_auroc_drift", 1.0))


def best_rule(table: dict[str, dict[str, float]], current: AnomalyMapConfig,
              choice: str = "image+pixel") -> AnomalyMapConfig:
    """The rule ``choice`` ranks first in the validation ``table``; ties keep the configured rule.

    ``image+pixel``: the highest :func:`rule_merit`. ``map-by-pixel``: the combination whose map
    has the best pixel AUROC, then, of its score rules, the one of the best image AUROC.
    """
    key_now = f"{current.combination}/{current.score_rule}"
    if choice == "image+pixel":
        best = max(table, key=lambda k: (rule_merit(table[k]), k == key_now))
    elif choice == "map-by-pixel":
        best = max(table, key=lambda k: (table[k]["pixel_auroc"], _image_merit(table[k]), k == key_now))
    else:
        raise ValueError(f"unknown map-rule choice {choice!r}; choose one of {RULE_CHOICES}")
    comb, rule = best.split("/")
    return dataclasses.replace(current, combination=comb, score_rule=rule)


def normal_statistics(scores: np.ndarray) -> dict[str, float]:
    q = np.quantile(scores, [0.5, 0.9, 0.95, 0.99])
    return {"n": int(len(scores)), "mean": float(scores.mean()), "std": float(scores.std()),
            "p50": float(q[0]), "p90": float(q[1]), "p95": float(q[2]), "p99": float(q[3]),
            "max": float(scores.max())}


def calibrate(predictor: Predictor, normals: np.ndarray, cfg: RaymaeConfig,
              batch_size: int = 32) -> tuple[RaymaeConfig, Calibration]:
    """Pick the map rule (if configured) and the threshold on held-back normals (N, S, S, 3)."""
    if len(normals) < 2:
        raise ValueError("calibration needs at least 2 held-back normal images; "
                         "raise calibration.holdout_fraction or add training images")
    raw = predictor.raw_maps(normals, batch_size)
    cfg = dataclasses.replace(cfg, anomaly_map=dataclasses.replace(
        cfg.anomaly_map, normal_recon=normal_quantiles(raw.recon_error), normal_prob=normal_quantiles(raw.prob)))
    predictor.cfg = cfg
    table = {}
    if cfg.calibration.select_map_rule:
        table = validation_table(predictor, normals, cfg, batch_size, raw)
        cfg = dataclasses.replace(cfg, anomaly_map=best_rule(table, cfg.anomaly_map, cfg.calibration.rule_choice))
        predictor.cfg = cfg
    pred = predictor.predict(normals, batch_size, raw=raw)
    target_fpr = cfg.calibration.target_fpr
    if len(normals) * target_fpr < 1:
        log.warning("%d held-back normal images cannot resolve a target false-positive rate of %g: the "
                    "threshold is their highest score, so it flags fewer defects than it could. Hold "
                    "back at least %d normals (calibration.holdout_fraction) or raise --target-fpr.",
                    len(normals), target_fpr, int(np.ceil(1 / target_fpr)))
    threshold = float(np.quantile(pred.scores, 1.0 - target_fpr, method="higher"))
    return cfg, Calibration(threshold=threshold, target_fpr=target_fpr,
                            normal_scores=normal_statistics(pred.scores),
                            map_max=float(np.quantile(pred.maps, 0.999)) or 1.0,
                            validation=table)
