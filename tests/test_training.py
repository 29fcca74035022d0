"""The plain-process training loop: data loading workers, precision and loss bookkeeping."""

import dataclasses
import logging

import numpy as np
import pytest
import torch

from raymae.training.local import log_epoch
from raymae.training.loop import (CorruptedImages, EpochResult, _loader, autocast, train_two_stages,
                                  training_precision)
from tests.conftest import tiny_recipe


def _images(n: int = 8, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)


def _masks_of_one_epoch(loader, dataset, epoch: int) -> np.ndarray:
    dataset.set_epoch(epoch)
    return np.concatenate([mask.numpy() for _, _, mask in loader])


def test_persistent_loader_workers_draw_new_corruptions_every_epoch():
    cfg = dataclasses.replace(tiny_recipe(), corruption=dataclasses.replace(tiny_recipe().corruption,
                                                                           clean_share=0.0))
    dataset = CorruptedImages(_images(), cfg)
    loader = _loader(dataset, batch_size=4, seed=0, workers=2)
    assert loader.persistent_workers
    first = _masks_of_one_epoch(loader, dataset, 0)
    second = _masks_of_one_epoch(loader, dataset, 1)
    again = _masks_of_one_epoch(loader, dataset, 0)
    assert not np.array_equal(np.sort(first.sum(axis=(1, 2))), np.sort(second.sum(axis=(1, 2))))
    # the shuffle order differs per epoch, so compare the multiset of mask sizes
    assert np.array_equal(np.sort(first.sum(axis=(1, 2))), np.sort(again.sum(axis=(1, 2))))


def test_workers_give_the_same_corruptions_as_the_main_process():
    cfg = tiny_recipe()
    dataset = CorruptedImages(_images(), cfg)
    dataset.set_epoch(3)
    in_process = [dataset[i][2].numpy() for i in range(len(dataset))]
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, shuffle=False, num_workers=2)
    in_workers = [mask[0].numpy() for _, _, mask in loader]
    assert all(np.array_equal(a, b) for a, b in zip(in_process, in_workers))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_both_stages_train_and_report_finite_losses(precision):
    cfg = dataclasses.replace(tiny_recipe(stage1_epochs=2, stage2_epochs=2), precision=precision)
    seen = []
    model = train_two_stages(cfg, _images(), torch.device("cpu"),
                             on_epoch_end=lambda result, *_: seen.append(result))
    assert [(r.stage, r.epoch, r.epochs) for r in seen] == [(1, 0, 2), (1, 1, 2), (2, 0, 2), (2, 1, 2)]
    assert all(np.isfinite(r.loss) and r.loss > 0 for r in seen)
    assert set(seen[-1].parts) == {"ce", "mse", "ssim"}
    assert all(p.dtype == torch.float32 for p in model.parameters())


