"""Where the time of a GPU quality run goes: start-up, data, corruption (CPU) and the model (GPU).

    python benchmarks/gpu_profile.py --data PATH/TO/magnetic_tile --device cuda --workers 12
    python benchmarks/gpu_profile.py --data PATH/TO/magnetic_tile --recipe cpu --precision fp32 --workers 1

Prints one JSON object: seconds to import torch/timm/raymae, to decode the
training images, stage-2 corruption throughput in one process and in a pool of
``--workers`` processes, and the model's stage-1 / stage-2 training and
inference throughput on random input (no data loading), for the ``gpu`` recipe.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

T0 = time.time()
import torch  # noqa: E402

T_TORCH = time.time()
import timm  # noqa: E402,F401

T_TIMM = time.time()
sys.path.insert(0, __file__.rsplit("/", 1)[0])
from raymae.recipes import RECIPES, recipe  # noqa: E402

from raymae.corruption import corrupt_seeded  # noqa: E402
from raymae.inference import Predictor  # noqa: E402
from raymae.model import build_model  # noqa: E402
from raymae.training.local import load_training_data  # noqa: E402
from raymae.training.loop import (autocast, fused_attention, make_optimizer, stage2_loss,  # noqa: E402
                                  training_precision)

T_RAYMAE = time.time()


_SHARED: dict = {}  # images and config, inherited by forked workers instead of pickled


def _corrupt_range(span):
    images, cfg = _SHARED["images"], _SHARED["cfg"]
    for i in range(*span):
        corrupt_seeded(images[i % len(images)], cfg, 0, i)
    return span[1] - span[0]


def corruption_rate(images, cfg, n: int, workers: int) -> float:
    """Corrupted images per second with ``workers`` processes (fork)."""
    import multiprocessing as mp

    _SHARED.update(images=images, cfg=cfg)
    start = time.time()
    if workers <= 1:
        _corrupt_range((0, n))
    else:
        spans = [(k * n // workers, (k + 1) * n // workers) for k in range(workers)]
        with mp.get_context("fork").Pool(workers) as pool:
            pool.map(_corrupt_range, spans)
    return n / (time.time() - start)


def train_rate(cfg, stage: int, batch: int, device, steps: int) -> float:
    """Training images per second on random input (model only)."""
    model = build_model(cfg.model, stage2=stage == 2).to(device).train()
    model.set_fused_attention(fused_attention(cfg, device))  # as training runs it
    opt = make_optimizer(model, cfg.stage1 if stage == 1 else cfg.stage2)
    s = cfg.model.image_size
    x = torch.randn(batch, 3, s, s, device=device)
    mask = torch.rand(batch, s, s, device=device) > 0.9

    def step():
        with autocast(cfg, device):
            if stage == 1:
                loss = model(x, mask_ratio=cfg.stage1.mask_ratio)[0]
            else:
                loss = stage2_loss(model(x), x, mask, cfg)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    _sync(device)
    start = time.time()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * batch / (time.time() - start)


def predict_rate(cfg, device, images, batch: int) -> float:
    predictor = Predictor(build_model(cfg.model, stage2=True), cfg, device)
    predictor.predict(images[:batch], batch)
    _sync(device)
    start = time.time()
    predictor.predict(images, batch)
    _sync(device)
    return len(images) / (time.time() - start)


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--recipe", default="gpu", choices=sorted(RECIPES))
    p.add_argument("--workers", type=int, default=12)
    p.add_argument("--corrupt", type=int, default=256, help="images corrupted per measurement")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--precision", choices=("fp32", "bf16", "auto"), default=None,
                   help="training autocast for the model measurements (default: the recipe's)")
    p.add_argument("--corruption-only", action="store_true",
                   help="stop after the corruption throughput (a CPU measurement, no model)")
    args = p.parse_args()
    cfg = recipe(args.recipe)
    if args.precision:
        cfg = dataclasses.replace(cfg, precision=args.precision)
    device = torch.device(args.device)
    out = {"import_torch_s": T_TORCH - T0, "import_timm_s": T_TIMM - T_TORCH,
           "import_raymae_s": T_RAYMAE - T_TIMM}
    t = time.time()
    training = load_training_data(args.data, cfg)
    out["decode_train_images_s"] = time.time() - t
    out["train_images"] = len(training.train)
    print(json.dumps(out), flush=True)
    out["corrupt_img_per_s_1proc"] = corruption_rate(training.train, cfg.corruption, args.corrupt // 4, 1)
    out[f"corrupt_img_per_s_{args.workers}proc"] = corruption_rate(
        training.train, cfg.corruption, args.corrupt, args.workers)
    print(json.dumps(out), flush=True)
    if args.corruption_only:
        return 0
    t = time.time()
    torch.zeros(1, device=device)
    out["device_init_s"] = time.time() - t
    out["stage1_train_img_per_s"] = train_rate(cfg, 1, cfg.stage1.batch_size, device, args.steps)
    out["stage2_train_img_per_s"] = train_rate(cfg, 2, cfg.stage2.batch_size, device, args.steps)
    out["predict_img_per_s_fp32"] = predict_rate(cfg, device, training.holdout, 32)
    out["train_precision"] = training_precision(cfg.precision, device)
    out["total_s"] = time.time() - T0
    out["device"] = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    print(json.dumps(out, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
