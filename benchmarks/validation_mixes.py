"""Which corruptions should the map rule be chosen on? A study on a trained model.

    python benchmarks/quality.py --data PATH/TO/magnetic_tile --recipe cpu --save-model model-dir
    python benchmarks/validation_mixes.py --data PATH/TO/magnetic_tile --model model-dir --out mixes.json

Training picks the anomaly-map rule (combination x image-score rule) on the held-back
normal training images against corrupted copies of them (``raymae.calibration``).
By default the copies are corrupted like stage 2's training data, which the pixel
classifier has learned; real defects are new to it. For each validation mix below
this script chooses the rule as training would (``calibration.best_rule``) and
reports the test-set metrics of that choice, next to every rule's test metrics.
The test set only *reports* what each mix would have chosen; it chooses nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from raymae import calibration, data
from raymae.artifact import ModelArtifact
from raymae.config import CorruptionConfig, unseen_corruption
from raymae.training.local import load_training_data

sys.path.insert(0, str(Path(__file__).parent))
from quality import ablation, machine  # noqa: E402

# None = like stage 2's training corruption (the default before this study).
MIXES: dict[str, CorruptionConfig | None] = {
    "training": None,
    # thin dark or bright curves: a family the default recipes never train on
    "lines": CorruptionConfig(perlin_share=0.0, line_share=1.0),
    # the default's one small self-sourced shape (0.1-1 % of the image, darkened or brightened
    # by 10-50 grey levels) alone, smaller than training's
    "small-shapes": dataclasses.replace(unseen_corruption(), line_share=0.0),
    "lines+small-shapes": unseen_corruption(),  # half each: the default since this study
    # large, faint regions (uneven shading), bounded in size
    "regions": CorruptionConfig(perlin_share=0.0, region_share=1.0, region_area=(0.05, 0.3),
                                region_offset=(12.0, 35.0)),
}


def study(artifact: ModelArtifact, holdout, test_rules: dict[str, dict], device: str = "cpu") -> dict:
    """Per mix: the validation table, the rule it picks and that rule's test-set metrics."""
    predictor = artifact.predictor(device)
    out = {}
    for name, mix in MIXES.items():
        cfg = dataclasses.replace(artifact.config, calibration=dataclasses.replace(
            artifact.config.calibration, validation_corruption=mix))
        table = calibration.validation_table(predictor, holdout, cfg)
        rule = calibration.best_rule(table, cfg.anomaly_map)
        key = f"{rule.combination}/{rule.score_rule}"
        out[name] = {"corruption": None if mix is None else dataclasses.asdict(mix), "chosen_rule": key,
                     "test": test_rules[key], "validation_table": table}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="MVTec-AD style dataset the model was trained on")
    p.add_argument("--model", required=True, help="model artifact written by quality.py --save-model")
    p.add_argument("--out", required=True, help="results file (JSON)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    start = time.time()
    artifact = ModelArtifact.load(args.model)
    size = artifact.config.model.image_size
    test = data.load_images(data.list_test(args.data), size)
    holdout = load_training_data(args.data, artifact.config).holdout
    test_rules = ablation(artifact, test, args.device)
    mixes = study(artifact, holdout, test_rules, args.device)
    for name, row in mixes.items():
        t = row["test"]
        print(f"{name:20s} chooses {row['chosen_rule']:13s} test image AUROC {t['image_auroc']:.3f} "
              f"pixel AUROC {t['pixel_auroc']:.3f}", flush=True)
    record = {"command": "python benchmarks/validation_mixes.py " + " ".join(
                  argv if argv is not None else sys.argv[1:]),
              "machine": machine(), "model_id": artifact.model_id, "recipe": artifact.config.to_dict(),
              "holdout_images": len(holdout), "test_images": len(test.labels),
              "mixes": mixes, "test_all_rules": test_rules, "wall_seconds": round(time.time() - start, 1)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