def _attention_kernels(model) -> set[bool]:
    return {m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")}


def test_explicit_and_fused_attention_compute_the_same_model():
    from raymae.model import build_model

    torch.manual_seed(0)
    fused = build_model(tiny_recipe().model, stage2=True).eval()
    explicit = build_model(tiny_recipe().model, stage2=True).eval()
    explicit.load_state_dict(fused.state_dict())
    explicit.set_fused_attention(False)
    assert _attention_kernels(fused) == {True} and _attention_kernels(explicit) == {False}
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = fused(x), explicit(x)
    assert torch.allclose(a.recon, b.recon, atol=1e-5) and torch.allclose(a.logits[0], b.logits[0], atol=1e-5)


def test_a_cpu_trains_in_bf16_with_explicit_attention_and_hands_back_the_fused_kernel():
    from raymae.training.loop import fused_attention

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    bf16 = dataclasses.replace(tiny_recipe(stage1_epochs=1, stage2_epochs=1), precision="bf16")
    assert not fused_attention(bf16, cpu)  # the CPU's fused bf16 backward is the slow one
    assert fused_attention(dataclasses.replace(bf16, precision="fp32"), cpu)
    assert fused_attention(bf16, gpu)
    during = []
    model = train_two_stages(bf16, _images(), cpu,
                             on_epoch_end=lambda result, m, _: during.append(_attention_kernels(m)))
    assert during == [{False}, {False}]  # both stages
    assert _attention_kernels(model) == {True}  # inference (float32) keeps the fused kernel


def test_a_stage_stopped_by_an_error_still_hands_back_the_fused_kernel():
    bf16 = dataclasses.replace(tiny_recipe(stage1_epochs=2, stage2_epochs=1), precision="bf16")
    seen = []

    def stop(result, model, _):
        seen.append(model)
        raise KeyboardInterrupt  # e.g. a user stopping the run after the first epoch

    with pytest.raises(KeyboardInterrupt):
        train_two_stages(bf16, _images(), torch.device("cpu"), on_epoch_end=stop)
    assert len(seen) == 1 and _attention_kernels(seen[0]) == {True}


def test_each_epoch_logs_its_place_in_the_stage_and_the_time_left_at_its_pace(caplog):
    caplog.set_level(logging.INFO, logger="raymae")
    log_epoch(EpochResult(stage=2, epoch=62, loss=0.25, seconds=40.0, parts={"ce": 0.15}, epochs=100))
    log_epoch(EpochResult(stage=1, epoch=38, loss=0.5, seconds=8.0, epochs=40))
    log_epoch(EpochResult(stage=1, epoch=39, loss=0.5, seconds=8.0, epochs=40))
    assert [r.getMessage() for r in caplog.records] == [
        "stage 2 epoch 63/100 loss 0.2500 ce=0.1500 (40.0s, 25 min left in stage 2)",
        "stage 1 epoch 39/40 loss 0.5000 (8.0s, 8 s left in stage 1)",
        "stage 1 epoch 40/40 loss 0.5000 (8.0s)"]


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_trains_in_bf16_only_on_a_cpu_that_computes_it_natively(monkeypatch, native):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    cpu = torch.device("cpu")
    assert training_precision("auto", cpu) == ("bf16" if native else "fp32")
    assert training_precision("bf16", cpu) == "bf16" and training_precision("fp32", cpu) == "fp32"
    with autocast(dataclasses.replace(tiny_recipe(), precision="auto"), cpu):
        y = torch.nn.functional.linear(torch.ones(2, 4), torch.ones(3, 4))
    assert y.dtype == (torch.bfloat16 if native else torch.float32)


def test_the_stage2_loss_is_computed_in_float32_inside_a_bf16_autocast_region():
    from raymae.model import Stage2Output
    from raymae.training.loop import stage2_loss

    cfg = tiny_recipe()
    gen = torch.Generator().manual_seed(0)
    clean = torch.rand(4, 3, 64, 64, generator=gen) * 0.2  # low contrast, as grey industrial surfaces
    recon = (clean + 0.01 * torch.randn(clean.shape, generator=gen)).requires_grad_(True)
    logits = [torch.randn(4, 2, 64, 64, generator=gen)]
    mask = torch.rand(4, 64, 64, generator=gen) > 0.9

    def loss_and_grad(precision):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss, parts = stage2_loss(Stage2Output(recon, logits), clean, mask, cfg)
        return loss, parts, torch.autograd.grad(loss, recon)[0]

    loss32, parts32, grad32 = loss_and_grad("fp32")
    loss16, parts16, grad16 = loss_and_grad("bf16")
    assert loss16.dtype == torch.float32
    assert abs(float(parts16["ssim"]) - float(parts32["ssim"])) < 1e-5
    assert torch.allclose(grad16, grad32, rtol=1e-4, atol=1e-8)


def _logits_and_mask(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(4, 2, 16, 16, generator=gen), torch.rand(4, 16, 16, generator=gen) > 0.9


def test_the_focal_loss_is_the_weighted_cross_entropy_at_gamma_0_and_discounts_confident_pixels():
    from raymae.training.loop import focal_cross_entropy

    logits, mask = _logits_and_mask()
    target, weight = mask.long(), torch.tensor([1.0, 5.0])
    ce = torch.nn.functional.cross_entropy(logits, target, weight=weight)
    assert torch.allclose(focal_cross_entropy(logits, target, weight, 0.0), ce)
    # one pixel, right with p = 0.9: the focal term scales its nll by (1 - 0.9) ** 2
    sure = torch.tensor([0.0, float(np.log(9.0))]).view(1, 2, 1, 1)
    one = torch.ones(1, 1, 1, dtype=torch.long)
    assert float(focal_cross_entropy(sure, one, weight, 2.0)) == pytest.approx(0.01 * -np.log(0.9), rel=1e-5)


def test_soft_dice_rewards_overlap_and_a_constant_prediction_cannot_satisfy_it():
    from raymae.training.loop import soft_dice_loss

    _, mask = _logits_and_mask()
    target = mask.long()
    perfect = torch.stack([~mask, mask], dim=1).float() * 40.0
    share = float(mask.float().mean())
    constant = torch.zeros(4, 2, 16, 16)
    constant[:, 1] = float(np.log(share / (1 - share)))  # predicts the label share everywhere
    assert float(soft_dice_loss(perfect, target)) < 1e-3
    # a constant p = share has Dice 2 * share * T / (share * N + T) = share, whatever it learned
    assert float(soft_dice_loss(constant, target)) == pytest.approx(1 - share, abs=0.01)


def test_focal_and_dice_terms_enter_the_stage2_loss_beside_the_plain_cross_entropy():
    from raymae.model import Stage2Output
    from raymae.training.loop import focal_cross_entropy, soft_dice_loss, stage2_loss

    cfg = tiny_recipe()
    cfg = dataclasses.replace(cfg, stage2=dataclasses.replace(
        cfg.stage2, ce_weight=2.0, focal_gamma=2.0, dice_weight=0.5))
    logits, mask = _logits_and_mask()
    clean = torch.rand(4, 3, 16, 16)
    loss, parts = stage2_loss(Stage2Output(clean.clone(), [logits]), clean, mask, cfg)
    weight = torch.tensor(cfg.stage2.class_weights)
    assert set(parts) == {"ce", "focal", "mse", "ssim", "dice"}
    assert torch.allclose(parts["ce"], torch.nn.functional.cross_entropy(logits, mask.long(), weight=weight))
    assert torch.allclose(parts["focal"], focal_cross_entropy(logits, mask.long(), weight, 2.0))
    assert torch.allclose(parts["dice"], soft_dice_loss(logits, mask.long()))
    expected = 2.0 * parts["focal"] + parts["mse"] + parts["ssim"] + 0.5 * parts["dice"]
    assert torch.allclose(loss, expected)


def test_stage2_starts_from_the_configured_anomaly_prior():
    cfg = tiny_recipe(stage1_epochs=1, stage2_epochs=0)
    cfg = dataclasses.replace(cfg, stage2=dataclasses.replace(cfg.stage2, anomaly_prior=0.02))
    model = train_two_stages(cfg, _images(), torch.device("cpu"))
    bias = model.seg_heads[0].bias.detach().view(-1, 2)
    assert torch.allclose(torch.sigmoid(bias[:, 1] - bias[:, 0]), torch.full((bias.shape[0],), 0.02))


def test_a_diverging_loss_stops_training_with_a_clear_error():
    cfg = tiny_recipe(stage1_epochs=1, stage2_epochs=0)
    cfg = dataclasses.replace(cfg, stage1=dataclasses.replace(cfg.stage1, lr=1e30, warmup_epochs=0,
                                                          batch_size=2))
    with pytest.raises(FloatingPointError, match="stage 1 loss became"):
        train_two_stages(cfg, _images(), torch.device("cpu"))


@pytest.mark.parametrize("clip, bounded", [(1e-3, True), (0.0, False)])
def test_gradient_clipping_bounds_each_step(clip, bounded):
    from raymae.model import build_model
    from raymae.training.loop import run_epoch

    cfg = tiny_recipe()
    # one batch of 8, plain SGD at lr 1 (base lr scaled by batch / 256, no warm-up):
    # the parameter change is exactly the (clipped) gradient
    stage1 = dataclasses.replace(cfg.stage1, lr=256 / 8, warmup_epochs=0, grad_clip=clip, batch_size=8)
    cfg = dataclasses.replace(cfg, stage1=stage1)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters() if p.requires_grad])
    loader = torch.utils.data.DataLoader(torch.from_numpy(_images(8)), batch_size=8)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    run_epoch(model, loader, optimizer, cfg, stage=1, epoch=0, global_batch=8, device=torch.device("cpu"))
    after = torch.cat([p.detach().flatten() for p in model.parameters() if p.requires_grad])
    change = float((after - before).norm())
    assert (change <= clip * 1.001) == bounded, change


