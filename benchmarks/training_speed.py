"""Training speed of a recipe on this machine: seconds per epoch of each stage, per setting.

    python benchmarks/training_speed.py --data ../shared/data/magnetic_tile --recipe cpu \
        --threads 1 2 --loader-workers 0 1 --out benchmarks/results/training-speed-cpu-2core.json

Runs two throwaway epochs of each stage (the real data, the recipe's model and corruption)
for every combination of torch threads and DataLoader processes, and records the second
epoch's seconds. One thread is what a Ray Train worker got before raymae planned its
threads (Ray sets OMP_NUM_THREADS to the worker's reserved CPUs, one by default).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from quality import add_training_arguments, epoch_seconds, machine, with_settings  # noqa: E402

from raymae.recipes import recipe  # noqa: E402
from raymae.training.local import load_training_data  # noqa: E402
from raymae.training.resources import plan_resources  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_arguments(p)
    p.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    p.add_argument("--loader-workers", type=int, nargs="+", default=[0, 1])
    p.add_argument("--out", required=True, help="results file (JSON)")
    args = p.parse_args(argv)

    cfg = with_settings(recipe(args.recipe), args.set)
    training = load_training_data(args.data, cfg)
    planned = plan_resources(args.device.startswith("cuda"))
    record = {"command": "python benchmarks/training_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": machine(), "recipe_name": args.recipe, "train_images": len(training.train),
              "planned": {"threads": planned.threads, "loader_workers": planned.loader_workers}, "runs": []}
    for threads, loaders in itertools.product(args.threads, args.loader_workers):
        torch.set_num_threads(threads)
        start = time.time()
        seconds = epoch_seconds(cfg, training.train, args.device, loaders)
        run = {"threads": threads, "loader_workers": loaders,
               **{f"{stage}_epoch_seconds": round(s, 2) for stage, s in seconds.items()},
               "wall_seconds": round(time.time() - start, 1)}
        record["runs"].append(run)
        print(json.dumps(run), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
