"""The model alone, as a scoring actor runs it: images/s of Predictor.predict plus the 64 px heatmaps.

    python benchmarks/predictor_speed.py --images PATH/TO/magnetic_tile/test --recipe cpu --precision fp32

One process, pre-decoded uint8 batches of ``--batch-size``, an untrained model of the
recipe (speed does not depend on the weights). Prints one JSON line. The raymae that
is imported is the one on ``sys.path``: with ``PYTHONPATH=<another checkout>`` the same
command measures that code (before/after comparisons, docs/gpu-suite.md); code from
before ``Predictor.predict(map_size=...)`` downsamples the maps as its actors did
(``raymae.heatmap.downsample`` on the CPU).
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", required=True, help="folder of image files (searched recursively)")
    p.add_argument("--recipe", default="cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--n", type=int, default=256, help="images per measurement")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3, help="measurements; the best is reported")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import raymae
    from raymae import heatmap
    from raymae.data import load_image
    from raymae.inference import Predictor
    from raymae.model import build_model
    from raymae.recipes import recipe

    cfg = recipe(args.recipe)
    files = sorted(f for f in Path(args.images).rglob("*") if f.suffix.lower() in (".jpg", ".jpeg", ".png"))
    decoded = np.stack([load_image(f.read_bytes(), cfg.model.image_size).pixels for f in files[:args.n]])
    images = decoded[np.arange(args.n) % len(decoded)]
    torch.manual_seed(0)
    model = build_model(cfg.model, stage2=True)
    new_api = "map_size" in inspect.signature(Predictor.predict).parameters
    if "precision" in inspect.signature(Predictor.__init__).parameters:
        predictor = Predictor(model, cfg, args.device, args.precision)
    elif args.precision == "fp32":
        predictor = Predictor(model, cfg, args.device)
    else:
        raise SystemExit("this raymae's Predictor has no precision: only fp32")

    def batch(k: int) -> np.ndarray:
        chunk = images[k:k + args.batch_size]
        if new_api:
            return predictor.predict(chunk, args.batch_size, map_size=64).scores
        pred = predictor.predict(chunk, args.batch_size)
        heatmap.downsample(pred.maps, 64)
        return pred.scores

    batch(0)  # warm-up
    speeds = []
    for _ in range(args.repeats):
        start = time.time()
        for k in range(0, len(images), args.batch_size):
            batch(k)
        if args.device == "cuda":
            torch.cuda.synchronize()
        speeds.append(len(images) / (time.time() - start))
    print(json.dumps({"code": str(Path(raymae.__file__).parent.parent), "recipe": args.recipe,
                      "precision": args.precision, "images": args.n, "batch_size": args.batch_size,
                      "threads": torch.get_num_threads(), "images_per_s_best": round(max(speeds), 2),
                      "images_per_s_all": [round(s, 2) for s in speeds]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
