"""The command line: clear messages for wrong input, and evaluate's outputs."""

import dataclasses
import json

import pytest

from raymae.cli import main, recipe_from_args, build_parser
from raymae.config import unseen_corruption


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_train_on_a_missing_folder_says_so_and_nothing_else(capsys, tmp_path):
    code, _, err = run(capsys, "train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "m"))
    assert code == 2 and "data folder not found" in err
    [line] = err.strip().splitlines()
    assert line.startswith("raymae train: error: data folder not found")


class TrainingStarted(Exception):
    pass


def test_training_a_frozen_encoder_from_scratch_suggests_training_it(capsys, tmp_path, monkeypatch,
                                                                     synthetic_dataset):
    def start(*args, **kwargs):
        raise TrainingStarted

    monkeypatch.setattr("raymae.training.local.train_local", start)
    for extra, noted in ((("--recipe", "paper"), True), (("--recipe", "paper", "--train-encoder"), False),
                         ((), False)):  # the default recipe trains the encoder
        with pytest.raises(TrainingStarted):
            main(["train", "--data", synthetic_dataset, "--out", str(tmp_path / "m"), "--local", *extra])
        assert ("--train-encoder (or the cpu or gpu recipe) usually detects better"
                in capsys.readouterr().err) is noted


def test_train_on_an_empty_train_good_says_so(capsys, tmp_path):
    (tmp_path / "d" / "train" / "good").mkdir(parents=True)
    code, _, err = run(capsys, "train", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "m"))
    assert code == 2 and "no training images" in err


def test_train_on_a_bad_uri_says_so(capsys, tmp_path):
    code, _, err = run(capsys, "train", "--data", "gs://bucket/data", "--out", str(tmp_path / "m"))
    assert code == 2 and "unsupported URI scheme" in err


