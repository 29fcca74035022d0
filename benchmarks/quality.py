"""Detection quality on real data: train on an MVTec-AD style folder, evaluate, record.

    python benchmarks/quality.py --data PATH/TO/magnetic_tile --recipe cpu
    python benchmarks/quality.py --data PATH/TO/magnetic_tile --recipe gpu --device cuda \
        --budget-minutes 6 --loader-workers 12

Trains both stages in one process (the same loop Ray Train wraps; no Ray needed,
so it runs on a bare GPU machine too), evaluates with ``raymae.evaluate`` and
writes ``benchmarks/results/quality-<machine>.json`` with the metrics, the
per-defect rows, an ablation of every anomaly-map rule on the test set (for the
report only: the model's own rule was chosen on validation data), the recipe,
the wall time and the machine.

``--budget-minutes`` fits the epoch counts to a training-time budget: two
throwaway epochs of each stage are timed on this machine first, then each
stage gets its share of the budget (the epochs actually run are in the
results file, so the recipe stays reproducible on any machine).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from raymae.anomaly_map import COMBINATIONS, SCORE_RULES, make_anomaly_map
from raymae.config import RaymaeConfig
from raymae.recipes import RECIPES, recipe
from raymae.corruption import corrupt_seeded, exposure_change
from raymae.evaluate import compute_metrics, evaluate, format_table
from raymae.metrics import image_metrics
from raymae.training.local import load_training_data, train_local
from raymae.training.loop import resolve_schedules, train_two_stages
from raymae.training.resources import plan_resources, resources_used

RESULTS = Path(__file__).parent / "results"

def epoch_seconds(cfg: RaymaeConfig, images, device: str, loader_workers: int) -> dict[str, float]:
    """Seconds per epoch of each stage on this machine: the second of two throwaway epochs."""
    probe = dataclasses.replace(
        cfg, stage1=dataclasses.replace(cfg.stage1, epochs=2, steps=0, warmup_epochs=1),
        stage2=dataclasses.replace(cfg.stage2, epochs=2, steps=0, warmup_epochs=1))
    seconds: dict[str, float] = {}

    def hook(result, model, optimizer) -> None:
        seconds[f"stage{result.stage}"] = result.seconds  # the second epoch overwrites the first

    train_two_stages(probe, images, torch.device(device), loader_workers=loader_workers, on_epoch_end=hook)
    return seconds


def fit_to_budget(cfg: RaymaeConfig, seconds: dict[str, float], budget_s: float,
                  stage1_share: float) -> RaymaeConfig:
    """Epoch counts that fill ``budget_s`` (warm-up kept as the recipe's share of each stage).

    ``cfg``'s stages must already be resolved to epochs (``resolve_schedules``)."""
    def fit(stage, share: float, per_epoch: float):
        epochs = max(1, int(budget_s * share / per_epoch))
        warmup = max(1, round(epochs * stage.warmup_epochs / max(stage.epochs, 1)))
        return dataclasses.replace(stage, epochs=epochs, steps=0, warmup_epochs=min(warmup, epochs))

    return dataclasses.replace(cfg, stage1=fit(cfg.stage1, stage1_share, seconds["stage1"]),
                               stage2=fit(cfg.stage2, 1.0 - stage1_share, seconds["stage2"]))


def machine() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "cpu_cores": os.cpu_count(), "processor": platform.processor()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def machine_tag() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0).split()[-1].lower().replace(" ", "-")
    return f"cpu-{os.cpu_count()}core"


def constant_prediction_ce(label_share: float, class_weights: tuple[float, float]) -> float:
    """Stage 2's class-weighted cross-entropy for the best *constant* prediction, when a share
    ``label_share`` of the pixels is labelled anomalous: where the CE sits while the pixel
    classifier has learned nothing but the prior (torch's weighted mean: sum w*nll / sum w)."""
    normal, anomalous = (1 - label_share) * class_weights[0], label_share * class_weights[1]
    if normal <= 0 or anomalous <= 0:
        return 0.0
    p = anomalous / (normal + anomalous)  # the minimiser
    return -(normal * math.log(1 - p) + anomalous * math.log(p)) / (normal + anomalous)


