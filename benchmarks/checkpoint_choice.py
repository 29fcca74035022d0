"""Would picking stage 2's checkpoint on validation beat taking the last one?

    python benchmarks/checkpoint_choice.py --data PATH/TO/magnetic_tile --recipe cpu --set seed=0 \
        --snapshots 5 --out benchmarks/results/checkpoint-choice-cpu-2core-magnetic_tile-seed0.json

Trains like ``quality.py`` (same recipe, same ``--set``) and keeps a copy of the stage-2 weights
at ``--snapshots`` evenly spaced epochs over the last ``--from`` share of stage 2 (the last epoch
always among them). Each snapshot is then calibrated as training calibrates the final model:
its map rule chosen on validation data (held-back normals and their synthetic defects). The
snapshot validation prefers (the highest image + pixel AUROC of its chosen rule, the criterion
calibration ranks rules by; ties go to the later snapshot) is compared with the last one on the
test set, for the report only. One training run gives both, so the comparison is paired.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from raymae.calibration import rule_merit
from raymae.evaluate import evaluate
from raymae.model import build_model
from raymae.recipes import RECIPES, recipe
from raymae.training.local import finish_artifact, load_training_data, train_local
from raymae.training.loop import resolve_schedules

sys.path.insert(0, str(Path(__file__).parent))
from quality import machine, with_settings  # noqa: E402


def snapshot_epochs(epochs: int, snapshots: int, start: float) -> list[int]:
    """0-based stage-2 epochs after which a copy is kept: ``snapshots`` evenly spaced from
    ``start`` of the stage to its end, the last epoch always included."""
    if snapshots < 1 or not 0.0 <= start < 1.0:
        raise ValueError(f"need --snapshots >= 1 and 0 <= --from < 1, got {snapshots} and {start}")
    if snapshots == 1:
        return [epochs - 1]
    ends = (round(epochs * (start + (1.0 - start) * i / (snapshots - 1))) for i in range(snapshots))
    return sorted({min(max(e, 1), epochs) - 1 for e in ends})


def validation_score(artifact) -> float:
    """The validation merit of the rule calibration chose: the figure calibration ranks rules by."""
    am = artifact.config.anomaly_map
    return rule_merit(artifact.calibration.validation[f"{am.combination}/{am.score_rule}"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--recipe", choices=sorted(RECIPES), default="cpu")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one recipe setting, as in quality.py")
    p.add_argument("--snapshots", type=int, default=5, help="stage-2 checkpoints compared (default 5)")
    p.add_argument("--from", dest="start", type=float, default=0.5,
                   help="share of stage 2 after which snapshots start (default 0.5)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True, help="results file (JSON)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)

    start = time.time()
    cfg = with_settings(recipe(args.recipe), args.set)
    training = load_training_data(args.data, cfg)
    try:
        keep = snapshot_epochs(resolve_schedules(cfg, len(training.train)).stage2.epochs, args.snapshots, args.start)
    except ValueError as e:
        p.error(str(e))
    snapshots: dict[int, dict] = {}

    def hook(result, model, optimizer) -> None:  # the last epoch is training's own calibrated artifact
        if result.stage == 2 and result.epoch in keep[:-1]:
            snapshots[result.epoch] = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    def snapshot_artifact(epoch: int):
        model = build_model(cfg.model, stage2=True)
        model.load_state_dict(snapshots[epoch])
        return finish_artifact(model.eval(), training, cfg, last.info, args.device)

    last = train_local(args.data, cfg, args.device, on_epoch_end=hook, training=training)
    rows, test = [], None
    for epoch in keep:
        artifact = last if epoch == keep[-1] else snapshot_artifact(epoch)
        result, test, _ = evaluate(artifact, args.data, args.device, test=test)
        rows.append({"epoch": epoch + 1, "map_rule": result.map_rule,
                     "validation": artifact.calibration.validation[result.map_rule],
                     "validation_score": validation_score(artifact),
                     "test_metrics": result.metrics,
                     "test_image_auroc_per_type": {t: m["image_auroc"] for t, m in result.per_type.items()}})
        print(f"stage-2 epoch {epoch + 1}: {result.map_rule} validation {rows[-1]['validation_score']:.4f} "
              f"test image AUROC {result.metrics['image_auroc']:.3f}", flush=True)
    chosen = max(range(len(rows)), key=lambda i: (rows[i]["validation_score"], i))
    record = {
        "command": "python benchmarks/checkpoint_choice.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "recipe": cfg.to_dict(),
        "snapshots": rows,
        "chosen_on_validation": rows[chosen]["epoch"],
        "last": rows[-1]["epoch"],
        "chosen_minus_last_test": {k: (v - rows[-1]["test_metrics"][k]) if v is not None else None
                                   for k, v in rows[chosen]["test_metrics"].items()},
        "wall_seconds": round(time.time() - start, 1),
    }
    Path(args.out).write_text(json.dumps(record, indent=2, default=float) + "\n")
    print(f"validation chose epoch {record['chosen_on_validation']} of {record['last']}; test change "
          + ", ".join(f"{k} {v:+.3f}" for k, v in record["chosen_minus_last_test"].items() if v is not None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
