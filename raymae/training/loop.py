"""The two-stage training loop, runnable in one plain process.

Ray Train wraps this module (``raymae.training.ray_driver``): it passes a ``wrap_model``
(DDP), a ``wrap_loader`` (distributed sampler), a saved :class:`TrainState` to
resume from and an ``on_epoch_end`` hook that writes checkpoints. Without Ray
the same loop runs on one CPU or GPU (``raymae.training.local.train_local``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_msssim import ssim
from timm.optim import param_groups_weight_decay
from torch.utils.data import DataLoader, Dataset

from raymae.config import RaymaeConfig, Stage1Config, Stage2Config
from raymae.corruption import corrupt_seeded, donor_index
from raymae.inference import model_input, to_unit_range
from raymae.model import STAGE2_PREFIXES, MaskedAutoencoderViT, Stage2Output, build_model


# ------------------------------------------------------------------ datasets
class NormalImages(Dataset):
    """Stage 1: normal uint8 images (N, S, S, 3) -> (3, S, S) uint8 tensors."""

    def __init__(self, images: np.ndarray):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.images[i])


class CorruptedImages(Dataset):
    """Stage 2: (corrupted, clean, mask) triples, reproducible per (seed, epoch, index).

    Each sample's natural anomalies come from another training image, the donor, also
    chosen per (seed, epoch, index), so any DataLoader worker draws the same triple.

    The epoch lives in a shared-memory tensor, so persistent DataLoader workers
    (forked once per stage) see every ``set_epoch`` and draw fresh corruptions.
    """

    def __init__(self, images: np.ndarray, cfg: RaymaeConfig):
        self.images = images
        self.cfg = cfg
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        self._epoch[0] = epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        seed = self.cfg.seed * 100_003 + self.epoch
        donor = self.images[donor_index(seed, i, len(self.images))]  # lends natural anomalies their patches
        s = corrupt_seeded(self.images[i], self.cfg.corruption, seed, i, donor)
        return torch.from_numpy(s.image), torch.from_numpy(s.clean), torch.from_numpy(s.mask)


# ------------------------------------------------------------------ optimiser
def make_optimizer(model: torch.nn.Module, stage: Stage1Config | Stage2Config) -> torch.optim.Optimizer:
    """AdamW over trainable parameters, no weight decay on norms and biases (as MAE)."""
    groups = param_groups_weight_decay(model, stage.weight_decay)
    groups = [dict(g, params=[p for p in g["params"] if p.requires_grad]) for g in groups]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=stage.lr, betas=(0.9, 0.95))


def learning_rate(stage: Stage1Config | Stage2Config, epoch: float, global_batch: int) -> float:
    """Linear warm-up then half-cycle cosine; base lr scaled by global batch / 256."""
    peak = stage.lr * global_batch / 256
    if epoch < stage.warmup_epochs:
        return peak * epoch / stage.warmup_epochs
    span = max(stage.epochs - stage.warmup_epochs, 1e-8)
    return peak * 0.5 * (1.0 + math.cos(math.pi * (epoch - stage.warmup_epochs) / span))


def steps_per_epoch(images: int, batch_size: int, world_size: int = 1) -> int:
    """Optimiser steps in one epoch over ``images`` split across ``world_size`` workers."""
    per_worker = -(-images // world_size)
    return max(1, per_worker // batch_size) if per_worker > batch_size else 1


def resolve_schedule(stage: Stage1Config | Stage2Config, images: int, world_size: int = 1):
    """The stage with ``epochs`` and ``warmup_epochs`` worked out from ``steps`` (when set).

    Whole epochs, at least ``steps`` optimiser steps in all; the warm-up keeps its length
    in steps. A stage sized in epochs is returned as it is.
    """
    if stage.steps <= 0:
        return stage
    per_epoch = steps_per_epoch(images, stage.batch_size, world_size)
    epochs = -(-stage.steps // per_epoch)
    return dataclasses.replace(stage, epochs=epochs,
                               warmup_epochs=min(stage.warmup_steps / per_epoch, float(epochs)))


def resolve_schedules(cfg: RaymaeConfig, images: int, world_size: int = 1) -> RaymaeConfig:
    """``cfg`` with both stages' epoch counts resolved for this many training images."""
    return dataclasses.replace(cfg, stage1=resolve_schedule(cfg.stage1, images, world_size),
                               stage2=resolve_schedule(cfg.stage2, images, world_size))


