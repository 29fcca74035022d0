"""Compare quality results files: the mean over seeds of each group, overall and per defect type.

    python benchmarks/compare_quality.py \
        --group "old default" benchmarks/results/quality-cpu-2core-magnetic_tile-old-seed0.json ... \
        --group "new default" benchmarks/results/quality-cpu-2core-magnetic_tile-seed0.json ...

Prints one markdown table of the metrics under the rule each run chose on validation
(mean, and the runs' spread in brackets), then tables of image and pixel AUROC per defect type,
and the lighting-drift rows where the results files have them. Reads only what
``benchmarks/quality.py`` wrote; choosing anything here would be choosing on the test set.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

METRICS = ("image_auroc", "pixel_auroc", "aupro", "pixel_ap")


def load(paths: list[str]) -> list[dict]:
    runs = [json.loads(Path(p).read_text()) for p in paths]
    for path, run in zip(paths, runs):
        if run.get("status", "complete") != "complete":  # files older than the status field are whole
            raise SystemExit(f"{path} is not a complete run (status {run.get('status')!r})")
    return runs


def cell(values: list[float]) -> str:
    """Mean, with the range when there is more than one run."""
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    mean = f"{np.mean(values):.3f}"
    return mean if len(values) == 1 else f"{mean} ({min(values):.3f}–{max(values):.3f})"


def metric_table(groups: dict[str, list[dict]]) -> str:
    rows = ["| group | runs | rules chosen | " + " | ".join(METRICS) + " |",
            "|---|---|---|" + "---|" * len(METRICS)]
    for name, runs in groups.items():
        rules = ", ".join(r["map_rule_chosen_on_validation"] for r in runs)
        rows.append(f"| {name} | {len(runs)} | {rules} | "
                    + " | ".join(cell([r["metrics"][m] for r in runs]) for m in METRICS) + " |")
    return "\n".join(rows)


def per_type_table(groups: dict[str, list[dict]], metric: str = "image_auroc") -> str:
    types = sorted({t for runs in groups.values() for r in runs for t in r["per_type"]})
    rows = [f"| group ({metric}) | " + " | ".join(types) + " |", "|---|" + "---|" * len(types)]
    for name, runs in groups.items():
        rows.append(f"| {name} | " + " | ".join(
            cell([r["per_type"].get(t, {}).get(metric) for r in runs]) for t in types) + " |")
    return "\n".join(rows)


def drift_table(groups: dict[str, list[dict]]) -> str:
    rows = ["| group | image AUROC, normals 8 % darker (change) | normals 8 % brighter (change) |",
            "|---|---|---|"]
    for name, runs in groups.items():
        runs = [r for r in runs if "lighting_drift" in r]
        if not runs:
            continue
        parts = []
        for drift in ("normals_8pct_darker", "normals_8pct_brighter"):
            auroc = cell([r["lighting_drift"][drift]["image_auroc"] for r in runs])
            change = np.mean([r["lighting_drift"][drift]["image_auroc_change"] for r in runs])
            parts.append(f"{auroc} ({change:+.3f})")
        rows.append(f"| {name} | " + " | ".join(parts) + " |")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--group", nargs="+", action="append", required=True, metavar=("NAME", "FILE"),
                   help="a name, then the results files of that group (e.g. one per seed)")
    args = p.parse_args(argv)
    groups = {}
    for name, *paths in args.group:
        if not paths:
            p.error(f"group {name!r} has no results files")
        groups[name] = load(paths)
    print(metric_table(groups), per_type_table(groups), per_type_table(groups, "pixel_auroc"), drift_table(groups),
          sep="\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
