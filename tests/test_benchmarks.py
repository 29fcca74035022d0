"""The committed benchmark scripts keep working (run here on tiny synthetic data)."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.scripts import load_script

from raymae.anomaly_map import COMBINATIONS, SCORE_RULES

ROOT = Path(__file__).resolve().parents[1]
# A recipe small enough to train in seconds (--set arguments of the benchmark scripts).
TINY = ["model.image_size=64", "model.patch_size=8", "model.depth=2", "model.decoder_depth=1",
        "model.stage2_extra_blocks=1", "stage1.batch_size=16", "stage2.batch_size=16", "anomaly_map.sigma=1.0",
        'precision="fp32"']


def test_the_quality_benchmark_writes_a_complete_results_file(synthetic_dataset, tmp_path):
    out = tmp_path / "quality.json"
    tiny = [*TINY, "stage1.steps=6", "stage2.steps=3"]
    cmd = [sys.executable, str(ROOT / "benchmarks" / "quality.py"), "--data", synthetic_dataset,
           "--out", str(out), "--save-model", str(tmp_path / "model"),
           *[arg for s in tiny for arg in ("--set", s)]]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    record = json.loads(out.read_text())
    from raymae.artifact import ModelArtifact
    assert ModelArtifact.load(str(tmp_path / "model")).config.model.image_size == 64
    assert record["status"] == "complete" and record["recipe"]["precision"] == "fp32"
    for key in ("image_auroc", "pixel_auroc", "aupro", "pixel_ap", "image_f1_max"):
        assert 0.0 <= record["metrics"][key] <= 1.0
    assert len(record["test_ablation_map_rules"]) == len(COMBINATIONS) * len(SCORE_RULES)
    for drift in ("normals_8pct_darker", "normals_8pct_brighter"):
        row = record["lighting_drift"][drift]
        assert row["image_auroc_change"] == pytest.approx(row["image_auroc"] - record["metrics"]["image_auroc"])
    assert record["machine"]["cpu_cores"] >= 1 and record["wall_seconds"] > 0
    assert record["recipe"]["model"]["image_size"] == 64
    diagnosis = record["stage2_classifier"]
    assert 0 < diagnosis["anomalous_label_share"] < 0.5 and diagnosis["constant_prediction_ce"] > 0
    assert set(record["loss_history"][-1]) >= {"stage", "epoch", "loss", "seconds", "ce", "mse", "ssim"}
    assert all(e["seconds"] > 0 for e in record["loss_history"])  # what sizing a recipe to a budget needs


def test_a_stuck_pixel_classifier_is_told_apart_from_a_learning_one():
    quality = _quality_module()
    weights = (1.0, 5.0)
    for share in (0.01, 0.04, 0.3):  # the closed form is the minimum over constant predictions
        p = np.linspace(1e-5, 1 - 1e-5, 200_001)
        grid = (-(1 - share) * weights[0] * np.log(1 - p) - share * weights[1] * np.log(p)) / (
            (1 - share) * weights[0] + share * weights[1])
        assert quality.constant_prediction_ce(share, weights) == pytest.approx(grid.min(), abs=1e-6)
    assert quality.constant_prediction_ce(0.0, weights) == 0.0

    from raymae.config import RaymaeConfig
    images = np.random.default_rng(0).integers(60, 200, (8, 32, 32, 3), dtype=np.uint8)
    cfg = RaymaeConfig()
    prior = quality.classifier_diagnosis(cfg, images, [])["constant_prediction_ce"]
    stuck = [{"stage": 2, "epoch": e, "loss": 1.0, "ce": prior * 1.02} for e in (1, 2, 3)]
    learning = stuck[:2] + [{"stage": 2, "epoch": 3, "loss": 1.0, "ce": prior * 0.7}]
    assert quality.classifier_diagnosis(cfg, images, stuck)["first_epoch_ce_below_90pct_of_constant"] is None
    assert quality.classifier_diagnosis(cfg, images, learning)["first_epoch_ce_below_90pct_of_constant"] == 3


def _quality_module():
    return load_script("benchmarks/quality.py")


def test_a_time_budget_is_split_into_epochs_by_the_measured_epoch_times():
    from raymae.config import RaymaeConfig, Stage1Config, Stage2Config

    quality = _quality_module()
    cfg = RaymaeConfig(stage1=Stage1Config(epochs=300, warmup_epochs=20), stage2=Stage2Config(epochs=100, warmup_epochs=5))
    fitted = quality.fit_to_budget(cfg, {"stage1": 0.5, "stage2": 2.0}, budget_s=600, stage1_share=0.4)
    assert (fitted.stage1.epochs, fitted.stage2.epochs) == (480, 180)
    assert (fitted.stage1.warmup_epochs, fitted.stage2.warmup_epochs) == (32, 9)
    tiny = quality.fit_to_budget(cfg, {"stage1": 100.0, "stage2": 100.0}, budget_s=10, stage1_share=0.5)
    assert (tiny.stage1.epochs, tiny.stage2.epochs) == (1, 1)


def test_the_quality_benchmark_takes_settings_as_json_or_as_bare_words():
    quality = load_script("benchmarks/quality.py")
    from raymae.config import ConfigError
    from raymae.recipes import recipe

    cfg = quality.with_settings(recipe("cpu"), ["intensity=per_image_gain", 'seed=3',
                                                "corruption.natural_intensity=[5,20]"])
    assert (cfg.intensity, cfg.seed, cfg.corruption.natural_intensity) == ("per_image_gain", 3, (5.0, 20.0))
    with pytest.raises(SystemExit, match="SECTION.KEY=VALUE"):
        quality.with_settings(recipe("cpu"), ["nosuchsection.x=1"])
    with pytest.raises(ConfigError, match="unknown"):
        quality.with_settings(recipe("cpu"), ["corruption.no_such_setting=1"])


def test_the_quality_benchmark_fits_its_epochs_to_a_budget(synthetic_dataset, tmp_path):
    out = tmp_path / "quality.json"
    tiny = ["model.image_size=64", "model.patch_size=8", "model.depth=2", "model.decoder_depth=1",
            "model.stage2_extra_blocks=1", "stage1.batch_size=16", "stage2.batch_size=16"]
    cmd = [sys.executable, str(ROOT / "benchmarks" / "quality.py"), "--data", synthetic_dataset,
           "--out", str(out), "--budget-minutes", "0.1", "--loader-workers", "1",
           *[arg for s in tiny for arg in ("--set", s)]]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    record = json.loads(out.read_text())
    assert set(record["probe_epoch_seconds"]) == {"stage1", "stage2"}
    epochs = {e["stage"]: e["epoch"] for e in record["loss_history"]}
    assert epochs == {1: record["recipe"]["stage1"]["epochs"], 2: record["recipe"]["stage2"]["epochs"]}
    assert record["budget_minutes"] == 0.1


def test_the_gpu_profile_runs_on_the_cpu_and_reports_every_stage(synthetic_dataset):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_profile.py"), "--data", synthetic_dataset,
           "--recipe", "cpu", "--workers", "2", "--corrupt", "8", "--steps", "1", "--precision", "fp32"]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
    record = json.loads(done.stdout[done.stdout.rindex("{\n"):])
    assert record["train_precision"] == "fp32"  # --precision overrides the recipe's auto
    for key in ("corrupt_img_per_s_1proc", "corrupt_img_per_s_2proc", "stage1_train_img_per_s",
                "stage2_train_img_per_s", "predict_img_per_s_fp32"):
        assert record[key] > 0, key
    assert record["device"] == "cpu"


@pytest.mark.slow
def test_the_scoring_benchmark_measures_all_three_pipelines(synthetic_dataset, model_dir, tmp_path):
    out = tmp_path / "scoring.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "scoring.py"), "--images", synthetic_dataset + "/test",
           "--model", model_dir, "--sizes", "6", "12", "--batch-size", "4", "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=900)
    record = json.loads(out.read_text())
    for size in ("6", "12"):
        runs = record["results"][size]
        for name in ("a_model_alone", "b_dataloader_script", "c_raymae_score", "c_raymae_score_all_threads"):
            assert runs[name]["images_per_s"] > 0 and runs[name]["peak_memory_mib"] > 0, name
        assert runs["c_raymae_score"]["ok"] == int(size)
    assert record["memory_growth"]["c_raymae_score"] > 0
    assert set(record["results"]["6"]["ratios"]) >= {"c_raymae_score/a_model_alone",
                                                      "c_raymae_score/b_dataloader_script"}


# ------------------------------------------------------------------ reliability figures
def test_the_reliability_log_counts_lost_and_repeated_rows():
    from tests.reliability_log import ReliabilityLog

    log = ReliabilityLog()
    run = log.run("an actor killed", 1, True, expected=["a", "b", "c"], output=["a", "a", "b"])
    assert (run.inputs, run.rows_out, run.lost, run.duplicates) == (3, 3, 1, 1)
    assert log.summary()["rows_lost"] == 1 and log.summary()["duplicates"] == 1


def test_the_committed_reliability_figures_lose_nothing_and_come_from_existing_tests():
    import ast

    record = json.loads((ROOT / "benchmarks" / "results" / "reliability.json").read_text())
    assert record["all_tests_passed"] and record["tests_passed"] == record["tests_run"] > 0
    assert record["rows_lost"] == 0 and record["duplicates"] == 0 and record["faults_injected"] > 0
    assert record["runs_completed"] + record["runs_stopped_cleanly"] == record["runs"] and record["inputs_in"] > 0
    assert record["training_restarts_from_epoch_zero"] == 0
    assert record["training_epochs_missing"] == record["training_epochs_repeated"] == 0
    assert record["bad_input_kinds_handled"] == record["bad_input_kinds_tried"] >= 25
    tests = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        tests |= {n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef)}
    recorded = {r["test"] for r in record["fault_runs"] + record["training_fault_runs"]}
    assert recorded and recorded <= tests, recorded - tests


def test_the_report_benchmark_times_raymae_report_on_nights_it_writes(tmp_path):
    out = tmp_path / "report.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "report.py"), "--images", "300", "--nights", "2",
           "--row-group", "100", "--workdir", str(tmp_path / "work"), "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    record = json.loads(out.read_text())
    assert record["report_printed"].startswith("report of 2026-11-26: 300 images")
    assert record["report_printed"].endswith("2 nights in the trend")
    assert record["report_seconds"] > 0 and record["report_peak_rss_mb"] > 50
    assert (tmp_path / "work" / "page" / "index.html").stat().st_size == record["page_bytes"]
    assert record["parquet_bytes"] > 2 * 300 * 1000  # unique heatmaps of about 2.6 KB, not deduplicated



def test_the_map_postprocessing_experiments_run_on_a_saved_model(synthetic_dataset, model_dir, capsys):
    script = load_script("benchmarks/map_postprocessing.py")
    assert script.main(["--data", synthetic_dataset, "--model", model_dir, "--knn-block", "1",
                        "--knn-bank", "500"]) == 0
    out = capsys.readouterr().out
    assert "bank of 500 training tokens" in out
    for name in ("knn max", "mean+knn topk"):
        line = next(line for line in out.splitlines() if line.startswith(name))
        assert 0.0 <= float(line.split("test image AUROC ")[1].split()[0]) <= 1.0
    for name in ("product sigma=2 max", "recon sigma=4 topk", "z[prob] sigma=2 max",
                 "minus-mean[recon] sigma=4 topk", "no-border[mean] sigma=2 topk"):
        line = next(line for line in out.splitlines() if line.startswith(name))
        assert 0.0 <= float(line.split("image AUROC ")[1].split()[0]) <= 1.0
    assert "peak on the border band: normals" in out and "defect pixels on the border band" in out
    in_defect = [float(line.rsplit("peak lies in the defect: ", 1)[1]) for line in out.splitlines()
                 if "peak lies in the defect" in line]
    assert len(in_defect) == 8 and all(0.0 <= share <= 1.0 for share in in_defect)


def test_the_drift_input_study_shows_that_clipping_breaks_a_pure_gain():
    """A third of the pixels at 255: darker is a pure gain that standardisation undoes; brighter
    cannot brighten the saturated pixels, so the standardised input moves."""
    script = load_script("benchmarks/drift_inputs.py")
    images = np.random.default_rng(0).integers(40, 200, (3, 24, 24, 3)).astype(np.uint8)
    images[:, :8] = 255
    assert script.saturated_share(images) == pytest.approx(1 / 3)
    darker, brighter = (script.input_change(images, gain, "per_image") for gain in (0.92, 1.08))
    assert darker < 0.01 < brighter
    assert script.input_change(images, 0.92, "fixed") > 0.1


def test_the_drift_input_study_runs_on_a_dataset(synthetic_dataset, capsys):
    assert load_script("benchmarks/drift_inputs.py").main(["--data", synthetic_dataset, "--size", "32"]) == 0
    out = capsys.readouterr().out
    assert "normals_8pct_brighter (x1.08): saturated" in out and "per_image_robust" in out


def test_the_knn_study_can_run_alone(synthetic_dataset, model_dir, capsys):
    script = load_script("benchmarks/map_postprocessing.py")
    assert script.main(["--data", synthetic_dataset, "--model", model_dir, "--knn-block", "2",
                        "--knn-bank", "300", "--knn-only"]) == 0
    out = capsys.readouterr().out
    assert "encoder block 2" in out and "mean+knn max" in out and "sigma=" not in out
    with pytest.raises(SystemExit):
        script.main(["--data", synthetic_dataset, "--model", model_dir, "--knn-only"])


def test_the_score_fusion_study_compares_fused_image_scores_with_the_models_rule(synthetic_dataset, model_dir,
                                                                                capsys):
    script = load_script("benchmarks/map_postprocessing.py")
    assert script.main(["--data", synthetic_dataset, "--model", model_dir, "--score-fusion", "--studies-only"]) == 0
    out = capsys.readouterr().out
    assert "sigma=" not in out and "knn" not in out
    rows = {line[:36].strip(): line for line in out.splitlines()}
    assert any(name.startswith("model's rule ") for name in rows)
    auroc = {name: [float(part.rsplit(" ", 1)[1]) for part in line.split(" | ")] for name, line in rows.items()
             if " | " in line}
    for name in ("P alone max", "R alone topk", "zP+zR max", "max(zP,zR) topk"):
        assert all(0.0 <= value <= 1.0 for value in auroc[name])
    # "P alone, max" is the product's prob/max rule: the study agrees with calibration's validation
    from raymae.artifact import ModelArtifact
    from raymae.calibration import validation_table
    from raymae.training.local import load_training_data
    artifact = ModelArtifact.load(model_dir)
    holdout = load_training_data(synthetic_dataset, artifact.config).holdout
    table = validation_table(artifact.predictor(), holdout, artifact.config)
    assert auroc["P alone max"][0] == pytest.approx(table["prob/max"]["image_auroc"], abs=6e-4)
    with pytest.raises(SystemExit):  # nothing to run
        script.main(["--data", synthetic_dataset, "--model", model_dir, "--studies-only"])


def test_a_shifted_view_maps_back_onto_the_image_it_came_from():
    script = load_script("benchmarks/map_postprocessing.py")
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3)).astype(np.uint8))
    pointwise = images[..., 0].float()                      # a "map" that depends on each pixel alone
    for dy, dx in ((0, 4), (4, 0), (-4, 4), (3, -2)):
        view = script.shifted_view(images, dy, dx)
        assert view.shape == images.shape and view.dtype == torch.uint8
        back, known = script.shifted_back(view[..., 0].float(), dy, dx)
        assert known.sum() == (16 - abs(dy)) * (16 - abs(dx))
        assert torch.equal(back[:, known.bool()], pointwise[:, known.bool()])
        assert not torch.equal(view, images)


def test_the_shift_study_with_one_view_is_the_models_own_calibration(synthetic_dataset, model_dir, capsys):
    script = load_script("benchmarks/map_postprocessing.py")
    assert script.main(["--data", synthetic_dataset, "--model", model_dir, "--shift-views", "--studies-only"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("shift views: ")]
    assert [row.split()[2] for row in rows] == ["1", "4", "5"]
    from raymae.artifact import ModelArtifact
    from raymae.calibration import calibrate
    from raymae.training.local import load_training_data
    artifact = ModelArtifact.load(model_dir)
    holdout = load_training_data(synthetic_dataset, artifact.config).holdout
    cfg, cal = calibrate(artifact.predictor(), holdout, artifact.config)
    rule = f"{cfg.anomaly_map.combination}/{cfg.anomaly_map.score_rule}"
    assert f"rule {rule} " in rows[0]
    validation = float(rows[0].split("validation image AUROC ")[1].split()[0])
    assert validation == pytest.approx(cal.validation[rule]["image_auroc"], abs=6e-4)


def test_the_validation_mix_study_reports_what_each_mix_would_choose(synthetic_dataset, model_dir, tmp_path):
    study = load_script("benchmarks/validation_mixes.py")
    out = tmp_path / "mixes.json"
    assert study.main(["--data", synthetic_dataset, "--model", model_dir, "--out", str(out),
                       "--copies", "1", "2", "--draws", "2"]) == 0
    record = json.loads(out.read_text())
    assert set(record["mixes"]) == set(study.MIXES)
    assert len(record["test_all_rules"]) == len(COMBINATIONS) * len(SCORE_RULES)
    for name, row in record["mixes"].items():
        table = row["validation_table"]
        best = max(table.values(), key=lambda r: r["image_auroc"] + r["pixel_auroc"])
        assert table[row["chosen_rule"]] == best  # chosen as training chooses: on validation only
        assert row["test"] == record["test_all_rules"][row["chosen_rule"]]
    assert record["mixes"]["training"]["validation_table"] != record["mixes"]["lines"]["validation_table"]
    # the copies study: each count drawn twice with independent corruptions, each choice made on validation
    assert set(record["copies"]) == {"1", "2"}
    for row in record["copies"].values():
        assert len(row["draws"]) == 2 and row["pairs_choosing_the_same_rule"] in (0.0, 1.0)
        assert row["draws"][0]["validation_table"] != row["draws"][1]["validation_table"]
        for draw in row["draws"]:
            best = max(draw["validation_table"].values(), key=lambda r: r["image_auroc"] + r["pixel_auroc"])
            assert draw["validation_table"][draw["chosen_rule"]] == best
            assert draw["test"] == record["test_all_rules"][draw["chosen_rule"]]
    assert record["copies"]["1"]["draws"][0]["validation_table"] != record["copies"]["2"]["draws"][0]["validation_table"]
    # --mixes studies only the mixes named, each as the full study would
    assert study.main(["--data", synthetic_dataset, "--model", model_dir, "--out", str(out),
                       "--mixes", "lines", "regions"]) == 0
    named = json.loads(out.read_text())["mixes"]
    assert set(named) == {"lines", "regions"} and named["lines"] == record["mixes"]["lines"]


def _mixes_record(data, seed, validation, test, best_test):
    """A validation_mixes.py record of one model: mix "a" chose rule "r" (validation and test image AUROC)."""
    table = {"r": {"image_auroc": validation, "pixel_auroc": 0.9}}
    return {"command": f"python benchmarks/validation_mixes.py --data ../x/{data} --model m --out o.json",
            "recipe": {"seed": seed}, "test_all_rules": {"r": {"image_auroc": test}, "s": {"image_auroc": best_test}},
            "mixes": {"a": {"chosen_rule": "r", "validation_table": table, "test": {"image_auroc": test}}}}


def test_the_agreement_summary_orders_only_models_that_share_their_held_back_images(tmp_path, capsys):
    script = load_script("benchmarks/validation_agreement.py")
    records = [_mixes_record("tile", 0, 0.90, 0.80, 0.85),   # validation orders these two as the test set does
               _mixes_record("tile", 0, 0.85, 0.70, 0.70),
               _mixes_record("tile", 0, 0.80, 0.79, 0.80),   # ... but this one above the second, wrongly
               _mixes_record("tile", 1, 0.99, 0.60, 0.60),   # another seed: other held-back images, no pair
               _mixes_record("bottle", 0, 0.95, 0.95, 0.97)]
    row = script.summary(records, gap=0.05)["tile"]["a"]
    assert (row["models"], row["same_seed_pairs"], row["pairs_ordered_as_test"]) == (4, 3, 2)
    assert (row["pairs_over_gap"], row["pairs_over_gap_ordered_as_test"]) == (2, 1)  # 0.80-0.79 is within the gap
    assert row["mean_test_image_auroc_of_choices"] == pytest.approx((0.80 + 0.70 + 0.79 + 0.60) / 4)
    assert row["mean_regret"] == pytest.approx((0.05 + 0 + 0.01 + 0) / 4)
    paths = []
    for i, record in enumerate(records):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps(record))
    assert script.main([str(p) for p in paths]) == 0
    assert "| bottle | a | 1 | 0.950 | 0.020 | 0/0 | 0/0 |" in capsys.readouterr().out
    # validation pixel AUROC in the reverse order of its image AUROC, test pixel AUROC as test image AUROC:
    # only the pair validation's image AUROC ordered wrongly is now ordered right
    for record, pixel in zip(records, (0.80, 0.85, 0.90, 0.5, 0.5)):
        record["mixes"]["a"]["validation_table"]["r"]["pixel_auroc"] = pixel
        record["mixes"]["a"]["test"]["pixel_auroc"] = record["mixes"]["a"]["test"]["image_auroc"]
    assert script.summary(records, 0.0, "pixel_auroc", "pixel_auroc")["tile"]["a"]["pairs_ordered_as_test"] == 1
    (tmp_path / "other.json").write_text(json.dumps({"metrics": {}}))
    with pytest.raises(SystemExit):
        script.main([str(paths[0]), str(tmp_path / "other.json")])
    assert "validation_mixes.py" in capsys.readouterr().err


def _results_file(path, image_auroc, rule="mean/max", drift=None, status="complete"):
    record = {"status": status, "map_rule_chosen_on_validation": rule,
              "metrics": {"image_auroc": image_auroc, "pixel_auroc": 0.7, "aupro": None, "pixel_ap": 0.2},
              "per_type": {"crack": {"image_auroc": image_auroc - 0.1}}}
    if drift is not None:
        record["lighting_drift"] = {name: {"image_auroc": image_auroc + drift, "image_auroc_change": drift}
                                    for name in ("normals_8pct_darker", "normals_8pct_brighter")}
    path.write_text(json.dumps(record))
    return str(path)


def test_the_quality_comparison_reports_each_groups_mean_and_range_over_seeds(tmp_path, capsys):
    compare = load_script("benchmarks/compare_quality.py")
    old = [_results_file(tmp_path / f"old{s}.json", a) for s, a in enumerate((0.70, 0.80))]
    new = [_results_file(tmp_path / "new0.json", 0.90, rule="recon/max", drift=-0.01)]
    assert compare.main(["--group", "old", *old, "--group", "new", *new]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "| old | 2 | mean/max, mean/max | 0.750 (0.700–0.800) | 0.700 (0.700–0.700) | – |" in lines[2]
    assert lines[3].startswith("| new | 1 | recon/max | 0.900 | 0.700 | – | 0.200 |")
    assert "| old | 0.650 (0.600–0.700) |" in lines
    assert "| new | 0.890 (-0.010) | 0.890 (-0.010) |" in lines  # only runs with drift rows have one


def test_the_quality_comparison_refuses_an_unfinished_run(tmp_path):
    compare = load_script("benchmarks/compare_quality.py")
    partial = _results_file(tmp_path / "partial.json", 0.9, status="stage 2")
    with pytest.raises(SystemExit, match="partial.json is not a complete run"):
        compare.main(["--group", "new", partial])


def test_recalibrating_an_older_model_chooses_among_todays_rules_on_validation(trained_artifact, synthetic_dataset,
                                                                              tmp_path):
    older = dataclasses.replace(trained_artifact, config=dataclasses.replace(
        trained_artifact.config, anomaly_map=dataclasses.replace(
            trained_artifact.config.anomaly_map, combination="recon", score_rule="mean",
            normal_recon=None, normal_prob=None)))  # as saved before the normal-referenced maps
    older.save(str(tmp_path / "older"))
    out = tmp_path / "recalibrated.json"
    script = load_script("benchmarks/recalibrate.py")
    assert script.main(["--data", synthetic_dataset, "--model", str(tmp_path / "older"), "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    table = record["validation"]
    assert record["map_rule_before"] == "recon/mean"
    assert any(rule.startswith("normal_mean/") for rule in table)
    best = max(table.values(), key=lambda r: r["image_auroc"] + r["pixel_auroc"])
    assert table[record["map_rule_chosen_on_validation"]] == best
    assert all(0.0 <= record["metrics"][m] <= 1.0 for m in ("image_auroc", "pixel_auroc"))


def _recalibrated(script, data: str, model: Path, setting: str, out: Path) -> dict:
    """The record of ``recalibrate.py`` run on ``model`` with one ``--set``."""
    assert script.main(["--data", data, "--model", str(model), "--out", str(out), "--set", setting]) == 0
    return json.loads(out.read_text())


def test_recalibrating_can_judge_the_rules_on_more_validation_defects(trained_artifact, synthetic_dataset, tmp_path):
    trained_artifact.save(str(tmp_path / "model"))
    script = load_script("benchmarks/recalibrate.py")
    tables = {}
    for defects in (1, 50):
        record = _recalibrated(script, synthetic_dataset, tmp_path / "model",
                               f"calibration.validation_defects={defects}", tmp_path / f"defects{defects}.json")
        assert record["calibration_settings"] == [f"calibration.validation_defects={defects}"]
        assert set(record["lighting_drift"]) == {"normals_8pct_darker", "normals_8pct_brighter"}
        tables[defects] = record["validation"]
    assert set(tables[1]) == set(tables[50]) and tables[1] != tables[50]
    with pytest.raises(SystemExit):  # the model is trained: only calibration can change
        script.main(["--data", synthetic_dataset, "--model", str(tmp_path / "model"), "--set", "stage2.lr=1"])


def test_recalibrating_can_smooth_the_maps_differently(trained_artifact, synthetic_dataset, tmp_path):
    trained_artifact.save(str(tmp_path / "model"))
    script = load_script("benchmarks/recalibrate.py")
    pixel = {}
    for sigma in (1.0, 8.0):
        record = _recalibrated(script, synthetic_dataset, tmp_path / "model", f"anomaly_map.sigma={sigma}",
                               tmp_path / f"sigma{sigma}.json")
        pixel[sigma] = {k: v["pixel_auroc"] for k, v in record["validation"].items()}
    assert pixel[1.0].keys() == pixel[8.0].keys() and pixel[1.0] != pixel[8.0]
    with pytest.raises(SystemExit):  # the network's own settings are trained in
        script.main(["--data", synthetic_dataset, "--model", str(tmp_path / "model"),
                     "--set", "anomaly_map.normal_prob=[0,1]"])


def test_checkpoint_snapshots_are_spread_over_the_end_of_stage_2_and_include_the_last_epoch():
    study = load_script("benchmarks/checkpoint_choice.py")
    assert study.snapshot_epochs(67, 5, 0.5) == [33, 41, 49, 58, 66]
    assert study.snapshot_epochs(67, 1, 0.5) == [66]
    assert study.snapshot_epochs(3, 5, 0.0) == [0, 1, 2]  # never more snapshots than epochs
    for bad in ((67, 0, 0.5), (67, 3, 1.0)):
        with pytest.raises(ValueError):
            study.snapshot_epochs(*bad)


def test_the_checkpoint_study_compares_validations_choice_with_the_last_epoch(synthetic_dataset, tmp_path):
    out = tmp_path / "checkpoints.json"
    tiny = [*TINY, "stage1.steps=4", "stage2.steps=8", "calibration.validation_defects=20"]
    study = load_script("benchmarks/checkpoint_choice.py")
    assert study.main(["--data", synthetic_dataset, "--out", str(out), "--snapshots", "2", "--from", "0",
                       *[arg for s in tiny for arg in ("--set", s)]]) == 0
    record = json.loads(out.read_text())
    rows = record["snapshots"]
    assert [r["epoch"] for r in rows] == [1, record["last"]] and record["last"] > 1
    chosen = next(r for r in rows if r["epoch"] == record["chosen_on_validation"])
    assert chosen["validation_score"] == max(r["validation_score"] for r in rows)
    assert record["chosen_minus_last_test"]["image_auroc"] == pytest.approx(
        chosen["test_metrics"]["image_auroc"] - rows[-1]["test_metrics"]["image_auroc"])
    assert rows[0]["test_metrics"] != rows[-1]["test_metrics"]  # the snapshots are different weights
    with pytest.raises(SystemExit):
        study.main(["--data", synthetic_dataset, "--out", str(out), "--snapshots", "0"])


def test_the_training_speed_benchmark_times_each_stage_for_every_setting(synthetic_dataset, tmp_path):
    out = tmp_path / "speed.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "training_speed.py"), "--data", synthetic_dataset,
           "--threads", "1", "--loader-workers", "0", "1", "--out", str(out),
           *[arg for s in TINY for arg in ("--set", s)]]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    record = json.loads(out.read_text())
    assert [(r["threads"], r["loader_workers"]) for r in record["runs"]] == [(1, 0), (1, 1)]
    for run in record["runs"]:
        assert run["stage1_epoch_seconds"] > 0 and run["stage2_epoch_seconds"] > 0
    assert record["planned"]["threads"] >= 1 and record["machine"]["cpu_cores"] >= 1


def test_the_rule_choice_procedures_pick_as_their_names_say():
    procedures = load_script("benchmarks/rule_choice.py").PROCEDURES
    table = {"a/max": {"image_auroc": 0.950, "pixel_auroc": 0.990},   # best image, and best image + pixel
             "b/max": {"image_auroc": 0.949, "pixel_auroc": 0.980},
             "c/max": {"image_auroc": 0.947, "pixel_auroc": 0.993},   # within 0.005 of the best image
             "d/max": {"image_auroc": 0.930, "pixel_auroc": 0.999}}   # the best pixel, far behind on image
    assert procedures["image+pixel"](table) == "a/max"
    assert procedures["image only"](table) == "a/max"
    assert procedures["image, ties within 0.002 by pixel"](table) == "a/max"
    assert procedures["image, ties within 0.005 by pixel"](table) == "c/max"
    assert procedures["map-by-pixel"](table) == "d/max"


def test_the_bagged_rule_choice_keeps_the_rule_most_resamples_pick_and_breaks_ties_by_the_images_as_drawn():
    vote = load_script("benchmarks/rule_choice.py").BAGGED["image+pixel, bagged"]
    drawn = {"a/max": {"image_auroc": 0.95, "pixel_auroc": 0.99}, "b/max": {"image_auroc": 0.94, "pixel_auroc": 0.99}}
    b_wins = {"a/max": {"image_auroc": 0.93, "pixel_auroc": 0.99}, "b/max": {"image_auroc": 0.94, "pixel_auroc": 0.99}}
    assert vote([drawn, b_wins, b_wins]) == "b/max"
    assert vote([drawn, b_wins]) == "a/max"   # one pick each: the images as drawn decide


def test_resampled_validation_tables_redraw_whole_normals_and_keep_pixel_auroc():
    study = load_script("benchmarks/rule_choice.py")
    # two held-back normals (0, 1), each with one synthetic defect; only normal 1's defect scores high
    labels, source = np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])
    scores = np.array([0.5, 0.1, 0.2, 0.9])
    outputs = {"mean": (None, {"max": scores})}
    table = {"mean/max": {"image_auroc": 0.75, "pixel_auroc": 0.9}}
    tables = study.resampled_tables(table, outputs, np.arange(4), labels, source, 40, np.random.default_rng(0))
    assert tables[0] is table and len(tables) == 41
    assert all(t["mean/max"]["pixel_auroc"] == 0.9 for t in tables)
    # a resample holds normal 0 and its defect twice (AUROC 0), normal 1 twice (1), or one of each (0.75)
    assert {t["mean/max"]["image_auroc"] for t in tables[1:]} == {0.0, 0.75, 1.0}


def test_the_rule_choice_study_judges_each_pick_on_the_other_half_of_the_held_back_images(
        synthetic_dataset, model_dir, tmp_path):
    study = load_script("benchmarks/rule_choice.py")
    out = tmp_path / "rule-choice.json"
    assert study.main(["--data", synthetic_dataset, "--model", model_dir, "--splits", "3", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    (model,) = record["models"].values()
    procedures = set(study.PROCEDURES) | set(study.BAGGED)
    assert model["splits"] == 3 and set(model["procedures"]) == procedures
    for row in model["procedures"].values():
        # no procedure can beat the best rule of the half it is judged on
        assert 0.0 <= row["b_image_auroc"] <= model["best_rule_on_b_image_auroc"] + 1e-12
        assert 0.0 <= row["b_pixel_auroc"] <= 1.0 and 1 <= row["distinct_rules_picked"] <= 3
    assert set(record["summary"]) == procedures


def test_the_rule_choice_test_report_shows_what_each_choice_picks_from_a_quality_file(tmp_path):
    study = load_script("benchmarks/rule_choice.py")
    validation = {"prob/max": {"image_auroc": 0.99, "pixel_auroc": 0.97},     # image+pixel's pick
                  "mean/max": {"image_auroc": 0.95, "pixel_auroc": 0.99}}     # map-by-pixel's pick
    test = {"prob/max": {"image_auroc": 0.80, "pixel_auroc": 0.70},
            "mean/max": {"image_auroc": 0.90, "pixel_auroc": 0.75}}
    path = tmp_path / "quality.json"
    path.write_text(json.dumps({"command": "python benchmarks/quality.py --data ../x/tiles --recipe cpu",
                                "validation_table": validation, "test_ablation_map_rules": test}))
    (tmp_path / "other.json").write_text(json.dumps({"command": "python benchmarks/quality.py --data ../x/tiles"}))
    report = study.report_on_test_sets([str(path), str(tmp_path / "other.json")])["tiles"]
    assert report["image+pixel"]["files"] == 1 and report["image+pixel"]["mean_test_image_auroc"] == 0.80
    assert report["map-by-pixel"]["mean_test_pixel_auroc"] == 0.75
    assert report["map-by-pixel"]["image_better_than_image+pixel"] == 1