def test_a_stage_sized_in_steps_gets_the_whole_epochs_that_give_at_least_that_many():
    from raymae.config import Stage2Config
    from raymae.training.loop import resolve_schedule, steps_per_epoch

    stage = Stage2Config(steps=840, warmup_steps=42, batch_size=32)
    assert steps_per_epoch(677, 32) == 21 and steps_per_epoch(188, 32) == 5
    large, small = resolve_schedule(stage, 677), resolve_schedule(stage, 188)
    assert (large.epochs, large.warmup_epochs) == (40, 2.0)
    assert (small.epochs, small.warmup_epochs) == (168, 42 / 5)  # a small set trains as many steps
    assert resolve_schedule(stage, 677, world_size=2).epochs == 84  # two workers: 10 steps an epoch each
    by_epochs = Stage2Config(epochs=7)
    assert resolve_schedule(by_epochs, 677) is by_epochs


def test_training_sized_in_steps_runs_that_many_optimiser_steps():
    cfg = tiny_recipe(stage1_epochs=1, stage2_epochs=1)
    cfg = dataclasses.replace(cfg, stage1=dataclasses.replace(cfg.stage1, steps=6, warmup_steps=2),
                              stage2=dataclasses.replace(cfg.stage2, steps=4, warmup_steps=1))
    images = np.random.default_rng(0).integers(0, 255, (40, 64, 64, 3), dtype=np.uint8)  # 2 steps an epoch
    epochs = []
    train_two_stages(cfg, images, torch.device("cpu"), on_epoch_end=lambda r, m, o: epochs.append(r.stage))
    assert epochs.count(1) == 3 and epochs.count(2) == 2


