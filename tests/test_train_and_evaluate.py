"""Training both stages in one process, calibrating, and evaluating like the literature."""

import dataclasses
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from raymae.artifact import ArtifactError, ModelArtifact
from raymae.evaluate import evaluate, write_outputs


def test_a_trained_model_finds_synthetic_defects(trained_artifact, synthetic_dataset):
    result, _, _ = evaluate(trained_artifact, synthetic_dataset)
    assert result.metrics["image_auroc"] > 0.9
    assert result.metrics["pixel_auroc"] > 0.9
    assert set(result.per_type) == {"scratch", "spot", "stain"}


def test_the_loss_goes_down_in_both_stages(trained_artifact):
    history = trained_artifact.info["history"]
    for stage in (1, 2):
        losses = [h["loss"] for h in history if h["stage"] == stage]
        assert losses[-1] < losses[0]
    for h in history:  # stage 2's terms are kept, to tell a learning classifier from a stuck one
        if h["stage"] == 2:
            cfg = trained_artifact.config.stage2
            assert h["loss"] == pytest.approx(cfg.ce_weight * h["ce"] + cfg.mse_weight * h["mse"]
                                              + cfg.ssim_weight * h["ssim"], rel=1e-4)


def test_the_threshold_is_calibrated_on_held_back_normals(trained_artifact):
    c = trained_artifact.calibration
    assert c.normal_scores["n"] == trained_artifact.info["holdout_images"] >= 2
    assert c.normal_scores["p50"] <= c.threshold <= c.normal_scores["max"]
    # the chosen map rule is the best one on validation data
    chosen = f"{trained_artifact.config.anomaly_map.combination}/{trained_artifact.config.anomaly_map.score_rule}"
    best = max(c.validation.values(), key=lambda r: r["image_auroc"] + r["pixel_auroc"])
    assert c.validation[chosen] == best


def test_calibration_measures_what_normal_maps_look_like_and_judges_the_referenced_rules(trained_artifact):
    from raymae.anomaly_map import COMBINATIONS, SCORE_RULES

    amap = trained_artifact.config.anomaly_map
    for low, high in (amap.normal_recon, amap.normal_prob):
        assert 0.0 <= low < high
    assert set(trained_artifact.calibration.validation) == {f"{c}/{r}" for c in COMBINATIONS for r in SCORE_RULES}


def test_too_few_held_back_normals_for_the_target_false_positive_rate_are_reported(trained_artifact,
                                                                                    synthetic_dataset, caplog):
    from raymae.calibration import calibrate
    from raymae.training.local import load_training_data

    cfg = trained_artifact.config
    cfg = dataclasses.replace(cfg, calibration=dataclasses.replace(cfg.calibration, select_map_rule=False))
    holdout = load_training_data(synthetic_dataset, cfg).holdout
    n = len(holdout)

    def warnings(target_fpr: float) -> list[str]:
        caplog.clear()
        at = dataclasses.replace(cfg, calibration=dataclasses.replace(cfg.calibration, target_fpr=target_fpr))
        _, c = calibrate(trained_artifact.predictor("cpu"), holdout, at)
        assert c.normal_scores["n"] == n
        return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]

    assert 2 <= n < 10
    assert any(f"{n} held-back normal images cannot resolve" in m and "at least 10 " in m for m in warnings(0.1))
    assert warnings(0.5) == []


def test_the_map_rule_can_be_judged_on_corruptions_stage2_never_saw(trained_artifact, synthetic_dataset,
                                                                     monkeypatch):
    from raymae import calibration
    from raymae.config import CorruptionConfig
    from raymae.training.local import load_training_data

    cfg = trained_artifact.config
    holdout = load_training_data(synthetic_dataset, cfg).holdout
    used, corrupt_batch = [], calibration.corrupt_batch

    def recording(images, corruption, *args):
        used.append(corruption)
        return corrupt_batch(images, corruption, *args)

    monkeypatch.setattr(calibration, "corrupt_batch", recording)
    predictor = trained_artifact.predictor("cpu")

    def table(validation_corruption):
        return calibration.validation_table(predictor, holdout, dataclasses.replace(
            cfg, calibration=dataclasses.replace(cfg.calibration, validation_corruption=validation_corruption)))

    like_training = table(None)
    lines = CorruptionConfig(perlin_share=0.0, line_share=1.0)
    unseen = table(lines)
    assert used == [dataclasses.replace(cfg.corruption, clean_share=0.0),
                    dataclasses.replace(lines, clean_share=0.0)]  # every copy corrupted
    assert set(unseen) == set(like_training) and unseen != like_training


