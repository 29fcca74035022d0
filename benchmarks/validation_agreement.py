"""How well does each validation mix judge? A summary of validation_mixes.py results files.

    python benchmarks/validation_agreement.py benchmarks/results/validation-mixes-*.json

Validation (held-back normals against synthetic defects) does two jobs: it chooses each
model's map rule, and, by the rule in docs/experiments.md, it decides between recipes.
For every mix present in all the files given, per dataset:

* choices  -- the mean test image AUROC of the rules the mix chose, and the mean *regret*
  (the best test rule's image AUROC minus the chosen one's), over the models;
* ranking  -- over every pair of models trained with the same seed on the same data (so the
  same held-back images judge both), how often the mix's validation image AUROC orders the
  pair as their test image AUROC does; also counted over the pairs whose test figures lie
  more than ``--gap`` apart (differences a recipe decision would act on). ``--validation`` and
  ``--test`` say which AUROC (image or pixel) orders the pair on each side.

The test set judges the validation here, as validation_mixes.py reports; it chooses no rule.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import sys
from collections import defaultdict
from pathlib import Path


def dataset_of(record: dict) -> str:
    """The dataset folder's name, from the record's command (``--data PATH``)."""
    words = shlex.split(record["command"])
    return Path(words[words.index("--data") + 1]).name


METRICS = ("image_auroc", "pixel_auroc")


def chosen(record: dict, mix: str, validation: str = "image_auroc", test: str = "image_auroc") -> tuple[float, float]:
    """(validation, test) figures of the rule ``mix`` chose for this model: the metrics named."""
    row = record["mixes"][mix]
    return row["validation_table"][row["chosen_rule"]][validation], row["test"][test]


def summary(records: list[dict], gap: float = 0.015, validation: str = "image_auroc",
            test: str = "image_auroc") -> dict[str, dict[str, dict]]:
    """Per dataset, per mix common to all ``records``: the choices' figures (image AUROC) and how
    the ``validation`` metric orders same-seed pairs against the ``test`` metric."""
    mixes = [m for m in records[0]["mixes"] if all(m in r["mixes"] for r in records)]
    by_dataset = defaultdict(list)
    for record in records:
        by_dataset[dataset_of(record)].append(record)
    out: dict[str, dict[str, dict]] = {}
    for dataset, group in sorted(by_dataset.items()):
        out[dataset] = {}
        for mix in mixes:
            tests = [chosen(r, mix)[1] for r in group]
            regrets = [max(row["image_auroc"] for row in r["test_all_rules"].values()) - chosen(r, mix)[1]
                       for r in group]
            pairs = [(chosen(a, mix, validation, test), chosen(b, mix, validation, test))
                     for a, b in itertools.combinations(group, 2)
                     if a["recipe"]["seed"] == b["recipe"]["seed"]]
            agree = [(va - vb) * (ta - tb) > 0 for (va, ta), (vb, tb) in pairs]
            wide = [(va - vb) * (ta - tb) > 0 for (va, ta), (vb, tb) in pairs if abs(ta - tb) > gap]
            out[dataset][mix] = {
                "models": len(group),
                "mean_test_image_auroc_of_choices": sum(tests) / len(tests),
                "mean_regret": sum(regrets) / len(regrets),
                "same_seed_pairs": len(pairs), "pairs_ordered_as_test": sum(agree),
                "pairs_over_gap": len(wide), "pairs_over_gap_ordered_as_test": sum(wide),
            }
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", help="results files of benchmarks/validation_mixes.py")
    p.add_argument("--gap", type=float, default=0.015, help="test difference that counts as wide")
    p.add_argument("--validation", choices=METRICS, default="image_auroc", help="what orders pairs on validation")
    p.add_argument("--test", choices=METRICS, default="image_auroc", help="what orders pairs on the test set")
    args = p.parse_args(argv)
    records = [json.loads(Path(f).read_text()) for f in args.files]
    if any("mixes" not in r for r in records):
        p.error("every file must be a results file of benchmarks/validation_mixes.py")
    order = f"validation {args.validation} orders as test {args.test}"
    print(f"| dataset | mix | models | test image AUROC of choices | regret | same-seed pairs: {order} "
          f"| pairs > {args.gap:g} apart on test: {order} |")
    print("|---|---|---|---|---|---|---|")
    for dataset, rows in summary(records, args.gap, args.validation, args.test).items():
        for mix, s in rows.items():
            print(f"| {dataset} | {mix} | {s['models']} | {s['mean_test_image_auroc_of_choices']:.3f} | "
                  f"{s['mean_regret']:.3f} | {s['pairs_ordered_as_test']}/{s['same_seed_pairs']} | "
                  f"{s['pairs_over_gap_ordered_as_test']}/{s['pairs_over_gap']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