def test_wrong_arguments_are_explained(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--data", "x", "--out", "y", "--workers", "0"])
    assert exit_info.value.code == 2
    assert "--workers: must be at least 1" in capsys.readouterr().err


def test_loader_workers_are_a_count_or_auto(capsys):
    from raymae.cli import build_parser

    assert build_parser().parse_args(["train", "--data", "x", "--out", "y"]).loader_workers is None
    assert build_parser().parse_args(["train", "--data", "x", "--out", "y", "--loader-workers", "3"]).loader_workers == 3
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--data", "x", "--out", "y", "--loader-workers", "many"])
    assert exit_info.value.code == 2
    assert "--loader-workers: 'many' is not a whole number (a count of 0 or more, or auto)" in capsys.readouterr().err


def test_a_patch_size_that_does_not_divide_the_image_is_refused(capsys, tmp_path):
    code, _, err = run(capsys, "train", "--data", str(tmp_path), "--out", str(tmp_path / "m"),
                       "--image-size", "100", "--patch-size", "16")
    assert code == 2 and "multiple of patch size" in err


def test_flags_override_the_config_file(tmp_path):
    (tmp_path / "recipe.json").write_text(json.dumps({"stage1": {"epochs": 7, "mask_ratio": 0.5}}))
    args = build_parser().parse_args(["train", "--data", "d", "--out", "o", "--config",
                                      str(tmp_path / "recipe.json"), "--stage2-epochs", "4",
                                      "--model-size", "small", "--pixel-head", "fusion", "--train-encoder"])
    cfg = recipe_from_args(args)
    assert (cfg.stage1.epochs, cfg.stage1.mask_ratio, cfg.stage2.epochs, cfg.model.size) == (7, 0.5, 4, "small")
    assert cfg.model.pixel_head == "fusion" and not cfg.stage2.freeze_encoder


def parsed(*argv):
    return recipe_from_args(build_parser().parse_args(["train", "--data", "d", "--out", "o", *argv]))


def test_train_uses_the_recipe_for_the_hardware_unless_told_otherwise(tmp_path):
    from raymae.recipes import recipe

    assert parsed() == recipe("cpu") and parsed("--gpu") == recipe("gpu")
    assert parsed("--recipe", "paper") == recipe("paper")
    (tmp_path / "c.json").write_text(json.dumps({"recipe": "gpu", "stage2": {"lr": 1e-4}}))
    from_file = parsed("--config", str(tmp_path / "c.json"))
    assert from_file.model == recipe("gpu").model and from_file.stage2.lr == 1e-4
    assert parsed("--config", str(tmp_path / "c.json"), "--recipe", "cpu").model == recipe("cpu").model


def test_stage_lengths_can_be_given_in_epochs_or_steps_but_not_both():
    cfg = parsed("--stage1-epochs", "5", "--stage2-steps", "100")
    assert (cfg.stage1.epochs, cfg.stage1.steps) == (5, 0) and cfg.stage2.steps == 100
    with pytest.raises(Exception, match="epochs or in steps, not both"):
        parsed("--stage1-epochs", "5", "--stage1-steps", "100")


def test_a_config_file_that_is_not_json_is_explained(capsys, tmp_path):
    (tmp_path / "c.json").write_text("stage1: 3")
    code, _, err = run(capsys, "train", "--data", str(tmp_path), "--out", str(tmp_path / "m"),
                       "--config", str(tmp_path / "c.json"))
    assert code == 2 and "is not valid JSON" in err


def test_a_config_file_that_sets_part_of_a_section_keeps_the_defaults_of_the_rest(tmp_path):
    (tmp_path / "recipe.json").write_text(json.dumps({"calibration": {"validation_corruption": {"line_share": 0.3}}}))
    args = build_parser().parse_args(["train", "--data", "d", "--out", "o", "--config", str(tmp_path / "recipe.json")])
    cfg = recipe_from_args(args)
    assert cfg.calibration.validation_corruption == dataclasses.replace(unseen_corruption(), line_share=0.3)
    assert cfg.model == recipe_from_args(build_parser().parse_args(["train", "--data", "d", "--out", "o"])).model


def test_evaluate_prints_a_table_and_writes_its_files(capsys, trained_artifact, synthetic_dataset, tmp_path):
    trained_artifact.save(str(tmp_path / "model"))
    code, out, _ = run(capsys, "evaluate", "--data", synthetic_dataset, "--model", str(tmp_path / "model"),
                       "--output", str(tmp_path / "eval"))
    assert code == 0
    assert "image_auroc" in out and "scratch" in out
    assert (tmp_path / "eval" / "metrics.json").exists() and (tmp_path / "eval" / "scores.parquet").exists()
    assert "<h1>Evaluation of model" in (tmp_path / "eval" / "report.html").read_text(encoding="utf-8")


def test_evaluate_without_a_model_says_so(capsys, synthetic_dataset, tmp_path):
    code, _, err = run(capsys, "evaluate", "--data", synthetic_dataset, "--model", str(tmp_path),
                       "--output", str(tmp_path / "eval"))
    assert code == 2 and "no raymae model" in err


def strict_json(path) -> dict:
    """A JSON file that must be standard JSON (no NaN or Infinity)."""
    def refuse(constant):
        raise ValueError(f"{path} holds {constant}, which is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


DEFECTS = ("scratch", "spot", "stain")


def test_evaluate_on_folders_with_masks_gives_the_metrics_of_the_mvtec_layout(capsys, trained_artifact,
                                                                              synthetic_dataset, tmp_path):
    trained_artifact.save(str(tmp_path / "model"))
    root, model = synthetic_dataset, str(tmp_path / "model")
    assert run(capsys, "evaluate", "--data", root, "--model", model, "--output", str(tmp_path / "mvtec"))[0] == 0
    code, out, _ = run(capsys, "evaluate", "--normal", f"{root}/test/good",
                       "--abnormal", *[f"{root}/test/{d}" for d in DEFECTS],
                       "--masks", *[f"{root}/ground_truth/{d}" for d in DEFECTS],
                       "--model", model, "--output", str(tmp_path / "folders"))
    assert code == 0 and "absent" not in out
    mvtec, folders = strict_json(tmp_path / "mvtec" / "metrics.json"), strict_json(tmp_path / "folders" / "metrics.json")
    assert folders["metrics"] == pytest.approx(mvtec["metrics"]) and folders["metrics"]["pixel_auroc"] > 0.5
    assert folders["per_type"].keys() == mvtec["per_type"].keys() == set(DEFECTS)
    for d in DEFECTS:
        assert folders["per_type"][d] == pytest.approx(mvtec["per_type"][d])


def test_evaluate_on_folders_without_masks_reports_image_metrics_and_pixel_metrics_as_absent(
        capsys, trained_artifact, synthetic_dataset, tmp_path):
    trained_artifact.save(str(tmp_path / "model"))
    root = synthetic_dataset
    code, out, _ = run(capsys, "evaluate", "--normal", f"{root}/test/good",
                       "--abnormal", *[f"{root}/test/{d}" for d in DEFECTS],
                       "--model", str(tmp_path / "model"), "--output", str(tmp_path / "eval"))
    assert code == 0
    result = strict_json(tmp_path / "eval" / "metrics.json")
    for row in [result["metrics"], *result["per_type"].values()]:
        assert row["pixel_auroc"] is row["aupro"] is row["pixel_ap"] is None
        assert 0 <= row["image_auroc"] <= 1 and 0 <= row["image_f1_max"] <= 1
    assert result["extra"]["pixel_metrics"].startswith("absent")
    all_row = next(line for line in out.splitlines() if line.startswith("all "))
    assert all_row.split()[1:] == [f"{result['metrics']['image_auroc']:.4f}", "-", "-", "-",
                                   f"{result['metrics']['image_f1_max']:.4f}", str(result["n_images"])]
    assert "pixel metrics (pixel_auroc, aupro, pixel_ap): absent" in out
    page = (tmp_path / "eval" / "report.html").read_text(encoding="utf-8")
    assert 'id="no-masks"' in page and 'id="pro"' not in page and 'id="roc"' in page


@pytest.mark.parametrize("argv, message", [
    (["--data", "d", "--normal", "n"], "give --data (an MVTec-AD folder) or --normal/--abnormal folders, not both"),
    (["--normal", "n"], "give --data (an MVTec-AD folder), or --normal and --abnormal"),
    (["--abnormal", "a", "--masks", "m"], "give --data (an MVTec-AD folder), or --normal and --abnormal"),
    ([], "give --data (an MVTec-AD folder), or --normal and --abnormal"),
])
def test_evaluate_is_given_an_mvtec_folder_or_normal_and_abnormal_folders(capsys, tmp_path, argv, message):
    code, _, err = run(capsys, "evaluate", *argv, "--model", str(tmp_path / "no-model"),
                       "--output", str(tmp_path / "eval"))
    assert code == 2
    [line] = err.strip().splitlines()  # one line, and about the arguments, not the model
    assert line.startswith(f"raymae evaluate: error: {message}")


def test_evaluate_on_folders_with_masks_that_pair_with_nothing_says_so_before_loading_the_model(capsys, tmp_path,
                                                                                             synthetic_dataset):
    root = synthetic_dataset
    code, _, err = run(capsys, "evaluate", "--normal", f"{root}/test/good", "--abnormal", f"{root}/test/scratch",
                       "--masks", f"{root}/ground_truth/scratch", f"{root}/ground_truth/spot",
                       "--model", str(tmp_path / "no-model"), "--output", str(tmp_path / "eval"))
    assert code == 2 and "2 --masks folders for 1 --abnormal folders" in err and "no raymae model" not in err


def test_train_takes_a_plain_folder_of_normal_images(capsys, tmp_path, synthetic_dataset):
    import shutil

    from raymae.artifact import ModelArtifact

    folder = tmp_path / "line-3" / "2026-11-30"  # no train/good: the images straight from a camera
    shutil.copytree(f"{synthetic_dataset}/train/good", folder / "cam-a")
    n = len(list((folder / "cam-a").iterdir()))
    code, out, err = run(capsys, "train", "--data", str(tmp_path / "line-3"), "--out", str(tmp_path / "m"),
                         "--local", "--model-size", "tiny", "--image-size", "32", "--patch-size", "8",
                         "--stage1-epochs", "1", "--stage2-epochs", "1", "--batch-size", "16")
    assert code == 0, err
    info = ModelArtifact.load(str(tmp_path / "m")).info
    assert info["train_images"] + info["holdout_images"] == n and info["data"] == str(tmp_path / "line-3")
    assert info["train_precision"] in ("fp32", "bf16")  # what trained, never "auto"


@pytest.mark.slow
def test_the_demo_runs_the_whole_path_from_synthetic_data_to_nightly_parquet(ray_local, tmp_path, capsys):
    import pyarrow.dataset as pds

    code = main(["demo", "--workdir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    metrics = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())["metrics"]
    assert metrics["image_auroc"] > 0.8  # the synthetic defects are easy
    (partition,) = (tmp_path / "scores").iterdir()
    table = pds.dataset(str(partition), format="parquet").to_table()
    assert table.num_rows == len(list((tmp_path / "data" / "test").glob("*/*.png")))
    assert set(table.column("status").to_pylist()) == {"ok"}
    assert "anomalous" in out and "images/s" in out
    page = (tmp_path / "report" / "index.html").read_text(encoding="utf-8")
    assert f'id="images">{table.num_rows}<' in page
    assert (tmp_path / "evaluation" / "report.html").exists()
