"""The ViT masked autoencoder and its stage-2 extension."""

import numpy as np
import pytest
import torch

from raymae.config import ConfigError, ModelConfig
from raymae.model import STAGE2_PREFIXES, build_model, sincos_pos_embed

CFG = ModelConfig(size="tiny", image_size=32, patch_size=8, depth=2, decoder_depth=2, stage2_extra_blocks=1)


def test_patchify_and_unpatchify_are_inverse():
    model = build_model(CFG)
    imgs = torch.randn(3, 3, 32, 32)
    patches = model.patchify(imgs)
    assert patches.shape == (3, 16, 8 * 8 * 3)
    assert torch.equal(model.unpatchify(patches), imgs)


def test_a_patch_holds_the_pixels_of_its_square():
    model = build_model(CFG)
    imgs = torch.randn(1, 3, 32, 32)
    patch = model.patchify(imgs)[0, 1].reshape(8, 8, 3)  # row 0, column 1
    assert torch.equal(patch, imgs[0, :, 0:8, 8:16].permute(1, 2, 0))


def test_random_masking_keeps_a_quarter_and_can_be_undone():
    x = torch.arange(2 * 16, dtype=torch.float32).reshape(2, 16, 1)
    kept, mask, ids_restore = build_model(CFG).random_masking(x, 0.75)
    assert kept.shape == (2, 4, 1)
    assert mask.sum(dim=1).tolist() == [12, 12]
    # the kept tokens are exactly the unmasked positions
    for n in range(2):
        assert sorted(kept[n, :, 0].tolist()) == x[n, mask[n] == 0, 0].tolist()
    # ids_restore undoes the shuffle
    shuffled = torch.cat([kept, torch.zeros(2, 12, 1)], dim=1)
    restored = torch.gather(shuffled, 1, ids_restore.unsqueeze(-1))
    assert torch.equal(restored[mask == 0], x[mask == 0])


def test_stage1_loss_counts_only_masked_patches():
    model = build_model(CFG)
    imgs = torch.randn(2, 3, 32, 32)
    target = model.patchify(imgs)
    mask = torch.zeros(2, 16)
    mask[:, :4] = 1
    pred = target.clone()
    pred[:, 4:] += 10.0  # wrong only where nothing was masked
    assert model.forward_loss(imgs, pred, mask).item() == 0.0
    loss, pred, mask = model(imgs, mask_ratio=0.75)
    assert pred.shape == target.shape and torch.isfinite(loss)


def test_position_embeddings_are_fixed_sincos():
    model = build_model(CFG)
    assert not model.pos_embed.requires_grad and not model.decoder_pos_embed.requires_grad
    expected = sincos_pos_embed(CFG.resolved().embed_dim, 4)
    assert np.allclose(model.pos_embed[0].detach().numpy(), expected)
    assert np.all(expected[0] == 0)  # the cls row


def test_stage2_predicts_a_repaired_image_and_pixel_logits():
    model = build_model(CFG, stage2=True)
    out = model.forward_stage2(torch.randn(2, 3, 32, 32))
    assert out.recon.shape == (2, 3, 32, 32)
    assert len(out.logits) == 1 and out.logits[0].shape == (2, 2, 32, 32)
    prob = out.anomaly_prob.detach()
    assert prob.shape == (2, 32, 32) and float(prob.min()) >= 0 and float(prob.max()) <= 1


def test_deep_supervision_adds_a_head_after_every_decoder_block():
    cfg = ModelConfig(**{**CFG.__dict__, "deep_supervision": True})
    out = build_model(cfg, stage2=True).forward_stage2(torch.randn(1, 3, 32, 32))
    assert len(out.logits) == cfg.decoder_depth + cfg.stage2_extra_blocks


def test_stage1_weights_load_into_stage2_leaving_only_the_new_parts():
    stage1 = build_model(CFG)
    stage2 = build_model(CFG, stage2=True)
    missing, unexpected = stage2.load_state_dict(stage1.state_dict(), strict=False)
    assert not unexpected
    assert missing and all(k.startswith(STAGE2_PREFIXES) for k in missing)


def test_a_frozen_encoder_gets_no_gradient():
    model = build_model(CFG, stage2=True)
    model.set_encoder_frozen(True)
    out = model(torch.randn(2, 3, 32, 32))
    (out.recon.mean() + out.logits[-1].mean()).backward()
    assert all(p.grad is None for p in model.encoder_parameters())
    assert model.decoder_pred.weight.grad is not None


def test_named_sizes_and_bad_shapes():
    assert build_model(ModelConfig(size="tiny", image_size=32, patch_size=16)).cfg.embed_dim == 192
    assert ModelConfig(size="large").resolved().depth == 24
    with pytest.raises(ConfigError, match="multiple of patch size"):
        ModelConfig(image_size=100, patch_size=16).resolved()
    with pytest.raises(ConfigError, match="unknown model size"):
        ModelConfig(size="huge").resolved()