def test_by_default_the_map_rule_is_judged_on_corruption_families_stage2_never_trains_on():
    from raymae.config import RaymaeConfig

    cfg = RaymaeConfig()
    training, validation = cfg.corruption, cfg.calibration.validation_corruption
    assert training.line_share == 0.0 and validation.line_share > 0  # lines: never in training
    assert validation.perlin_share == 0.0  # no Perlin blobs, the training's main family
    assert validation.shape_area[1] <= training.shape_area[1] / 5  # and shapes far smaller than training's


def test_validation_judges_the_rules_on_about_validation_defects_corrupted_copies_of_the_held_back_normals():
    from raymae.calibration import validation_fakes
    from raymae.config import CalibrationConfig, ConfigError, RaymaeConfig

    normals = np.random.default_rng(0).integers(60, 200, (4, 64, 64, 3), dtype=np.uint8)

    def fakes(defects):
        return validation_fakes(normals, dataclasses.replace(
            RaymaeConfig(), calibration=CalibrationConfig(validation_defects=defects)))

    one, one_masks = fakes(4)
    three, three_masks = fakes(10)  # ceil(10 / 4) = 3 copies of each
    assert three.shape == (12, 64, 64, 3) and three_masks.shape == (12, 64, 64)
    assert np.array_equal(three[:4], one) and np.array_equal(three_masks[:4], one_masks)  # the first copies agree
    assert len(fakes(1)[0]) == 4  # at least one copy of each normal
    for i in range(4):  # each copy of a normal is corrupted on its own, every one somewhere
        copies = three_masks[i::4]
        assert all(m.any() for m in copies)
        assert len({m.tobytes() for m in copies}) == 3
    assert RaymaeConfig().calibration.validation_defects == 600
    with pytest.raises(ConfigError, match="validation_defects"):
        CalibrationConfig(validation_defects=0)


def test_every_map_rule_is_judged_on_all_copies(trained_artifact, synthetic_dataset):
    from raymae import calibration
    from raymae.training.local import load_training_data

    cfg = trained_artifact.config
    holdout = load_training_data(synthetic_dataset, cfg).holdout
    predictor = trained_artifact.predictor("cpu")
    one = calibration.validation_table(predictor, holdout, dataclasses.replace(
        cfg, calibration=dataclasses.replace(cfg.calibration, validation_defects=1)))
    four = calibration.validation_table(predictor, holdout, dataclasses.replace(
        cfg, calibration=dataclasses.replace(cfg.calibration, validation_defects=4 * len(holdout))))
    assert set(four) == set(one) and four != one
    assert all(0.0 <= row["image_auroc"] <= 1.0 and 0.0 <= row["pixel_auroc"] <= 1.0 for row in four.values())


class BrightnessPredictor:
    """A stand-in model whose R and P maps are each pixel's brightness: it reads a brighter
    lamp as an anomaly. Records the images it is asked about."""

    def __init__(self):
        self.seen = []

    def raw_maps(self, images, batch_size=32):
        import torch
        from raymae.inference import RawMaps

        self.seen.append(images.copy())
        level = torch.from_numpy(images.astype(np.float32).mean(axis=-1) / 255.0)
        return RawMaps(recon_error=level, prob=level)


def test_validation_can_judge_each_rule_also_with_the_held_back_normals_darker_and_brighter():
    from raymae import calibration
    from raymae.config import CalibrationConfig, ConfigError, RaymaeConfig
    from raymae.corruption import exposure_change

    normals = np.random.default_rng(1).integers(80, 180, (12, 32, 32, 3), dtype=np.uint8)
    cfg = dataclasses.replace(RaymaeConfig(), calibration=CalibrationConfig(validation_defects=24,
                                                                            validation_drift=0.08))
    predictor = BrightnessPredictor()
    table = calibration.validation_table(predictor, normals, cfg)
    assert np.array_equal(predictor.seen[2], exposure_change(normals, 0.92))  # the normals 8 % darker,
    assert np.array_equal(predictor.seen[3], exposure_change(normals, 1.08))  # then 8 % brighter
    # brighter normals look more anomalous to this model: every rule loses image AUROC under drift
    assert all(row["image_auroc_drift"] <= row["image_auroc"] for row in table.values())
    assert any(row["image_auroc_drift"] < row["image_auroc"] - 0.05 for row in table.values())

    plain = calibration.validation_table(BrightnessPredictor(), normals, dataclasses.replace(
        cfg, calibration=CalibrationConfig(validation_defects=24)))  # the default: no drift
    assert all("image_auroc_drift" not in row for row in plain.values())
    assert {k: row["image_auroc"] for k, row in plain.items()} == {k: row["image_auroc"] for k, row in table.items()}
    with pytest.raises(ConfigError, match="validation_drift"):
        CalibrationConfig(validation_drift=1.5)