# ------------------------------------------------------------------ losses
def focal_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                        gamma: float) -> torch.Tensor:
    """Class-weighted focal loss: sum w_t (1 - p_t)^gamma nll / sum w_t.

    logits (N, 2, H, W), target (N, H, W) long, weight (2,). Normalised like
    ``F.cross_entropy(weight=...)``, so gamma = 0 gives exactly the weighted CE.
    """
    nll = F.cross_entropy(logits, target, reduction="none")
    if gamma:
        nll = nll * (1.0 - torch.exp(-nll)).pow(gamma)
    w = weight[target]
    return (w * nll).sum() / w.sum()


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice of the anomalous class over the whole batch (N, 2, H, W) vs (N, H, W).

    One ratio per batch, not per image, so clean samples (empty masks) need no special case.
    """
    prob, t = logits.softmax(dim=1)[:, 1], target.float()
    return 1.0 - (2.0 * (prob * t).sum() + eps) / (prob.sum() + t.sum() + eps)


def stage2_loss(out: Stage2Output, x_clean: torch.Tensor, mask: torch.Tensor,
                cfg: RaymaeConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Pixel classification (over every supervised head) + MSE + (1 - SSIM).

    The classification term is class-weighted cross-entropy, or its focal form
    (``stage2.focal_gamma``), plus an optional soft-Dice term (``stage2.dice_weight``).
    The returned terms always hold the plain weighted CE as ``ce``, so runs with
    different classification losses stay comparable.
    out.recon is compared with the *clean* image, so the model learns to repair.
    x_clean: (N, 3, H, W) normalised; mask: (N, H, W) bool.
    Always computed in float32, also inside a bf16 autocast region: SSIM's
    variances (E[x^2] - E[x]^2 of Gaussian-filtered images) cancel badly in bf16,
    which gave a wrong SSIM, gradients 40 % off and a diverging stage 2 on a GPU.
    """
    s2 = cfg.stage2
    with torch.autocast(x_clean.device.type, enabled=False):
        weight = torch.tensor(s2.class_weights, device=x_clean.device, dtype=torch.float32)
        target = mask.long()
        logits = [lg.float() for lg in out.logits]
        ce = torch.stack([F.cross_entropy(lg, target, weight=weight) for lg in logits]).mean()
        parts = {"ce": ce}
        classification = ce
        if s2.focal_gamma:
            classification = parts["focal"] = torch.stack(
                [focal_cross_entropy(lg, target, weight, s2.focal_gamma) for lg in logits]).mean()
        recon, clean = out.recon.float(), x_clean.float()
        parts["mse"] = mse = F.mse_loss(recon, clean)
        recon01 = to_unit_range(recon, cfg.mean, cfg.std).clamp(0, 1)
        clean01 = to_unit_range(clean, cfg.mean, cfg.std).clamp(0, 1)
        win = 11 if min(clean.shape[-2:]) > 11 * 4 else 3
        parts["ssim"] = ssim_loss = 1.0 - ssim(recon01, clean01, data_range=1.0, win_size=win)
        loss = s2.ce_weight * classification + s2.mse_weight * mse + s2.ssim_weight * ssim_loss
        if s2.dice_weight:
            parts["dice"] = torch.stack([soft_dice_loss(lg, target) for lg in logits]).mean()
            loss = loss + s2.dice_weight * parts["dice"]
    return loss, {k: v.detach() for k, v in parts.items()}


