"""Scoring alone: give a saved model today's map rules and calibration, then evaluate it.

    python benchmarks/recalibrate.py --data PATH/TO/magnetic_tile --model MODEL_DIR \
        --out benchmarks/results/recalibrated-<name>.json

Re-runs calibration on the model's own held-back normals (the same split its training
used: the split is a function of the data and the config's seed), so the map rule is chosen
among every combination and score rule this version knows (the normal-referenced maps
included) on validation data only, then evaluates on the test set. With a model trained
before those rules existed, this measures what the new scoring alone is worth.
``--set calibration.KEY=VALUE`` calibrates with other settings than the model was trained
with (e.g. more validation defects); ``--set anomaly_map.KEY=VALUE`` changes how maps are
made from the model's outputs (``sigma``, ``topk_fraction``, ``pool_fraction``).
The record has the lighting-drift rows ``quality.py`` writes, under the rule chosen again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from raymae.artifact import ModelArtifact
from raymae.calibration import calibrate
from raymae.evaluate import evaluate
from raymae.training.local import load_training_data

# What --set may change: calibration, and the map settings that act after the network.
SETTABLE = ("calibration.", "anomaly_map.sigma=", "anomaly_map.topk_fraction=", "anomaly_map.pool_fraction=")

sys.path.insert(0, str(Path(__file__).parent))
from quality import lighting_drift, with_settings  # noqa: E402


def recalibrated(artifact: ModelArtifact, data_uri: str) -> ModelArtifact:
    """``artifact`` with its map rule and threshold chosen again on its held-back normals."""
    training = load_training_data(data_uri, artifact.config)
    cfg, calibration = calibrate(artifact.predictor(), training.holdout, artifact.config)
    return dataclasses.replace(artifact, config=cfg, calibration=calibration)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="the MVTec-AD style folder the model was trained on")
    p.add_argument("--model", required=True, help="a saved model (raymae train --out, quality.py --save-model)")
    p.add_argument("--out", help="results file (JSON); printed when absent")
    p.add_argument("--set", action="append", default=[], metavar="calibration.KEY=VALUE",
                   help="calibrate with this setting changed (repeatable); also anomaly_map.sigma, "
                        "anomaly_map.topk_fraction, anomaly_map.pool_fraction")
    args = p.parse_args(argv)
    if any(not item.startswith(SETTABLE) for item in args.set):
        p.error("--set changes calibration settings (calibration.KEY=VALUE) and anomaly_map.sigma, "
                "anomaly_map.topk_fraction or anomaly_map.pool_fraction only: the model is trained")
    before = ModelArtifact.load(args.model)
    after = recalibrated(dataclasses.replace(before, config=with_settings(before.config, args.set)), args.data)
    result, test, _ = evaluate(after, args.data)
    amap = before.config.anomaly_map
    record = {
        "command": "python benchmarks/recalibrate.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "calibration_settings": args.set,
        "map_rule_before": f"{amap.combination}/{amap.score_rule}",
        "map_rule_chosen_on_validation": result.map_rule,
        "metrics": result.metrics,
        "per_type": result.per_type,
        "lighting_drift": lighting_drift(after, test, "cpu", result.metrics),
        "validation": after.calibration.validation,
    }
    text = json.dumps(record, indent=2, default=float)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(f"rule {record['map_rule_before']} -> {result.map_rule}: "
          + ", ".join(f"{k} {v:.3f}" for k, v in result.metrics.items() if v is not None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