def test_the_fusion_head_gives_pixel_logits_for_every_supervised_block():
    cfg = ModelConfig(**{**CFG.__dict__, "pixel_head": "fusion", "deep_supervision": True})
    model = build_model(cfg, stage2=True)
    out = model.forward_stage2(torch.randn(2, 3, 32, 32))
    assert [tuple(lg.shape) for lg in out.logits] == [(2, 2, 32, 32)] * 3
    assert model.seg_heads[0].out_features == 8 * 8 * model.pixel_fusion.WIDTH


def test_the_compare_head_classifies_pixels_by_looking_at_the_input_and_its_reconstruction():
    def ce_gradient_reaches_the_reconstruction(pixel_head: str) -> bool:
        torch.manual_seed(0)
        model = build_model(ModelConfig(**{**CFG.__dict__, "pixel_head": pixel_head}), stage2=True)
        out = model.forward_stage2(torch.randn(2, 3, 32, 32))
        assert [tuple(lg.shape) for lg in out.logits] == [(2, 2, 32, 32)]
        torch.nn.functional.cross_entropy(out.logits[-1], torch.zeros(2, 32, 32, dtype=torch.long)).backward()
        grad = model.decoder_pred.weight.grad
        return grad is not None and bool(grad.abs().sum() > 0)

    assert ce_gradient_reaches_the_reconstruction("compare")
    assert not ce_gradient_reaches_the_reconstruction("fusion")
    assert not ce_gradient_reaches_the_reconstruction("linear")


@pytest.mark.parametrize("pixel_head", ["linear", "fusion"])
def test_the_pixel_prior_sets_the_anomalous_probability_the_head_starts_from(pixel_head):
    model = build_model(ModelConfig(**{**CFG.__dict__, "pixel_head": pixel_head}), stage2=True)
    model.set_pixel_prior(0.05)
    last = model.pixel_fusion.fuse[-1] if pixel_head == "fusion" else model.seg_heads[0]
    with torch.no_grad():
        last.weight.zero_()  # leave only the bias: the head's answer before it has learned anything
        prob = model.forward_stage2(torch.randn(2, 3, 32, 32)).anomaly_prob
    assert torch.allclose(prob, torch.full_like(prob, 0.05), atol=1e-6)


def test_bilinear_upsampling_leaves_no_patch_grid_in_the_pixel_maps():
    def largest_steps(upsampling: str) -> tuple[float, float]:
        """Largest jump between neighbouring pixels, and between neighbouring token outputs."""
        model = build_model(ModelConfig(**{**CFG.__dict__, "pixel_head": "fusion",
                                           "pixel_upsampling": upsampling}), stage2=True)
        seg = torch.randn(1, 16, model.seg_heads[0].out_features)
        pixels = model.token_map(seg)[0]                                    # (C, 32, 32)
        tokens = seg[0].reshape(4, 4, -1)
        return (float(pixels.diff(dim=-1).abs().max()),
                float(tokens.diff(dim=1).abs().max()))

    pixel_step, token_step = largest_steps("bilinear")
    assert pixel_step <= token_step / 8 + 1e-5          # a jump between tokens spreads over a patch
    pixel_step, token_step = largest_steps("patch")
    assert pixel_step > token_step / 8                  # each token paints its own square


def test_bilinear_upsampling_gives_full_resolution_logits_from_one_vector_per_token():
    cfg = ModelConfig(**{**CFG.__dict__, "pixel_head": "fusion", "pixel_upsampling": "bilinear"})
    model = build_model(cfg, stage2=True)
    assert model.seg_heads[0].out_features == model.pixel_fusion.WIDTH
    out = model.forward_stage2(torch.randn(2, 3, 32, 32))
    assert [tuple(lg.shape) for lg in out.logits] == [(2, 2, 32, 32)]
    linear = build_model(ModelConfig(**{**CFG.__dict__, "pixel_upsampling": "bilinear"}), stage2=True)
    assert linear.forward_stage2(torch.randn(1, 3, 32, 32)).logits[0].shape == (1, 2, 32, 32)


def test_the_pixel_head_runs_channels_last_and_computes_what_it_computes_in_the_plain_layout():
    model = build_model(ModelConfig(**{**CFG.__dict__, "pixel_head": "fusion"}), stage2=True).eval()
    imgs = torch.randn(2, 3, 32, 32)
    seg = torch.randn(2, 16, model.seg_heads[0].out_features)
    maps = model.token_map(seg)
    plain = model.unpatchify(seg, chans=model.pixel_fusion.WIDTH).contiguous()
    assert maps.is_contiguous(memory_format=torch.channels_last) and torch.equal(maps, plain)
    head = model.pixel_fusion
    with torch.no_grad():
        channels_last = head(maps, head.stem(imgs.contiguous(memory_format=torch.channels_last)))
        assert torch.allclose(channels_last, head(plain, head.stem(imgs)), atol=1e-5)
        assert model.forward_stage2(imgs).logits[-1].is_contiguous(memory_format=torch.channels_last)