# ------------------------------------------------------------------ state
@dataclass
class TrainState:
    """Where a run stands: the next (stage, epoch) to run, and the weights so far."""

    stage: int = 1
    epoch: int = 0
    model_state: dict | None = None
    optimizer_state: dict | None = None


@dataclass
class EpochResult:
    stage: int
    epoch: int            # counted from 0
    loss: float
    seconds: float
    parts: dict[str, float] = field(default_factory=dict)
    epochs: int = 0       # the stage's length in epochs; 0 = not known

    def seconds_left(self) -> float:
        """The rest of the stage at this epoch's pace (0 when it is the last, or the length is unknown)."""
        return max(self.epochs - self.epoch - 1, 0) * self.seconds

    def record(self) -> dict:
        """The epoch as one loss-history entry (epochs counted from 1), its wall seconds and the loss's terms."""
        return {"stage": self.stage, "epoch": self.epoch + 1, "loss": self.loss,
                "seconds": round(self.seconds, 2), **self.parts}


EpochHook = Callable[[EpochResult, MaskedAutoencoderViT, torch.optim.Optimizer], None]


def _unwrap(model: torch.nn.Module) -> MaskedAutoencoderViT:
    return getattr(model, "module", model)


# ------------------------------------------------------------------ epochs
def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively: a CUDA GPU with bf16, or a CPU with
    AVX512-BF16 or AMX (elsewhere bf16 is emulated and slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return False


def training_precision(precision: str, device: torch.device) -> str:
    """"fp32" or "bf16" for the training forward passes: ``auto`` is bf16 where native."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def autocast(cfg: RaymaeConfig, device: torch.device):
    """The forward-pass autocast context of ``cfg.precision`` (a no-op for fp32)."""
    enabled = training_precision(cfg.precision, device) == "bf16"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def fused_attention(cfg: RaymaeConfig, device: torch.device) -> bool:
    """Whether training runs attention through the fused kernel: everywhere but a CPU training
    in bf16, where that kernel's backward is slow (explicit attention: a stage-2 step of the
    ``cpu`` recipe about 20 % shorter, docs/benchmarks.md)."""
    return not (device.type == "cpu" and training_precision(cfg.precision, device) == "bf16")


def run_epoch(model: torch.nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
              cfg: RaymaeConfig, stage: int, epoch: int, global_batch: int,
              device: torch.device) -> EpochResult:
    """One pass over the loader for stage 1 (masked patches) or stage 2 (repair + classify)."""
    stage_cfg = cfg.stage1 if stage == 1 else cfg.stage2
    model.train()
    if stage == 2 and cfg.stage2.freeze_encoder:
        _unwrap(model).set_encoder_frozen(True)
    start, total, count, parts_sum = time.time(), 0.0, 0, {}
    steps = max(len(loader), 1)
    for step, batch in enumerate(loader):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(stage_cfg, epoch + step / steps, global_batch)
        with autocast(cfg, device):
            if stage == 1:
                x = model_input(cfg, batch.to(device, non_blocking=True), device)
                loss, _, _ = model(x, mask_ratio=cfg.stage1.mask_ratio)
                parts = {}
            else:
                corrupted, clean, mask = (t.to(device, non_blocking=True) for t in batch)
                out = model(model_input(cfg, corrupted, device))
                target = model_input(cfg, clean, device, like=corrupted)  # scaled as its input was
                loss, parts = stage2_loss(out, target, mask, cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if stage_cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), stage_cfg.grad_clip)
        optimizer.step()
        # Sums stay on the device: no host sync per step, so GPU work queues up.
        n = len(batch) if stage == 1 else len(batch[0])
        total = total + loss.detach().float() * n
        count += n
        for k, v in parts.items():
            parts_sum[k] = parts_sum.get(k, 0.0) + v.float() * n
    mean = float(total) / max(count, 1)
    if not math.isfinite(mean):
        raise FloatingPointError(f"stage {stage} loss became {mean} in epoch {epoch + 1}")
    return EpochResult(stage, epoch, mean, time.time() - start,
                       {k: float(v) / max(count, 1) for k, v in parts_sum.items()}, epochs=stage_cfg.epochs)


def _loader(dataset: Dataset, batch_size: int, seed: int, workers: int) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=len(dataset) > batch_size,
                      generator=g, num_workers=workers, persistent_workers=workers > 0,
                      pin_memory=torch.cuda.is_available())


def train_two_stages(cfg: RaymaeConfig, images: np.ndarray, device: torch.device, *,
                     state: TrainState | None = None,
                     init_state: dict | None = None,
                     wrap_model: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m,
                     wrap_loader: Callable[[DataLoader], DataLoader] = lambda l: l,
                     world_size: int = 1, loader_workers: int = 0,
                     on_epoch_end: EpochHook | None = None) -> MaskedAutoencoderViT:
    """Stage 1 then stage 2 on normal uint8 images (N, S, S, 3); returns the stage-2 model.

    ``state`` resumes at its (stage, epoch); ``init_state`` is a pretrained MAE
    state dict used when stage 1 starts from scratch.
    """
    state = state or TrainState()
    hook = on_epoch_end or (lambda *a: None)
    torch.manual_seed(cfg.seed)
    cfg = resolve_schedules(cfg, len(images), world_size)

    stage1 = build_model(cfg.model, stage2=False)
    if state.stage == 1:
        if state.model_state is not None:
            stage1.load_state_dict(state.model_state)
        elif init_state is not None:
            stage1.load_state_dict(init_state, strict=False)
        _run_stage(cfg, 1, stage1, NormalImages(images), device, state, wrap_model, wrap_loader,
                   world_size, loader_workers, hook)
        state = TrainState(stage=2, epoch=0)

    stage2 = build_model(cfg.model, stage2=True)
    if state.model_state is not None:
        stage2.load_state_dict(state.model_state)
    else:
        missing, unexpected = stage2.load_state_dict(stage1.state_dict(), strict=False)
        foreign = list(unexpected) + [k for k in missing if not k.startswith(STAGE2_PREFIXES)]
        if foreign:
            raise RuntimeError(f"stage-1 weights do not fit the stage-2 network: {foreign[:5]}")
        if cfg.stage2.anomaly_prior:
            stage2.set_pixel_prior(cfg.stage2.anomaly_prior)
    stage2.set_encoder_frozen(cfg.stage2.freeze_encoder)
    _run_stage(cfg, 2, stage2, CorruptedImages(images, cfg), device, state, wrap_model, wrap_loader,
               world_size, loader_workers, hook)
    return stage2.eval()


def _run_stage(cfg, stage, model, dataset, device, state, wrap_model, wrap_loader,
               world_size, loader_workers, hook) -> None:
    stage_cfg = cfg.stage1 if stage == 1 else cfg.stage2
    if state.epoch >= stage_cfg.epochs:
        return
    model.to(device)
    model.set_fused_attention(fused_attention(cfg, device))
    optimizer = make_optimizer(model, stage_cfg)
    if state.optimizer_state is not None:
        optimizer.load_state_dict(state.optimizer_state)
    wrapped = wrap_model(model)
    loader = wrap_loader(_loader(dataset, stage_cfg.batch_size, cfg.seed + stage, loader_workers))
    global_batch = stage_cfg.batch_size * world_size
    try:
        for epoch in range(state.epoch, stage_cfg.epochs):
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)
            if hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
                loader.sampler.set_epoch(epoch)
            result = run_epoch(wrapped, loader, optimizer, cfg, stage, epoch, global_batch, device)
            hook(result, model, optimizer)
    finally:  # also when a stage stops early: inference runs in float32, where the fused kernel is the faster
        model.set_fused_attention(True)
