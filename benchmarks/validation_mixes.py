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

``--copies 1 2 4 8`` adds a second study: how many corrupted copies of each held-back
normal the default mix needs (``calibration.validation_defects`` = copies x held-back
normals). For each count it draws the copies ``--draws`` times with independent corruption
seeds (draw 0 is training's own) and reports, without the test set, how often two draws
choose the same rule and how much a rule's validation image AUROC moves between draws; then
each draw's choice's test metrics.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

from raymae import calibration, data
from raymae.artifact import ModelArtifact
from raymae.config import AnomalyMapConfig, CorruptionConfig, unseen_corruption
from raymae.training.local import load_training_data

sys.path.insert(0, str(Path(__file__).parent))
from quality import ablation, machine  # noqa: E402

DRAW_SEED_STEP = 1_000  # the copies study's draw d corrupts with the training seed + d * this

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
    # several sizes at once: a third each of thin lines, one small shape and one bounded region
    "lines+small-shapes+regions": dataclasses.replace(unseen_corruption(), line_share=1 / 3, region_share=1 / 3,
                                                      region_area=(0.05, 0.3), region_offset=(12.0, 35.0)),
}


def study(artifact: ModelArtifact, holdout, test_rules: dict[str, dict], device: str = "cpu",
          mixes: list[str] | None = None) -> dict:
    """Per mix (all, or those named): the validation table, the rule it picks and that rule's test-set metrics."""
    predictor = artifact.predictor(device)
    out = {}
    for name, mix in MIXES.items():
        if mixes and name not in mixes:
            continue
        cfg = dataclasses.replace(artifact.config, calibration=dataclasses.replace(
            artifact.config.calibration, validation_corruption=mix))
        table = calibration.validation_table(predictor, holdout, cfg)
        rule = calibration.best_rule(table, cfg.anomaly_map)
        key = f"{rule.combination}/{rule.score_rule}"
        out[name] = {"corruption": None if mix is None else dataclasses.asdict(mix), "chosen_rule": key,
                     "test": test_rules[key], "validation_table": table}
    return out


def copies_study(artifact: ModelArtifact, holdout, test_rules: dict[str, dict], counts: list[int],
                 draws: int, device: str = "cpu") -> dict:
    """Per count of copies: each draw's choice, the draws' agreement and the validation's noise."""
    predictor = artifact.predictor(device)
    raw_normals = predictor.raw_maps(holdout)
    default = AnomalyMapConfig()  # ties keep the rule a recipe starts from, as in training
    configured = dataclasses.replace(artifact.config.anomaly_map, combination=default.combination,
                                     score_rule=default.score_rule)
    out = {}
    for copies in counts:
        runs = []
        for draw in range(draws):
            cfg = dataclasses.replace(
                artifact.config, seed=artifact.config.seed + DRAW_SEED_STEP * draw,
                calibration=dataclasses.replace(artifact.config.calibration,
                                                validation_defects=copies * len(holdout)))
            table = calibration.validation_table(predictor, holdout, cfg, raw_normals=raw_normals)
            rule = calibration.best_rule(table, configured)
            key = f"{rule.combination}/{rule.score_rule}"
            runs.append({"chosen_rule": key, "test": test_rules[key], "validation_table": table})
        pairs = list(itertools.combinations(range(draws), 2))
        spread = np.std([[r["validation_table"][k]["image_auroc"] for k in test_rules] for r in runs], axis=0)
        out[str(copies)] = {
            "draws": runs,
            "pairs_choosing_the_same_rule": (sum(runs[a]["chosen_rule"] == runs[b]["chosen_rule"] for a, b in pairs)
                                             / len(pairs)) if pairs else None,
            "validation_image_auroc_std_between_draws": float(spread.mean()),
            "test_image_auroc_of_choices": [r["test"]["image_auroc"] for r in runs],
        }
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="MVTec-AD style dataset the model was trained on")
    p.add_argument("--model", required=True, help="model artifact written by quality.py --save-model")
    p.add_argument("--out", required=True, help="results file (JSON)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--mixes", nargs="+", choices=list(MIXES), metavar="MIX",
                   help=f"study only these mixes (of {', '.join(MIXES)}); all by default")
    p.add_argument("--copies", type=int, nargs="+", metavar="K",
                   help="also study these counts of validation copies per held-back normal")
    p.add_argument("--draws", type=int, default=3, help="independent corruption draws per count (--copies)")
    args = p.parse_args(argv)
    if args.copies and (min(args.copies) < 1 or args.draws < 1):
        p.error("--copies counts and --draws must be at least 1")

    start = time.time()
    artifact = ModelArtifact.load(args.model)
    size = artifact.config.model.image_size
    test = data.load_images(data.list_test(args.data), size)
    holdout = load_training_data(args.data, artifact.config).holdout
    test_rules = ablation(artifact, test, args.device)
    mixes = study(artifact, holdout, test_rules, args.device, args.mixes)
    for name, row in mixes.items():
        t = row["test"]
        print(f"{name:20s} chooses {row['chosen_rule']:13s} test image AUROC {t['image_auroc']:.3f} "
              f"pixel AUROC {t['pixel_auroc']:.3f}", flush=True)
    copies = copies_study(artifact, holdout, test_rules, args.copies, args.draws, args.device) if args.copies else None
    for count, row in (copies or {}).items():
        print(f"{count} copies: draws choose {[r['chosen_rule'] for r in row['draws']]}, same rule in "
              f"{row['pairs_choosing_the_same_rule']} of the pairs, validation image AUROC std between draws "
              f"{row['validation_image_auroc_std_between_draws']:.4f}, test image AUROC of the choices "
              f"{[round(a, 3) for a in row['test_image_auroc_of_choices']]}", flush=True)
    record = {"command": "python benchmarks/validation_mixes.py " + " ".join(
                  argv if argv is not None else sys.argv[1:]),
              "machine": machine(), "model_id": artifact.model_id, "recipe": artifact.config.to_dict(),
              "holdout_images": len(holdout), "test_images": len(test.labels),
              "mixes": mixes, "test_all_rules": test_rules,
              "copies": copies, "wall_seconds": round(time.time() - start, 1)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
