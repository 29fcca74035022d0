"""How should calibration pick the map rule? Split-half replay on validation data only.

    python benchmarks/rule_choice.py --data PATH/TO/mvtec_bottle --model MODEL_DIR [--model ...] \
        --splits 40 --out benchmarks/results/rule-choice-<name>.json

Calibration ranks every map rule (combination x image-score rule) on held-back normals against
synthetic defects and keeps the best. With few held-back normals (bottle holds back 21) several
rules lie within a few thousandths of each other and which one wins is partly luck of the draw.
This replays candidate *procedures* (how a rule is picked from the validation table) without the
test set: the held-back normals are split at random in two halves, each with the synthetic defects
made from its own normals; a procedure picks on half A (the normal-map quantiles measured on A's
normals, for both halves) and the pick is judged on half B. Repeated over ``--splits`` splits per model, the
procedure with the higher mean image AUROC on B picks better on unseen images of the same kind.
The test set is not read. ``image+pixel, bagged`` asks whether a steadier pick pays: it keeps the
rule ``image+pixel`` picks most often over ``--resamples`` bootstrap resamples of A's held-back
normals (each with its own synthetic defects).

    python benchmarks/rule_choice.py --report-test benchmarks/results/quality-*.json

reports instead what each of ``calibration.rule_choice``'s choices picks from each quality results
file's full validation table, with that rule's test figures from the file's test-set ablation:
for the report only, after the choice was made on validation.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from raymae import metrics
from raymae.anomaly_map import COMBINATIONS, SCORE_RULES, maps_and_scores, normal_quantiles
from raymae.artifact import ModelArtifact
from raymae.calibration import best_rule, validation_copies, validation_fakes, validation_masks
from raymae.config import AnomalyMapConfig
from raymae.training.local import load_training_data

sys.path.insert(0, str(Path(__file__).parent))
from validation_agreement import dataset_of  # noqa: E402

Table = dict[str, dict[str, float]]


def by_image_then_pixel(tolerance: float) -> Callable[[Table], str]:
    """Among rules within ``tolerance`` of the best image AUROC, the one of the best pixel AUROC."""
    def pick(table: Table) -> str:
        best = max(row["image_auroc"] for row in table.values())
        close = [k for k, row in table.items() if row["image_auroc"] >= best - tolerance]
        return max(close, key=lambda k: (table[k]["pixel_auroc"], table[k]["image_auroc"]))
    return pick


def package_choice(choice: str) -> Callable[[Table], str]:
    """``calibration.rule_choice = choice``, as training applies it."""
    def pick(table: Table) -> str:
        rule = best_rule(table, AnomalyMapConfig(), choice)
        return f"{rule.combination}/{rule.score_rule}"
    return pick


PROCEDURES: dict[str, Callable[[Table], str]] = {
    "image+pixel": package_choice("image+pixel"),
    "image only": lambda t: max(t, key=lambda k: t[k]["image_auroc"]),
    "image, ties within 0.002 by pixel": by_image_then_pixel(0.002),
    "image, ties within 0.005 by pixel": by_image_then_pixel(0.005),
    "image, ties within 0.01 by pixel": by_image_then_pixel(0.01),
    "map-by-pixel": package_choice("map-by-pixel"),
}


def bagged(choice: str) -> Callable[[list[Table]], str]:
    """The rule ``calibration.rule_choice = choice`` picks most often over bootstrap resamples of
    the validation images (the first table is the images as drawn and breaks ties): a pick that
    rests less on which few images happened to be held back."""
    pick = package_choice(choice)
    def vote(tables: list[Table]) -> str:
        picks = [pick(t) for t in tables]
        return max(dict.fromkeys(picks), key=picks.count)
    return vote


BAGGED: dict[str, Callable[[list[Table]], str]] = {"image+pixel, bagged": bagged("image+pixel")}
ALL_PROCEDURES = [*PROCEDURES, *BAGGED]


def resampled_tables(table: Table, outputs: dict[str, tuple], idx: np.ndarray, labels: np.ndarray,
                     source: np.ndarray, resamples: int, rng: np.random.Generator) -> list[Table]:
    """``table`` (the images ``idx``), then ``resamples`` copies of it whose image AUROC is measured
    on a bootstrap resample of the held-back normals ``idx`` comes from (each drawn normal brings its
    synthetic defects; ``source`` (N,) names every image's normal). Pixel AUROC, steady over millions
    of pixels, is kept."""
    normals = np.unique(source[idx])
    members = {n: idx[source[idx] == n] for n in normals}
    tables = [table]
    for _ in range(resamples):
        drawn = np.concatenate([members[n] for n in rng.choice(normals, len(normals))])
        tables.append({key: {**row, "image_auroc": metrics.image_auroc(labels[drawn],
                                                                       image_scores(outputs, key)[drawn])}
                       for key, row in table.items()})
    return tables


def image_scores(outputs: dict[str, tuple], rule: str) -> np.ndarray:
    """The (N,) image scores of ``rule`` (``combination/score_rule``) in :func:`combination_outputs`."""
    comb, score_rule = rule.split("/")
    return outputs[comb][1][score_rule]


def combination_outputs(recon: torch.Tensor, prob: torch.Tensor, map_cfg, combinations) -> dict[str, tuple]:
    """Per combination named: its smoothed (N, S, S) maps and every score rule's (N,) image scores."""
    out = {}
    for comb in combinations:
        maps, scores = maps_and_scores(recon, prob, dataclasses.replace(map_cfg, combination=comb))
        out[comb] = maps, {rule: s.numpy() for rule, s in scores.items()}
    return out


def half_table(outputs: dict[str, tuple], idx: np.ndarray, labels: np.ndarray, masks: np.ndarray,
               pixel_stride: int) -> Table:
    """Validation table of every rule on the images ``idx`` selects: ``outputs`` of
    :func:`combination_outputs`, ``labels`` (N,), ``masks`` (N, S, S); pixel AUROC on every
    ``pixel_stride``-th pixel each way."""
    sub = (idx, slice(None, None, pixel_stride), slice(None, None, pixel_stride))
    table = {}
    for comb, (maps, scores) in outputs.items():
        pixel = metrics.pixel_auroc(masks[sub], maps.numpy()[sub])
        for rule in SCORE_RULES:
            table[f"{comb}/{rule}"] = {"image_auroc": metrics.image_auroc(labels[idx], scores[rule][idx]),
                                       "pixel_auroc": pixel}
    return table


def replay(artifact: ModelArtifact, data_uri: str, splits: int, pixel_stride: int, seed: int = 0,
           resamples: int = 30) -> dict:
    """Every procedure's pick on half A, judged on half B, over ``splits`` random halvings.

    Both halves' ``normal_*`` maps use the quantiles of A's normals: A plays the held-back
    normals calibration measures them on, B the images the model meets afterwards."""
    cfg = artifact.config
    normals = load_training_data(data_uri, cfg).holdout
    fakes, fake_masks = validation_fakes(normals, cfg)
    predictor = artifact.predictor()
    raw_n, raw_f = predictor.raw_maps(normals), predictor.raw_maps(fakes)
    recon = torch.cat([raw_n.recon_error, raw_f.recon_error])
    prob = torch.cat([raw_n.prob, raw_f.prob])
    n = len(normals)
    masks = validation_masks(n, fake_masks)
    labels = np.r_[np.zeros(n), np.ones(len(fakes))]
    source = np.r_[np.arange(n), np.tile(np.arange(n), validation_copies(n, cfg))]
    referenced = [c for c in COMBINATIONS if c.startswith("normal_")]
    fixed = combination_outputs(recon, prob, cfg.anomaly_map, [c for c in COMBINATIONS if c not in referenced])
    rng, resample_rng = np.random.default_rng(seed), np.random.default_rng(seed + 1)
    rows = {name: [] for name in ALL_PROCEDURES}
    best_on_b = []
    for _ in range(splits):
        in_a = np.zeros(n, bool)
        in_a[rng.permutation(n)[: n // 2]] = True
        a_idx, b_idx = np.flatnonzero(in_a[source]), np.flatnonzero(~in_a[source])
        a_normals = a_idx[labels[a_idx] == 0]
        qcfg = dataclasses.replace(cfg.anomaly_map, normal_recon=normal_quantiles(recon[a_normals]),
                                   normal_prob=normal_quantiles(prob[a_normals]))
        outputs = {**fixed, **combination_outputs(recon, prob, qcfg, referenced)}
        a = half_table(outputs, a_idx, labels, masks, pixel_stride)
        b = half_table(outputs, b_idx, labels, masks, pixel_stride)
        best_on_b.append(max(row["image_auroc"] for row in b.values()))
        tables = resampled_tables(a, outputs, a_idx, labels, source, resamples, resample_rng)
        picks = {**{name: pick(a) for name, pick in PROCEDURES.items()},
                 **{name: vote(tables) for name, vote in BAGGED.items()}}
        for name, rule in picks.items():
            rows[name].append((rule, b[rule]["image_auroc"], b[rule]["pixel_auroc"]))
    return {
        "model_id": artifact.model_id,
        "holdout_normals": n, "synthetic_defects": len(fakes), "splits": splits,
        "best_rule_on_b_image_auroc": float(np.mean(best_on_b)),
        "procedures": {name: {"b_image_auroc": float(np.mean([r[1] for r in picks])),
                              "b_pixel_auroc": float(np.mean([r[2] for r in picks])),
                              "distinct_rules_picked": len({r[0] for r in picks})}
                       for name, picks in rows.items()},
    }


def report_on_test_sets(paths: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """Per dataset and package choice: the mean test image and pixel AUROC of the rules it picks
    from the full validation tables of the quality results files ``paths`` (those with a
    test-set ablation of every rule), and in how many files it picks a better or worse rule for
    image AUROC than ``image+pixel``."""
    picks: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for path in paths:
        record = json.loads(Path(path).read_text())
        table, test = record.get("validation_table"), record.get("test_ablation_map_rules")
        if not table or not test:
            continue
        dataset = dataset_of(record)
        for choice in ("image+pixel", "map-by-pixel"):
            rule = package_choice(choice)(table)
            picks.setdefault(dataset, {}).setdefault(choice, []).append(
                (test[rule]["image_auroc"], test[rule]["pixel_auroc"]))
    out = {}
    for dataset, by_choice in sorted(picks.items()):
        base = [image for image, _ in by_choice["image+pixel"]]
        out[dataset] = {choice: {"files": len(rows), "mean_test_image_auroc": float(np.mean([r[0] for r in rows])),
                                 "mean_test_pixel_auroc": float(np.mean([r[1] for r in rows])),
                                 "image_better_than_image+pixel": sum(r[0] > b + 5e-4 for r, b in zip(rows, base)),
                                 "image_worse_than_image+pixel": sum(r[0] < b - 5e-4 for r, b in zip(rows, base))}
                        for choice, rows in by_choice.items()}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="the MVTec-AD style folder the models were trained on")
    p.add_argument("--model", action="append", help="a saved model (repeatable)")
    p.add_argument("--splits", type=int, default=40, help="random halvings per model")
    p.add_argument("--resamples", type=int, default=30,
                   help="bootstrap resamples of half A for the bagged procedures")
    p.add_argument("--pixel-stride", type=int, default=2,
                   help="pixel AUROC on every n-th pixel each way (speed; 1 = all pixels)")
    p.add_argument("--report-test", nargs="+", metavar="RESULTS",
                   help="instead: what each rule choice picks from these quality results files, on their test set")
    p.add_argument("--out", help="results file (JSON); printed when absent")
    args = p.parse_args(argv)
    if args.report_test:
        print(json.dumps(report_on_test_sets(args.report_test), indent=2))
        return 0
    if not args.data or not args.model:
        p.error("give --data and at least one --model (or --report-test RESULTS...)")
    if args.splits < 1 or args.pixel_stride < 1 or args.resamples < 1:
        p.error("--splits, --pixel-stride and --resamples must be at least 1")
    start = time.perf_counter()
    models = {}
    for path in args.model:
        models[Path(path).name] = replay(ModelArtifact.load(path), args.data, args.splits, args.pixel_stride,
                                         resamples=args.resamples)
        print(Path(path).name, json.dumps(models[Path(path).name]["procedures"], indent=1), flush=True)
    summary = {name: {"mean_b_image_auroc": float(np.mean([m["procedures"][name]["b_image_auroc"] for m in models.values()])),
                      "mean_b_pixel_auroc": float(np.mean([m["procedures"][name]["b_pixel_auroc"] for m in models.values()]))}
               for name in ALL_PROCEDURES}
    record = {"command": "python benchmarks/rule_choice.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "models": models, "summary": summary, "seconds": time.perf_counter() - start}
    text = json.dumps(record, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    for name, row in summary.items():
        print(f"{name:36s} image {row['mean_b_image_auroc']:.4f}  pixel {row['mean_b_pixel_auroc']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