def test_a_rule_that_reads_lighting_drift_as_an_anomaly_loses_to_one_that_does_not():
    from raymae.calibration import best_rule
    from raymae.config import AnomalyMapConfig

    table = {"mean/max": {"image_auroc": 0.95, "pixel_auroc": 0.99, "image_auroc_drift": 0.85},
             "product/topk": {"image_auroc": 0.94, "pixel_auroc": 0.99, "image_auroc_drift": 0.94}}
    chosen = best_rule(table, AnomalyMapConfig())
    assert (chosen.combination, chosen.score_rule) == ("product", "topk")
    without_drift = {k: {m: v for m, v in row.items() if m != "image_auroc_drift"} for k, row in table.items()}
    chosen = best_rule(without_drift, AnomalyMapConfig())
    assert (chosen.combination, chosen.score_rule) == ("mean", "max")


def test_map_by_pixel_takes_the_best_localising_map_then_its_best_separating_score_rule():
    from raymae.calibration import best_rule
    from raymae.config import AnomalyMapConfig, ConfigError, RaymaeConfig

    table = {"product/topk": {"image_auroc": 0.951, "pixel_auroc": 0.992},   # best image + pixel
             "mean/max": {"image_auroc": 0.949, "pixel_auroc": 0.994},
             "mean/topk": {"image_auroc": 0.947, "pixel_auroc": 0.994},
             "prob/max": {"image_auroc": 0.990, "pixel_auroc": 0.970}}      # best image, poor map
    by_sum = best_rule(table, AnomalyMapConfig(), "image+pixel")
    assert (by_sum.combination, by_sum.score_rule) == ("prob", "max")
    by_map = best_rule(table, AnomalyMapConfig(), "map-by-pixel")
    assert (by_map.combination, by_map.score_rule) == ("mean", "max")
    with pytest.raises(ValueError, match="map-rule choice"):
        best_rule(table, AnomalyMapConfig(), "pixel")
    with pytest.raises(ConfigError, match="rule_choice"):
        RaymaeConfig.from_dict({"calibration": {"rule_choice": "pixel"}})


def test_the_artifact_round_trips_and_scores_identically(trained_artifact, synthetic_dataset, tmp_path):
    trained_artifact.save(str(tmp_path / "model"))
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["config.json", "model.safetensors"]
    loaded = ModelArtifact.load(str(tmp_path / "model"))
    assert loaded.model_id == trained_artifact.model_id
    assert loaded.config == trained_artifact.config
    a, _, pa = evaluate(trained_artifact, synthetic_dataset)
    b, _, pb = evaluate(loaded, synthetic_dataset)
    assert np.array_equal(pa.scores, pb.scores)


def test_evaluate_writes_metrics_and_one_score_row_per_image(trained_artifact, synthetic_dataset, tmp_path):
    result, test, pred = evaluate(trained_artifact, synthetic_dataset)
    write_outputs(result, test, pred, str(tmp_path / "eval"))
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for key in ("image_auroc", "pixel_auroc", "aupro", "pixel_ap", "image_f1_max"):
        assert 0.0 <= metrics["metrics"][key] <= 1.0
    assert set(metrics["per_type"]) == {"scratch", "spot", "stain"}
    table = pq.read_table(tmp_path / "eval" / "scores.parquet").to_pandas()
    assert len(table) == len(test.records)
    assert {"image_uri", "score", "label"} <= set(table.columns)
    assert table["label"].sum() == 18


def test_a_folder_without_a_model_is_a_clear_error(tmp_path):
    with pytest.raises(ArtifactError, match="no raymae model"):
        ModelArtifact.load(str(tmp_path))


def _with_normals_scaled(images: np.ndarray, labels: np.ndarray, gain: float) -> np.ndarray:
    out = images.copy()
    out[labels == 0] = np.clip(np.rint(images[labels == 0] * gain), 0, 255).astype(np.uint8)
    return out


def test_a_global_lighting_change_of_the_normal_images_is_not_an_anomaly(synthetic_dataset):
    """An ageing lamp darkens (or a new one brightens) every normal photo by 8 %: with per-image
    intensity standardisation the model still ranks defects above normals as before."""
    from raymae.metrics import image_auroc
    from raymae.training.local import train_local
    from tests.conftest import tiny_recipe

    artifact = train_local(synthetic_dataset, dataclasses.replace(tiny_recipe(), intensity="per_image"))
    _, test, pred = evaluate(artifact, synthetic_dataset)
    unchanged = image_auroc(test.labels, pred.scores)
    predictor = artifact.predictor()
    for gain in (0.92, 1.08):
        drifted = predictor.predict(_with_normals_scaled(test.images, test.labels, gain))
        assert image_auroc(test.labels, drifted.scores) >= unchanged - 0.02
        assert np.abs(drifted.scores - pred.scores)[test.labels == 0].max() < 0.05 * np.ptp(pred.scores)