def test_per_image_intensity_makes_the_input_blind_to_global_brightness_and_contrast():
    from raymae.inference import to_model_input

    rng = np.random.default_rng(0)
    image = rng.integers(60, 180, (2, 32, 32, 3)).astype(np.uint8)
    darker = np.rint(image * 0.92).astype(np.uint8)
    flatter = np.rint((image.astype(float) - 120) * 0.7 + 130).astype(np.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    plain = to_model_input(image, mean, std)
    assert (to_model_input(darker, mean, std) - plain).abs().mean() > 0.1  # the fixed normalisation sees it
    for intensity in ("per_image", "per_image_robust"):
        base = to_model_input(image, mean, std, intensity=intensity)
        for changed in (darker, flatter):
            same = to_model_input(changed, mean, std, intensity=intensity) - base
            assert same.abs().max() < 0.06, intensity  # uint8 rounding only


def test_gain_intensity_undoes_a_brighter_or_darker_lamp():
    from raymae.inference import to_model_input

    image = np.random.default_rng(1).integers(60, 180, (2, 32, 32, 3)).astype(np.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    base = to_model_input(image, mean, std, intensity="per_image_gain")
    for gain in (0.92, 1.08):
        changed = np.rint(image * gain).astype(np.uint8)
        assert (to_model_input(changed, mean, std, intensity="per_image_gain") - base).abs().max() < 0.06


def texture_contrast_kept(intensity: str, defect_columns: int) -> float:
    """Share of the texture contrast (std of the model input) left beside a bright defect over
    the image's first ``defect_columns`` of 48 columns."""
    from raymae.inference import to_model_input

    image = np.random.default_rng(2).integers(80, 140, (1, 48, 48, 3)).astype(np.uint8)
    defect = image.copy()
    defect[:, :defect_columns] = np.clip(defect[:, :defect_columns].astype(int) + 90, 0, 255)
    rest = (slice(None), slice(None), slice(defect_columns, None))
    before, after = (to_model_input(x, (0.5,) * 3, (0.25,) * 3, intensity=intensity)[rest] for x in (image, defect))
    return float(after.std() / before.std())


def test_gain_intensity_keeps_the_texture_contrast_elsewhere_when_a_large_defect_appears():
    """A bright region over a third of the image (an "uneven" defect) inflates the image's spread,
    so per_image standardisation flattens the texture everywhere else; dividing by the median
    rescales it by the median's small shift only."""
    assert texture_contrast_kept("per_image", 16) < 0.5 and 0.85 < texture_contrast_kept("per_image_gain", 16) <= 1.0


def test_robust_intensity_keeps_the_texture_contrast_beside_a_defect_over_a_sixth_of_the_image():
    """The interquartile range moves little while the defect covers well under a quarter of the
    image; the standard deviation that per_image divides by does."""
    assert texture_contrast_kept("per_image", 8) < 0.5 and texture_contrast_kept("per_image_robust", 8) > 0.8


def test_every_intensity_setting_has_a_normalisation_and_an_unknown_one_is_refused():
    import typing

    from raymae.config import Intensity
    from raymae.inference import INTENSITIES, to_model_input

    assert set(typing.get_args(Intensity)) == set(INTENSITIES)
    with pytest.raises(ValueError, match="per_image_gain"):
        to_model_input(np.zeros((1, 8, 8, 3), np.uint8), (0.5,) * 3, (0.25,) * 3, intensity="median")


def test_stage2_targets_are_scaled_like_their_corrupted_inputs():
    from raymae.inference import to_model_input

    mean, std = (0.5,) * 3, (0.25,) * 3
    clean = np.full((1, 16, 16, 3), 100, np.uint8)
    clean[:, ::2] = 140
    corrupted = clean.copy()
    corrupted[:, 4:12, 4:12] = 10  # a large dark defect shifts the corrupted image's statistics
    target = to_model_input(clean, mean, std, intensity="per_image", like=corrupted)
    x = to_model_input(corrupted, mean, std, intensity="per_image")
    outside = np.ones((16, 16), bool)
    outside[4:12, 4:12] = False
    assert torch.allclose(target[0, :, outside], x[0, :, outside])  # unchanged pixels need no repair


def test_the_training_modules_import_one_way_and_only_the_ray_driver_imports_ray():
    """resources <- loop <- local <- ray_driver: each module imports only those before it, and only
    ray_driver imports Ray (inside its functions, so importing it starts nothing)."""
    import ast
    from pathlib import Path

    import raymae.training

    order = ["resources", "loop", "local", "ray_driver"]
    folder = Path(raymae.training.__file__).parent
    assert sorted(p.stem for p in folder.glob("*.py")) == sorted(["__init__", *order])
    for i, name in enumerate(order):
        tree = ast.parse((folder / f"{name}.py").read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        siblings = {m.rsplit(".", 1)[1] for m in imported if m.startswith("raymae.training.")}
        assert siblings <= set(order[:i]), f"{name} imports {siblings - set(order[:i])}"
        uses_ray = {m for m in imported if m == "ray" or m.startswith("ray.")}
        assert bool(uses_ray) == (name == "ray_driver"), f"{name} imports {uses_ray}"
        top_level = {a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names}
        top_level |= {n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
        assert not {m for m in top_level if m == "ray" or m.startswith("ray.")}, name


def test_a_gpu_worker_gets_loader_processes_for_its_share_of_the_cores_and_a_cpu_worker_its_threads():
    from raymae.training.resources import MAX_GPU_LOADERS, plan_resources

    gpu = plan_resources(gpu=True, processes_here=1, cores=16)
    assert gpu.loader_workers == MAX_GPU_LOADERS and gpu.threads == 16 - MAX_GPU_LOADERS
    assert plan_resources(gpu=True, processes_here=2, cores=8).loader_workers == 3   # 4 cores each, one trains
    assert plan_resources(gpu=True, cores=1).loader_workers == 0                      # nothing to spare
    cpu = plan_resources(gpu=False, processes_here=1, cores=2)
    assert (cpu.threads, cpu.loader_workers) == (2, 0)
    assert plan_resources(gpu=False, processes_here=2, cores=2).threads == 1          # the demo's two workers
    assert plan_resources(gpu=False, cores=2, loader_workers=1).loader_workers == 1   # asked for is what runs
    with pytest.raises(ValueError, match="0 or more"):
        plan_resources(gpu=False, loader_workers=-1)