def classifier_diagnosis(cfg: RaymaeConfig, images, history: list[dict], samples: int = 1000) -> dict:
    """Did stage 2's pixel classifier learn, and from which epoch? Its CE is compared with a constant
    prediction's, for the anomalous-label share of ``samples`` seeded corruptions of the training images."""
    picked = images[:: max(1, len(images) // samples)][:samples]
    share = float(np.mean([corrupt_seeded(im, cfg.corruption, cfg.seed, i).mask.mean()
                           for i, im in enumerate(picked)]))
    prior = constant_prediction_ce(share, cfg.stage2.class_weights)
    below = [h["epoch"] for h in history if h["stage"] == 2 and h.get("ce", prior) < 0.9 * prior]
    return {"anomalous_label_share": round(share, 5), "constant_prediction_ce": round(prior, 4),
            "first_epoch_ce_below_90pct_of_constant": below[0] if below else None}


def ablation(artifact, test, device: str) -> dict:
    """Test-set metrics for every combination x score rule from one set of raw maps."""
    raw = artifact.predictor(device).raw_maps(test.images)
    rows = {}
    for comb in COMBINATIONS:
        pixel = None
        for rule in SCORE_RULES:
            cfg = dataclasses.replace(artifact.config.anomaly_map, combination=comb, score_rule=rule)
            maps, scores = make_anomaly_map(raw.recon_error, raw.prob, cfg)
            if pixel is None:  # pixel metrics do not depend on the score rule
                pixel = compute_metrics(test.labels, scores.numpy(), test.masks, maps.numpy())
            rows[f"{comb}/{rule}"] = {**pixel, **image_metrics(test.labels, scores.numpy())}  # this rule's
    return rows


def with_settings(cfg: RaymaeConfig, settings: list[str]) -> RaymaeConfig:
    """``cfg`` with each ``SECTION.KEY=VALUE`` applied. VALUE is JSON (``[10,50]``, ``0.5``,
    ``"per_image"``); a bare word that is not JSON is taken as a string (``per_image``)."""
    data = cfg.to_dict()
    for item in settings:
        key, sep, text = item.partition("=")
        *sections, name = key.split(".")
        target = data
        for section in sections:
            target = target.get(section) if isinstance(target, dict) else None
        if not sep or not isinstance(target, dict):
            raise SystemExit(f"--set {item!r}: expected SECTION.KEY=VALUE with a known section")
        try:
            target[name] = json.loads(text)
        except json.JSONDecodeError:
            target[name] = text
    return RaymaeConfig.from_dict(data)


def with_lighting_drift(images: np.ndarray, labels: np.ndarray, gain: float) -> np.ndarray:
    """The test images with every *normal* one's brightness multiplied by ``gain`` (clipped to 0-255),
    the defective ones left as they are: a lamp that aged between the normal and the defect photos."""
    out = images.copy()
    normal = labels == 0
    out[normal] = exposure_change(images[normal], gain)
    return out


DRIFTS = {"normals_8pct_darker": 0.92, "normals_8pct_brighter": 1.08}


def lighting_drift(artifact, test, device: str, unchanged: dict) -> dict:
    """Image and pixel AUROC when the normal test images are 8 % darker or brighter, and the change
    against the unchanged test set (a global lighting change must not read as an anomaly)."""
    predictor = artifact.predictor(device)
    rows = {}
    for name, gain in DRIFTS.items():
        pred = predictor.predict(with_lighting_drift(test.images, test.labels, gain))
        row = compute_metrics(test.labels, pred.scores, test.masks, pred.maps)
        rows[name] = {"gain": gain, "image_auroc": row["image_auroc"], "pixel_auroc": row["pixel_auroc"],
                      "image_auroc_change": row["image_auroc"] - unchanged["image_auroc"]}
    return rows


def add_training_arguments(p: argparse.ArgumentParser) -> None:
    """--data, --recipe, --device and --set: what the training benchmarks share."""
    p.add_argument("--data", required=True)
    p.add_argument("--recipe", choices=sorted(RECIPES), default="cpu")
    p.add_argument("--device", default="cpu")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one recipe setting, e.g. --set stage1.steps=400 or --set intensity=per_image_gain (JSON values; a bare word is a string)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_arguments(p)
    p.add_argument("--out", help="results file (default benchmarks/results/quality-<machine>.json)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--loader-workers", type=int, default=None,
                   help="DataLoader processes that prepare (corrupt) batches (default: as raymae train decides)")
    p.add_argument("--budget-minutes", type=float, default=None,
                   help="fit both stages' epoch counts to this much training time on this machine")
    p.add_argument("--stage1-share", type=float, default=0.4, help="stage 1's share of the budget")
    p.add_argument("--save-model", metavar="URI",
                   help="also write the trained model artifact here (for later analysis; never commit it)")
    args = p.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = with_settings(recipe(args.recipe), args.set)

    start = time.time()
    training = load_training_data(args.data, cfg)
    args.loader_workers = plan_resources(args.device.startswith("cuda"),
                                         loader_workers=args.loader_workers).loader_workers
    probe = None
    if args.budget_minutes:
        probe = epoch_seconds(cfg, training.train, args.device, args.loader_workers)
        cfg = fit_to_budget(resolve_schedules(cfg, len(training.train)), probe, args.budget_minutes * 60,
                            args.stage1_share)
        print(f"probe: {probe} s/epoch -> stage 1 {cfg.stage1.epochs} epochs, "
              f"stage 2 {cfg.stage2.epochs} epochs", flush=True)
    out = Path(args.out) if args.out else RESULTS / f"quality-{machine_tag()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "status": "training",
        "dataset": Path(args.data.rstrip("/")).name,
        "command": "python benchmarks/quality.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "recipe_name": args.recipe,
        "budget_minutes": args.budget_minutes,
        "probe_epoch_seconds": probe,
        **resources_used(args.loader_workers),
    }

    def save(status: str, **fields) -> None:
        """Rewrite the results file after each phase, so a run cut short keeps what it reached."""
        record.update(fields, status=status, wall_seconds=round(time.time() - start, 1))
        out.write_text(json.dumps(record, indent=2, default=float))

    save("training", recipe=cfg.to_dict())
    train_start = time.time()
    artifact = train_local(args.data, cfg, args.device, loader_workers=args.loader_workers,
                           training=training)
    if args.save_model:
        artifact.save(args.save_model)
    save("trained and calibrated; evaluating", recipe=artifact.config.to_dict(),
         validation_table=artifact.calibration.validation,
         train_images=artifact.info["train_images"], holdout_images=artifact.info["holdout_images"],
         loss_history=artifact.info["history"],
         stage2_classifier=classifier_diagnosis(artifact.config, training.train, artifact.info["history"]),
         train_seconds=round(time.time() - train_start, 1))  # both stages and calibration
    eval_start = time.time()
    result, test, _ = evaluate(artifact, args.data, args.device)
    print(format_table(result))
    save("evaluated; lighting drift running", map_rule_chosen_on_validation=result.map_rule,
         metrics=result.metrics, per_type=result.per_type,
         threshold={"value": result.threshold, **result.extra}, test_images=result.n_images,
         evaluate_seconds=round(time.time() - eval_start, 1))
    drift_start = time.time()
    save("evaluated; map-rule ablation running", lighting_drift=lighting_drift(artifact, test, args.device, result.metrics),
         lighting_drift_seconds=round(time.time() - drift_start, 1))
    ablation_start = time.time()
    save("complete", test_ablation_map_rules=ablation(artifact, test, args.device),
         ablation_seconds=round(time.time() - ablation_start, 1))
    print(f"wrote {out} ({record['wall_seconds'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
